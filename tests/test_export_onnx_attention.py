"""export_onnx of QuantScaledDotProductAttention, standalone and inside Hugging Face models (the
"qzoo" attention function), run in onnxruntime (CPU, graph optimizations off) against qzoo.

Oracles: the quantized Q, K and V onnxruntime computes (``QuantizeLinear -> DequantizeLinear``
values, named after their quantizers) equal the qzoo quantizers' outputs bit for bit: the same
float32 inputs (``Q * scale`` is one float multiply in both) and the same rounding. The scores,
the softmax and the output go through onnxruntime's own MatMul and Softmax kernels, whose float32
results may differ from torch's in the last bits; an element at a rounding boundary of the next
quantizer can then move by one quantization step. So: a quantized softmax or output equals qzoo's
in the same code for at least 99% of the elements (bit for bit with static scales; within the
float32 rounding of the scale, relative 2^-20, with per-token scales computed from a row maximum
that may differ by an ulp), and the others differ by at most one step (INT8 per-tensor: the scale;
FP8 E4M3: 1/8 of the value, 3 mantissa bits); the float output of a model is within
``1e-5 * max |y|``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qlayers
import quantizers as Q
from quantizers import TensorQuantizer

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from qlayers.export import ExportError, export_onnx  # noqa: E402
from qlayers.model.spec import spec_to_quantizer  # noqa: E402
from test_export_onnx import _assert_bits_equal, _run  # noqa: E402

N, H, KV_HEADS, L, E = 2, 4, 2, 7, 16
ROLES = ("q_scaled", "k_transposed", "v", "softmax_input", "attn_output_weights", "sdpa_output")


class MaskKinds(nn.Module):
    """One attention layer per mask kind, on the same Q, K, V: causal, a boolean padding mask, an
    additive float mask, and grouped-query attention (2 KV heads for 4 query heads) with causal."""

    def __init__(self, **quant):
        super().__init__()
        self.causal, self.padded, self.additive, self.gqa = (qlayers.QuantScaledDotProductAttention(**quant) for _ in range(4))

    def forward(self, q, k, v, padding, bias):
        return (
            self.causal(q, k, v, is_causal=True), self.padded(q, k, v, attn_mask=padding),
            self.additive(q, k, v, attn_mask=bias), self.gqa(q, k[:, :KV_HEADS], v[:, :KV_HEADS], is_causal=True, enable_gqa=True),
        )


def _inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(N, H, L, E, generator=generator) * 2 for _ in range(3))
    padding = torch.ones(N, 1, L, L, dtype=torch.bool)
    padding[1, :, :, 5:] = False  # the second sequence has 5 tokens
    padding[1, :, 6] = False  # a query that sees no key: zeros
    bias = torch.randn(L, L, generator=generator)
    bias[:, 0] = float("-inf")
    bias[3] = float("-inf")  # every key hidden: zeros
    return q, k, v, padding, bias


def _quantized_values(model, inputs):
    """qzoo's output and every quantizer's output (``<layer>.<role>_quant``) in one forward."""
    seen, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: seen.setdefault(name, getattr(out, "value", out).detach())))
    try:
        with torch.no_grad():
            outputs = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, seen


def _assert_at_most_one_step_apart(got, expected, step, what):
    """The same code (equal, or within the float32 rounding of a per-token scale: relative 2^-20)
    for at least 99% of the elements, the others at most ``step`` apart."""
    expected = expected.numpy()
    apart = np.abs(got - expected)
    moved = apart > 2.0 ** -20 * np.abs(expected)
    assert moved.mean() <= 0.01, f"{what}: {moved.mean():.2%} of the values moved to another code"
    assert (apart <= step).all(), f"{what}: {apart.max()} apart, more than one step"


def _export_and_compare(model, step):
    names = [f"{layer}.{role}_quant" for layer in ("causal", "padded", "additive", "gqa") for role in ROLES[:-1]
             if getattr(model.get_submodule(layer), f"{role}_quant") is not None]  # sdpa_output: the graph outputs
    proto = export_onnx(model, _inputs(0), None)
    inputs = _inputs(1)
    got = _run(proto, inputs, names)
    expected, seen = _quantized_values(model, inputs)
    for name in names:
        if name.split(".")[1] in ("q_scaled_quant", "k_transposed_quant", "v_quant"):
            _assert_bits_equal(got[name], seen[name], name, signed_zero=False)
        else:
            _assert_at_most_one_step_apart(got[name], seen[name], step(model.get_submodule(name), seen[name]), name)
    outputs = [got[o.name] for o in proto.graph.output]
    for output, reference, kind in zip(outputs, expected, ("causal", "padded", "additive", "gqa")):
        quantizer = model.get_submodule(kind).sdpa_output_quant
        if quantizer is None:
            assert np.allclose(output, reference.numpy(), rtol=0, atol=1e-5 * reference.abs().max().item()), kind
        else:
            _assert_at_most_one_step_apart(output, reference, step(quantizer, reference), kind)
    hidden = (1, slice(None), 6)  # the padded query that sees no key
    assert (outputs[1][hidden] == 0).all() and (outputs[2][:, :, 3] == 0).all()
    return proto


def test_int8_static_per_tensor_and_per_head_attention_with_every_mask_kind_matches_qzoo_in_onnxruntime():
    torch.manual_seed(0)
    int8 = Q.Int8ActPerTensorFloat
    per_head = spec_to_quantizer({"format": "int8", "granularity": "channel", "observer": "minmax"}, role="input")
    model = MaskKinds(q_quant=int8, k_quant=per_head, v_quant=per_head, softmax_input_quant=int8,
                      softmax_quant=Q.Uint8ActPerTensorFloat, sdpa_output_quant=int8).eval()
    qlayers.calibrate(model, [_inputs(s) for s in (10, 11)], forward=lambda m, batch: m(*batch))
    proto = _export_and_compare(model, lambda quantizer, x: quantizer(x).scale.item() * 1.0001)
    scales = {init.name for init in proto.graph.initializer}
    assert {f"causal.{role}_quant.scale" for role in ROLES} <= scales  # static: constants
    assert {n.op_type for n in proto.graph.node} >= {"MatMul", "Softmax", "Where", "QuantizeLinear", "DequantizeLinear"}


def test_fp8_per_token_dynamic_attention_matches_qzoo_in_onnxruntime():
    fp8 = Q.Fp8e4m3OCPActPerTokenFloat
    model = MaskKinds(q_quant=fp8, k_quant=fp8, v_quant=fp8, softmax_quant=fp8).eval()
    # one E4M3 step is at most 1/8 of the value; the scale (row max / 448) may move by an ulp
    proto = _export_and_compare(model, lambda quantizer, x: x.abs().numpy() / 8 * (1 + 2.0 ** -20) + 1e-30)
    assert not any(init.name.endswith("_quant.scale") for init in proto.graph.initializer)  # computed in the graph


def test_unquantized_scores_and_softmax_are_written_out_instead_of_torchs_fused_kernel():
    int8 = Q.Int8ActPerTokenFloat  # dynamic per token: no calibration
    model = qlayers.QuantScaledDotProductAttention(q_quant=int8, k_quant=int8, v_quant=int8, softmax_quant=None).eval()
    q, k, v, _, bias = _inputs(0)
    proto = export_onnx(model, (q, k, v, bias), None)
    assert {"MatMul", "Softmax"} <= {n.op_type for n in proto.graph.node} and "Attention" not in {n.op_type for n in proto.graph.node}
    q, k, v, _, bias = _inputs(1)
    (got,) = _run(proto, (q, k, v, bias)).values()
    with torch.no_grad():
        expected = model(q, k, v, bias)  # torch's fused scaled_dot_product_attention
    assert np.allclose(got, expected.numpy(), rtol=0, atol=1e-5 * expected.abs().max().item())
    assert (got[:, :, 3] == 0).all()


def test_attention_dropout_and_inexpressible_formats_raise_naming_the_layer(tmp_path):
    class Dropping(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = qlayers.QuantScaledDotProductAttention(q_quant=None, k_quant=None, v_quant=None, softmax_quant=Q.Int8ActPerTokenFloat)

        def forward(self, q, k, v):
            return self.attn(q, k, v, dropout_p=0.1)

    q, k, v, _, _ = _inputs(0)
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"layer 'attn' \(QuantScaledDotProductAttention\): dropout_p=0.1 .*dropout_p=0"):
        export_onnx(Dropping().eval(), (q, k, v), path)
    nvfp4 = qlayers.QuantScaledDotProductAttention(q_quant=Q.NVFloat4e2m1Act, k_quant=None, v_quant=None, softmax_quant=None)
    with pytest.raises(ExportError, match=r"layer '' \(QuantScaledDotProductAttention\) q_scaled_quant: .*float4_e2m1fn.*supported"):
        export_onnx(nvfp4.eval(), (q, k, v), path)
    assert not path.exists()


# ---- Hugging Face models: attention through the "qzoo" attention function -------------------------

transformers = pytest.importorskip("transformers")

INT8 = {"format": "int8", "granularity": "tensor"}  # static: calibrated
FP8 = {"format": "float8_e4m3fn", "granularity": "token"}  # dynamic


def _tiny(family):
    torch.manual_seed(0)
    sizes = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
    if family == "bert":
        return transformers.BertModel(transformers.BertConfig(**sizes), add_pooling_layer=False).eval()
    return transformers.LlamaModel(transformers.LlamaConfig(num_key_value_heads=2, **sizes)).eval()  # GQA, causal


def _batch(seed, left_padding, size=(2, 9)):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, dtype=torch.long)
    if left_padding:
        mask[1, :3] = 0
    else:
        mask[1, 6:] = 0
    return {"input_ids": torch.randint(0, 64, size, generator=generator), "attention_mask": mask}


@pytest.mark.parametrize("family, spec", [("bert", INT8), ("llama", FP8)], ids=["bert-int8-static", "llama-fp8-per-token"])
def test_hugging_face_model_with_quantized_attention_runs_in_onnxruntime_like_qzoo(family, spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = qlayers.quantize_model(_tiny(family), {
            "weights": {"format": "int8", "granularity": "channel"}, "attention": {"q": spec, "k": spec, "v": spec, "softmax": spec},
        })
    left = family == "llama"  # a decoder pads on the left: causal + padding hides every key of some queries
    if spec is INT8:
        qlayers.calibrate(model, [_batch(s, left) for s in (1, 2)], forward=lambda m, batch: m(**batch))
    extra = {} if family == "bert" else {"use_cache": False}
    tokens = {0: "batch", 1: "length"}  # per-token softmax scales over a symbolic number of keys
    dynamic = {"input_ids": tokens, "attention_mask": tokens, **{key: None for key in extra}}
    proto = export_onnx(model, {**_batch(0, left), **extra}, None, dynamic_shapes=dynamic)
    prefix = "encoder.layer.0.attention.self" if family == "bert" else "layers.0.self_attn"
    values = {value for node in proto.graph.node for value in node.output}
    assert {f"{prefix}.attn_quant.{role}_quant" for role in ("q_scaled", "k_transposed", "v", "attn_output_weights")} <= values
    batch = _batch(3, left, size=(3, 12))
    got = _run(proto, (batch["input_ids"], batch["attention_mask"]))[proto.graph.output[0].name]
    with torch.no_grad():
        expected = model(**batch, **extra).last_hidden_state
    assert np.allclose(got, expected.numpy(), rtol=0, atol=1e-5 * expected.abs().max().item())
