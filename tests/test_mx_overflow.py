"""OCP MX blocks near FLT_MAX under CEIL, RCEIL and EVEN (peer-exactness M1).

These modes can pick a scale ``X`` for which the element rounds up to the power of two
``2^128 / X`` (E4M3 RCEIL, x = 3.3e38: X = 2^120, x / X = 248.2 -> 256), whose product is 2^128,
beyond float32. qzoo stores the OCP element (code 0x78, as torchao does) and represents the value
as ``±FLT_MAX`` (the product saturated within the dtype), never Inf; ``pack`` recovers the element
and ``unpack`` gives the same ``value_`` back.

Oracles: ``mx_reference`` (exponents from exact fractions, elements from ml_dtypes casts in
float64) and hand-computed codes.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from mx_reference import ELEMENTS, assert_same_bits, cast_elements, shared_exponent

FLT_MAX = float(np.finfo(np.float32).max)
WEIGHTS = {
    "float8_e4m3fn": qz.MXFloat8e4m3Weight, "float8_e5m2": qz.MXFloat8e5m2Weight,
    "float6_e2m3fn": qz.MXFloat6e2m3Weight, "float6_e3m2fn": qz.MXFloat6e3m2Weight,
    "float4_e2m1fn": qz.MXFloat4e2m1Weight, "int8": qz.MXInt8Weight,
}


def _block(*values) -> torch.Tensor:
    x = torch.full((1, 32), 1.0)
    x[0, : len(values)] = torch.tensor(values)
    return x


def test_e4m3_rceil_block_of_3_3e38_stores_code_0x78_under_scale_byte_247():
    qt = qz.quantize(_block(3.3e38, -3.3e38), qz.MXFloat8e4m3Weight, scale_rounding="rceil")
    assert qt.scale_.item() == 2.0 ** 120
    assert qt.value_[0, 0, :2].tolist() == [FLT_MAX, -FLT_MAX]  # 256 * 2^120 = 2^128, saturated
    assert qt.minifloat()[0, :2].tolist() == [256.0, -256.0]
    packed = qt.pack()
    assert packed.scale.view(torch.uint8).item() == 247
    assert packed.codes.view(torch.uint8)[0, 0, :2].tolist() == [0x78, 0xF8]
    assert torch.equal(packed.unpack().value_, qt.value_)


def test_e2m1_rceil_block_near_flt_max_packs_4_not_6():
    # 3e38 >= 3.5 * 2^126: X = 2^126, x / X = 3.53 -> 4.0 (code 0x6); qzoo packed 0x7 (6.0) before.
    qt = qz.quantize(_block(3.0e38, -3.0e38), qz.MXFloat4e2m1Weight, scale_rounding="rceil")
    packed = qt.pack()
    assert packed.scale.view(torch.uint8).item() == 253
    assert packed.codes.view(torch.uint8)[0].item() == 0xE6  # element 0 low nibble 0x6, element 1 high 0xE (-4)
    assert qt.minifloat()[0, :2].tolist() == [4.0, -4.0]
    assert torch.equal(packed.unpack().value_, qt.value_)


NEAR_MAX = [FLT_MAX, 3.3e38, 3.0e38, 2.98e38, 2.5e38, 1.7e38]


@pytest.mark.parametrize("mode", ["ceil", "rceil", "even", "floor"])
@pytest.mark.parametrize("element", WEIGHTS)
def test_blocks_near_flt_max_never_give_inf_and_pack_the_reference_codes(element, mode):
    fmt = ELEMENTS[element]
    rows = []
    for top in NEAR_MAX:  # one block per top value: the top, its negation and smaller elements
        rows.append([top, -top] + [top / 2 ** k * (-1) ** k for k in range(1, 31)])
    x = np.array(rows, dtype=np.float32)
    qt = qz.quantize(torch.from_numpy(x), WEIGHTS[element], scale_rounding=mode)
    assert torch.isfinite(qt.value_).all()
    packed = qt.pack()
    assert torch.equal(packed.unpack().value_, qt.value_)
    for i, row in enumerate(x.astype(np.float64)):
        e = shared_exponent(float(np.max(np.abs(row))), fmt, mode)
        elements = cast_elements(row / 2.0 ** e, fmt)
        if element == "int8":  # MXINT8 stores X / 64 and the integers k = 64 * element
            assert packed.scale.view(torch.uint8)[i].item() == int(e) - 6 + 127
            assert qt.int()[i].tolist() == (elements * 64).tolist()
        else:
            assert packed.scale.view(torch.uint8)[i].item() == int(e) + 127
            assert qt.minifloat()[i].tolist() == elements.tolist()
        expected = np.clip(elements * 2.0 ** e, -FLT_MAX, FLT_MAX).astype(np.float32)
        assert_same_bits(qt.value[i], expected, f"{element} {mode} values, top {row[0]:.3g}")
        if fmt.dtype is not None:
            codes = elements.astype(fmt.dtype).view(np.uint8)
            if element == "float4_e2m1fn":
                codes = (codes[0::2] & 0xF) | ((codes[1::2] & 0xF) << 4)
            assert packed.codes.view(torch.uint8).reshape(len(rows), -1)[i].tolist() == codes.tolist()


# ---- bfloat16 / float16 input: the same OCP elements, the value saturates within the dtype ----------
BF16_MAX = float(torch.finfo(torch.bfloat16).max)  # 255 * 2^120
FP16_MAX = 65504.0  # 2047 * 2^5
# Hand-computed (see each line): (dtype, weight, mode) -> (scale exponent e, element, element code)
TOP_OF_RANGE = {
    # bfloat16 max = 1.9921875 * 2^127
    (torch.bfloat16, "float8_e4m3fn", "ceil"): (120, 256.0, 0x78),   # ceil(log2) = 128, e = 128 - 8; 255 -> 256
    (torch.bfloat16, "float8_e4m3fn", "rceil"): (120, 256.0, 0x78),  # ceil(log2(max / 448)) = ceil(119.19)
    (torch.bfloat16, "float8_e4m3fn", "even"): (120, 256.0, 0x78),   # 1.9921875 rounds half up to 2.0: 2^128
    (torch.bfloat16, "float8_e4m3fn", "floor"): (119, 448.0, 0x7E),  # 127 - 8; 510 saturates to 448
    (torch.bfloat16, "float4_e2m1fn", "ceil"): (126, 4.0, 0x6),      # 128 - 2; 3.98 -> 4 (grid 3, 4, 6)
    (torch.bfloat16, "float4_e2m1fn", "rceil"): (126, 4.0, 0x6),     # ceil(log2(max / 6)) = ceil(125.4)
    # float16 max = 1.9990234375 * 2^15
    (torch.float16, "float8_e4m3fn", "ceil"): (8, 256.0, 0x78),      # 16 - 8; 255.875 -> 256
    (torch.float16, "float8_e4m3fn", "rceil"): (8, 256.0, 0x78),     # ceil(log2(65504 / 448)) = ceil(7.19)
    (torch.float16, "float8_e4m3fn", "even"): (8, 256.0, 0x78),      # 1.999 rounds half up to 2.0: 2^16
    (torch.float16, "float8_e4m3fn", "floor"): (7, 448.0, 0x7E),     # 15 - 8; 511.75 saturates to 448
    (torch.float16, "float4_e2m1fn", "ceil"): (14, 4.0, 0x6),        # 16 - 2; 3.998 -> 4
    (torch.float16, "float4_e2m1fn", "rceil"): (14, 4.0, 0x6),       # ceil(log2(65504 / 6)) = ceil(13.4)
}


CASES = [(case, False) for case in TOP_OF_RANGE] + [  # compiled: one mode per dtype (each compiles a graph)
    ((dtype, "float8_e4m3fn", "rceil"), True) for dtype in (torch.bfloat16, torch.float16)
]


@pytest.mark.parametrize(
    "case,compiled", CASES, ids=lambda c: f"{str(c[0])[6:]}-{c[1]}-{c[2]}" if isinstance(c, tuple) else ("compiled" if c else "eager")
)
def test_half_blocks_at_the_dtype_max_store_the_ocp_element_and_saturate_the_value(case, compiled):
    """Issue 9: a bfloat16/float16 block at the dtype's max under CEIL/RCEIL/EVEN stored element 240
    (E4M3), the largest whose product fits the dtype, where OCP MX and torchao store 256. One policy
    for every dtype now: the element is the OCP one (the input dtype never changes a code) and the
    value saturates to ±finfo(dtype).max (as float32 saturates to ±FLT_MAX). Oracle: hand-computed
    scale exponents, elements and codes; values ``clip(element * 2^e, ±max)`` in float64."""
    from quantizers.compile import set_compile_enabled

    dtype, element_name, mode = case
    exponent, element, code = TOP_OF_RANGE[case]
    top = BF16_MAX if dtype == torch.bfloat16 else FP16_MAX
    x = _block(top, -top).to(dtype)
    weight = WEIGHTS[element_name]
    set_compile_enabled(compiled)
    try:
        qt = qz.quantize(x, weight, scale_rounding=mode)
        wide = qz.quantize(x.float(), weight, scale_rounding=mode)
    finally:
        set_compile_enabled(None)
    assert qt.value_.dtype == dtype and bool(torch.isfinite(qt.value_).all())
    assert qt.scale_.flatten()[0].item() == 2.0 ** exponent
    assert qt.minifloat()[0, :2].tolist() == [element, -element]
    expected = np.clip(np.array([element, -element]) * 2.0 ** exponent, -top, top)
    assert qt.value_.flatten()[:2].double().tolist() == expected.tolist()
    packed = qt.pack()
    assert packed.scale.view(torch.uint8).item() == exponent + 127
    codes = packed.codes.view(torch.uint8).flatten()
    if element_name == "float4_e2m1fn":
        assert codes[0].item() == code | (code | 0x8) << 4
    else:
        assert codes[:2].tolist() == [code, code | 0x80]
    assert torch.equal(packed.unpack().value_, qt.value_)
    assert torch.equal(qt.minifloat(), wide.minifloat())  # the same codes as the float32 input
