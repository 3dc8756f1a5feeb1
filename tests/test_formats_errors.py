"""Bad input to the format API fails loudly, and the message names the argument and what is allowed."""
from __future__ import annotations

import math

import pytest
import torch

import quantizers as qz

pytestmark = pytest.mark.usefixtures("one_torch_thread")

E4M3 = qz.get_format("float8_e4m3fn")
ALL_KINDS = [E4M3, qz.get_format("float4_e2m1fn"), qz.get_format("hifloat8"), qz.get_format("float8_e8m0fnu"),
             qz.get_format("int8")]
KIND_IDS = ["e4m3fn", "e2m1", "hifloat8", "e8m0", "int8"]


def test_unknown_format_name_lists_the_known_names():
    with pytest.raises(ValueError) as error:
        qz.get_format("float9_e9m9")
    message = str(error.value)
    assert "float9_e9m9" in message
    for known in ("float8_e4m3fn", "float4_e2m1fn", "hifloat8", "float8_e8m0fnu", "int8", "uint4"):
        assert known in message


def test_format_name_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="float"):
        qz.get_format(3.5)


@pytest.mark.parametrize("fmt", ALL_KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("rounding", ["nearest", "EVEN", "rne", ""])
def test_unknown_rounding_mode_names_the_allowed_modes(fmt, rounding):
    for operation in (fmt.quantize, fmt.encode):
        with pytest.raises(ValueError) as error:
            operation(torch.ones(2), rounding=rounding)
        message = str(error.value)
        assert "rounding" in message and repr(rounding) in message
        for mode in qz.ROUNDING_MODES:
            assert mode in message


@pytest.mark.parametrize("fmt", ALL_KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_input_is_a_type_error_naming_the_dtype(fmt, dtype):
    x = torch.ones(3, dtype=dtype)
    for operation in (fmt.quantize, fmt.encode):
        with pytest.raises(TypeError) as error:
            operation(x)
        assert str(dtype) in str(error.value) and "float32" in str(error.value)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="Tensor"):
        E4M3.quantize([1.0, 2.0])


@pytest.mark.parametrize("saturating", ["yes", 1, 0.0])
def test_saturating_must_be_a_bool_or_none(saturating):
    with pytest.raises(TypeError, match="saturating"):
        E4M3.quantize(torch.ones(2), saturating=saturating)


@pytest.mark.parametrize("fmt", ALL_KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool])
def test_decode_of_a_non_integer_tensor_is_a_type_error(fmt, dtype):
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        fmt.decode(torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize("fmt, codes", [
    (E4M3, [0, 256]), (E4M3, [-1, 3]), (qz.get_format("float4_e2m1fn"), [16]),
    (qz.get_format("float6_e2m3fn"), [64]), (qz.get_format("int4"), [16]), (qz.get_format("int16"), [65536]),
], ids=["e4m3fn-256", "e4m3fn-negative", "e2m1-16", "e2m3-64", "int4-16", "int16-65536"])
def test_decode_of_codes_out_of_range_names_the_range(fmt, codes):
    with pytest.raises(ValueError) as error:
        fmt.decode(torch.tensor(codes, dtype=torch.int64))
    message = str(error.value)
    assert f"[0, {2 ** fmt.bits - 1}]" in message and str(min(codes) if min(codes) < 0 else max(codes)) in message


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "float4_e1m2", "int8", "uint4"])
def test_encode_of_nan_without_a_nan_code_is_a_value_error(name):
    fmt = qz.get_format(name)
    with pytest.raises(ValueError, match="NaN") as error:
        fmt.encode(torch.tensor([1.0, math.nan]))
    assert name in str(error.value)
    assert torch.isnan(fmt.quantize(torch.tensor([math.nan]))).all()  # quantize keeps NaN instead


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(exponent_bits=4, mantissa_bits=3, special="bogus"), ValueError, ["special", "bogus", "ieee", "fnuz"]),
    (dict(exponent_bits=4, mantissa_bits=-1), ValueError, ["mantissa_bits", "-1"]),
    (dict(exponent_bits=0, mantissa_bits=3), ValueError, ["exponent_bits", "0"]),
    (dict(exponent_bits=True, mantissa_bits=3), TypeError, ["exponent_bits", "True"]),
    (dict(exponent_bits=4, mantissa_bits=False), TypeError, ["mantissa_bits", "False"]),
    (dict(exponent_bits=4, mantissa_bits=3.0), TypeError, ["mantissa_bits", "3.0"]),
    (dict(exponent_bits=4, mantissa_bits=3, exponent_bias=True), TypeError, ["exponent_bias"]),
    (dict(exponent_bits=4, mantissa_bits=3, exponent_bias=7.5), TypeError, ["exponent_bias", "7.5"]),
    (dict(exponent_bits=4, mantissa_bits=3, signed="yes"), TypeError, ["signed"]),
    (dict(exponent_bits=4, mantissa_bits=3, saturating=1), TypeError, ["saturating"]),
    (dict(exponent_bits=10, mantissa_bits=10), ValueError, ["16 bits"]),
    (dict(exponent_bits=4, mantissa_bits=3, special="fnuz", signed=False), ValueError, ["fnuz", "signed"]),
], ids=["special", "negative-mantissa", "zero-exponent", "bool-exponent", "bool-mantissa", "float-mantissa",
        "bool-bias", "float-bias", "signed-str", "saturating-int", "too-wide", "unsigned-fnuz"])
def test_bad_float_format_arguments_are_named_in_the_error(kwargs, error, words):
    with pytest.raises(error) as raised:
        qz.FloatFormat(**kwargs)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(bits=True), TypeError, ["bits", "True"]),
    (dict(bits=8.0), TypeError, ["bits", "8.0"]),
    (dict(bits=0), ValueError, ["bits", "0"]),
    (dict(bits=1), ValueError, ["bits >= 2"]),
    (dict(bits=8, narrow=1), TypeError, ["narrow"]),
    (dict(bits=8, signed="no"), TypeError, ["signed"]),
], ids=["bool-bits", "float-bits", "zero-bits", "signed-1-bit", "narrow-int", "signed-str"])
def test_bad_int_format_arguments_are_named_in_the_error(kwargs, error, words):
    with pytest.raises(error) as raised:
        qz.IntFormat(**kwargs)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("cls, value", [(qz.HiFloat8, "no"), (qz.E8M0, None), (qz.HiFloat8, 0)],
                         ids=["hifloat8-str", "e8m0-none", "hifloat8-int"])
def test_hifloat8_and_e8m0_reject_a_non_bool_saturating_field(cls, value):
    # Once silently accepted: HiFloat8(saturating="no") saturated, E8M0(saturating=None) did not.
    with pytest.raises(TypeError, match="saturating"):
        cls(saturating=value)


def test_float_format_without_a_nonzero_finite_value_is_refused_clearly():
    with pytest.raises(ValueError, match="exponent_bits|mantissa_bits|special"):
        qz.FloatFormat(exponent_bits=1, mantissa_bits=0, special="fn")
