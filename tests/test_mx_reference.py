"""OCP MX quantizers against the independent spec reference in ``mx_reference.py``, bit for bit.

Covers every MX element format (FP8 E4M3/E5M2, FP6 E2M3/E3M2, FP4 E2M1, INT8), weights (blocks
along dim 1) and activations (blocks along the last dim), the four scale rules, axes that do not
divide 32, all-zero / NaN / Inf / tiny blocks, element ties, and literal hand-computed tables.
"""
from __future__ import annotations

import math
import zlib

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from mx_reference import ELEMENTS, MODES, assert_same_bits, mx_quantize, shared_exponent

WEIGHTS = {
    "float8_e4m3fn": qz.MXFloat8e4m3Weight,
    "float8_e5m2": qz.MXFloat8e5m2Weight,
    "float6_e2m3fn": qz.MXFloat6e2m3Weight,
    "float6_e3m2fn": qz.MXFloat6e3m2Weight,
    "float4_e2m1fn": qz.MXFloat4e2m1Weight,
    "int8": qz.MXInt8Weight,
}
ACTS = {
    "float8_e4m3fn": qz.MXFloat8e4m3Act,
    "float8_e5m2": qz.MXFloat8e5m2Act,
    "float6_e2m3fn": qz.MXFloat6e2m3Act,
    "float6_e3m2fn": qz.MXFloat6e3m2Act,
    "float4_e2m1fn": qz.MXFloat4e2m1Act,
    "int8": qz.MXInt8Act,
}
FORMATS = tuple(WEIGHTS)


def stored_scale(element: str, shared: np.ndarray) -> np.ndarray:
    """qzoo stores the integer grid's step for MXINT8 (X / 64, elements are k/64) and X otherwise."""
    return shared / np.float32(64) if element == "int8" else shared


def spanning_binades(shape, seed: int) -> np.ndarray:
    """float32 values with random 24-bit mantissas whose exponents span many binades: each row
    gets its own offset in [-60, 60], each element a further [-12, 0], plus some exact zeros."""
    rng = np.random.default_rng(seed)
    mantissa = rng.uniform(1.0, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    row = rng.integers(-60, 61, shape[:-1] + (1,))
    element = rng.integers(-12, 1, shape)
    x = np.ldexp(mantissa, row + element).astype(np.float32)
    x[rng.random(shape) < 0.05] = 0.0
    return x


def quantize(x: np.ndarray, quantizer, **overrides):
    return qz.quantize(torch.from_numpy(np.ascontiguousarray(x)), quantizer, **overrides)


def assert_matches_reference(x: np.ndarray, element: str, quantizer, axis: int, mode: str) -> None:
    qt = quantize(x, quantizer, scale_rounding=mode)
    values, shared = mx_quantize(x, element, axis=axis, mode=mode)
    assert qt.value.shape == x.shape
    assert_same_bits(qt.value, values, f"{element} {mode} values")
    assert_same_bits(qt.scale_, stored_scale(element, shared), f"{element} {mode} scales")


# ---- random tensors, every format and rule ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", FORMATS)
@pytest.mark.parametrize("shape", [(8, 40), (6, 70), (4, 96)])
def test_mx_weights_match_spec_reference_bit_for_bit(element, mode, shape):
    x = spanning_binades(shape, seed=zlib.crc32(f"{element}{mode}{shape}".encode()))
    assert_matches_reference(x, element, WEIGHTS[element], axis=1, mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", FORMATS)
def test_mx_activations_block_the_last_axis_and_match_reference(element, mode):
    x = spanning_binades((2, 3, 70), seed=7)
    assert_matches_reference(x, element, ACTS[element], axis=-1, mode=mode)


@pytest.mark.parametrize("element", FORMATS)
def test_mx_weight_of_a_conv_blocks_input_channels(element):
    x = spanning_binades((4, 3, 5, 40), seed=3).transpose(0, 3, 1, 2).copy()  # (4, 40, 3, 5)
    assert_matches_reference(x, element, WEIGHTS[element], axis=1, mode="floor")


@pytest.mark.parametrize("element", FORMATS)
def test_mx_element_ties_round_to_even(element):
    """Every element value and every midpoint between neighbours, in blocks whose maximum is
    max_elem * 2^-5, so that X = 2^-5 and V/X lands exactly on the grid or on a tie."""
    fmt = ELEMENTS[element]
    if fmt.dtype is None:
        grid = np.arange(0, 128) / 64.0
    else:
        bits = {"float8": 8, "float6": 6, "float4": 4}[element.split("_")[0]]
        codes = np.arange(2 ** bits, dtype=np.uint8).view(fmt.dtype)
        grid = np.unique(np.abs(codes.astype(np.float64)))
        grid = grid[np.isfinite(grid) & (grid <= fmt.max)]
    midpoints = (grid[:-1] + grid[1:]) / 2
    body = np.concatenate([midpoints, -midpoints, grid, -grid])
    n_blocks = -(-body.size // 31)
    blocks = np.zeros((n_blocks, 32))
    blocks[:, 0] = fmt.max  # pins X
    flat = blocks[:, 1:].reshape(-1)
    flat[: body.size] = body
    blocks[:, 1:] = flat.reshape(n_blocks, 31)
    x = (blocks * 2.0 ** -5).astype(np.float32)
    assert_matches_reference(x, element, WEIGHTS[element], axis=1, mode="floor")


# ---- hand-computed tables (literal) ----------------------------------------------------------------

F32_ONE_MINUS = float(np.float32(1) - np.float32(2 ** -24))  # largest float32 below 1
F32_MAX = float(np.finfo(np.float32).max)
JUST_ABOVE_448_2M10 = float(np.nextafter(np.float32(0.4375), np.float32(1)))  # 448·2^-10·(1+2^-23/1.75)

# amax -> unbiased shared exponent e for (floor, ceil, even, rceil); None = NaN scale.
E4M3_TABLE = [  # emax 8, max 448 = 1.75·2^8, 3 mantissa bits (EVEN bumps iff significand >= 1.9375)
    (1.0, (-8, -8, -8, -8)),                 # a power of two: ceil(log2(1/448)) = ceil(-8.81) = -8
    (F32_ONE_MINUS, (-9, -8, -8, -8)),       # just below 2^0: floor says -1-8, its mantissa rounds up
    (1.9375, (-8, -7, -7, -7)),              # 2 - 2^-4: EVEN rounds 1.111|1 up into 2^1
    (1.875, (-8, -7, -8, -7)),               # 2 - 2^-3: 3 bits hold it, EVEN keeps the binade
    (0.4375, (-10, -9, -10, -10)),           # 448·2^-10 exactly: RCEIL lands on 2^-10
    (JUST_ABOVE_448_2M10, (-10, -9, -10, -9)),  # amax/448 just above 2^-10: RCEIL goes up
    (0.0, (-127, -127, -127, -127)),         # all-zero block: 2^-127 (E8M0 code 0)
    (2.0 ** -140, (-127, -127, -127, -127)),  # float32 subnormal: clamped to -127
    (F32_MAX, (119, 120, 120, 120)),         # (2-2^-23)·2^127: floor 127-8; ceil/even 128-8
    (math.nan, (None,) * 4),
    (math.inf, (None,) * 4),
]
E2M1_TABLE = [  # emax 2, max 6 = 1.5·2^2, 1 mantissa bit (EVEN bumps iff significand >= 1.75)
    (6.0, (0, 1, 0, 0)),
    (7.0, (0, 1, 1, 1)),                     # 1.75·2^2: EVEN bumps; ceil(log2(7/6)) = 1
    (6.5, (0, 1, 0, 1)),                     # 1.625·2^2: EVEN keeps 2^2
    (4.0, (0, 0, 0, 0)),                     # ceil(log2(4/6)) = 0
    (3.0, (-1, 0, -1, -1)),                  # 3/6 = 2^-1 exactly
]
INT8_TABLE = [  # MXINT8: emax 0, max 127/64, 6 fraction bits (EVEN bumps iff significand >= 127.5/64)
    (1.0, (0, 0, 0, 0)),                     # ceil(log2(64/127)) = 0
    (127 / 64, (0, 1, 0, 0)),                # = max: RCEIL exactly 2^0
    (127.5 / 64, (0, 1, 1, 1)),              # would round to 128/64: EVEN and RCEIL go up
    (2.0, (1, 1, 1, 1)),
]
TABLES = {"float8_e4m3fn": E4M3_TABLE, "float4_e2m1fn": E2M1_TABLE, "int8": INT8_TABLE}
TABLE_CASES = [(e, amax, m, exps[i]) for e, t in TABLES.items() for amax, exps in t for i, m in enumerate(MODES)]


def _block_with_amax(amax: float) -> np.ndarray:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0] = amax
    x[0, 1] = np.float32(amax) / np.float32(3) if math.isfinite(amax) else 0.0
    return x


@pytest.mark.parametrize("element, amax, mode, exponent", TABLE_CASES)
def test_reference_reproduces_the_hand_tables(element, amax, mode, exponent):
    got = shared_exponent(np.float32(amax), ELEMENTS[element], mode)
    assert (math.isnan(got) and exponent is None) or got == exponent


@pytest.mark.parametrize("element, amax, mode, exponent", TABLE_CASES)
def test_shared_scale_follows_the_hand_tables(element, amax, mode, exponent):
    qt = quantize(_block_with_amax(amax), WEIGHTS[element], scale_rounding=mode)
    scale = qt.scale_.reshape(-1)[0].item()
    if exponent is None:
        assert math.isnan(scale)
        assert torch.isnan(qt.value).all()
        return
    expected = 2.0 ** exponent / (64 if element == "int8" else 1)
    assert scale == expected


def test_e4m3_block_values_by_hand():
    # amax 1.99 -> X = 2^(0 - 8); V/X: (1+1/16)·256 = 272, a tie between 256 and 288 -> 256 (even);
    # (1+3/16)·256 = 304, tie between 288 and 320 -> 320; 1.99·256 = 509.4 saturates to 448 -> 1.75.
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, :6] = [1 + 1 / 16, 1 + 3 / 16, 1.99, -0.3, 2.0 ** -17, -(2.0 ** -18)]
    qt = quantize(x, qz.MXFloat8e4m3Weight)
    # -0.3·256 = -76.8 -> -80 (step 8 in [64, 128)) -> -0.3125; 2^-17·256 = 2^-9, E4M3's smallest
    # subnormal; 2^-18·256 = 2^-10, a tie with 0 -> -0.0.
    expected = [1.0, 1.25, 1.75, -0.3125, 2.0 ** -17, -0.0]
    assert_same_bits(qt.value[0, :6], np.array(expected, np.float32), "E4M3 block")
    assert qt.scale_.item() == 2.0 ** -8


def test_e2m1_block_ties_by_hand():
    # amax 6 -> X = 1; E2M1 values 0 0.5 1 1.5 2 3 4 6; every tie goes to the even code.
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0]
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]  # 7 saturates
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, :8] = ties
    x[0, 8:16] = np.negative(ties)
    qt = quantize(x, qz.MXFloat4e2m1Weight)
    assert qt.scale_.item() == 1.0
    assert qt.value[0, :16].tolist() == expected + [-v for v in expected]


def test_mxint8_block_values_by_hand():
    # amax 1.99 -> X = 2^0; k = RNE(64·v) clipped to ±127: 1.99·64 = 127.36 -> 127 -> 1.984375;
    # -1.99 -> -127 (never -128); 0.5/64 -> 0.5 -> 0 (even); 1.5/64 -> 2/64; 2.5/64 -> 2/64.
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, :5] = [1.99, -1.99, 0.5 / 64, 1.5 / 64, 2.5 / 64]
    qt = quantize(x, qz.MXInt8Weight)
    assert qt.value[0, :5].tolist() == [127 / 64, -127 / 64, 0.0, 2 / 64, 2 / 64]
    assert qt.int()[0, :5].tolist() == [127, -127, 0, 2, 2]
    assert qt.scale_.item() == 2.0 ** -6  # X / 64


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", FORMATS)
def test_rule_edges_of_every_format_match_reference(element, mode):
    """One block per edge amax: a power of two and the float32 just below it, the EVEN threshold
    (2 - 2^-(m+1))·2^k and just below it, max·2^k (RCEIL exact) and just above it."""
    fmt = ELEMENTS[element]
    even_threshold = (2 - 2.0 ** -(fmt.mantissa_bits + 1)) * 8
    amaxes = [8.0, even_threshold, fmt.max * 2.0 ** -4, 2.0 ** -100]
    f32 = [np.float32(a) for a in amaxes]
    edges = f32 + [np.nextafter(a, np.float32(0)) for a in f32] + [np.nextafter(a, np.float32(np.inf)) for a in f32]
    x = np.zeros((len(edges), 32), dtype=np.float32)
    x[:, 0] = edges
    x[:, 1:] = np.array(edges, dtype=np.float32)[:, None] * np.linspace(-1, 1, 31, dtype=np.float32)
    assert_matches_reference(x, element, WEIGHTS[element], axis=1, mode=mode)


# ---- special blocks --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", FORMATS)
def test_all_zero_block_gets_scale_2_pow_minus_127_and_zero_values(element, mode):
    x = spanning_binades((3, 64), seed=1)
    x[1, 32:] = 0.0
    qt = quantize(x, WEIGHTS[element], scale_rounding=mode)
    assert not torch.isnan(qt.value).any()
    assert qt.scale_[1, 1, 0].item() == 2.0 ** -127 / (64 if element == "int8" else 1)
    assert (qt.value[1, 32:] == 0).all()


@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("element", FORMATS)
def test_nan_or_inf_block_gets_nan_scale_and_only_that_block_is_nan(element, special):
    x = spanning_binades((2, 64), seed=2)
    x[0, 40] = special
    qt = quantize(x, WEIGHTS[element])
    assert math.isnan(qt.scale_[0, 1, 0].item())
    assert torch.isnan(qt.value[0, 32:]).all()
    assert not torch.isnan(qt.value[0, :32]).any() and not torch.isnan(qt.value[1]).any()
    values, _ = mx_quantize(x, element, axis=1)
    assert_same_bits(qt.value, values, "block with a special value")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", FORMATS)
def test_tiny_subnormal_blocks_clamp_the_scale_and_keep_what_fits(element, mode):
    rng = np.random.default_rng(4)
    x = (rng.uniform(-1, 1, (4, 64)) * 1e-40).astype(np.float32)  # float32 subnormals
    x[2] *= np.float32(2 ** 20)  # ~1e-34: normal, but the exponent still clamps for most formats
    qt = quantize(x, WEIGHTS[element], scale_rounding=mode)
    values, shared = mx_quantize(x, element, axis=1, mode=mode)
    assert (shared[:2] == np.float32(2.0 ** -127)).all()
    assert_same_bits(qt.value, values, "tiny blocks")
    assert_same_bits(qt.scale_, stored_scale(element, shared), "tiny block scales")


@pytest.mark.parametrize("element", FORMATS)
def test_mx_scales_are_exact_e8m0_values(element):
    x = spanning_binades((16, 96), seed=5)
    shared = quantize(x, WEIGHTS[element]).scale_.numpy() * (64 if element == "int8" else 1)
    roundtrip = shared.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert_same_bits(shared, roundtrip, "E8M0 round trip")


# ---- input dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("element", ["float8_e4m3fn", "float4_e2m1fn", "int8"])
def test_mx_accepts_bfloat16_and_float64_inputs(element, dtype):
    rng = np.random.default_rng(6)
    x32 = torch.from_numpy(rng.standard_normal((4, 70)).astype(np.float32)).to(dtype).to(torch.float32)
    x32[1, 32:64] = 0.0
    qt = qz.quantize(x32.to(dtype), WEIGHTS[element])
    values, shared = mx_quantize(x32.numpy(), element, axis=1)
    assert qt.value.dtype == dtype
    assert_same_bits(qt.value.to(torch.float32), values, f"{dtype} values")
    assert_same_bits(qt.scale_.to(torch.float32), stored_scale(element, shared), f"{dtype} scales")


def test_mx_float16_input_matches_reference_on_moderate_blocks():
    rng = np.random.default_rng(8)
    x16 = torch.from_numpy(rng.standard_normal((4, 64)).astype(np.float16))
    qt = qz.quantize(x16, qz.MXFloat8e4m3Weight)
    values, _ = mx_quantize(x16.to(torch.float32).numpy(), "float8_e4m3fn", axis=1)
    assert qt.value.dtype == torch.float16
    assert_same_bits(qt.value.to(torch.float32), values, "float16 values")


@pytest.mark.parametrize("element", ["float8_e4m3fn", "int8"])
@pytest.mark.parametrize("level", [0.0, 2.0 ** -20], ids=["all-zero", "2^-20"])
def test_mx_float16_small_blocks_keep_exact_values_and_nonzero_scales(element, level):
    x = torch.full((2, 32), level, dtype=torch.float16)
    x[1] = torch.linspace(-1, 1, 32, dtype=torch.float16)
    qt = qz.quantize(x, WEIGHTS[element])
    assert not torch.isnan(qt.value).any()
    assert (qt.value[0] == level).all()
    assert (qt.scale_ > 0).all()
