"""PackedQuantTensor: the real low-bit storage of a QuantTensor, and the way back.

Storage of the elements (codes of ``fmt.encode`` of the unscaled elements, in ``value_``'s layout):

- FP8 formats torch knows (``float8_e4m3fn``, ``float8_e5m2`` and the FNUZ pair): one byte each,
  as the torch dtype (``codes.view(torch.float8_e4m3fn)``); ``int8`` as ``torch.int8``.
- 4-bit formats (FP4 E2M1/E1M2, int4/uint4): two codes per byte, element ``2i`` in the low nibble
  (:func:`pack_fp4` / :func:`pack_int4` over the flattened codes).
- FP6: one code per byte, or four per three bytes with ``pack(packed_fp6=True)``.
- other formats up to 8 bits (HiFloat8, int2/int3, ...): one ``uint8`` code per byte;
  9 to 16-bit integers: one ``int16`` word each; 17 to 32-bit integers (``Int32Bias``): one
  ``int32`` word each.

``value_`` is rebuilt as its canonical formula computed in float32 (float64 for float64) and cast
to its dtype once, as the quantizers compute it. A QuantTensor widened afterwards
(``qt.to(torch.float64)``, ``qt.float()`` of a bfloat16 one) is recognised: the packed form records
the narrower dtype ``value_`` was rounded to and rebuilds the same bits.

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
from typing import Dict, Optional, Tuple

import torch

from ..fake_quant import saturate_product
from ..formats import FloatFormat, IntFormat, NumberFormat, get_format
from ..formats.packing import pack_fp4, pack_fp6, pack_int4, unpack_fp4, unpack_fp6, unpack_int4
from ..formats.carrier import compute_dtype
from .base import QuantTensor
from .checks import check_broadcastable
from .kinds import FloatQuantTensor, GroupwiseFloatQuantTensor, GroupwiseIntQuantTensor, IntQuantTensor

_KINDS: Dict[str, type] = {
    cls.__name__: cls
    for cls in (IntQuantTensor, FloatQuantTensor, GroupwiseIntQuantTensor, GroupwiseFloatQuantTensor)
}
_TORCH_FLOAT8 = tuple(
    name for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)
)
LAYOUTS = ("byte", "nibble", "six_bit", "word16", "word32")
_ROUNDING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    rounded_dtype: Optional[torch.dtype] = None  # value_ was rounded to this dtype, then widened

    @property
    def nbytes(self) -> int:
        """Total bytes of the stored tensors (codes, scales, zero points, outer scale)."""
        stored = (self.codes, self.scale, self.zero_point, self.outer_scale)
        return sum(t.numel() * t.element_size() for t in stored if t is not None)

    def unpack(self) -> QuantTensor:
        """The QuantTensor this was packed from (``value_``, ``scale_``, ``zero_point_`` bit-identical).

        The stored fields are validated first (a checkpoint loaded with ``weights_only=True`` can
        hold anything), so inconsistent data raises ``ValueError`` instead of allocating or
        computing without bound."""
        check_packed(self)
        return self.quant_tensor(*dequantize_fields(self, self.codes, self.scale, self.zero_point, self.outer_scale))

    def quant_tensor(self, value_: torch.Tensor, scale_: torch.Tensor, zero_point_: torch.Tensor) -> QuantTensor:
        """The QuantTensor of the dequantized fields (:func:`dequantize_fields`) and this packed
        tensor's kind, format and grouping."""
        symmetric = self.zero_point is None and self.zero_point_shape == () and self.zero_point_dtype == self.scale_dtype
        fields = dict(
            value_=value_, scale_=scale_, zero_point_=None if symmetric else zero_point_, fmt=self.fmt,
            outer_scale_=self.outer_scale, scale_format=self.scale_format,
        )
        if self.group_size is not None:
            fields.update(group_size=self.group_size, group_dim=self.group_dim, original_shape=self.original_shape)
        return _KINDS[self.kind](**fields)

    def __repr__(self) -> str:
        scale = self.scale_codes_format.name if self.scale_codes_format is not None else str(self.scale_dtype)
        group = f", group_size={self.group_size}, group_dim={self.group_dim}" if self.group_size else ""
        return (
            f"PackedQuantTensor(kind={self.kind}, fmt={self.fmt.name}, layout={self.layout}, "
            f"value_shape={tuple(self.value_shape)}{group}, scales={scale}, nbytes={self.nbytes})"
        )


def dequantize_fields(
    packed: PackedQuantTensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    outer_scale: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value_, scale_, zero_point_)`` of the QuantTensor ``packed`` stores, from its stored
    tensors ``codes``, ``scale``, ``zero_point``, ``outer_scale`` (passed apart from ``packed``'s
    other fields so a compiled kernel sees them as inputs): ``value_ = decode(codes) * scale_eff``
    (``(decode(codes) - zero_point) * scale_eff`` for integer kinds) in float32, rounded once to
    the dtype ``value_`` was rounded to. Plain tensor code (no checks: :meth:`PackedQuantTensor.unpack`
    runs :func:`check_packed` first)."""
    integer = packed.kind in ("IntQuantTensor", "GroupwiseIntQuantTensor")
    rounded = packed.value_dtype if packed.rounded_dtype is None else packed.rounded_dtype
    work = compute_dtype(rounded)
    elements = packed.fmt.decode(_unpack_codes(packed, codes)).to(work)
    scale_ = scale
    if packed.scale_codes_format is not None:
        scale_ = packed.scale_codes_format.decode(scale.view(torch.uint8)).to(packed.scale_dtype)
    zero_point_ = zero_point
    if zero_point_ is None:
        zero_point_ = torch.zeros(packed.zero_point_shape, dtype=packed.zero_point_dtype, device=codes.device)
    scale_eff = scale_ if outer_scale is None else scale_ * outer_scale
    scale_eff = scale_eff.to(work)
    if integer:
        elements = elements - zero_point_.to(work)
    value_ = saturate_product(elements * scale_eff, elements, rounded)  # as quantize does
    return value_.to(rounded).to(packed.value_dtype), scale_, zero_point_


def pack(qt: QuantTensor, packed_fp6: bool = False, check: bool = True) -> PackedQuantTensor:
    """Pack ``qt`` into low-bit storage (see the module docstring for the layouts).

    With ``check=True`` (default) the packed form is unpacked once and compared with ``qt``; a
    ``value_`` that is not the canonical ``e * scale`` / ``(q - zero_point) * scale`` of its elements
    (see :mod:`quantizers.tensor.base`), computed in float32 and rounded to ``value_``'s dtype or a
    narrower one it was widened from, raises ``ValueError`` instead of being silently changed.
    ``check=False`` skips that comparison (``value_`` is then rebuilt by the formula in its own
    dtype), but never truncates: an element outside the format's range raises ``ValueError``
    either way, and every code of every format fits its storage.
    """
    if not isinstance(qt, QuantTensor):
        raise TypeError(f"pack needs a QuantTensor, got {type(qt).__name__}")
    fmt = qt.fmt
    unscaled = qt._unscaled_()
    _check_in_range(unscaled, fmt, type(qt).__name__)
    # encode rounds to nearest, snapping value_ / scale (within an ulp of an element) onto it.
    codes = fmt.encode(_nan_block_elements_to_zero(qt, unscaled), rounding="even", saturating=False)
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
    if check:
        _find_rounded_dtype(packed, qt)
    return packed


def _nan_block_elements_to_zero(qt: QuantTensor, unscaled: torch.Tensor) -> torch.Tensor:
    """The unscaled elements, 0 where the scale is NaN: an OCP MX / NVFP4 block holding NaN/Inf
    carries its NaN in the scale (E8M0 0xFF, E4M3 0x7F), which decodes the whole block to NaN
    whatever its element codes."""
    return torch.where(torch.isnan(qt._scale_eff_.detach()), torch.zeros_like(unscaled), unscaled)


def _find_rounded_dtype(packed: PackedQuantTensor, qt: QuantTensor) -> None:
    """Set ``packed.rounded_dtype`` to the dtype ``value_`` was rounded to: its own, or a narrower
    one it was widened from (``.to(torch.float64)``); raise ``ValueError`` if none reproduces it."""
    # Integer codes have no -0: a -0.0 in an integer kind's value_ comes back as +0.0.
    signed_zero = not isinstance(qt.fmt, IntFormat)
    value_ = qt.value_.detach()
    width = torch.finfo(value_.dtype).bits
    narrower = [d for d in _ROUNDING_DTYPES if d != value_.dtype and torch.finfo(d).bits < width]
    for rounded in [None] + narrower:
        packed.rounded_dtype = rounded
        if _same_values(packed.unpack().value_, value_, signed_zero):
            return
    packed.rounded_dtype = None
    formula = "(q - zero_point_) * scale" if isinstance(qt.fmt, IntFormat) else "e * scale"
    raise ValueError(
        f"value_ of this {type(qt).__name__} ({value_.dtype}) is not the canonical {formula} of its "
        f"elements computed in float32 and rounded to {value_.dtype} (or to a narrower dtype it was "
        "widened from), so packing would change it. That happens after a narrowing .to(dtype) of "
        "a QuantTensor, or with a hand-built value_ computed another way; pack before casting, or "
        "pass check=False to store the nearest canonical values."
    )


def _check_in_range(unscaled: torch.Tensor, fmt: NumberFormat, kind: str) -> None:
    """Raise ``ValueError`` if an element lies beyond the format's extreme values by more than half
    a step (it has no code; encoding would clamp it). NaN/Inf are left to ``encode``."""
    if isinstance(fmt, IntFormat):
        low, high = fmt.min_int - 0.5, fmt.max_int + 0.5
    else:
        magnitudes = fmt.magnitude_codes[0]
        top = magnitudes[-1] - magnitudes[-2] if len(magnitudes) > 1 else magnitudes[-1]
        low, high = fmt.min_value - top / 2, fmt.max_value + top / 2
    finite = unscaled[torch.isfinite(unscaled)]
    if finite.numel() and (bool((finite > high).any()) or bool((finite < low).any())):
        raise ValueError(
            f"value_ of this {kind} holds elements value_ / scale in [{float(finite.min())}, "
            f"{float(finite.max())}], outside {fmt.name}'s range [{fmt.min_value}, {fmt.max_value}]: "
            "they have no code, so packing cannot store them (check=False does not change that)"
        )


def check_packed(packed: PackedQuantTensor) -> None:
    """Raise ``TypeError``/``ValueError`` unless the stored fields are consistent: a known kind and
    layout, a format, codes whose size matches ``value_shape``, and a ``zero_point_shape`` that
    broadcasts to it. Nothing is allocated before these checks pass."""
    if packed.kind not in _KINDS:
        raise ValueError(f"kind={packed.kind!r} is unknown; allowed values: {', '.join(_KINDS)}")
    if packed.layout not in LAYOUTS:
        raise ValueError(f"layout={packed.layout!r} is unknown; allowed values: {', '.join(LAYOUTS)}")
    if not isinstance(packed.fmt, NumberFormat):
        raise TypeError(f"fmt must be a NumberFormat, got {type(packed.fmt).__name__}")
    if not isinstance(packed.codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(packed.codes).__name__}")
    for name in ("value_dtype", "scale_dtype", "zero_point_dtype"):
        if not isinstance(getattr(packed, name), torch.dtype):
            raise TypeError(f"{name} must be a torch.dtype, got {getattr(packed, name)!r}")
    if packed.rounded_dtype is not None and packed.rounded_dtype not in _ROUNDING_DTYPES:
        raise ValueError(f"rounded_dtype={packed.rounded_dtype!r}; allowed values: None, {_ROUNDING_DTYPES}")
    value_shape = _shape("value_shape", packed.value_shape)
    zero_point_shape = _shape("zero_point_shape", packed.zero_point_shape)
    numel = 1
    for size in value_shape:
        numel *= size
    per_word = {"nibble": 2, "six_bit": 4}.get(packed.layout, 1)
    stored = -(-numel // per_word) * (3 if packed.layout == "six_bit" else 1)
    if packed.codes.numel() != stored:
        raise ValueError(
            f"codes hold {packed.codes.numel()} entries but value_shape {tuple(value_shape)} with layout "
            f"{packed.layout!r} needs {stored}"
        )
    check_broadcastable("zero_point_shape", torch.empty(zero_point_shape, device="meta"), torch.Size(value_shape))


def _shape(argument: str, shape) -> tuple:
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise TypeError(f"{argument} must be a sequence of non-negative ints, got {shape!r}")
    return tuple(shape)


def _pack_codes(codes: torch.Tensor, fmt: NumberFormat, packed_fp6: bool):
    if fmt.bits == 4:
        pack4 = pack_int4 if isinstance(fmt, IntFormat) else pack_fp4
        return "nibble", pack4(codes.reshape(-1))
    if fmt.bits == 6 and packed_fp6:
        return "six_bit", pack_fp6(codes.reshape(-1))
    if fmt.bits > 16:  # two's complement int32 words of the (up to) 32-bit codes
        words = codes.to(torch.int64)
        return "word32", (words - (words >= 2 ** 31).to(torch.int64) * 2 ** 32).to(torch.int32)
    if fmt.bits > 8:
        words = codes.to(torch.int32)
        return "word16", (words - (words >= 2 ** 15).to(torch.int32) * 2 ** 16).to(torch.int16)
    return "byte", codes.view(torch_storage_dtype(fmt))


def element_codes(packed: PackedQuantTensor) -> torch.Tensor:
    """The element codes of ``packed``, one per element in ``value_``'s shape (``fmt.encode``'s codes:
    ``uint8`` up to 8 bits, wider integers as ``int32``/``int64``)."""
    return _unpack_codes(packed, packed.codes).reshape(packed.value_shape)


def _unpack_codes(packed: PackedQuantTensor, codes: torch.Tensor) -> torch.Tensor:
    numel = 1
    for s in packed.value_shape:
        numel *= s
    if packed.layout == "nibble":
        unpack4 = unpack_int4 if isinstance(packed.fmt, IntFormat) else unpack_fp4
        return unpack4(codes, length=numel).reshape(packed.value_shape)
    if packed.layout == "six_bit":
        return unpack_fp6(codes, length=numel).reshape(packed.value_shape)
    if packed.layout == "word32":
        return (codes.to(torch.int64) & 0xFFFFFFFF).reshape(packed.value_shape)
    if packed.layout == "word16":
        return codes.to(torch.int32) & 0xFFFF
    if packed.layout == "byte":
        return codes.view(torch.uint8)
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
