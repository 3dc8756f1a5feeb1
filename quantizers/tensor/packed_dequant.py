"""The dequantize kernel of packed weights (``qlayers.freeze``): stored codes + scales to ``value_``.

:func:`dequantize_stored` computes exactly what :func:`quantizers.tensor.packed.dequantize_fields`
computes (``value_ = decode(codes) * scale_eff``, minus the zero point for integer kinds, in the
compute dtype, clamped as the quantizers clamp, rounded once to ``value_``'s dtype), but is shaped
for one fused compiled kernel per call that runs fast:

- Its only non-tensor arguments are values (a format object, strings, bools, dtypes, a small shape),
  never a per-layer object, so under the ``"auto"`` compile policy (keyed by argument identity and
  tensor metadata, :mod:`quantizers.compile`) every layer with the same format shares one
  configuration: it pays for its compilation after a few forwards of a model, and each weight
  shape then gets its own graph.
- The codes arrive viewed in ``value_``'s shape (the last dim as nibble pairs or FP6 byte
  triples), so the element index never needs a division; the codes of each position in a byte
  group are decoded apart (``codes & 15``, ``codes >> 4`` for nibbles) and interleaved by one
  ``stack`` that Inductor writes from the same loop. Integer formats and float formats without
  Inf/NaN codes (FP4 E2M1/E1M2, FP6 E2M3/E3M2) of up to 8 bits decode arithmetically (the two's
  complement bits; the float32 bit pattern built from the code's fields), which Inductor
  vectorizes; a gather from the code table (:meth:`NumberFormat.decode`, used for the other
  formats) would not. An arithmetic decoder is used for a format only after it gave the same bits
  as ``fmt.decode`` on every code (:func:`decoder_for`).
- ``value_`` is the only full-size tensor written: no unpacked code tensor, no element tensor.

Measured on the 2-core CPU (torch 2.13, a shared machine; compiled, one 1536x384 weight): INT4
per-group-128 0.16-0.19 ms, MXFP4 0.24 ms, NVFP4 0.30 ms (0.96 ms before short groups were merged
into rows), against 0.6-1.0 ms for the compiled ``dequantize_fields`` graph of INT4 (scalar code:
its nibble index ``i // 2`` keeps Inductor from vectorizing) and 9-14 ms eager; a ``clone`` of the
float weight takes 0.06 ms.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Tuple

import torch

from ..fake_quant import saturate_product
from ..formats import FloatFormat, IntFormat, NumberFormat
from ..formats.carrier import compute_dtype
from .packed import PackedQuantTensor

#: The generic decoder: ``fmt.decode`` (a table gather; any format).
TABLE = "table"


def _decode_int(codes: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """Two's complement ``bits``-bit codes (at most 8) to their integers, as float32."""
    half = 1 << (fmt.bits - 1)
    return ((codes.to(torch.int32) ^ half) - half).to(torch.float32)


def _decode_uint(codes: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    return codes.to(torch.float32)


def _decode_float(codes: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """A float format without Inf/NaN codes (FP4 E2M1/E1M2, FP6 E2M3/E3M2): the value of each
    code from its fields, ``(-1)^s 2^(e - bias) (1 + m / 2^M)`` built as float32 bits, or
    ``m 2^(1 - bias - M)`` for ``e = 0``; the negative zero code gives ``-0.0``."""
    code = codes.to(torch.int32)
    m_bits, e_bits = fmt.mantissa_bits, fmt.exponent_bits
    exponent = (code >> m_bits) & ((1 << e_bits) - 1)
    mantissa = code & ((1 << m_bits) - 1)
    normal = (((exponent + (127 - fmt.exponent_bias)) << 23) | (mantissa << (23 - m_bits))).view(torch.float32)
    subnormal = mantissa.to(torch.float32) * (2.0 ** (1 - fmt.exponent_bias - m_bits))
    magnitude = torch.where(exponent == 0, subnormal, normal)
    if not fmt.signed:
        return magnitude
    return torch.where(((code >> (e_bits + m_bits)) & 1) == 1, -magnitude, magnitude)


_ARITHMETIC: Dict[str, Callable[[torch.Tensor, NumberFormat], torch.Tensor]] = {
    "int": _decode_int, "uint": _decode_uint, "float": _decode_float,
}


@functools.lru_cache(maxsize=64)
def decoder_for(fmt: NumberFormat) -> str:
    """The name of the decoder :func:`dequantize_stored` uses for ``fmt``: an arithmetic one for
    the formats of at most 8 bits it reproduces bit for bit (``"int"``, ``"uint"``; ``"float"`` for
    float formats without Inf/NaN codes), checked here against ``fmt.decode`` on every code
    (``-0.0`` included), else ``"table"`` (``fmt.decode`` itself)."""
    if fmt.bits > 8:
        return TABLE
    if type(fmt) is IntFormat:
        candidate = "int" if fmt.signed else "uint"
    elif type(fmt) is FloatFormat and fmt.special == "none" and fmt.mantissa_bits <= 23:
        candidate = "float"
    else:
        return TABLE
    codes = torch.arange(2 ** fmt.bits, dtype=torch.int32).to(torch.uint8)
    try:
        expected = fmt.decode(codes).to(torch.float32)
        got = _ARITHMETIC[candidate](codes, fmt)
    except (ValueError, RuntimeError, OverflowError):  # a field the float32 bit pattern cannot hold
        return TABLE
    same = got.dtype == torch.float32 and torch.equal(got.view(torch.int32), expected.view(torch.int32))
    return candidate if same else TABLE


#: How many codes each layout stores per group of bytes, and in how many bytes.
_GROUPS = {"byte": (1, 1), "nibble": (2, 1), "six_bit": (4, 3)}
#: Byte groups shorter than one 16-byte vector run merged into rows (see :func:`dequantize_stored`).
_SHORT_GROUP_BYTES = 16


def stored_shape(packed: PackedQuantTensor) -> Optional[Tuple[int, ...]]:
    """The shape :func:`dequantize_stored` takes ``packed``'s codes in: ``value_shape``, with the
    last dim ``n`` as ``n / 2`` nibble pairs or ``(n / 4, 3)`` FP6 byte triples; ``None`` where it
    does not apply (16/32-bit codes, and codes of a group that would straddle rows: ``n`` not a
    multiple of 2 or 4)."""
    shape = tuple(packed.value_shape)
    if packed.layout not in _GROUPS or not shape:
        return None
    codes, size = _GROUPS[packed.layout]
    if shape[-1] % codes:
        return None
    if packed.layout == "six_bit":
        return shape[:-1] + (shape[-1] // codes, size)
    return shape[:-1] + (shape[-1] // codes,)


def _split_codes(codes: torch.Tensor, layout: str) -> Tuple[torch.Tensor, ...]:
    """The codes of each position in a byte group, each in the group's shape (see
    :mod:`quantizers.formats.packing`: little-endian bit streams, the first code in the low bits)."""
    if layout == "nibble":
        return codes & 15, codes >> 4
    if layout == "six_bit":
        b0, b1, b2 = codes[..., 0], codes[..., 1], codes[..., 2]
        return b0 & 63, (b0 >> 6) | ((b1 & 15) << 2), (b1 >> 4) | ((b2 & 3) << 4), b2 >> 2
    return (codes,)


def dequantize_stored(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    outer_scale: Optional[torch.Tensor],
    fmt: NumberFormat,
    decoder: str,
    layout: str,
    scale_codes_format: Optional[NumberFormat],
    scale_dtype: torch.dtype,
    zero_point_shape: Tuple[int, ...],
    zero_point_dtype: torch.dtype,
    integer: bool,
    rounded: torch.dtype,
    value_dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value_, scale_, zero_point_)`` from stored tensors, bit for bit
    :func:`~quantizers.tensor.packed.dequantize_fields` of the same packed tensor.

    ``codes``: the stored ``uint8`` (or ``int8``) codes in :func:`stored_shape`, ``layout`` the
    packed layout (``"byte"``, ``"nibble"``, ``"six_bit"``); ``scale``: float scales or, with ``scale_codes_format``, their
    one-byte codes as ``uint8``; ``decoder``: :func:`decoder_for` of ``fmt``; ``integer``: an integer
    kind (the zero point is subtracted); ``rounded``: the dtype ``value_`` is rounded to before it
    is stored as ``value_dtype``. Plain tensor code, no checks (the caller validated the packed
    tensor once)."""
    work = compute_dtype(rounded)
    codes = codes.view(torch.uint8)
    finite = decoder != TABLE  # the arithmetic decoders' formats have no Inf/NaN codes
    scale_ = scale
    if scale_codes_format is not None:
        scale_ = scale_codes_format.decode(scale.view(torch.uint8)).to(scale_dtype)
    scale_eff = (scale_ if outer_scale is None else scale_ * outer_scale).to(work)
    if zero_point is None:
        zero_point_ = torch.zeros(zero_point_shape, dtype=zero_point_dtype, device=codes.device)
        subtrahend = None  # x - (+0.0) is x: an all-zero (unstored) zero point needs no subtraction
    else:
        zero_point_ = zero_point
        subtrahend = zero_point.to(work) if integer else None

    def values(element_codes: torch.Tensor, scale_eff: torch.Tensor, subtrahend: Optional[torch.Tensor]) -> torch.Tensor:
        elements = (_ARITHMETIC[decoder](element_codes, fmt) if finite else fmt.decode(element_codes)).to(work)
        if subtrahend is not None:
            elements = elements - subtrahend
        value_ = saturate_product(elements * scale_eff, None if finite else elements, rounded)
        return value_.to(rounded).to(value_dtype)

    # Short groups (NVFP4: 8 bytes, less than one 16-byte vector) in one run: with the scale and
    # zero point constant along the last dim, the last two dims merge and the scale is read per
    # byte, so the vector loop is not left half empty (3x faster for NVFP4 on this CPU; longer
    # groups measured the same or 10% slower merged, so they keep their shape).
    lead = codes.shape[:-1] if layout == "six_bit" else codes.shape  # (..., groups, bytes per group)
    shape = lead[:-1] + (lead[-1] * _GROUPS[layout][0],)  # value_'s
    merge = len(lead) >= 2 and lead[-1] < _SHORT_GROUP_BYTES and all(
        t is None or t.dim() == 0 or t.shape[-1] == 1 for t in (scale_eff, subtrahend))
    if merge:
        codes = codes.flatten(-3, -2) if layout == "six_bit" else codes.flatten(-2)
        scale_eff, subtrahend = [t if t is None or t.dim() == 0 else t.expand(lead).flatten(-2) for t in (scale_eff, subtrahend)]
    parts = _split_codes(codes, layout)
    n = len(parts)
    # Decode the codes of each position in a byte group apart (low nibbles, high nibbles) and
    # interleave the values: one vectorized loop over the bytes. A scale or zero point that
    # varies along the last dim is split the same way.
    if merge:  # scale and zero point per byte group: the same for every code of a group
        decoded = [values(part, scale_eff, subtrahend) for part in parts]
    else:
        decoded = [values(part, _part(scale_eff, k, n), _part(subtrahend, k, n)) for k, part in enumerate(parts)]
    value_ = decoded[0] if n == 1 else torch.stack(decoded, -1).flatten(-2)
    return value_.reshape(shape), scale_, zero_point_



def _part(t: Optional[torch.Tensor], k: int, n: int) -> Optional[torch.Tensor]:
    """The entries of ``t`` (broadcast against ``value_``) that go with the ``k``-th code of each
    group of ``n`` along the last dim; ``t`` itself where its last dim broadcasts."""
    if t is None or t.dim() == 0 or t.shape[-1] == 1:
        return t
    return t[..., k::n]
