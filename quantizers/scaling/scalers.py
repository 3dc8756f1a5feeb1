"""Scalers: a scale rule bound to its element format, from range statistics to scales.

A scaler says which statistic it needs (``"absmax"`` or ``"minmax"``) and turns it into a
:class:`Scales` (scale, zero point and, for two-level schemes, an outer per-tensor scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..formats import IntFormat, NumberFormat, get_format
from . import block_scales, rules
from .granularity import finite_or_zero
from .statistics import Statistic


@dataclass
class Scales:
    """``scale`` and optional ``zero_point`` (broadcastable to the quantized layout), the optional
    per-tensor ``outer_scale`` of two-level schemes (NVFP4; the effective scale is
    ``scale * outer_scale``) and the optional float ``offset`` of the MINVAL formulation
    (see :func:`quantizers.fake_quant.fake_quantize`)."""

    scale: torch.Tensor
    zero_point: Optional[torch.Tensor] = None
    outer_scale: Optional[torch.Tensor] = None
    offset: Optional[torch.Tensor] = None

    @property
    def affine_zero_point(self) -> Optional[torch.Tensor]:
        """The zero point of the equivalent affine map ``(q - z) * s`` (MINVAL: ``z - offset / s``)."""
        if self.offset is None:
            return self.zero_point
        return self.zero_point - self.offset / self.effective_scale

    @property
    def effective_scale(self) -> torch.Tensor:
        return self.scale if self.outer_scale is None else self.scale * self.outer_scale


class Scaler:
    """Base class: ``needs`` is ``"absmax"`` or ``"minmax"``; ``__call__(stat) -> Scales``;
    ``scale_format`` is the format scales are stored in when packed (``None``: float32);
    ``nan_blocks``: a block holding NaN/Inf gets the NaN scale (OCP MX, NVFP4), so its statistic
    must keep NaN/Inf (see the NaN/Inf policy in :mod:`quantizers.scaling`); ``two_level``: the
    rule has a per-tensor outer scale and ``with_outer_scale(stat, outer_scale)`` computes the
    inner scales for a given one; ``bounded_product``: when the statistic is the tensor's own, no
    element of a saturating format times its scale passes the tensor dtype's largest value, so
    fake quantization need not saturate the product (see :func:`~quantizers.fake_quant.fake_quantize`)."""

    needs = "absmax"
    scale_format: Optional[NumberFormat] = None
    nan_blocks = False
    two_level = False  # has a per-tensor outer scale (and ``with_outer_scale``)
    bounded_product = False

    def __call__(self, stat: Statistic) -> Scales:
        raise NotImplementedError


@dataclass(frozen=True)
class IntScaler(Scaler):
    """Integer scales: symmetric (:func:`rules.int_symmetric_scale`) or asymmetric with an integer
    zero point (``formulation="zp"``) or coreai_opt's MINVAL offset (``"minval"``); optionally
    restricted to powers of two (``power_of_two`` = floor / ceil / round). ``full_range_divisor``
    picks the symmetric full-range rule (``"half_range"``: amax / 127.5, ``"min_int"``: Brevitas's
    amax / 128 for int8)."""

    fmt: IntFormat
    symmetric: bool = True
    formulation: str = "zp"
    power_of_two: Optional[str] = None
    full_range_divisor: str = "half_range"

    @property
    def needs(self) -> str:  # type: ignore[override]
        return "absmax" if self.symmetric else "minmax"

    def __call__(self, stat: Statistic) -> Scales:
        if self.symmetric:
            scale, zero_point = rules.int_symmetric_scale(stat, self.fmt, self.full_range_divisor)
            zero_point = None
        elif self.formulation == "minval":
            scale, offset = rules.int_minval_scale(*stat, self.fmt)
            if self.power_of_two is not None:
                scale = rules.power_of_two(scale, self.power_of_two)
            return Scales(scale, torch.full_like(scale, float(self.fmt.min_int)), offset=offset)
        else:
            scale, zero_point = rules.int_asymmetric_scale(*stat, self.fmt)
        if self.power_of_two is not None:
            scale = rules.power_of_two(scale, self.power_of_two)
        return Scales(scale, zero_point)


@dataclass(frozen=True)
class FloatScaler(Scaler):
    """``scale = amax / fmt.max_value``, optionally restricted to a power of two."""

    fmt: NumberFormat
    power_of_two: Optional[str] = None

    def __call__(self, stat: Statistic) -> Scales:
        scale, _ = rules.float_scale(stat, self.fmt)
        if self.power_of_two is not None:
            scale = rules.power_of_two(scale, self.power_of_two)
        return Scales(scale)


@dataclass(frozen=True)
class UnitScaler(Scaler):
    """No scaling: every scale is 1 (``Fp8e4m3Weight`` and friends)."""

    def __call__(self, stat: Statistic) -> Scales:
        return Scales(torch.ones_like(stat))


@dataclass(frozen=True)
class MXScaler(Scaler):
    """OCP MX shared E8M0 scale (:func:`block_scales.mx_scale`).

    For MXINT8 (an 8-bit narrow ``IntFormat``) the elements are ``k/64``: the shared scale ``X`` is
    computed with ``emax_elem = 0`` and the integer grid's scale is ``X / 64``."""

    fmt: NumberFormat
    mode: str = "floor"
    nan_blocks = True

    @property
    def scale_format(self) -> NumberFormat:  # type: ignore[override]
        return get_format("float8_e8m0fnu")

    @property
    def bounded_product(self) -> bool:  # type: ignore[override]
        """FLOOR: ``X = 2^(floor(log2 amax) - emax_elem)`` and ``|element| <= max_elem < 2^(emax_elem + 1)``,
        so ``|element * X| <= (max_elem / 2^emax_elem) * 2^floor(log2 amax)``, at most
        ``1.984375 * 2^127`` (MXINT8's 127/64; E4M3 1.75, E2M3 1.875) for float32 and bfloat16 tensors
        and ``1.984375 * 2^15 = 65024`` for float16: below each dtype's largest value. CEIL, RCEIL and
        EVEN can round the scale up one binade (element 256 x 2^120 = 2^128) and do saturate, and so
        do integer elements other than narrow signed ones (``-2^(bits-1)`` or an unsigned top code
        reach ``2^(emax_elem + 1)``)."""
        fmt = self.fmt
        return self.mode == "floor" and (not isinstance(fmt, IntFormat) or (fmt.signed and fmt.narrow))

    def __call__(self, stat: Statistic) -> Scales:
        if isinstance(self.fmt, IntFormat):
            fraction_bits = self.fmt.bits - 2  # MXINT8: 1 sign bit, 1 integer bit, 6 fraction bits
            shared = block_scales.mx_scale(stat, 0, self.fmt.max_int / 2 ** fraction_bits, self.mode, fraction_bits)
            return Scales(shared / 2 ** fraction_bits)
        shared = block_scales.mx_scale(
            stat, block_scales.element_emax(self.fmt), self.fmt.max_value, self.mode,
            getattr(self.fmt, "mantissa_bits", 0),
        )
        return Scales(shared)


@dataclass(frozen=True)
class NVFP4Scaler(Scaler):
    """NVFP4 two-level scale (:func:`block_scales.nvfp4_scales`); the tensor amax is read over the
    blocks without NaN/Inf."""

    fmt: NumberFormat
    nan_blocks = True
    two_level = True

    @property
    def scale_format(self) -> NumberFormat:  # type: ignore[override]
        return get_format(block_scales.NVFP4_BLOCK_SCALE_FORMAT)

    def with_outer_scale(self, stat: Statistic, outer_scale: torch.Tensor) -> Scales:
        """The E4M3 block scales for the per-tensor scale ``outer_scale`` held fixed."""
        outer_scale = outer_scale.to(torch.float32)
        return Scales(block_scales.nvfp4_block_scale(stat, outer_scale, self.fmt.max_value), outer_scale=outer_scale)

    def __call__(self, stat: Statistic) -> Scales:
        finite = finite_or_zero(stat)  # the tensor scale comes from the blocks without NaN/Inf
        tensor_amax = finite.amax() if stat.numel() else stat.new_zeros(())  # an empty tensor: no blocks
        block_scale, tensor_scale = block_scales.nvfp4_scales(stat, tensor_amax, self.fmt.max_value)
        return Scales(block_scale, outer_scale=tensor_scale)
