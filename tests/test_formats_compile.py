"""``torch.compile(fullgraph=True)`` of quantize/encode/decode is bit-identical to eager.

Each case compiles one function that returns several rounding modes at once (``dynamic=True``, so
the second input length reuses the graph). Inductor compiles are the cost here, so the cases cover
every non-stochastic mode on float32 and bfloat16 input without compiling the full product.
Float NaN outputs are compared as NaN: the sign of a NaN made by arithmetic has no meaning (NaN
codes are another matter, see test_compiled_encode_and_decode_are_bit_identical_to_eager).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import quantizers as qz
from conftest import ROUND_TO_NEAREST_AND_DIRECTED, all_bfloat16, assert_same_codes, assert_same_floats, random_float32

ALL_MODES = ROUND_TO_NEAREST_AND_DIRECTED
F32, BF16 = torch.float32, torch.bfloat16
COMPILE_CASES = [  # (format, input dtype, rounding modes; None is the format's default rounding/overflow)
    ("float8_e4m3fn", F32, ALL_MODES + (None,)),
    ("float8_e4m3fn", BF16, ALL_MODES + (None,)),
    ("float8_e5m2", F32, ALL_MODES),
    ("float4_e2m1fn", BF16, ALL_MODES),
    ("hifloat8", F32, ALL_MODES + (None,)),
    ("hifloat8", BF16, ("away",)),
    ("float8_e8m0fnu", F32, ("even", "floor", "ceil")),
    ("int8", F32, ALL_MODES),
    ("int8", BF16, ("even",)),
]


@pytest.fixture(autouse=True, scope="module")
def room_for_every_graph():
    # The cases share one Python code object; each is a recompile of it.
    with torch._dynamo.config.patch(recompile_limit=32):
        yield


def quantize_modes(name, modes):
    """quantize in each mode (non-saturating, so overflow policies are compiled too; ``None``:
    the format's defaults), as one function."""
    fmt = qz.get_format(name)

    def quantize_each(x):
        return [fmt.quantize(x) if mode is None else fmt.quantize(x, rounding=mode, saturating=False)
                for mode in modes]

    return quantize_each


def sweep(dtype):
    """Every bfloat16 pattern (ties, subnormals, overflow, ±Inf, NaN), plus random float32 values."""
    x = all_bfloat16()
    if dtype == torch.float32:
        return torch.from_numpy(np.concatenate([x, random_float32(-30, 20, n=1 << 15, seed=17)]))
    return torch.from_numpy(x).to(torch.bfloat16)  # exact: the patterns are bfloat16 values


@pytest.mark.parametrize("name, dtype, modes", COMPILE_CASES,
                         ids=[f"{n}-{str(d)[6:]}-{len(m)}modes" for n, d, m in COMPILE_CASES])
def test_compiled_quantize_is_bit_identical_to_eager(name, dtype, modes):
    eager = quantize_modes(name, modes)
    compiled = torch.compile(eager, fullgraph=True, dynamic=True)
    x = sweep(dtype)
    for part in (x, x[: x.numel() // 3 + 1]):
        for mode, got, expected in zip(modes, compiled(part), eager(part)):
            assert got.dtype == dtype
            assert_same_floats(got, expected, part.float(), what=f"{name} {dtype} rounding={mode}")


def test_compiled_encode_and_decode_are_bit_identical_to_eager():
    # NaN codes included: they carry the input's sign (as ml_dtypes), which compiled code must
    # keep too (a NaN made by arithmetic has no reliable sign, least of all under inductor).
    fmt = qz.get_format("float8_e4m3fn")

    def encode_and_decode(x, codes):
        return fmt.encode(x, saturating=False), fmt.encode(x, saturating=True), fmt.decode(codes)

    x = torch.cat([sweep(torch.float32), torch.tensor([-466.0, -1000.0, math.nan, -math.nan])])
    all_codes = torch.arange(256, dtype=torch.uint8)
    got = torch.compile(encode_and_decode, fullgraph=True)(x, all_codes)
    expected = encode_and_decode(x, all_codes)
    assert got[0].dtype == got[1].dtype == torch.uint8
    assert_same_codes(got[0], expected[0], x, "encode saturating=False")
    assert_same_codes(got[1], expected[1], x, "encode saturating=True")
    assert expected[0][-4:].tolist() == [0xFF, 0xFF, 0x7F, 0xFF] and expected[1][-4:].tolist() == [0xFE, 0xFE, 0x7F, 0xFF]
    assert_same_floats(got[2], expected[2], all_codes, what="decode")


def test_compiled_encode_with_dynamic_shapes():
    fmt = qz.get_format("float8_e4m3fn")
    x = torch.tensor([0.3, -1000.0, 1.0625])
    expected = fmt.encode(x, saturating=False)
    codes = torch.compile(lambda t: fmt.encode(t, saturating=False), fullgraph=True, dynamic=True)(x)
    assert torch.equal(codes, expected)


def test_compile_works_on_a_format_never_used_eagerly():
    # Python 3.11's functools.cached_property takes a lock dynamo cannot trace: the format's facts
    # must already be computed when a compiled region first reads them.
    fresh = qz.FloatFormat(exponent_bits=4, mantissa_bits=3, exponent_bias=7, special="fn")
    compiled = torch.compile(lambda t: fresh.quantize(t, saturating=False), fullgraph=True)
    assert compiled(torch.tensor([0.3, -1.0625])).tolist() == [0.3125, -1.0]
