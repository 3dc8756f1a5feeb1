"""The four QuantTensor kinds: integer or float elements, per tensor/channel or per group."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from ..formats import FloatFormat, HiFloat8, IntFormat
from .base import QuantTensor
from .groupwise import GroupwiseQuantTensor


class _IntElements:
    """Integer elements: ``value = (q - zero_point) * scale`` with ``q`` in ``fmt``'s range."""

    _element_formats = (IntFormat,)

    def _unscaled_(self) -> torch.Tensor:
        return self._ratio_() + self.zero_point_.detach()

    def _elements_(self) -> torch.Tensor:
        return torch.round(self._unscaled_())

    def int(self) -> torch.Tensor:
        """Integer values ``round(value / scale + zero_point)`` in the original shape, ``torch.int32``."""
        return self._ungroup(self._elements_()).to(torch.int32)

    @property
    def narrow_range(self) -> bool:
        """Whether the most negative code is unused (symmetric ``[-127, 127]`` for int8)."""
        return self.fmt.narrow


class _FloatElements:
    """Minifloat elements: ``value = e * scale`` with ``e`` a value of ``fmt``.

    Metadata follows Brevitas: ``inf_values`` / ``nan_values`` list the mantissa bit patterns that
    the top exponent reserves for Inf / NaN (``None`` when there are none): OCP E4M3 gives
    ``nan_values=("111",)``, E5M2 ``inf_values=("00",)`` and ``nan_values=("01", "10", "11")``.
    FNUZ formats (NaN on the negative-zero code) and formats without specials give ``None`` for both,
    as Brevitas's FNUZ quantizers do. HiFloat8 is tapered (1 to 3 mantissa bits, prefix-coded
    exponent), so ``exponent_bit_width``, ``mantissa_bit_width`` and ``exponent_bias`` are ``None``
    and its specials are given as codes: ``inf_values=(0x6F, 0xEF)``, ``nan_values=(0x80,)``.
    """

    _element_formats = (FloatFormat, HiFloat8)

    def _unscaled_(self) -> torch.Tensor:
        return self._ratio_()

    def _elements_(self) -> torch.Tensor:
        # value_ / scale is within an ulp of a format value; rounding to nearest snaps it back exactly.
        return self.fmt.quantize(self._unscaled_(), rounding="even", saturating=False)

    def minifloat(self) -> torch.Tensor:
        """Unscaled element values ``value / scale`` in the original shape (exact format values)."""
        return self._ungroup(self._elements_())

    def int(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} holds minifloat elements, not integers: use minifloat() for the "
            "element values, or value.int() to cast the dequantized tensor"
        )

    @property
    def exponent_bit_width(self) -> Optional[int]:
        return self.fmt.exponent_bits if isinstance(self.fmt, FloatFormat) else None

    @property
    def mantissa_bit_width(self) -> Optional[int]:
        return self.fmt.mantissa_bits if isinstance(self.fmt, FloatFormat) else None

    @property
    def exponent_bias(self) -> Optional[int]:
        return self.fmt.exponent_bias if isinstance(self.fmt, FloatFormat) else None

    @property
    def saturating(self) -> bool:
        return self.fmt.default_saturating

    @property
    def inf_values(self) -> Optional[Tuple[Union[str, int], ...]]:
        return _special_values(self.fmt)[0]

    @property
    def nan_values(self) -> Optional[Tuple[Union[str, int], ...]]:
        return _special_values(self.fmt)[1]


def _special_values(fmt) -> Tuple[Optional[tuple], Optional[tuple]]:
    if isinstance(fmt, HiFloat8):
        return (0x6F, 0xEF), (0x80,)
    m = fmt.mantissa_bits
    patterns = tuple(format(i, f"0{m}b") if m else "" for i in range(2 ** m))
    if fmt.special == "ieee":
        return patterns[:1], (patterns[1:] or None)
    if fmt.special == "fn":
        return None, patterns[-1:]
    return None, None


class IntQuantTensor(_IntElements, QuantTensor):
    """Integer-quantized tensor, per tensor or per channel: ``value = (q - zero_point) * scale``.

    Example:
        >>> s = torch.tensor(0.5)
        >>> qt = IntQuantTensor(value_=torch.round(torch.tensor([0.9, -2.2]) / s) * s, scale_=s, fmt="int8")
        >>> qt.int().tolist(), qt.value.tolist()
        ([2, -4], [1.0, -2.0])
    """


class FloatQuantTensor(_FloatElements, QuantTensor):
    """Minifloat-quantized tensor (FP8/FP6/FP4/HiFloat8), per tensor or per channel:
    ``value = minifloat * scale``.

    Example:
        >>> from quantizers.formats import get_format
        >>> fmt = get_format("float8_e4m3fn"); s = torch.tensor(2.0)
        >>> qt = FloatQuantTensor(value_=fmt.quantize(torch.tensor([0.3, 900.0]) / s) * s, scale_=s, fmt=fmt)
        >>> qt.minifloat().tolist()
        [0.15625, 448.0]
    """


class GroupwiseIntQuantTensor(_IntElements, GroupwiseQuantTensor):
    """Integer elements with one scale (and zero point) per group of ``group_size`` along ``group_dim``
    (MXINT8, INT4 per-group)."""


class GroupwiseFloatQuantTensor(_FloatElements, GroupwiseQuantTensor):
    """Minifloat elements with one scale per group of ``group_size`` along ``group_dim`` (MXFP8/6/4,
    NVFP4 with ``outer_scale_``)."""
