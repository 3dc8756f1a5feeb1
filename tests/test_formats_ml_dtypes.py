"""Every format ml_dtypes (and torch) implements, swept against them bit for bit.

Oracles: ``ml_dtypes`` ``astype`` (round-to-nearest-even, never saturating) and torch's native casts
(saturating only for float8_e4m3fn, so other overflow is clamped away before comparing). Both convert
float64 through float32 (double rounding), so full-precision float64 inputs are checked against an
exact nearest-even search over ml_dtypes' value table instead.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from conftest import (
    ML_DTYPES_FORMATS,
    ROUND_TO_NEAREST_AND_DIRECTED,
    TORCH_DTYPE_FORMATS,
    all_bfloat16,
    all_float16,
    assert_same_codes,
    assert_same_floats,
    random_float32,
    round_to_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BFLOAT16_AS_FLOAT32 = all_bfloat16()


def ml_type(name):
    return getattr(ml_dtypes, name)


def ml_round(x: np.ndarray, name: str) -> np.ndarray:
    """ml_dtypes' rounding of ``x``, widened back to ``x``'s dtype (the oracle for ``quantize``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(ml_type(name)).astype(x.dtype)


def ml_codes(x: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(ml_type(name)).view(np.uint8)


def ml_decoded(name) -> np.ndarray:
    """ml_dtypes' value of every code of ``name`` (float4/float6 codes live in uint8)."""
    dt = ml_type(name)
    return np.arange(2 ** ml_dtypes.finfo(dt).bits, dtype=np.uint8).view(dt).astype(np.float64)


def comparable(x: np.ndarray, name: str) -> np.ndarray:
    """Where ml_dtypes is an oracle: it writes garbage for NaN in a format without NaN."""
    if np.isnan(ml_decoded(name)).any():
        return np.ones(x.shape, dtype=bool)
    return ~np.isnan(x)


def format_exponent_range(name):
    """Binades to sample: a few below the smallest subnormal to a few above the largest value."""
    info = ml_dtypes.finfo(ml_type(name))
    return (math.floor(math.log2(float(info.smallest_subnormal))) - 3,
            math.floor(math.log2(float(info.max))) + 3)


def to_bfloat16_tensor(x32: np.ndarray) -> torch.Tensor:
    """float32 values that are exactly bfloat16 (the sweep) as a bfloat16 tensor, bits unchanged."""
    top = (x32.view(np.uint32) >> 16).astype(np.uint16)
    return torch.from_numpy(top.view(np.int16)).view(torch.bfloat16)


# ---- quantize / encode over every bfloat16 bit pattern ------------------------------------------
@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_quantize_matches_ml_dtypes_on_every_bfloat16_pattern(name):
    fmt, x = qz.get_format(name), BFLOAT16_AS_FLOAT32
    expected = ml_round(x, name)
    mask = comparable(x, name)
    got32 = fmt.quantize(torch.from_numpy(x), saturating=False)
    assert_same_floats(got32, expected, x, mask, f"{name} float32 input")
    got16 = fmt.quantize(to_bfloat16_tensor(x), saturating=False)
    assert got16.dtype == torch.bfloat16
    expected16 = expected.astype(ml_dtypes.bfloat16).astype(np.float32)  # every value fits bfloat16
    assert_same_floats(got16, expected16, x, mask, f"{name} bfloat16 input")


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_quantize_keeps_nan_for_every_format(name):
    nan_patterns = BFLOAT16_AS_FLOAT32[np.isnan(BFLOAT16_AS_FLOAT32)]
    got = qz.get_format(name).quantize(torch.from_numpy(nan_patterns), saturating=False)
    assert bool(torch.isnan(got).all())


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_encode_matches_ml_dtypes_on_every_bfloat16_pattern(name):
    fmt, x = qz.get_format(name), BFLOAT16_AS_FLOAT32
    x = x[comparable(x, name)]  # encoding NaN without a NaN code raises (tests/test_formats_errors.py)
    expected = ml_codes(x, name)
    got32 = fmt.encode(torch.from_numpy(x), saturating=False)
    assert got32.dtype == torch.uint8
    assert_same_codes(got32, expected, x, f"{name} float32 input")
    got16 = fmt.encode(to_bfloat16_tensor(x), saturating=False)
    assert_same_codes(got16, expected, x, f"{name} bfloat16 input")


# ---- random float32 over all binades ------------------------------------------------------------
@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_quantize_and_encode_match_ml_dtypes_on_random_float32(name):
    fmt = qz.get_format(name)
    x = random_float32(*format_exponent_range(name), seed=sum(map(ord, name)))
    assert x.size >= 100_000
    assert_same_floats(fmt.quantize(torch.from_numpy(x), saturating=False), ml_round(x, name), x, what=name)
    assert_same_codes(fmt.encode(torch.from_numpy(x), saturating=False), ml_codes(x, name), x, name)


# ---- float16 and float64 inputs -----------------------------------------------------------------
@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_float16_inputs_match_ml_dtypes_on_every_float16_pattern(name):
    fmt, x = qz.get_format(name), all_float16()
    mask = comparable(x, name)
    got = fmt.quantize(torch.from_numpy(x), saturating=False)
    assert got.dtype == torch.float16
    # The oracle is also narrowed to float16: E8M0 values >= 2^16 become Inf there, as in quantize.
    with np.errstate(invalid="ignore", over="ignore"):
        expected = x.astype(ml_type(name)).astype(np.float32).astype(np.float16)
    assert_same_floats(got, expected, x, mask, f"{name} float16 input")
    assert_same_codes(fmt.encode(torch.from_numpy(x[mask]), saturating=False), ml_codes(x[mask], name), x[mask], name)


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_float64_inputs_match_ml_dtypes_converting_from_float64(name):
    # float32-representable float64 values: there ml_dtypes' float64 path is exact.
    fmt = qz.get_format(name)
    x = np.concatenate([BFLOAT16_AS_FLOAT32, random_float32(*format_exponent_range(name), n=1 << 15, seed=7)])
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        x = x.astype(np.float64)
    mask = comparable(x, name)
    got = fmt.quantize(torch.from_numpy(x), saturating=False)
    assert got.dtype == torch.float64
    assert_same_floats(got, ml_round(x, name), x, mask, f"{name} float64 input")
    assert_same_codes(fmt.encode(torch.from_numpy(x[mask]), saturating=False), ml_codes(x[mask], name), x[mask], name)


def ml_table(name):
    """ml_dtypes' non-negative finite values of ``name``, ascending (positive codes count up), and
    whether the format has a negative zero."""
    decoded = ml_decoded(name)
    codes = np.arange(decoded.size)
    keep = np.isfinite(decoded) & ~np.signbit(decoded)
    table, table_codes = decoded[keep], codes[keep]
    assert np.all(np.diff(table) > 0) and np.all(table_codes == np.arange(table.size) + table_codes[0])
    negative_zero = bool(np.any((decoded == 0) & np.signbit(decoded)))
    return table, negative_zero


def reference_rounding(x: np.ndarray, name: str, mode: str) -> np.ndarray:
    """Saturating rounding of ``x`` onto ml_dtypes' grid by the mode's definition (conftest)."""
    table, negative_zero = ml_table(name)
    ties_up = (lambda lo: lo > 0) if ml_dtypes.finfo(ml_type(name)).nmant == 0 else None  # E8M0, as ml_dtypes
    return round_to_table(x, table, mode, ties_up, signed_zero=negative_zero)


def random_float64_near_ties(name: str, n: int = 1 << 15, seed: int = 3) -> np.ndarray:
    """Full-precision float64 values in [-max, max]: random ones, plus every midpoint of the grid
    and its float64 neighbours 2^-30 relative away (where rounding via float32 goes wrong)."""
    rng = np.random.default_rng(seed)
    low, high = format_exponent_range(name)
    if name == "float8_e8m0fnu":
        low = -126  # below 2^-126 ml_dtypes' E8M0 rule is not nearest-even (see the E8M0 docstring)
    exponents = rng.integers(low, high + 1, n)
    x = np.ldexp(1 + rng.integers(0, 2 ** 52, n) / 2.0 ** 52, exponents)
    table, _ = ml_table(name)
    midpoints = (table[:-1] + table[1:]) / 2
    if name == "float8_e8m0fnu":
        midpoints = midpoints[midpoints > 2.0 ** -126]
    near = np.concatenate([midpoints, midpoints * (1 + 2.0 ** -30), midpoints * (1 - 2.0 ** -30)])
    x = np.concatenate([x, near])
    if name != "float8_e8m0fnu":  # E8M0 has no sign
        x = x * np.where(rng.integers(0, 2, x.size) == 1, -1.0, 1.0)
    return x[np.abs(x) <= table[-1]]


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_float64_inputs_round_once_in_every_mode(name):
    fmt = qz.get_format(name)
    x = random_float64_near_ties(name)
    got = fmt.quantize(torch.from_numpy(x), saturating=False)
    assert_same_floats(got, reference_rounding(x, name, "even"), x, what=f"{name} float64 input")
    for mode in ROUND_TO_NEAREST_AND_DIRECTED:
        got = fmt.quantize(torch.from_numpy(x), rounding=mode, saturating=True)
        assert_same_floats(got, reference_rounding(x, name, mode), x, what=f"{name} float64 input, {mode}")


def test_float64_input_just_above_a_tie_rounds_up_unlike_float32_double_rounding():
    # 1.0625 is the e4m3fn midpoint of 1.0 and 1.125; 1.0625 + 2^-40 rounds to 1.0625 in float32.
    x = torch.tensor([1.0625 + 2.0 ** -40, -(1.0625 + 2.0 ** -40), 1.0625 - 2.0 ** -40], dtype=torch.float64)
    got = qz.get_format("float8_e4m3fn").quantize(x)
    assert got.tolist() == [1.125, -1.125, 1.0]


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_every_rounding_mode_matches_reference_on_ml_dtypes_grid(name, mode):
    # ml_dtypes only rounds to nearest even; the other modes are checked against their definitions
    # on ml_dtypes' value grid, over every finite bfloat16 pattern and random float32 values.
    fmt = qz.get_format(name)
    x = np.concatenate([BFLOAT16_AS_FLOAT32, random_float32(*format_exponent_range(name), seed=len(mode))])
    x = x[np.isfinite(x)]
    if name == "float8_e8m0fnu":
        x = x[x >= 2.0 ** -126]  # no sign, no zero; the lowest binade follows ml_dtypes' rule instead
    got = fmt.quantize(torch.from_numpy(x), rounding=mode, saturating=True)
    expected = reference_rounding(x, name, mode).astype(np.float32)
    assert_same_floats(got, expected, x, what=f"{name} rounding={mode}")


# ---- decode and the value grid ------------------------------------------------------------------
@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_decode_matches_ml_dtypes_for_every_code(name):
    fmt = qz.get_format(name)
    codes = np.arange(2 ** fmt.bits, dtype=np.uint8)
    expected = codes.view(ml_type(name)).astype(np.float32)
    got = fmt.decode(torch.from_numpy(codes))
    assert got.dtype == torch.float32
    assert_same_floats(got, expected, codes, what=name)
    # Other integer code dtypes decode the same.
    assert_same_floats(fmt.decode(torch.from_numpy(codes.astype(np.int64))), expected, codes, what=name)


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_values_and_limits_match_ml_dtypes_finfo(name):
    fmt, info, decoded = qz.get_format(name), ml_dtypes.finfo(ml_type(name)), ml_decoded(name)
    finite = np.unique(decoded[np.isfinite(decoded)])  # +0 and -0 are one value
    got = fmt.values()
    assert got.dtype == torch.float32
    assert got.double().numpy().tolist() == finite.tolist()
    assert fmt.bits == info.bits
    assert fmt.max_value == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.has_nan == bool(np.isnan(decoded).any())
    assert fmt.has_inf == bool(np.isinf(decoded).any())


# ---- torch native casts -------------------------------------------------------------------------
def clamp_keeping_nan(x: torch.Tensor, max_value: float) -> torch.Tensor:
    return torch.where(torch.isnan(x), x, x.clamp(-max_value, max_value))


def assert_encode_matches_torch_codes(fmt, x, native, saturating, what):
    """Codes equal torch's, except that a NaN may use another NaN code (torch writes 0x7F for
    E5M2 NaN, ml_dtypes and qzoo the quiet 0x7E): there both codes must decode to NaN."""
    codes = fmt.encode(x, saturating=saturating)
    nan = torch.isnan(x)
    assert_same_codes(codes[~nan], native.view(torch.uint8)[~nan], x[~nan], what)
    assert bool(torch.isnan(fmt.decode(codes[nan])).all())


def torch_cast_inputs(name):
    """Sweep plus random values, clamped to the format's range (torch's overflow is not the oracle).

    torch's E8M0 cast ignores the sign and maps 0 to 2^-127, so only positive inputs are compared.
    """
    x = torch.from_numpy(np.concatenate([BFLOAT16_AS_FLOAT32, random_float32(*format_exponent_range(name), seed=11)]))
    x = clamp_keeping_nan(x, torch.finfo(TORCH_DTYPE_FORMATS[name]).max)
    if name == "float8_e8m0fnu":
        x = x[x > 0]
    return x


@pytest.mark.parametrize("name", TORCH_DTYPE_FORMATS)
def test_quantize_and_encode_match_torch_cast_within_range(name):
    fmt, dtype = qz.get_format(name), TORCH_DTYPE_FORMATS[name]
    x = torch_cast_inputs(name)
    native = x.to(dtype)
    assert_same_floats(fmt.quantize(x, saturating=False), native.float(), x, what=f"{name} float32")
    assert_encode_matches_torch_codes(fmt, x, native, saturating=False, what=f"{name} float32")


@pytest.mark.parametrize("name", TORCH_DTYPE_FORMATS)
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float16])
def test_quantize_matches_torch_cast_from_half_precision(name, input_dtype):
    fmt, dtype = qz.get_format(name), TORCH_DTYPE_FORMATS[name]
    if input_dtype == torch.bfloat16:
        x = to_bfloat16_tensor(BFLOAT16_AS_FLOAT32)
    else:
        x = torch.from_numpy(all_float16())
    x = clamp_keeping_nan(x, min(torch.finfo(dtype).max, torch.finfo(input_dtype).max))
    if name == "float8_e8m0fnu":
        x = x[x > 0]
    got = fmt.quantize(x, saturating=False)
    assert got.dtype == input_dtype
    assert_same_floats(got, x.to(dtype).to(input_dtype), x, what=f"{name} {input_dtype}")
    assert_encode_matches_torch_codes(fmt, x, x.to(dtype), saturating=False, what=f"{name} {input_dtype}")


@pytest.mark.parametrize("dtype, fmt", [
    (torch.bfloat16, qz.FloatFormat(exponent_bits=8, mantissa_bits=7, exponent_bias=127)),
    (torch.float16, qz.FloatFormat(exponent_bits=5, mantissa_bits=10, exponent_bias=15)),
])
def test_custom_ieee_formats_match_torch_bfloat16_and_float16_casts(dtype, fmt):
    # Any FloatFormat must work: E8M7 and E5M10 (IEEE specials) are bfloat16 and float16.
    low, high = int(math.log2(torch.finfo(dtype).smallest_normal)) - 12, int(math.log2(torch.finfo(dtype).max)) + 2
    x = torch.from_numpy(np.concatenate([BFLOAT16_AS_FLOAT32, random_float32(low, high, seed=13)]))
    native = x.to(dtype)
    assert_same_floats(fmt.quantize(x, saturating=False), native.float(), x, what=str(dtype))
    assert_same_floats(fmt.quantize(x.double(), saturating=False), native.double(), x, what=f"{dtype} float64")
    finite = ~torch.isnan(x)
    codes = fmt.encode(x[finite], saturating=False)
    assert codes.dtype == torch.int32
    assert_same_codes(codes, native[finite].view(torch.int16).to(torch.int32) & 0xFFFF, x[finite], str(dtype))
    all_codes = torch.arange(2 ** 16, dtype=torch.int32)
    assert_same_floats(fmt.decode(all_codes), all_codes.to(torch.int16).view(dtype).float(), all_codes, what=str(dtype))
    info = torch.finfo(dtype)
    assert (fmt.bits, fmt.max_value, fmt.min_normal) == (16, info.max, info.smallest_normal)


def test_e4m3fn_saturating_quantize_matches_torch_saturating_cast():
    # torch's float8_e4m3fn cast saturates (Inf included) and keeps NaN, exactly saturating=True.
    fmt = qz.get_format("float8_e4m3fn")
    x = torch.from_numpy(np.concatenate([BFLOAT16_AS_FLOAT32, random_float32(-12, 12, seed=5)]))
    native = x.to(torch.float8_e4m3fn)
    assert_same_floats(fmt.quantize(x, saturating=True), native.float(), x, what="e4m3fn saturating")
    assert_encode_matches_torch_codes(fmt, x, native, saturating=True, what="e4m3fn saturating")
