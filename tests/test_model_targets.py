"""quantize_model's transformer defaults and filters: ``targets`` by layer class, name patterns,
per-token inputs, the ``attention`` section's validation (real-model frictions 8, 9 and 11).

Oracles: the module types after conversion, and hand per-token INT8 (s = amax / 127 per row)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import qlayers
from qlayers.model.config import DEFAULT_TARGETS
from qlayers.model.functional import traced_adds

W8 = {"format": "int8", "granularity": "channel"}
A8_TOKEN = {"format": "int8", "granularity": "token"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.conv = nn.Conv1d(8, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        h = h + self.fc(h)  # a residual add
        return self.lm_head(h)


def test_defaults_quantize_matmul_layers_not_embeddings_nor_residual_adds():
    q = qlayers.quantize_model(Tiny(), {"weights": W8, "inputs": A8_TOKEN})
    assert type(q.embed_tokens) is nn.Embedding
    assert type(q.fc) is qlayers.QuantLinear and type(q.lm_head) is qlayers.QuantLinear
    assert type(q.conv) is qlayers.QuantConv1d and not traced_adds(q)
    assert "Embedding" not in DEFAULT_TARGETS and "Linear" in DEFAULT_TARGETS


def test_targets_by_class_and_name_patterns_for_embeddings_and_lm_head():
    q = qlayers.quantize_model(Tiny(), {"weights": W8, "targets": ["Linear"], "skip_layers": ["lm_head"]})
    assert type(q.fc) is qlayers.QuantLinear and type(q.conv) is nn.Conv1d and type(q.lm_head) is nn.Linear
    q = qlayers.quantize_model(Tiny(), {"weights": W8, "targets": [nn.Linear, "Embedding"]})
    assert type(q.embed_tokens) is qlayers.QuantEmbedding
    q = qlayers.quantize_model(Tiny(), {"weights": W8, "targets": "Linear", "layers": {"embed_tokens": {"weights": {"format": "int4"}}}})
    assert type(q.embed_tokens) is qlayers.QuantEmbedding and q.embed_tokens.weight_quant.fmt.bits == 4


def test_per_token_dynamic_inputs_on_every_linear():
    model = Tiny()
    q = qlayers.quantize_model(model, {"inputs": A8_TOKEN, "targets": ["Linear"]}).eval()
    x = torch.randn(3, 5, 8)
    s = x.abs().amax(-1, keepdim=True) / 127
    expected = torch.nn.functional.linear(torch.round(x / s) * s, model.fc.weight, model.fc.bias)
    torch.testing.assert_close(q.fc(x), expected, rtol=1e-6, atol=1e-6)
    assert all(m.input_quant.granularity.kind == "token" for m in q.modules() if isinstance(m, qlayers.QuantLinear))


def test_residual_adds_only_when_asked():
    q = qlayers.quantize_model(Tiny(), {"inputs": A8_TOKEN, "functional_adds": True})
    assert traced_adds(q) == ("eltwise_add",)


@pytest.mark.parametrize("config, error, words", [
    ({"targets": ["Linaer"]}, ValueError, ["targets[0]='Linaer' is not allowed", "Linear"]),
    ({"targets": 3}, TypeError, ["targets must be a list of layer class names"]),
    ({"attention": {"query": A8_TOKEN}}, ValueError, ["attention.query", "q, k, v, softmax"]),
    ({"attention": {"k": {"format": "int8", "granularity": "channel", "group_size": "x"}}}, (TypeError, ValueError), ["attention.k"]),
    ({"attention": ["q"]}, TypeError, ["attention must be a dict"]),
])
def test_bad_targets_and_attention_sections_name_the_key(config, error, words):
    with pytest.raises(error) as info:
        qlayers.quantize_model(Tiny(), config)
    for word in words:
        assert word in str(info.value)
