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
