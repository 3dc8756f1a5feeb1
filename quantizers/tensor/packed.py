"""PackedQuantTensor: the real low-bit storage of a QuantTensor, and the way back.

Storage of the elements (codes of ``fmt.encode`` of the unscaled elements, in ``value_``'s layout):

- FP8 formats torch knows (``float8_e4m3fn``, ``float8_e5m2`` and the FNUZ pair): one byte each,
  as the torch dtype (``codes.view(torch.float8_e4m3fn)``); ``int8`` as ``torch.int8``.
- 4-bit formats (FP4 E2M1/E1M2, int4/uint4): two codes per byte, element ``2i`` in the low nibble
  (:func:`pack_fp4` / :func:`pack_int4` over the flattened codes).
- FP6: one code per byte, or four per three bytes with ``pack(packed_fp6=True)``.
- other formats up to 8 bits (HiFloat8, int2/int3, ...): one ``uint8`` code per byte;
  9 to 16-bit integers: one ``int16`` word each.

Scales: when the QuantTensor names a ``scale_format`` (E8M0 for MX, ``float8_e4m3fn`` for NVFP4
block scales) and every ``scale_`` value round-trips through it exactly, ``scale_`` is stored as
its one-byte codes (``torch.float8_e8m0fnu`` / ``torch.float8_e4m3fn``); otherwise as it is.
A block whose scale is NaN (an MX or NVFP4 block that held NaN/Inf) stores the scale format's NaN
(E8M0 0xFF, E4M3 0x7F) and element codes 0; it unpacks to the same all-NaN block.
Integer codes have no negative zero, so a ``-0.0`` in an integer kind's ``value_`` (from
``q = -0.0``) comes back as ``+0.0``; every other bit of ``value_``, ``scale_`` and ``zero_point_``
is restored exactly. An all-zero ``zero_point_`` is recorded by shape and dtype only; any other is kept as it is;
``outer_scale_`` is kept as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..fake_quant import saturate_product
from ..formats import FloatFormat, IntFormat, NumberFormat, get_format
from ..formats.packing import pack_fp4, pack_fp6, pack_int4, unpack_fp4, unpack_fp6, unpack_int4
from .base import QuantTensor
from .kinds import FloatQuantTensor, GroupwiseFloatQuantTensor, GroupwiseIntQuantTensor, IntQuantTensor

_KINDS: Dict[str, type] = {
    cls.__name__: cls
    for cls in (IntQuantTensor, FloatQuantTensor, GroupwiseIntQuantTensor, GroupwiseFloatQuantTensor)
}
_TORCH_FLOAT8 = tuple(
    name for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)
)
LAYOUTS = ("byte", "nibble", "six_bit", "word16")


def torch_storage_dtype(fmt: NumberFormat) -> torch.dtype:
    """The dtype one-byte codes of ``fmt`` are stored as: the torch float8 dtype with the same bit
    layout where there is one, ``torch.int8`` for int8, else ``torch.uint8``."""
    for name in _TORCH_FLOAT8:
        reference = get_format(name)
        if type(fmt) is type(reference) and (
            not isinstance(fmt, FloatFormat) or _float_layout(fmt) == _float_layout(reference)
        ):
            return getattr(torch, name)
    if isinstance(fmt, IntFormat) and fmt.bits == 8 and fmt.signed:
        return torch.int8
    return torch.uint8


def _float_layout(fmt: FloatFormat) -> tuple:
    return fmt.exponent_bits, fmt.mantissa_bits, fmt.exponent_bias, fmt.special, fmt.signed


@dataclass
class PackedQuantTensor:
    """Low-bit storage of a QuantTensor; :meth:`unpack` rebuilds it with bit-identical fields.

    ``nbytes`` counts every stored tensor: e.g. MXFP4 of a 4096x4096 weight is
    ``4096*4096/2`` element bytes plus ``4096*4096/32`` E8M0 scale bytes.
    """

    kind: str
    fmt: NumberFormat
    codes: torch.Tensor
    layout: str
    value_shape: torch.Size
    value_dtype: torch.dtype
    scale: torch.Tensor
    scale_codes_format: Optional[NumberFormat]
    scale_dtype: torch.dtype
    zero_point: Optional[torch.Tensor]
    zero_point_shape: torch.Size
    zero_point_dtype: torch.dtype
    outer_scale: Optional[torch.Tensor] = None
    scale_format: Optional[NumberFormat] = None
    group_size: Optional[int] = None
    group_dim: Optional[int] = None
    original_shape: Optional[torch.Size] = None

    @property
    def nbytes(self) -> int:
        """Total bytes of the stored tensors (codes, scales, zero points, outer scale)."""
        stored = (self.codes, self.scale, self.zero_point, self.outer_scale)
        return sum(t.numel() * t.element_size() for t in stored if t is not None)

    def unpack(self) -> QuantTensor:
        """The QuantTensor this was packed from (``value_``, ``scale_``, ``zero_point_`` bit-identical)."""
        cls = _KINDS[self.kind]
        codes = _unpack_codes(self)
        elements = self.fmt.decode(codes).to(self.value_dtype)
        scale_ = self.scale
        if self.scale_codes_format is not None:
            scale_ = self.scale_codes_format.decode(self.scale.view(torch.uint8)).to(self.scale_dtype)
        zero_point_, symmetric = self.zero_point, False
        if zero_point_ is None:
            zero_point_ = torch.zeros(self.zero_point_shape, dtype=self.zero_point_dtype, device=codes.device)
            symmetric = self.zero_point_shape == () and self.zero_point_dtype == self.scale_dtype
        scale_eff = scale_ if self.outer_scale is None else scale_ * self.outer_scale
        if issubclass(cls, (IntQuantTensor, GroupwiseIntQuantTensor)):
            elements = elements - zero_point_
        value_ = saturate_product(elements * scale_eff, elements, self.value_dtype)  # as quantize does
        fields = dict(
            value_=value_.to(self.value_dtype), scale_=scale_, zero_point_=None if symmetric else zero_point_,
            fmt=self.fmt,
            outer_scale_=self.outer_scale, scale_format=self.scale_format,
        )
        if self.group_size is not None:
            fields.update(group_size=self.group_size, group_dim=self.group_dim, original_shape=self.original_shape)
        return cls(**fields)

    def __repr__(self) -> str:
        scale = self.scale_codes_format.name if self.scale_codes_format is not None else str(self.scale_dtype)
        group = f", group_size={self.group_size}, group_dim={self.group_dim}" if self.group_size else ""
        return (
            f"PackedQuantTensor(kind={self.kind}, fmt={self.fmt.name}, layout={self.layout}, "
            f"value_shape={tuple(self.value_shape)}{group}, scales={scale}, nbytes={self.nbytes})"
        )


def pack(qt: QuantTensor, packed_fp6: bool = False, check: bool = True) -> PackedQuantTensor:
    """Pack ``qt`` into low-bit storage (see the module docstring for the layouts).

    With ``check=True`` (default) the packed form is unpacked once and compared with ``qt``; a
    ``value_`` that is not the canonical ``e * scale`` / ``(q - zero_point) * scale`` of its elements
    (see :mod:`quantizers.tensor.base`) raises ``ValueError`` instead of being silently changed.
    """
    if not isinstance(qt, QuantTensor):
        raise TypeError(f"pack needs a QuantTensor, got {type(qt).__name__}")
    fmt = qt.fmt
    # encode rounds to nearest, snapping value_ / scale (within an ulp of an element) onto it.
    codes = fmt.encode(_nan_block_elements_to_zero(qt), rounding="even", saturating=False)
    layout, stored = _pack_codes(codes, fmt, packed_fp6)
    scale_, scale_codes_format = qt.scale_.detach(), None
    if qt.scale_format is not None and qt.scale_format.bits <= 8:
        scale_codes = _exact_codes(scale_, qt.scale_format)
        if scale_codes is not None:
            scale_, scale_codes_format = scale_codes.view(torch_storage_dtype(qt.scale_format)), qt.scale_format
    zero_point_ = qt.zero_point_.detach()
    is_zero = zero_point_ == 0
    if zero_point_.is_floating_point():
        is_zero &= ~torch.signbit(zero_point_)
    packed = PackedQuantTensor(
        kind=type(qt).__name__, fmt=fmt, codes=stored, layout=layout, value_shape=qt.value_.shape,
        value_dtype=qt.value_.dtype, scale=scale_, scale_codes_format=scale_codes_format,
        scale_dtype=qt.scale_.dtype, zero_point=None if bool(is_zero.all()) else zero_point_,
        zero_point_shape=zero_point_.shape, zero_point_dtype=zero_point_.dtype,
        outer_scale=None if qt.outer_scale_ is None else qt.outer_scale_.detach(),
        scale_format=qt.scale_format,
        group_size=getattr(qt, "group_size", None), group_dim=getattr(qt, "group_dim", None),
        original_shape=getattr(qt, "original_shape", None),
    )
    # Integer codes have no -0: a -0.0 in an integer kind's value_ comes back as +0.0.
    signed_zero = not isinstance(fmt, IntFormat)
    if check and not _same_values(packed.unpack().value_, qt.value_.detach(), signed_zero):
        formula = "(q - zero_point_) * scale" if isinstance(fmt, IntFormat) else "e * scale"
        raise ValueError(
            f"value_ of this {type(qt).__name__} is not the canonical {formula} of its elements, so "
            "packing would change it (e.g. after a narrowing .to(dtype) or a hand-built value_). "
            "Compute value_ with that formula in the target dtype, or pass check=False to pack anyway."
        )
    return packed


def _nan_block_elements_to_zero(qt: QuantTensor) -> torch.Tensor:
    """The unscaled elements, 0 where the scale is NaN: an OCP MX / NVFP4 block holding NaN/Inf
    carries its NaN in the scale (E8M0 0xFF, E4M3 0x7F), which decodes the whole block to NaN
    whatever its element codes."""
    unscaled = qt._unscaled_()
    return torch.where(torch.isnan(qt._scale_eff_.detach()), torch.zeros_like(unscaled), unscaled)


def _pack_codes(codes: torch.Tensor, fmt: NumberFormat, packed_fp6: bool):
    if fmt.bits == 4:
        pack4 = pack_int4 if isinstance(fmt, IntFormat) else pack_fp4
        return "nibble", pack4(codes.reshape(-1))
    if fmt.bits == 6 and packed_fp6:
        return "six_bit", pack_fp6(codes.reshape(-1))
    if fmt.bits > 8:
        words = codes.to(torch.int32)
        return "word16", (words - (words >= 2 ** 15).to(torch.int32) * 2 ** 16).to(torch.int16)
    return "byte", codes.view(torch_storage_dtype(fmt))


def _unpack_codes(packed: PackedQuantTensor) -> torch.Tensor:
    numel = 1
    for s in packed.value_shape:
        numel *= s
    if packed.layout == "nibble":
        unpack4 = unpack_int4 if isinstance(packed.fmt, IntFormat) else unpack_fp4
        return unpack4(packed.codes, length=numel).reshape(packed.value_shape)
    if packed.layout == "six_bit":
        return unpack_fp6(packed.codes, length=numel).reshape(packed.value_shape)
    if packed.layout == "word16":
        return packed.codes.to(torch.int32) & 0xFFFF
    if packed.layout == "byte":
        return packed.codes.view(torch.uint8)
    raise ValueError(f"unknown layout {packed.layout!r}; known layouts: {', '.join(LAYOUTS)}")


def _exact_codes(scale: torch.Tensor, scale_format: NumberFormat) -> Optional[torch.Tensor]:
    """Codes of ``scale`` in ``scale_format`` when every value round-trips exactly, else None."""
    if not scale.is_floating_point():
        return None
    try:
        codes = scale_format.encode(scale, rounding="even", saturating=False)
    except ValueError:  # e.g. NaN in a format without NaN
        return None
    return codes if _same_values(scale_format.decode(codes).to(scale.dtype), scale, True) else None


def _same_values(a: torch.Tensor, b: torch.Tensor, signed_zero: bool) -> bool:
    """Equal shape and dtype, and elementwise equal (NaN equals NaN; with ``signed_zero`` the sign
    of zero must match too)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    equal = a == b
    if signed_zero:
        equal &= torch.signbit(a) == torch.signbit(b)
    same = equal | (torch.isnan(a) & torch.isnan(b))
    return bool(same.all())
