"""Hand-computed tables from the format specifications: ties in every binade for every rounding mode,
signed zeros, Inf/NaN, overflow, HiFloat8, FP4 E1M2, E8M0, integers, custom minifloats, stochastic
rounding, and shapes/dtypes.

Expected values are written from the specs (OCP 8-bit/MX, IEEE 754, the HiF8 paper, CANN), never
taken from the library.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from conftest import (
    ROUND_TO_NEAREST_AND_DIRECTED,
    all_bfloat16,
    assert_same_codes,
    assert_same_floats,
    random_float32,
    round_to_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAN, INF = math.nan, math.inf


def tensor(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def spec_positive_values(exponent_bits, mantissa_bits, bias, special):
    """Non-negative finite values of a sign/exponent/mantissa format, straight from its definition:
    ``k * 2^(1 - bias - M)`` for exponent field 0, ``(2^M + k) * 2^(f - bias - M)`` above; IEEE
    formats lose the top field to Inf/NaN, "fn" formats only its all-ones mantissa (NaN)."""
    values, top, m_count = [], 2 ** exponent_bits - 1, 2 ** mantissa_bits
    for field in range(2 ** exponent_bits):
        for k in range(m_count):
            if field == top and (special == "ieee" or (special == "fn" and k == m_count - 1)):
                continue
            if field == 0:
                values.append(math.ldexp(k, 1 - bias - mantissa_bits))
            else:
                values.append(math.ldexp(m_count + k, field - bias - mantissa_bits))
    return values


TIE_FORMATS = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float4_e2m1fn": (2, 1, 1, "none"),
    "float6_e2m3fn": (2, 3, 1, "none"),
}


def test_spec_value_tables_have_the_documented_anchors():
    e4m3 = spec_positive_values(*TIE_FORMATS["float8_e4m3fn"])
    assert (len(e4m3), max(e4m3), e4m3[1], e4m3[8]) == (127, 448.0, 2.0 ** -9, 2.0 ** -6)
    e5m2 = spec_positive_values(*TIE_FORMATS["float8_e5m2"])
    assert (len(e5m2), max(e5m2), e5m2[1], e5m2[4]) == (124, 57344.0, 2.0 ** -16, 2.0 ** -14)
    assert spec_positive_values(*TIE_FORMATS["float4_e2m1fn"]) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    e2m3 = spec_positive_values(*TIE_FORMATS["float6_e2m3fn"])
    assert e2m3[:9] == [k / 8 for k in range(9)] and e2m3[-3:] == [6.5, 7.0, 7.5]


def rounded(lo, hi, fraction, lo_is_even, mode, negative):
    """Rounding of ``±(lo + fraction * (hi - lo))`` for neighbours ``0 <= lo < hi``, per the mode's
    definition: nearest (ties to even code or away from zero), toward zero, -inf or +inf."""
    if mode in ("even", "away"):
        if fraction != 0.5:
            up = fraction > 0.5
        else:
            up = mode == "away" or not lo_is_even
    else:
        up = {"zero": False, "floor": negative, "ceil": not negative}[mode]
    magnitude = hi if up else lo
    return -magnitude if negative else magnitude


def grid_points(name, mode):
    """Every tie and quarter point between neighbouring values, both signs, with expected results."""
    values = spec_positive_values(*TIE_FORMATS[name])
    xs, expected = [], []
    for index, (lo, hi) in enumerate(zip(values, values[1:])):
        lo_is_even = index % 2 == 0  # positive codes count up from 0 with the value
        for fraction in (0.5, 0.25, 0.75):
            for negative in (False, True):
                point = lo + (hi - lo) * fraction
                xs.append(-point if negative else point)
                expected.append(rounded(lo, hi, fraction, lo_is_even, mode, negative))
    return xs, expected


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
@pytest.mark.parametrize("name", TIE_FORMATS)
def test_ties_and_quarter_points_in_every_binade_and_subnormal_range(name, mode):
    xs, expected = grid_points(name, mode)
    x = tensor(xs)
    got = qz.get_format(name).quantize(x, rounding=mode)
    assert_same_floats(got, tensor(expected), x, what=f"{name} rounding={mode}")


# Columns: even, away, zero, floor, ceil.
FP4_TIES = {
    0.25: (0.0, 0.5, 0.0, 0.0, 0.5), 0.75: (1.0, 1.0, 0.5, 0.5, 1.0), 1.25: (1.0, 1.5, 1.0, 1.0, 1.5),
    1.75: (2.0, 2.0, 1.5, 1.5, 2.0), 2.5: (2.0, 3.0, 2.0, 2.0, 3.0), 3.5: (4.0, 4.0, 3.0, 3.0, 4.0),
    5.0: (4.0, 6.0, 4.0, 4.0, 6.0),
    -0.25: (-0.0, -0.5, -0.0, -0.5, -0.0), -0.75: (-1.0, -1.0, -0.5, -1.0, -0.5),
    -1.25: (-1.0, -1.5, -1.0, -1.5, -1.0), -1.75: (-2.0, -2.0, -1.5, -2.0, -1.5),
    -2.5: (-2.0, -3.0, -2.0, -3.0, -2.0), -3.5: (-4.0, -4.0, -3.0, -4.0, -3.0),
    -5.0: (-4.0, -6.0, -4.0, -6.0, -4.0),
}
E4M3FN_TIES = {
    1.0625: (1.0, 1.125, 1.0, 1.0, 1.125), 1.1875: (1.25, 1.25, 1.125, 1.125, 1.25),
    2.0 ** -10: (0.0, 2.0 ** -9, 0.0, 0.0, 2.0 ** -9),  # half the smallest subnormal
    3 * 2.0 ** -10: (2.0 ** -8, 2.0 ** -8, 2.0 ** -9, 2.0 ** -9, 2.0 ** -8),
    15 * 2.0 ** -10: (2.0 ** -6, 2.0 ** -6, 7 * 2.0 ** -9, 7 * 2.0 ** -9, 2.0 ** -6),  # into the normals
    272.0: (256.0, 288.0, 256.0, 256.0, 288.0), 304.0: (320.0, 320.0, 288.0, 288.0, 320.0),
    432.0: (448.0, 448.0, 416.0, 416.0, 448.0), -1.0625: (-1.0, -1.125, -1.0, -1.125, -1.0),
}
E5M2_TIES = {
    1.125: (1.0, 1.25, 1.0, 1.0, 1.25), 1.375: (1.5, 1.5, 1.25, 1.25, 1.5),
    2.0 ** -17: (0.0, 2.0 ** -16, 0.0, 0.0, 2.0 ** -16), 3 * 2.0 ** -17: (2.0 ** -15, 2.0 ** -15, 2.0 ** -16, 2.0 ** -16, 2.0 ** -15),
    7 * 2.0 ** -17: (2.0 ** -14, 2.0 ** -14, 3 * 2.0 ** -16, 3 * 2.0 ** -16, 2.0 ** -14),
    53248.0: (49152.0, 57344.0, 49152.0, 49152.0, 57344.0), -2.0 ** -17: (-0.0, -2.0 ** -16, -0.0, -2.0 ** -16, -0.0),
}


@pytest.mark.parametrize("name, table", [
    ("float4_e2m1fn", FP4_TIES), ("float8_e4m3fn", E4M3FN_TIES), ("float8_e5m2", E5M2_TIES),
])
@pytest.mark.parametrize("column, mode", list(enumerate(ROUND_TO_NEAREST_AND_DIRECTED)))
def test_hand_written_tie_tables(name, table, column, mode):
    x = tensor(list(table))
    expected = tensor([row[column] for row in table.values()])
    assert_same_floats(qz.get_format(name).quantize(x, rounding=mode), expected, x, what=f"{name} {mode}")


# ---- zeros, Inf, NaN, overflow ------------------------------------------------------------------
SIGNED_ZERO_FORMATS = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3", "float8_e3m4", "float6_e2m3fn",
                       "float6_e3m2fn", "float4_e2m1fn", "float4_e1m2"]
FNUZ_FORMATS = ["float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz"]


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
@pytest.mark.parametrize("name", SIGNED_ZERO_FORMATS)
def test_zero_keeps_its_sign_and_tiny_values_round_to_signed_zero(name, mode):
    fmt = qz.get_format(name)
    tiny = 0.49 * fmt.min_subnormal  # below half the smallest subnormal
    x = tensor([0.0, -0.0, tiny, -tiny])
    expected = {
        "even": [0.0, -0.0, 0.0, -0.0], "away": [0.0, -0.0, 0.0, -0.0], "zero": [0.0, -0.0, 0.0, -0.0],
        "floor": [0.0, -0.0, 0.0, -fmt.min_subnormal], "ceil": [0.0, -0.0, fmt.min_subnormal, -0.0],
    }[mode]
    assert_same_floats(fmt.quantize(x, rounding=mode), tensor(expected), x, what=f"{name} {mode}")
    negative_zero_code = 1 << (fmt.bits - 1)
    assert fmt.encode(tensor([0.0, -0.0])).tolist() == [0, negative_zero_code]


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
@pytest.mark.parametrize("name", FNUZ_FORMATS)
def test_fnuz_formats_have_a_single_positive_zero(name, mode):
    fmt = qz.get_format(name)
    tiny = 0.49 * fmt.min_subnormal
    # Every input rounds to zero (floor(-tiny) and ceil(tiny) would not, so they are left out).
    x = tensor([0.0, -0.0] + ([tiny] if mode != "ceil" else []) + ([-tiny] if mode != "floor" else []))
    got = fmt.quantize(x, rounding=mode)
    assert_same_floats(got, torch.zeros_like(x), x, what=f"{name} {mode}")
    assert fmt.encode(x, rounding=mode).tolist() == [0] * x.numel()
    assert math.isnan(fmt.decode(tensor([0x80], torch.uint8)).item())


SPECIALS = {  # name: (max, +Inf non-saturating, NaN code of +NaN)
    "float8_e4m3fn": (448.0, NAN, 0x7F),
    "float8_e5m2": (57344.0, INF, 0x7E),
    "float8_e4m3fnuz": (240.0, NAN, 0x80),
    "float8_e5m2fnuz": (57344.0, NAN, 0x80),
    "float8_e4m3": (240.0, INF, 0x7C),
    "float4_e2m1fn": (6.0, 6.0, None),
    "float6_e2m3fn": (7.5, 7.5, None),
}


@pytest.mark.parametrize("name", SPECIALS)
def test_infinity_and_nan_follow_the_format(name):
    fmt = qz.get_format(name)
    maximum, overflow, nan_code = SPECIALS[name]
    x = tensor([INF, -INF, NAN])
    assert_same_floats(fmt.quantize(x, saturating=True), tensor([maximum, -maximum, NAN]), x, what=name)
    assert_same_floats(fmt.quantize(x, saturating=False), tensor([overflow, -overflow, NAN]), x, what=name)
    assert fmt.max_value == maximum
    if nan_code is not None:
        assert fmt.encode(tensor([NAN])).tolist() == [nan_code]


OVERFLOW = {  # name: [(x, saturating=True result, saturating=False result)] for round-to-nearest-even
    "float8_e4m3fn": [(448.0, 448.0, 448.0), (449.0, 448.0, 448.0), (464.0, 448.0, 448.0),
                      (464.03125, 448.0, NAN), (480.0, 448.0, NAN), (1e30, 448.0, NAN)],
    "float8_e5m2": [(57344.0, 57344.0, 57344.0), (61439.0, 57344.0, 57344.0), (61440.0, 57344.0, INF),
                    (1e30, 57344.0, INF)],
    "float8_e4m3": [(240.0, 240.0, 240.0), (247.0, 240.0, 240.0), (248.0, 240.0, INF)],
    "float8_e4m3fnuz": [(240.0, 240.0, 240.0), (247.0, 240.0, 240.0), (248.0, 240.0, NAN)],
    "float4_e2m1fn": [(6.0, 6.0, 6.0), (6.5, 6.0, 6.0), (7.0, 6.0, 6.0), (1e30, 6.0, 6.0)],
    "float6_e2m3fn": [(7.5, 7.5, 7.5), (7.75, 7.5, 7.5), (100.0, 7.5, 7.5)],
    "float6_e3m2fn": [(28.0, 28.0, 28.0), (30.0, 28.0, 28.0), (1e30, 28.0, 28.0)],
}


@pytest.mark.parametrize("name", OVERFLOW)
def test_values_at_and_just_above_max_saturate_or_overflow(name):
    fmt = qz.get_format(name)
    rows = OVERFLOW[name]
    x = tensor([r[0] for r in rows] + [-r[0] for r in rows])
    saturated = tensor([r[1] for r in rows] + [-r[1] for r in rows])
    overflowed = tensor([r[2] for r in rows] + [-r[2] for r in rows])
    assert_same_floats(fmt.quantize(x, saturating=True), saturated, x, what=f"{name} saturating")
    assert_same_floats(fmt.quantize(x), saturated, x, what=f"{name} default is saturating")
    assert_same_floats(fmt.quantize(x, saturating=False), overflowed, x, what=f"{name} non-saturating")


def test_directed_rounding_overflow_stops_at_max_toward_zero_as_ieee754():
    fmt = qz.get_format("float8_e5m2")
    x = tensor([1e6, -1e6, INF, -INF])
    expected = {"zero": [57344.0, -57344.0, INF, -INF], "floor": [57344.0, -INF, INF, -INF],
                "ceil": [INF, -57344.0, INF, -INF], "away": [INF, -INF, INF, -INF]}
    for mode, values in expected.items():
        assert_same_floats(fmt.quantize(x, rounding=mode, saturating=False), tensor(values), x, what=mode)


# ---- HiFloat8 -----------------------------------------------------------------------------------
def hif8_spec_positive_values():
    """Normals 2^E (1 + k/2^b) with b = 3 (|E| <= 3), 2 (4..7), 1 (8..15); denormals 2^-16..2^-22;
    1.5 * 2^15 is the Inf code."""
    values = {math.ldexp(1.0, m - 23) for m in range(1, 8)}
    for e in range(-15, 16):
        b = 3 if abs(e) <= 3 else 2 if abs(e) <= 7 else 1
        values.update(math.ldexp(1 + k / 2 ** b, e) for k in range(2 ** b))
    values.remove(1.5 * 2 ** 15)
    return sorted(values)


HIF8 = qz.get_format("hifloat8")
HIF8_CODES = {  # derived by hand from sign | dot | sign-magnitude exponent | mantissa
    0x00: 0.0, 0x01: 2.0 ** -22, 0x07: 2.0 ** -16, 0x08: 1.0, 0x09: 1.125, 0x0F: 1.875, 0x10: 2.0,
    0x17: 3.75, 0x18: 0.5, 0x20: 4.0, 0x28: 8.0, 0x30: 0.25, 0x38: 0.125, 0x40: 16.0, 0x41: 20.0,
    0x4C: 128.0, 0x4F: 224.0, 0x50: 2.0 ** -4, 0x5C: 2.0 ** -7, 0x60: 256.0, 0x61: 384.0, 0x6E: 32768.0,
    0x6F: INF, 0x70: 2.0 ** -8, 0x7E: 2.0 ** -15, 0x7F: 1.5 * 2.0 ** -15, 0x80: NAN, 0x81: -(2.0 ** -22),
    0x88: -1.0, 0xC1: -20.0, 0xEE: -32768.0, 0xEF: -INF,
}


def test_hifloat8_has_126_positive_finite_values_from_2_pow_minus_22_to_2_pow_15():
    values = HIF8.values()
    positive = values[values > 0].double().tolist()
    assert positive == hif8_spec_positive_values()
    assert len(positive) == 126 and values.numel() == 2 * 126 + 1
    assert (HIF8.min_subnormal, HIF8.max_value, HIF8.bits) == (2.0 ** -22, 32768.0, 8)
    assert torch.equal(values, -values.flip(0))


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
def test_hifloat8_matches_its_spec_grid_on_every_bfloat16_pattern(mode):
    # "even" has no significand bit to look at in the denormal binades 2^-22..2^-15: qzoo documents
    # that its ties there round up (as E8M0's do); elsewhere the even mantissa wins.
    x = np.concatenate([all_bfloat16(), random_float32(-26, 18, seed=21)])
    x = x[np.isfinite(x)]
    table = np.array([0.0] + hif8_spec_positive_values())
    expected = round_to_table(x, table, mode, ties_up=lambda lo: (lo > 0) & (lo < 2.0 ** -15), signed_zero=False)
    got = HIF8.quantize(torch.from_numpy(x), rounding=mode, saturating=True)
    assert_same_floats(got, expected.astype(np.float32), x, what=f"hifloat8 rounding={mode}")


def test_hifloat8_hand_derived_codes_decode_and_encode():
    codes = tensor(list(HIF8_CODES), torch.uint8)
    expected = tensor(list(HIF8_CODES.values()))
    assert_same_floats(HIF8.decode(codes), expected, codes, what="decode")
    assert_same_codes(HIF8.encode(expected, saturating=False), codes, expected, "encode")
    assert HIF8.encode(tensor([-0.0, 1e6, -1e6])).tolist() == [0x00, 0x6E, 0xEE]


HIF8_ROUNDING = [  # (x, ties-away default, ties-even); regions: 3, 2, 1 mantissa bits, denormals
    (1.0625, 1.125, 1.0), (1.05, 1.0, 1.0), (7.75, 8.0, 8.0), (0.1, 0.09375, 0.09375),
    (17.0, 16.0, 16.0), (18.0, 20.0, 16.0), (29.0, 28.0, 28.0), (30.0, 32.0, 32.0), (200.0, 192.0, 192.0),
    (300.0, 256.0, 256.0), (320.0, 384.0, 256.0), (1000.0, 1024.0, 1024.0), (20000.0, 16384.0, 16384.0),
    (20480.0, 24576.0, 16384.0), (28672.0, 32768.0, 32768.0), (1.25 * 2.0 ** -10, 1.5 * 2.0 ** -10, 2.0 ** -10),
    (1.4 * 2.0 ** -20, 2.0 ** -20, 2.0 ** -20), (1.6 * 2.0 ** -20, 2.0 ** -19, 2.0 ** -19),
    (1.5 * 2.0 ** -16, 2.0 ** -15, 2.0 ** -15), (0.99 * 2.0 ** -23, 0.0, 0.0),
]


def test_hifloat8_rounds_ties_away_by_default_in_every_region():
    assert HIF8.default_rounding == "away"
    x = tensor([r[0] for r in HIF8_ROUNDING] + [-r[0] for r in HIF8_ROUNDING])
    away = tensor([r[1] for r in HIF8_ROUNDING] + [-r[1] + 0.0 for r in HIF8_ROUNDING])
    even = tensor([r[2] for r in HIF8_ROUNDING] + [-r[2] + 0.0 for r in HIF8_ROUNDING])
    assert_same_floats(HIF8.quantize(x), away, x, what="default")
    assert_same_floats(HIF8.quantize(x, rounding="away"), away, x, what="away")
    assert_same_floats(HIF8.quantize(x, rounding="even"), even, x, what="even")


def test_hifloat8_denormals_are_powers_of_two_and_ties_go_away():
    x = tensor([3 * 2.0 ** -20, 2.0 ** -23, 3 * 2.0 ** -23, -(2.0 ** -23)])
    assert HIF8.quantize(x).tolist() == [2.0 ** -18, 2.0 ** -22, 2.0 ** -21, -(2.0 ** -22)]
    assert HIF8.quantize(tensor([-1e-30])).tolist() == [0.0] and not torch.signbit(HIF8.quantize(tensor([-1e-30])))


def test_hifloat8_overflow_saturates_by_default_and_reaches_inf_at_1_25_times_2_pow_15():
    below = float(np.nextafter(np.float32(40960.0), np.float32(0)))
    x = tensor([1e6, INF, 40960.0, below, -40960.0, -INF, NAN])
    assert_same_floats(HIF8.quantize(x), tensor([32768.0, 32768.0, 32768.0, 32768.0, -32768.0, -32768.0, NAN]), x)
    non_saturating = tensor([INF, INF, INF, 32768.0, -INF, -INF, NAN])
    assert_same_floats(HIF8.quantize(x, saturating=False), non_saturating, x)
    assert_same_floats(qz.HiFloat8(saturating=False).quantize(x), non_saturating, x)
    assert HIF8.encode(x, saturating=False).tolist() == [0x6F, 0x6F, 0x6F, 0x6E, 0xEF, 0xEF, 0x80]


# ---- FP4 E1M2, E8M0 -----------------------------------------------------------------------------
def test_float4_e1m2_values_are_quarters_up_to_1_75_with_bias_1():
    fmt = qz.get_format("float4_e1m2")
    quarters = [k / 4 for k in range(8)]
    assert fmt.values().tolist() == [-q for q in reversed(quarters[1:])] + quarters
    assert (fmt.bits, fmt.max_value, fmt.min_subnormal, fmt.min_normal) == (4, 1.75, 0.25, 1.0)
    codes = torch.arange(16, dtype=torch.uint8)
    assert_same_floats(fmt.decode(codes), tensor(quarters + [-q for q in quarters]), codes)
    x = tensor([0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.8, -0.375, 100.0])
    assert fmt.quantize(x).tolist() == [0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 1.75, -0.5, 1.75]
    assert fmt.encode(x).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 10, 7]


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
def test_float4_e1m2_matches_its_value_table_on_every_bfloat16_pattern(mode):
    x = all_bfloat16()
    x = x[np.isfinite(x)]
    expected = round_to_table(x, np.arange(8) / 4, mode)
    got = qz.get_format("float4_e1m2").quantize(torch.from_numpy(x), rounding=mode)
    assert_same_floats(got, expected.astype(np.float32), x, what=f"float4_e1m2 rounding={mode}")


E8M0 = qz.get_format("float8_e8m0fnu")


def test_e8m0_codes_are_biased_powers_of_two_with_nan_at_255():
    values = [2.0 ** -127, 2.0 ** -126, 0.25, 1.0, 2.0, 2.0 ** 127]
    codes = [0, 1, 125, 127, 128, 254]
    x = tensor(values, torch.float64)
    assert E8M0.encode(x).tolist() == codes
    assert E8M0.decode(tensor(codes + [255], torch.uint8)).double().tolist()[:-1] == values
    assert math.isnan(E8M0.decode(tensor([255], torch.uint8)).item())
    assert E8M0.encode(tensor([NAN])).tolist() == [255]
    assert E8M0.values().numel() == 255 and E8M0.values()[0].item() == 2.0 ** -127


def test_e8m0_rounds_in_the_linear_domain_ties_up_and_has_no_zero_or_sign():
    x = tensor([3.0, 2.5, 3.5, 6.0])
    assert E8M0.quantize(x, rounding="even").tolist() == [4.0, 2.0, 4.0, 8.0]
    assert E8M0.quantize(x, rounding="zero").tolist() == [2.0, 2.0, 2.0, 4.0]
    assert E8M0.quantize(x, rounding="ceil").tolist() == [4.0, 4.0, 4.0, 8.0]
    assert E8M0.quantize(tensor([0.0])).tolist() == [2.0 ** -127]  # saturating default
    got = E8M0.quantize(tensor([0.0, -1.0, 2.0 ** 128], torch.float64), saturating=False)
    assert bool(torch.isnan(got).all())
    assert E8M0.quantize(tensor([2.0 ** 128], torch.float64)).tolist() == [2.0 ** 127]


# ---- integers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_int_formats_cover_twos_complement_and_unsigned_ranges(bits):
    signed, unsigned = qz.get_format(f"int{bits}"), qz.get_format(f"uint{bits}")
    assert signed.values().tolist() == list(range(-2 ** (bits - 1), 2 ** (bits - 1)))
    assert unsigned.values().tolist() == list(range(0, 2 ** bits))
    assert (signed.min_value, signed.max_value) == (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    assert (unsigned.min_value, unsigned.max_value) == (0, 2 ** bits - 1)
    x = tensor([-1e9, -2 ** (bits - 1) - 0.6, 2 ** bits + 0.6, 1e9, -INF, INF])
    top = 2 ** (bits - 1) - 1
    assert signed.quantize(x).tolist() == [-top - 1, -top - 1, top, top, -top - 1, top]
    assert unsigned.quantize(x).tolist() == [0, 0, 2 ** bits - 1, 2 ** bits - 1, 0, 2 ** bits - 1]
    assert signed.encode(tensor([-1.0, -2.0 ** (bits - 1), 1.0])).tolist() == [2 ** bits - 1, 2 ** (bits - 1), 1]


def test_narrow_int_drops_the_most_negative_value():
    narrow8 = qz.IntFormat(8, narrow=True)
    assert narrow8.values().tolist() == list(range(-127, 128))
    assert narrow8.quantize(tensor([-200.0, -127.6, 200.0])).tolist() == [-127.0, -127.0, 127.0]
    assert narrow8.encode(tensor([-200.0])).tolist() == [0x81]
    assert qz.IntFormat(4, narrow=True).values().tolist() == list(range(-7, 8))


INT_HALVES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
INT_HALF_ROUNDING = {
    "even": [-2, -2, 0, 0, 2, 2, 4], "away": [-3, -2, -1, 1, 2, 3, 4], "zero": [-2, -1, 0, 0, 1, 2, 3],
    "floor": [-3, -2, -1, 0, 1, 2, 3], "ceil": [-2, -1, 0, 1, 2, 3, 4],
}


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
def test_int_rounding_of_half_integers(mode):
    got = qz.get_format("int8").quantize(tensor(INT_HALVES), rounding=mode)
    assert got.tolist() == INT_HALF_ROUNDING[mode]


def test_int_codes_are_twos_complement_in_the_low_bits():
    int4 = qz.get_format("int4")
    assert int4.encode(tensor(range(-8, 8))).tolist() == list(range(8, 16)) + list(range(8))
    assert int4.decode(torch.arange(16, dtype=torch.uint8)).tolist() == list(range(8)) + list(range(-8, 0))
    int16 = qz.get_format("int16")
    codes = int16.encode(tensor([-1.0, -32768.0, 32767.0, 40000.0]))
    assert codes.dtype == torch.int32 and codes.tolist() == [0xFFFF, 0x8000, 0x7FFF, 0x7FFF]
    assert int16.decode(codes).tolist() == [-1.0, -32768.0, 32767.0, 32767.0]
    assert qz.get_format("uint8").encode(tensor([255.0, 300.0, -3.0])).tolist() == [255, 255, 0]


# ---- custom FloatFormats ------------------------------------------------------------------------
def custom_float_formats():
    """(exponent_bits, mantissa_bits, bias, special, signed) configurations across the design space."""
    configs = [(e, m, 2 ** (e - 1) - 1, special, True)
               for e in (1, 2, 3, 5) for m in (0, 1, 2, 3) for special in ("ieee", "fn", "fnuz", "none")
               if (e, m) != (1, 0) or special in ("fnuz", "none")]  # E1M0 ieee/fn has no nonzero finite value
    configs += [(3, 2, 5, "ieee", False), (4, 1, 0, "fn", False), (2, 2, -3, "none", False), (4, 3, 11, "none", True),
                (3, 0, -4, "ieee", True), (4, 2, 20, "fnuz", True)]
    return configs


@pytest.mark.parametrize("exponent_bits, mantissa_bits, bias, special, signed", custom_float_formats())
def test_any_float_format_rounds_onto_its_spec_grid_in_every_mode(exponent_bits, mantissa_bits, bias, special, signed):
    fmt = qz.FloatFormat(exponent_bits, mantissa_bits, bias, special, signed=signed)
    table = spec_positive_values(exponent_bits, mantissa_bits, bias, "none" if special == "fnuz" else special)
    values = fmt.values().double().numpy()
    assert values[values >= 0].tolist() == table
    assert fmt.bits == exponent_bits + mantissa_bits + signed
    x = all_bfloat16()  # the binades around the grid, and a few far beyond it
    low, high = math.log2(table[1]) - 3, math.log2(table[-1]) + 3
    near = (np.abs(x) >= 2.0 ** low) & (np.abs(x) < 2.0 ** high)
    x = torch.from_numpy(np.concatenate([x[near], [0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30]]).astype(np.float32))
    no_mantissa_ties_up = (lambda lo: lo > 0) if mantissa_bits == 0 else None  # as E8M0 (documented)
    for mode in ROUND_TO_NEAREST_AND_DIRECTED:
        expected = round_to_table(x.numpy(), np.array(table), mode, no_mantissa_ties_up,
                                  signed_zero=signed and special != "fnuz")
        if not signed:
            expected = np.where(x.numpy() < 0, 0.0, expected) + 0.0  # negatives clamp to +0
        got = fmt.quantize(x, rounding=mode, saturating=True)
        assert_same_floats(got, expected.astype(np.float32), x, what=f"{fmt.name} rounding={mode}")
        assert_same_floats(fmt.decode(fmt.encode(x, rounding=mode)), got, x, what=f"{fmt.name} codes, {mode}")


def test_e3m0_has_powers_of_two_only_and_rounds_in_the_linear_domain():
    e3m0 = qz.FloatFormat(exponent_bits=3, mantissa_bits=0, special="none")  # bias 3
    powers = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert e3m0.values().tolist() == [-p for p in reversed(powers)] + [0.0] + powers
    assert (e3m0.bits, e3m0.max_value, e3m0.min_subnormal) == (4, 16.0, 0.25)
    x = tensor([2.9, 3.1, 5.0, 7.0, 0.2, 0.1, 100.0, -3.1])
    assert e3m0.quantize(x).tolist() == [2.0, 4.0, 4.0, 8.0, 0.25, 0.0, 16.0, -4.0]
    assert e3m0.quantize(tensor([6.0]), rounding="away").tolist() == [8.0]
    assert e3m0.quantize(tensor([6.0]), rounding="zero").tolist() == [4.0]
    assert e3m0.encode(tensor([1.0, -1.0, 16.0, 0.25])).tolist() == [3, 11, 7, 1]
    ieee = qz.FloatFormat(exponent_bits=3, mantissa_bits=0)  # top exponent is Inf, no NaN code
    assert ieee.values().tolist() == [-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert ieee.quantize(tensor([100.0]), saturating=False).tolist() == [INF]


@pytest.mark.parametrize("mode", ROUND_TO_NEAREST_AND_DIRECTED)
def test_e3m0_matches_its_power_of_two_grid_on_every_bfloat16_pattern(mode):
    # No significand bit: "even" rounds ties between powers of two up, as ml_dtypes does for E8M0.
    e3m0 = qz.FloatFormat(exponent_bits=3, mantissa_bits=0, special="none")
    x = all_bfloat16()
    x = x[np.isfinite(x)]
    table = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    expected = round_to_table(x, table, mode, ties_up=lambda lo: lo > 0)
    assert_same_floats(e3m0.quantize(torch.from_numpy(x), rounding=mode), expected.astype(np.float32), x, what=mode)


def test_unsigned_float_format_has_no_negatives_and_one_zero():
    ue2m1 = qz.FloatFormat(exponent_bits=2, mantissa_bits=1, exponent_bias=1, special="none", signed=False)
    assert ue2m1.bits == 3
    assert ue2m1.values().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    x = tensor([-3.0, -0.0, 0.3, 2.5, 100.0])
    assert_same_floats(ue2m1.quantize(x), tensor([0.0, 0.0, 0.5, 2.0, 6.0]), x)
    assert ue2m1.encode(x).tolist() == [0, 0, 1, 4, 7]
    assert ue2m1.decode(torch.arange(8, dtype=torch.uint8)).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


# ---- stochastic rounding ------------------------------------------------------------------------
STOCHASTIC_CASES = [  # (format, x, lower neighbour, upper neighbour)
    ("float8_e4m3fn", 1.03, 1.0, 1.125), ("float4_e2m1fn", -2.3, -3.0, -2.0), ("int8", 0.3, 0.0, 1.0),
    ("hifloat8", 21.0, 20.0, 24.0), ("float8_e5m2", 3 * 2.0 ** -18, 0.0, 2.0 ** -16),
]


@pytest.mark.parametrize("name, x, lo, hi", STOCHASTIC_CASES)
def test_stochastic_rounding_picks_neighbours_and_is_unbiased(name, x, lo, hi):
    fmt, n = qz.get_format(name), 40_000
    inputs = torch.full((n,), x, dtype=torch.float64)
    got = fmt.quantize(inputs, rounding="stochastic", generator=torch.Generator().manual_seed(1))
    assert set(got.unique().tolist()) == {lo, hi}
    p = (x - lo) / (hi - lo)
    standard_error = (hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(got.mean().item() - x) < 5 * standard_error


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float4_e2m1fn", "hifloat8", "int4"])
def test_stochastic_rounding_is_reproducible_and_exact_on_the_grid(name):
    fmt = qz.get_format(name)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    first = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(42))
    again = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(42))
    other = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(43))
    assert torch.equal(first, again) and not torch.equal(first, other)
    codes = fmt.encode(x, rounding="stochastic", generator=torch.Generator().manual_seed(42))
    assert torch.equal(fmt.decode(codes), first)
    grid = fmt.values()
    assert torch.equal(fmt.quantize(grid, rounding="stochastic"), grid)


# ---- shapes and dtypes --------------------------------------------------------------------------
SHAPE_FORMATS = ["float8_e4m3fn", "float4_e2m1fn", "hifloat8", "float8_e8m0fnu", "int8"]


@pytest.mark.parametrize("name", SHAPE_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3, 4)])
def test_quantize_and_encode_keep_shape_and_input_dtype(name, dtype, shape):
    fmt = qz.get_format(name)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4).abs().to(dtype)
    got = fmt.quantize(x)
    assert got.shape == x.shape and got.dtype == dtype
    flat = fmt.quantize(x.reshape(-1))
    assert torch.equal(got.reshape(-1), flat)
    codes = fmt.encode(x)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    decoded = fmt.decode(codes)
    assert decoded.shape == x.shape and decoded.dtype == torch.float32
    assert torch.equal(decoded.to(dtype), got)


@pytest.mark.parametrize("name", SHAPE_FORMATS)
def test_non_contiguous_input_gives_the_same_result(name):
    fmt = qz.get_format(name)
    x = (torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 4).abs()
    assert torch.equal(fmt.quantize(x.t()), fmt.quantize(x.t().contiguous()))
    assert torch.equal(fmt.encode(x.t()), fmt.encode(x.t().contiguous()))


def test_get_format_accepts_names_aliases_torch_and_ml_dtypes_types():
    e4m3 = qz.get_format("float8_e4m3fn")
    assert qz.get_format("e4m3") is e4m3 and qz.get_format("FP8-E4M3") is e4m3
    assert qz.get_format(torch.float8_e4m3fn) is e4m3 and qz.get_format(ml_dtypes.float8_e4m3fn) is e4m3
    assert qz.get_format(e4m3) is e4m3
    assert qz.get_format("fp4") is qz.get_format("float4_e2m1fn")
    assert qz.get_format("hif8") is HIF8 and qz.get_format("e8m0") is E8M0
