"""Packing across dtypes and widths, untrusted checkpoints, and the sign of float16 NaN.

Regression tests of the reliability report (P1, P2, P3, S1x) and the peer exactness report (D4).
Oracles: the values themselves (a pack/unpack round trip must give the same bits), hand-built
integers, and ml_dtypes for NaN codes.
"""
from __future__ import annotations

import io
import pickle
import time

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from quantizers.formats import FloatFormat
from quantizers.tensor import PackedQuantTensor


def _same(a: torch.Tensor, b: torch.Tensor, signed_zero: bool = True) -> bool:
    """Bitwise equal values (NaN equals NaN); ``signed_zero=False`` for integer kinds, whose codes
    have no -0 (a -0.0 in value_ comes back as +0.0, as documented in quantizers.tensor.packed)."""
    equal = (a == b) & ((torch.signbit(a) == torch.signbit(b)) | (not signed_zero))
    equal = equal | (torch.isnan(a) & torch.isnan(b))
    return a.dtype == b.dtype and a.shape == b.shape and bool(equal.all())


@pytest.mark.parametrize("bit_width", [17, 20, 24, 32])
def test_integers_of_17_to_32_bits_pack_and_unpack_exactly(bit_width):
    """P1: codes above 16 bits were stored as int16 words (-293 came back as 65243 with
    check=False; check=True blamed the user). They are now int32 words."""
    torch.manual_seed(0)
    top = 2 ** (bit_width - 1) - 1
    q = torch.randint(-top, top, (64,)).float()
    q[:4] = torch.tensor([-293.0, float(top), float(-top), 0.0])
    q = q.round().clamp(-(2 ** 24), 2 ** 24)  # float32 holds these integers exactly
    qt = qz.IntQuantTensor(value_=q, scale_=torch.tensor(1.0), fmt=qz.IntFormat(bits=bit_width))
    for check in (True, False):
        packed = qt.pack(check=check)
        assert packed.layout == "word32" and packed.codes.dtype == torch.int32
        assert _same(packed.unpack().value_, qt.value_)
    bias_quant = qz.build_tensor_quantizer(qz.Int32Bias, bit_width=bit_width)
    bias = bias_quant(torch.randn(8) * 1000, torch.tensor(0.5), torch.tensor(0.25))
    assert _same(bias.pack().unpack().value_, bias.value_)
    assert bias.pack().unpack().value_[:4].tolist() == bias.value_[:4].tolist()


def test_pack_without_check_raises_instead_of_clamping():
    """P1: pack(check=False) never changes an element silently: one outside the format raises."""
    qt = qz.IntQuantTensor(value_=torch.tensor([300.0, 1.0]), scale_=torch.tensor(1.0), fmt="int8")
    for check in (True, False):
        with pytest.raises(ValueError, match="outside int8's range"):
            qt.pack(check=check)
    fp4 = qz.FloatQuantTensor(value_=torch.tensor([40.0, 1.0]), scale_=torch.tensor(1.0), fmt="float4_e2m1fn")
    with pytest.raises(ValueError, match="outside"):
        fp4.pack(check=False)


@pytest.mark.parametrize("quantizer", [qz.Int8WeightPerChannelFloat, qz.Int8WeightPerTensorFloat,
                                       qz.NVFloat4e2m1Weight, qz.Uint4WeightPerGroupFloat,
                                       qz.Fp8e4m3OCPWeightPerChannelFloat, qz.MXFloat4e2m1Weight],
                         ids=lambda q: q.__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_half_and_double_quant_tensors_pack(quantizer, dtype):
    """P2: bfloat16 weights could not be packed (eager or compiled, depending on the class): value_
    was rounded in one arithmetic and re-checked in another. Both now compute in float32."""
    torch.manual_seed(0)
    w = torch.randn(64, 256).to(dtype)
    qt = qz.quantize(w, quantizer)
    assert _same(qt.pack().unpack().value_, qt.value_, signed_zero=not isinstance(qt.fmt, qz.IntFormat))


def test_bf16_int8_weights_pack_with_compiled_kernels():
    """P2: with compiled kernels (the default) bf16 int8 weights failed the pack check."""
    qz.set_compile_enabled(True)
    try:
        torch.manual_seed(0)
        qt = qz.quantize(torch.randn(64, 256).bfloat16(), qz.Int8WeightPerChannelFloat)
    finally:
        qz.set_compile_enabled(None)  # back to the default policy
    assert _same(qt.pack().unpack().value_, qt.value_, signed_zero=False)


@pytest.mark.parametrize("quantizer", [qz.Int8WeightPerChannelFloat, qz.Fp8e4m3OCPWeightPerTensorFloat,
                                       qz.NVFloat4e2m1Weight, qz.Uint4WeightPerGroupFloat],
                         ids=lambda q: q.__name__)
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_widened_quant_tensors_pack(quantizer, source):
    """P3: ``qt.to(torch.float64)`` (a widening cast) was refused with the "narrowing" message.
    The packed form now records the dtype value_ was rounded to and rebuilds the same bits."""
    torch.manual_seed(0)
    qt = qz.quantize(torch.randn(32, 64).to(source), quantizer)
    for wider in (torch.float32, torch.float64):
        if torch.finfo(wider).bits <= torch.finfo(source).bits:
            continue
        widened = qt.to(wider)
        packed = widened.pack()
        assert packed.rounded_dtype in (None, source)
        assert _same(packed.unpack().value_, widened.value_, signed_zero=not isinstance(qt.fmt, qz.IntFormat))


def test_pack_check_names_the_cause_for_non_canonical_values():
    """P3: a value_ that no dtype reproduces still raises, and the message says why."""
    qt = qz.IntQuantTensor(value_=torch.tensor([0.3, 1.0]), scale_=torch.tensor(1.0), fmt="int8")
    with pytest.raises(ValueError, match="not the canonical"):
        qt.pack()
    assert qt.pack(check=False).unpack().value_.tolist() == [0.0, 1.0]


# ---- S1x: untrusted checkpoints -----------------------------------------------------------------
def _load(obj) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_formats_restored_from_untrusted_checkpoints_are_validated():
    """S1x: a FloatFormat with mantissa_bits=22 skipped validation under weights_only loading and
    unpack() then built a 2^27-entry table (a hang). Loading now re-runs the validation."""
    fmt = FloatFormat(exponent_bits=4, mantissa_bits=3, exponent_bias=7, special="fn")
    qt = qz.quantize(torch.randn(4, 8), qz.Fp8e4m3OCPWeightPerTensorFloat)
    packed = qt.pack()
    crafted = FloatFormat(exponent_bits=4, mantissa_bits=3)
    object.__setattr__(crafted, "mantissa_bits", 22)
    packed.fmt = crafted
    start = time.perf_counter()
    with pytest.raises((ValueError, pickle.UnpicklingError), match="bits"):
        _load(packed)
    assert time.perf_counter() - start < 5
    assert _load(fmt) == fmt and _load(fmt).max_value == 448.0
    restored = _load(qt.pack()).unpack()
    assert _same(restored.value_, qt.value_)
    for bad in ({"bits": 4096}, {"bits": 8, "signed": "yes"}):
        crafted_int = qz.IntFormat(bits=8)
        for name, value in bad.items():
            object.__setattr__(crafted_int, name, value)
        with pytest.raises((ValueError, TypeError, pickle.UnpicklingError)):
            _load(crafted_int)


def test_unpack_validates_packed_fields_before_allocating():
    """S1x: a crafted PackedQuantTensor whose shapes disagree with its codes raises at once instead
    of allocating a zero point of the claimed (huge) shape."""
    packed = qz.quantize(torch.randn(4, 8), qz.Int8WeightPerChannelFloat).pack()
    packed.zero_point_shape = torch.Size([2 ** 20, 2 ** 20])
    with pytest.raises(ValueError, match="zero_point_shape"):
        _load(packed).unpack()
    packed = qz.quantize(torch.randn(4, 8), qz.Int8WeightPerChannelFloat).pack()
    packed.value_shape = torch.Size([2 ** 30, 2 ** 30])
    with pytest.raises(ValueError, match="codes hold"):
        packed.unpack()
    packed = qz.quantize(torch.randn(4, 8), qz.Int8WeightPerChannelFloat).pack()
    packed.layout = "word64"
    with pytest.raises(ValueError, match="layout"):
        packed.unpack()


# ---- D4: the sign of float16 NaN ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["float8_e3m4", "float8_e4m3", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_negative_nan_keeps_its_sign_from_every_dtype(name, dtype):
    """D4: float16 -NaN gave the positive NaN code (0x78 for E3M4, ml_dtypes 0xF8) because torch's
    float16 -> float32 conversion drops the NaN sign; the sign is now read from the input's bits."""
    # built from bits: torch's bfloat16 arithmetic canonicalises NaN to +NaN (0x7FC0)
    bits = {torch.float16: (-0x0200, 0x7E00), torch.bfloat16: (-0x0040, 0x7FC0),
            torch.float32: (-0x00400000, 0x7FC00000)}[dtype]
    int_dtype = torch.int32 if dtype == torch.float32 else torch.int16
    x = torch.tensor(bits, dtype=int_dtype).view(dtype)
    assert bool(torch.isnan(x).all()) and x.view(int_dtype).lt(0).tolist() == [True, False]
    codes = qz.get_format(name).encode(x)
    ml_type = getattr(ml_dtypes, name)
    expected = np.array([-np.nan, np.nan], dtype=np.float32).astype(ml_type).view(np.uint8)
    assert codes.tolist() == expected.tolist()


SIGNED_NAN_FORMATS = ["float8_e3m4", "float8_e4m3", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_negative_nan_keeps_its_sign_in_quantize_outputs(dtype, compiled):
    """D4: the fake-quantized float16 -NaN came back as +NaN (torch's scalar float16 -> float32
    conversion drops the NaN sign, so it also depended on the tensor's size). Now every dtype keeps
    the sign bit of a NaN through ``fmt.quantize`` and through a quantizer's fake quantization,
    eager and compiled. Oracle: ml_dtypes' cast of -NaN to the format and back keeps the sign.
    (FNUZ formats have one NaN code; ml_dtypes decodes it as -NaN, so -NaN in gives -NaN out.)"""
    from quantizers.compile import set_compile_enabled

    bits = {torch.float16: -0x0200, torch.bfloat16: -0x0040, torch.float32: -0x00400000}[dtype]
    int_dtype = torch.int32 if dtype == torch.float32 else torch.int16
    negative_nan = torch.tensor([bits], dtype=int_dtype).view(dtype)
    np_dtype = {torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16, torch.float32: np.float32}[dtype]
    for name in SIGNED_NAN_FORMATS:  # a 1-element tensor: torch's scalar conversion path
        ml_type = getattr(ml_dtypes, name)
        expected = np.array([-np.nan], dtype=np.float32).astype(ml_type).astype(np.float32)
        assert np.signbit(expected[0]), name
        out = qz.get_format(name).quantize(negative_nan)
        assert bool(torch.isnan(out[0])) and out.view(int_dtype)[0] < 0, name
    set_compile_enabled(compiled)
    try:
        for quantizer in (qz.Fp8e4m3OCPWeightPerTensorFloat, qz.Fp8e5m2OCPActPerTensorFloat, qz.Int8WeightPerChannelFloat):
            for shape in ((1, 1), (4, 64)):  # scalar and vectorised conversion paths
                x = torch.ones(shape, dtype=dtype)
                x.view(int_dtype)[0, 0] = bits
                value = qz.quantize(x, quantizer).value_
                assert bool(torch.isnan(value[0, 0])) and value.view(int_dtype)[0, 0] < 0, (quantizer.__name__, shape)
    finally:
        set_compile_enabled(None)
