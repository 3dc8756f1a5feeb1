"""Scale rules, granularities and range statistics against hand-computed tables.

Where a table is not literal, the oracle is the rule's formula evaluated in float32 numpy
(``s = amax / levels``, ``q = clip(rint(x / s))``, ``value = q * s``), never qzoo itself.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quantizers as qz
from quantizers.formats import IntFormat
from quantizers.scaling import rules

F32 = np.float32


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def int_reference(x: np.ndarray, amax: np.ndarray, levels: float, low: int, high: int):
    """Symmetric integer fake quantization in float32: s = amax/levels, q = clip(rint(x/s))."""
    s = np.where(amax > 0, amax.astype(F32) / F32(levels), F32(1)).astype(F32)
    q = np.rint(np.clip(x.astype(F32) / s, low, high))
    return (q * s).astype(F32), s


# ---- integer rules, hand tables ---------------------------------------------------------------------


def test_int8_full_range_scale_is_amax_over_127_5():
    # amax = 127.5/16 -> s = 1/16; +amax -> 127.5 clamps to 127; -amax -> -127.5 ties to -128;
    # 1.5 and 2.5 LSB tie to 2; -0.5 LSB ties to -0.
    x = t([7.96875, -7.96875, 1.5 / 16, 2.5 / 16, -0.5 / 16, 0.0])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, narrow_range=False)
    assert qt.scale_.item() == 1 / 16
    assert qt.int().tolist() == [127, -128, 2, 2, 0, 0]
    assert qt.value.tolist() == [127 / 16, -8.0, 2 / 16, 2 / 16, 0.0, 0.0]


def test_int8_narrow_scale_is_amax_over_127():
    x = t([7.9375, -7.9375, 2.5 / 16, 3.5 / 16, -100 / 16])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat)
    assert qt.scale_.item() == 1 / 16
    assert qt.int().tolist() == [127, -127, 2, 4, -100]


@pytest.mark.parametrize("narrow, amax, ints", [
    (True, 7.0, [7, -7, 2, -4, 0]),     # int4 narrow: s = 7/7 = 1, range [-7, 7]
    (False, 7.5, [7, -8, 2, -4, 0]),    # int4 full:   s = 7.5/7.5 = 1, range [-8, 7]
])
def test_int4_symmetric_tables(narrow, amax, ints):
    x = t([amax, -amax, 2.5, -3.5, 0.5])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, bit_width=4, narrow_range=narrow)
    assert qt.scale_.item() == 1.0
    assert qt.int().tolist() == ints


def test_uint8_scale_is_amax_over_255_and_negatives_clip_to_zero():
    x = t([31.875, 0.5 / 8, 1.5 / 8, -1.0])  # s = 31.875/255 = 1/8
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, signed=False, narrow_range=False)
    assert qt.scale_.item() == 1 / 8
    assert qt.int().tolist() == [255, 0, 2, 0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("narrow", [True, False])
def test_symmetric_int_scales_for_every_bit_width(bits, narrow):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((16, 24)).astype(F32)
    levels = 2 ** (bits - 1) - (1 if narrow else 0.5)
    low, high = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    qt = qz.quantize(torch.from_numpy(x), qz.Int8WeightPerTensorFloat, bit_width=bits, narrow_range=narrow)
    values, s = int_reference(x, np.abs(x).max(), levels, low, high)
    assert qt.scale_.item() == s
    assert np.array_equal(qt.value.numpy(), values)


def test_int_symmetric_rule_functions_by_hand():
    amax = t([127.0, 255.0, 0.0])
    s, z = rules.int_symmetric_scale(amax, IntFormat(8, signed=True, narrow=True))
    assert s.tolist() == [1.0, float(F32(255) / F32(127)), 1.0] and not z.any()
    s, _ = rules.int_symmetric_scale(t([127.5, 0.0]), IntFormat(8, signed=True, narrow=False))
    assert s.tolist() == [1.0, 1.0]
    s, _ = rules.int_symmetric_scale(t([255.0, 0.0]), IntFormat(8, signed=False))
    assert s.tolist() == [1.0, 1.0]


# ---- asymmetric: integer zero point (ZP) and coreai_opt MINVAL ---------------------------------------

ASYM_X = [-1.0078125, 2.9765625, 0.0, 1.0]  # max - min = 3.984375 = 255/64 -> s = 1/64; -min/s = 64.5


def test_asymmetric_zp_uint8_table():
    # z = round(0 - min/s) = round(64.5) = 64 (ties to even): an integer, so 0 is exact.
    # min -> -64.5 + 64 = -0.5, clamped at 0 -> -1.0;  max -> 190.5 + 64 = 254.5 -> 254 -> 2.96875
    qt = qz.quantize(t(ASYM_X), qz.Int8WeightPerTensorFloat, symmetric=False, signed=False, narrow_range=False)
    assert qt.scale_.item() == 1 / 64 and qt.zero_point_.item() == 64
    assert qt.int().tolist() == [0, 254, 64, 128]
    assert qt.value.tolist() == [-1.0, 2.96875, 0.0, 1.0]


def test_asymmetric_zp_int8_table():
    # z = round(-128 - min/s) = round(-63.5) = -64; min -> -64.5 - 64 = -128.5 -> clamp -128 -> -1.0
    qt = qz.quantize(t(ASYM_X), qz.Int8WeightPerTensorFloat, symmetric=False, narrow_range=False)
    assert qt.scale_.item() == 1 / 64 and qt.zero_point_.item() == -64
    assert qt.int().tolist() == [-128, 126, -64, 0]
    assert qt.value.tolist() == [-1.0, 2.96875, 0.0, 1.0]


def test_asymmetric_range_is_widened_to_hold_zero():
    qt = qz.quantize(t([1.0, 2.0, 2.55]), qz.Int8WeightPerTensorFloat, symmetric=False, signed=False, narrow_range=False)
    assert qt.zero_point_.item() == 0  # min 1.0 -> 0: s = 2.55/255
    assert qt.scale_.item() == float(F32(2.55) / F32(255))


@pytest.mark.parametrize("signed", [False, True])
def test_asymmetric_zp_keeps_zero_exact_and_zero_point_integer(signed):
    rng = np.random.default_rng(11)
    for trial in range(40):
        x = (rng.standard_normal(64) * rng.uniform(0.01, 10) + rng.uniform(-3, 3)).astype(F32)
        x[::7] = 0.0
        qt = qz.quantize(torch.from_numpy(x), qz.Int8WeightPerTensorFloat, symmetric=False, signed=signed,
                         narrow_range=False)
        z = qt.zero_point_.item()
        assert z == math.floor(z)
        assert (qt.value[::7] == 0).all(), trial


def test_minval_table_keeps_the_minimum_exact_not_zero():
    # z = min_int - min/s = 64.5 (not rounded): min -> 0 -> (0 - 64.5)/64 = min exactly;
    # 0 -> 64.5 -> 64 -> -0.0078125 (zero is not exact in MINVAL); 1 -> 128.5 -> 128 -> 0.9921875
    qt = qz.quantize(t(ASYM_X), qz.Int8WeightPerTensorFloat, symmetric=False, signed=False,
                     narrow_range=False, zero_point_formulation="minval")
    assert qt.scale_.item() == 1 / 64 and qt.zero_point_.item() == 64.5
    assert qt.int().tolist() == [0, 255, 64, 128]
    assert qt.value.tolist() == [-1.0078125, 2.9765625, -0.0078125, 0.9921875]


@pytest.mark.parametrize("x", [
    [-1.0, 3.0, 0.25], [-0.7, 1.3, 0.25], [-3.0, 5.0, 0.25], [-2.0, 1.0, 0.25],
])
@pytest.mark.parametrize("signed", [False, True])
def test_minval_minimum_is_exactly_representable(x, signed):
    qt = qz.quantize(t(x), qz.Int8WeightPerTensorFloat, symmetric=False, signed=signed, narrow_range=False,
                     zero_point_formulation="minval")
    assert qt.value[0].item() == t(x)[0].item()


def test_minval_minimum_is_exactly_representable_int8_minus_point_one():
    x = t([-0.1, 0.9, 0.25])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, symmetric=False, narrow_range=False,
                     zero_point_formulation="minval")
    assert qt.value[0].item() == x[0].item()


# ---- float rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer, amax, scale, x, expected", [
    # E4M3: s = 56/448 = 1/8; 0.1/s = 0.8 -> 0.8125 (step 1/16 in [0.5, 1)) -> 0.1015625
    (qz.Fp8e4m3OCPWeightPerTensorFloat, 56.0, 0.125, [1.0, 0.1, -0.3], [1.0, 0.1015625, -0.3125]),
    # E5M2: s = 56/57344 = 2^-10; 0.1·1024 = 102.4 -> 96 (step 16 in [64, 128)) -> 0.09375
    (qz.Fp8e5m2OCPWeightPerTensorFloat, 56.0, 2.0 ** -10, [1.0, 0.1, -0.3], [1.0, 0.09375, -0.3125]),
    # FNUZ E4M3 (max 240): s = 30/240 = 1/8
    (qz.Fp8e4m3FNUZWeightPerTensorFloat, 30.0, 0.125, [1.0, 0.1, -0.3], [1.0, 0.1015625, -0.3125]),
])
def test_float_scale_is_amax_over_format_max(quantizer, amax, scale, x, expected):
    qt = qz.quantize(t([amax, -amax] + x), quantizer)
    assert qt.scale_.item() == scale
    assert qt.value.tolist() == [amax, -amax] + expected


def test_float_scale_matches_float32_formula_and_ml_dtypes_cast():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 33)).astype(F32) * F32(3.7)
    qt = qz.quantize(torch.from_numpy(x), qz.Fp8e4m3OCPWeightPerChannelFloat)
    s = (np.abs(x).max(axis=1, keepdims=True) / F32(448)).astype(F32)
    q = np.clip(x / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    assert np.array_equal(qt.scale_.numpy(), s)
    assert np.array_equal(qt.value.numpy(), q * s)


# ---- power-of-two scales ------------------------------------------------------------------------------

SQRT2_F32 = float(F32(math.sqrt(2)))          # 1.41421354 < sqrt(2)
ABOVE_SQRT2_F32 = float(np.nextafter(F32(SQRT2_F32), F32(2)))
PO2_TABLE = [  # scale, floor, ceil, round
    (1.0, 1.0, 1.0, 1.0),
    (0.75, 0.5, 1.0, 1.0),                    # 1.5·2^-1: 1.5^2 >= 2 -> round up
    (0.7, 0.5, 1.0, 0.5),                     # 1.4·2^-1: below sqrt(2) -> round down
    (float(F32(1) - F32(2 ** -24)), 0.5, 1.0, 1.0),  # just below a power of two
    (float(F32(1) + F32(2 ** -23)), 1.0, 2.0, 1.0),  # just above
    (2.0 ** -20, 2.0 ** -20, 2.0 ** -20, 2.0 ** -20),
    (3.0, 2.0, 4.0, 4.0),
    (SQRT2_F32, 1.0, 2.0, 1.0),
    (ABOVE_SQRT2_F32, 1.0, 2.0, 2.0),
    (1e-40, 2.0 ** -133, 2.0 ** -132, 2.0 ** -133),  # float32 subnormal scale
]


@pytest.mark.parametrize("index, rounding", [(1, "floor"), (2, "ceil"), (3, "round")])
def test_power_of_two_rule_table(index, rounding):
    scales = t([row[0] for row in PO2_TABLE])
    got = rules.power_of_two(scales, rounding)
    assert got.dtype == torch.float32
    assert got.tolist() == [row[index] for row in PO2_TABLE]


@pytest.mark.parametrize("amax_over_127, floor, ceil, rnd", [
    (1.0, 1.0, 1.0, 1.0),
    (0.75, 0.5, 1.0, 1.0),
    (0.25, 0.25, 0.25, 0.25),
])
def test_fixed_point_quantizer_scales(amax_over_127, floor, ceil, rnd):
    x = t([127 * amax_over_127, -1.0, 0.3])
    assert qz.quantize(x, qz.Int8WeightPerTensorFixedPoint).scale_.item() == ceil  # Brevitas: ceil
    assert qz.quantize(x, qz.Int8WeightPerTensorFixedPoint, scale_rounding="floor").scale_.item() == floor
    assert qz.quantize(x, qz.Int8WeightPerTensorFixedPoint, scale_rounding="round").scale_.item() == rnd


def test_fixed_point_just_above_a_power_of_two_rounds_up():
    x = t([127.0]).nextafter(t([1000.0]))  # 127 + ulp: s = 1 + 2^-23·... -> ceil 2
    assert qz.quantize(x, qz.Int8WeightPerTensorFixedPoint).scale_.item() == 2.0
    assert qz.quantize(x, qz.Int8WeightPerTensorFixedPoint, scale_rounding="floor").scale_.item() == 1.0


# ---- all-zero statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer, overrides", [
    (qz.Int8WeightPerTensorFloat, {}),
    (qz.Int8WeightPerTensorFloat, {"narrow_range": False}),
    (qz.Int8WeightPerTensorFloat, {"signed": False, "narrow_range": False}),
    (qz.Int8WeightPerTensorFloat, {"symmetric": False}),
    (qz.Int8WeightPerTensorFloat, {"symmetric": False, "zero_point_formulation": "minval"}),
    (qz.Int8WeightPerTensorFixedPoint, {}),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, {}),
    (qz.Int8WeightPerChannelFloat, {}),
    (qz.Int4WeightPerGroupFloat, {"group_size": 8}),
    (qz.Uint4WeightPerGroupFloat, {"group_size": 8}),
])
def test_all_zero_statistics_give_scale_one_and_no_nan(quantizer, overrides):
    qt = qz.quantize(torch.zeros(4, 16), quantizer, **overrides)
    assert (qt.scale_ == 1).all()
    assert (qt.value == 0).all() and not torch.isnan(qt.value).any()


def test_all_zero_channel_gets_scale_one_others_unchanged():
    x = t([[0.0, 0.0, 0.0], [127.0, -3.0, 1.0]])
    qt = qz.quantize(x, qz.Int8WeightPerChannelFloat)
    assert qt.scale_.tolist() == [[1.0], [1.0]]
    assert qt.value.tolist() == x.tolist()


# ---- granularity -----------------------------------------------------------------------------------------


def test_per_tensor_scale_is_zero_dimensional():
    qt = qz.quantize(torch.randn(3, 4, 5), qz.Int8WeightPerTensorFloat)
    assert qt.scale_.shape == ()


@pytest.mark.parametrize("shape, axis, scale_shape", [
    ((6, 20), 0, (6, 1)),
    ((6, 20), 1, (1, 20)),
    ((3, 4, 5), -1, (1, 1, 5)),
    ((8, 3, 2, 2), 0, (8, 1, 1, 1)),
])
def test_per_channel_scales_follow_the_axis(shape, axis, scale_shape):
    rng = np.random.default_rng(len(shape) + axis)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-5, 5, shape))).astype(F32)
    qt = qz.quantize(torch.from_numpy(x), qz.Int8WeightPerChannelFloat, channel_axis=axis)
    reduce = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    values, s = int_reference(x, np.abs(x).max(axis=reduce, keepdims=True), 127, -127, 127)
    assert tuple(qt.scale_.shape) == scale_shape
    assert np.array_equal(qt.scale_.numpy(), s)
    assert np.array_equal(qt.value.numpy(), values)


def test_per_group_padding_equals_an_explicit_zero_pad():
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal((64, 40)).astype(F32))
    qt = qz.quantize(w, qz.Int4WeightPerGroupFloat, group_size=32)
    padded = qz.quantize(F.pad(w, (0, 24)), qz.Int4WeightPerGroupFloat, group_size=32)
    assert qt.value_.shape == (64, 2, 32) and qt.scale_.shape == (64, 2, 1)
    assert torch.equal(qt.value, padded.value[:, :40])
    assert torch.equal(qt.scale_, padded.scale_)
    # and the rule itself: s = amax_group / 7 on the zero-padded groups
    groups = F.pad(w, (0, 24)).reshape(64, 2, 32).numpy()
    values, s = int_reference(groups, np.abs(groups).max(axis=2, keepdims=True), 7, -7, 7)
    assert np.array_equal(qt.scale_.numpy(), s)
    assert np.array_equal(qt.value.numpy(), values.reshape(64, 64)[:, :40])


def test_per_group_along_dim_0_pads_rows():
    rng = np.random.default_rng(4)
    w = torch.from_numpy(rng.standard_normal((40, 6)).astype(F32))
    qt = qz.quantize(w, qz.Int4WeightPerGroupFloat, group_size=16, group_dim=0)
    padded = qz.quantize(F.pad(w, (0, 0, 0, 8)), qz.Int4WeightPerGroupFloat, group_size=16, group_dim=0)
    assert qt.scale_.shape == (3, 1, 6)
    assert torch.equal(qt.value, padded.value[:40])


def test_per_token_scale_is_each_rows_amax_over_127():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 5, 16)) * np.exp2(rng.integers(-4, 4, (2, 5, 1)))).astype(F32)
    qt = qz.quantize(torch.from_numpy(x), qz.Int8ActPerTokenFloat)
    values, s = int_reference(x, np.abs(x).max(axis=-1, keepdims=True), 127, -127, 127)
    assert qt.scale_.shape == (2, 5, 1)
    assert np.array_equal(qt.scale_.numpy(), s)
    assert np.array_equal(qt.value.numpy(), values)


# ---- percentile statistic ----------------------------------------------------------------------------------
# Rank k = floor(q/100 * n + 1/2) (at least 1) of the sorted |x|: Brevitas's nearest-rank rule.


@pytest.mark.parametrize("n, q, expected", [
    (10, 90, 9),        # 9 + 0.5 -> k 9
    (10, 95, 10),       # 9.5 + 0.5 -> k 10
    (4, 50, 2),         # 2.5 -> 2
    (4, 12.5, 1),       # 0.5 + 0.5 -> 1
    (4, 37.5, 2),       # 1.5 + 0.5 -> 2
    (4, 10, 1),         # 0.4 + 0.5 -> 0, at least 1
    (100000, 99.999, 99999),
    (1000, 99.999, 1000),
])
def test_percentile_statistic_is_the_nearest_rank(n, q, expected):
    x = torch.randperm(n, generator=torch.Generator().manual_seed(n)).float() + 1
    x[::2] *= -1  # the statistic is of |x|
    qt = qz.quantize(x, qz.Int8ActPerTensorFloat, percentile=q)
    assert qt.scale_.item() == (t(float(expected)) / 128).item()  # Brevitas: amax / -min_int


def test_percentile_per_channel_takes_each_rows_rank():
    x = t([[4, 1, 3, 2], [-10, 20, -40, 30]])
    qt = qz.quantize(x, qz.Int8WeightPerChannelFloat, range_method="percentile", percentile=50)
    assert qt.scale_.reshape(-1).tolist() == [(t(2.0) / 127).item(), (t(20.0) / 127).item()]


def test_asymmetric_percentile_clips_both_ends():
    x = torch.arange(-5.0, 5.0)[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    # low = rank floor(10·0.10 + 0.5) = 1 -> -5; high = rank floor(10·0.90 + 0.5) = 9 -> 3
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, symmetric=False, signed=False, narrow_range=False,
                     range_method="percentile",
                     percentile=90)
    s = (t(8.0) / 255).item()
    assert qt.scale_.item() == s
    assert qt.zero_point_.item() == round(5 / s)


# ---- MSE range search --------------------------------------------------------------------------------------


def heavy_tailed(shape, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_t(2, shape).astype(F32))


def test_mse_search_clips_a_heavy_tailed_tensor_and_lowers_the_error():
    x = heavy_tailed((64, 64), 0)
    amax = x.abs().max()
    by_max = qz.quantize(x, qz.Int8WeightPerTensorFloat, bit_width=4)
    by_mse = qz.quantize(x, qz.Int8WeightPerTensorFloatMSE, bit_width=4)
    ratio = (by_mse.scale_ * 7 / amax).item()
    assert ratio < 1
    assert min(abs(k / 20 - ratio) for k in range(1, 21)) < 1e-6  # one of Brevitas's 20 candidates
    assert (by_mse.value - x).pow(2).sum() < (by_max.value - x).pow(2).sum()


def test_mse_search_per_channel_never_does_worse_than_max():
    x = heavy_tailed((16, 128), 1)
    by_max = qz.quantize(x, qz.Int8WeightPerChannelFloat, bit_width=4)
    by_mse = qz.quantize(x, qz.Int8WeightPerChannelFloatMSE, bit_width=4)
    err_max = (by_max.value - x).pow(2).sum(1)
    err_mse = (by_mse.value - x).pow(2).sum(1)
    assert (err_mse <= err_max).all() and (err_mse < err_max).any()
    assert (by_mse.scale_ <= by_max.scale_).all()


def test_mx_mse_search_never_does_worse_than_the_spec_scale_per_block():
    x = heavy_tailed((8, 96), 2)
    by_max = qz.quantize(x, qz.MXFloat8e4m3Weight)
    by_mse = qz.quantize(x, qz.MXFloat8e4m3WeightMSE)
    blocks = x.reshape(8, 3, 32)
    err_max = (by_max.value_ - blocks).pow(2).sum(-1)
    err_mse = (by_mse.value_ - blocks).pow(2).sum(-1)
    assert (err_mse <= err_max).all()
    assert ((by_mse.scale_ == by_max.scale_) | (by_mse.scale_ < by_max.scale_)).all()
