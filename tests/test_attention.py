"""QuantScaledDotProductAttention against attention written out in float64 in this file.

The oracles: the quantization formulas by hand in float64 (INT8 per token: s = amax / 127,
round half to even; FP8 E4M3 per token: s = amax / 448 and torch's native float8 cast; MXFP8:
X = 2^(floor(log2 amax) - 8) per 32 elements, saturated to 448; INT8 per head from a calibrated
max, s = amax / 128), softmax and matmuls in float64, and torch's own ``scaled_dot_product_attention`` with
every quantizer off.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import qlayers
import quantizers
from qlayers import QuantScaledDotProductAttention
from qlayers.model.spec import spec_to_quantizer
from quantizers import Fp8e4m3OCPActPerTokenFloat, Int8ActPerTokenFloat

@pytest.fixture(autouse=True, scope="module")
def eager_kernels():
    """Eager kernels here (compiled ones are tested elsewhere): a background compile started by
    this early file would load torch._dynamo while later files' tests run."""
    quantizers.set_compile_enabled(False)
    yield
    quantizers.set_compile_enabled(None)


MXFP8 = spec_to_quantizer({"format": "mxfp8"}, role="input")
INT8_PER_HEAD = spec_to_quantizer({"format": "int8", "granularity": "channel", "observer": "minmax"}, role="input")
OFF = dict(q_quant=None, k_quant=None, v_quant=None, softmax_quant=None)


def int8_per_token(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True) / 127
    return torch.round(x / s) * s


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True) / 448
    return (x / s).to(torch.float8_e4m3fn).to(torch.float64) * s


def mxfp8(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - 8)
    elements = (blocks / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    return (elements * scale).reshape(x.shape)


def int8_per_head(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    s = (amax / 128).reshape(1, -1, 1, 1)  # full-range static INT8: amax / 2^(b-1), codes [-128, 127]
    return torch.clamp(torch.round(x / s), -128, 127) * s


def reference(q, k, v, mask=None, qf=None, kf=None, vf=None, pf=None):
    """Attention in float64 with the given hand quantizers."""
    ident = lambda t: t  # noqa: E731
    qf, kf, vf, pf = (f or ident for f in (qf, kf, vf, pf))
    scale = 1 / math.sqrt(q.size(-1))
    scores = qf(q * scale) @ kf(k).transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return pf(torch.softmax(scores, -1)) @ vf(v)


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 6, 64, generator=g, dtype=torch.float64) for _ in range(3)]


def test_every_operand_quantized_matches_the_float64_hand_formulas(qkv):
    q, k, v = qkv
    attn = QuantScaledDotProductAttention(
        q_quant=Int8ActPerTokenFloat, k_quant=Fp8e4m3OCPActPerTokenFloat, v_quant=MXFP8, softmax_quant=Int8ActPerTokenFloat,
    )
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    expected = reference(q, k, v, mask, int8_per_token, fp8_per_token, mxfp8, int8_per_token)
    got = attn(q, k, v, is_causal=True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # and the quantization matters: float attention is measurably different
    assert (got - reference(q, k, v, mask)).abs().max() > 1e-3


def test_per_head_static_scales_come_from_calibration(qkv):
    q, k, v = qkv
    attn = QuantScaledDotProductAttention(q_quant=None, k_quant=INT8_PER_HEAD, v_quant=INT8_PER_HEAD, softmax_quant=None)
    with qlayers.calibration_mode(attn):
        attn(q, k, v)
    assert attn.k_transposed_quant.granularity.kind == "channel"
    k_amax, v_amax = k.abs().amax((0, 2, 3)), v.abs().amax((0, 2, 3))
    expected = reference(q, k, v, kf=lambda t: int8_per_head(t, k_amax), vf=lambda t: int8_per_head(t, v_amax))
    torch.testing.assert_close(attn.eval()(q, k, v), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_with_every_quantizer_off_it_is_torch_sdpa(dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 5, 16, generator=g).to(dtype)
    kv = torch.randn(2, 2, 7, 16, generator=g).to(dtype)
    mask = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    mask[0, 0, 2] = False  # a query that sees no key: zeros
    attn = QuantScaledDotProductAttention(**OFF)
    got = attn(q, kv, kv, attn_mask=mask, enable_gqa=True)
    expected = F.scaled_dot_product_attention(q.double(), kv.double(), kv.double(), attn_mask=mask, enable_gqa=True)
    expected[0, :, 2] = 0
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_brevitas_names_and_short_aliases_are_the_same_quantizers():
    a = QuantScaledDotProductAttention(q_quant=Int8ActPerTokenFloat, q_bit_width=4, softmax_quant=None, k_quant=None)
    assert a.q_scaled_quant.fmt.bits == 4 and a.attn_output_weights_quant is None and a.k_transposed_quant is None
    b = QuantScaledDotProductAttention(q_scaled_quant=Int8ActPerTokenFloat, q_scaled_bit_width=4, softmax_input_quant=Int8ActPerTokenFloat)
    assert b.q_scaled_quant.fmt.bits == 4 and b.softmax_input_quant is not None
    with pytest.raises(TypeError, match="q_scaled_bits"):
        QuantScaledDotProductAttention(q_scaled_bits=4)


def test_bad_shapes_name_the_shapes():
    attn = QuantScaledDotProductAttention(**OFF)
    with pytest.raises(ValueError, match=r"query has 4 heads and key 3"):
        attn(torch.randn(1, 4, 2, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8), enable_gqa=True)
    with pytest.raises(ValueError, match="head dimension"):
        attn(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 6), torch.randn(1, 4, 2, 6))
    with pytest.raises(ValueError, match="not both"):
        attn(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), attn_mask=torch.ones(2, 2, dtype=torch.bool), is_causal=True)


def test_default_quantizers_are_brevitas_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # never calibrated
        attn = QuantScaledDotProductAttention()
        out = attn(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    assert attn.q_scaled_quant.fmt.name == "int8" and attn.attn_output_weights_quant.fmt.name == "uint8"
    assert attn.softmax_input_quant is None and attn.sdpa_output_quant is None and out.shape == (1, 2, 3, 8)
