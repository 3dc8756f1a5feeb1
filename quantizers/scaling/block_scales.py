"""Shared block scales: OCP MX (E8M0 powers of two) and NVFP4 (E4M3 block x fp32 tensor scale)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ..formats import NumberFormat, get_format
from ..formats.carrier import FLOAT32, FLOAT64, exp2_int, floor_log2

MX_SCALE_MODES = ("floor", "rceil", "ceil", "even")
E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT = -127, 127
NVFP4_BLOCK_SCALE_FORMAT = "float8_e4m3fn"


def element_emax(fmt: NumberFormat) -> int:
    """``floor(log2(max_value))`` of an element format: 8 for E4M3, 15 for E5M2, 2 for E2M3 and
    E2M1, 4 for E3M2 (MXINT8's elements k/64 give 0)."""
    return math.frexp(fmt.max_value)[1] - 1


def mx_scale(
    amax: torch.Tensor, emax_elem: int, max_elem: float, mode: str = "floor", mantissa_bits: int = 0
) -> torch.Tensor:
    """The MX shared scale ``X = 2^e`` (float32) of blocks with absolute maximum ``amax``.

    - ``"floor"`` (OCP MX v1.0, the default): ``e = floor(log2(amax)) - emax_elem``.
    - ``"ceil"``: ``e = ceil(log2(amax)) - emax_elem`` (torchao's CEIL).
    - ``"even"``: ``amax`` is first rounded to the element's ``mantissa_bits`` (half up, on the
      float32 bits), so a block maximum that the element would round into the next binade gets the
      next scale; then FLOOR (torchao's EVEN).
    - ``"rceil"``: ``e = ceil(log2(amax / max_elem))``, the smallest power of two with
      ``amax / 2^e <= max_elem`` so nothing saturates (NVIDIA's ``cvt.rp.satfinite.ue8m0``).

    Exponents are read from the float's bits (never a rounded ``log2``) and clamped to
    [-127, 127]. An all-zero block gets ``2^-127``; a block whose ``amax`` is NaN or Inf gets NaN,
    the E8M0 NaN code, so the whole block decodes to NaN.

    CEIL, RCEIL and EVEN can give a block near the top of the input dtype's range an element whose
    value ``element x X`` passes the dtype's largest value (E4M3 RCEIL, x = 3.3e38: X = 2^120,
    element 256, value 2^128; bfloat16 max 255 x 2^120 likewise; float16 65504: X = 2^8, element
    256, value 2^16). The element is the OCP one whatever the input dtype (code 0x78, as torchao
    stores; the scale and element are computed in float32), and the value saturates to
    ``±finfo(dtype).max`` instead of Inf (:func:`quantizers.fake_quant.saturate_product`);
    packing recovers the element from it.
    """
    if mode not in MX_SCALE_MODES:
        raise ValueError(f"MX scale mode={mode!r} is unknown; allowed values: {', '.join(MX_SCALE_MODES)}")
    wide = amax.to(torch.float64)  # float32 subnormal amax are normal float64 numbers
    if mode == "rceil":
        exponent = _ceil_log2(wide / max_elem)
    else:
        if mode == "even":  # a carry past FLT_MAX gives Inf, whose float32 exponent field reads 128
            exponent = floor_log2(_round_half_up_to_mantissa(amax.to(torch.float32), mantissa_bits), FLOAT32)
        else:
            exponent = _ceil_log2(wide) if mode == "ceil" else floor_log2(wide, FLOAT64)
        exponent = exponent - emax_elem
    scale = exp2_int(exponent.to(torch.int64).clamp(E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT), FLOAT64).to(torch.float32)
    scale = torch.where(amax == 0, 2.0 ** E8M0_MIN_EXPONENT, scale)
    return torch.where(torch.isfinite(amax), scale, torch.nan)


def _ceil_log2(value: torch.Tensor) -> torch.Tensor:
    """``ceil(log2(v))`` for positive float64 ``v``, exactly."""
    exponent = floor_log2(value, FLOAT64)
    return exponent + (value > exp2_int(exponent.clamp(-1022, 1023), FLOAT64)).to(exponent.dtype)


def _round_half_up_to_mantissa(amax: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """float32 ``amax`` rounded half-up to ``mantissa_bits`` bits: add half an ulp of the target
    width to the bit pattern and truncate (a carry moves into the exponent)."""
    bits = amax.view(torch.int32)
    drop = FLOAT32.mantissa_bits - mantissa_bits
    rounded = (bits + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return rounded.view(torch.float32)


def nvfp4_scales(
    amax_blocks: torch.Tensor, amax_tensor: torch.Tensor, element_max: float = 6.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's two-level scale ``(block_scale, tensor_scale)``, both float32.

    ``tensor_scale = amax_tensor / (448 * 6)`` (1 when the tensor is all zero, as TransformerEngine
    guards) and ``block_scale = E4M3((amax_block / 6) / tensor_scale)``, rounded to nearest even and
    clamped to E4M3's positive range ``[2^-9, 448]``: subnormal block scales keep small blocks on
    the full FP4 grid (torchao floors at 2^-6 instead, which loses resolution) and no scale is 0.
    Elements are ``FP4(x / (block_scale * tensor_scale))`` and dequantize as
    ``q * (block_scale * tensor_scale)``.

    A block whose ``amax_block`` is NaN or Inf (it holds NaN/Inf) gets E4M3's NaN as its scale, so
    exactly that block is NaN, as OCP MX marks such blocks. ``amax_tensor`` should be the maximum of
    the finite block maxima (:class:`~quantizers.scaling.scalers.NVFP4Scaler` passes that), so one
    NaN never moves the tensor scale of the clean blocks; a NaN ``amax_tensor`` is kept (every block
    is then NaN), never replaced by 1.
    """
    tensor_scale = nvfp4_tensor_scale(amax_tensor, element_max)
    return nvfp4_block_scale(amax_blocks, tensor_scale, element_max), tensor_scale


def nvfp4_tensor_scale(amax_tensor: torch.Tensor, element_max: float = 6.0) -> torch.Tensor:
    """NVFP4's per-tensor scale ``amax_tensor / (448 * 6)`` (1 for an all-zero tensor); see
    :func:`nvfp4_scales`."""
    e4m3 = get_format(NVFP4_BLOCK_SCALE_FORMAT)
    tensor_scale = amax_tensor.to(torch.float32) / (e4m3.max_value * element_max)
    return torch.where((tensor_scale > 0) | torch.isnan(tensor_scale), tensor_scale, torch.ones_like(tensor_scale))


def nvfp4_block_scale(amax_blocks: torch.Tensor, tensor_scale: torch.Tensor, element_max: float = 6.0) -> torch.Tensor:
    """NVFP4's E4M3 block scales for a given per-tensor scale (fixed, e.g. by GPTQ before its
    pass); see :func:`nvfp4_scales`."""
    e4m3 = get_format(NVFP4_BLOCK_SCALE_FORMAT)
    block_scale = e4m3.quantize(amax_blocks.to(torch.float32) / element_max / tensor_scale)
    block_scale = block_scale.clamp(e4m3.min_subnormal, e4m3.max_value)
    return torch.where(torch.isfinite(amax_blocks), block_scale, torch.nan)
