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
- The codes arrive viewed in ``value_``'s shape (nibble pairs: the last dim halved), so the
  element index never needs a division by two; the two nibbles of a byte are decoded apart
  (``codes & 15``, ``codes >> 4``) and interleaved by one ``stack`` that Inductor writes from the
  same loop. 4-bit formats decode arithmetically (INT4/UINT4 from the two's complement bits, FP4
  E2M1 by building the float32 bit pattern), which Inductor vectorizes; a gather from the code
  table (:meth:`NumberFormat.decode`) would not. Each arithmetic decoder is used for a format only
  after it gave the same bits as ``fmt.decode`` on every code (:func:`decoder_for`).
- ``value_`` is the only full-size tensor written: no unpacked code tensor, no element tensor.

Measured on the 2-core CPU (torch 2.13, a shared machine): a 1536x384 INT4 per-group weight takes
about 0.2-0.3 ms compiled against 0.6-1.0 ms for the compiled ``dequantize_fields`` graph (scalar
code: its nibble index ``i // 2`` keeps Inductor from vectorizing) and 9-14 ms eager.
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


def _decode_int4(codes: torch.Tensor) -> torch.Tensor:
    return ((codes.to(torch.int32) ^ 8) - 8).to(torch.float32)


def _decode_uint4(codes: torch.Tensor) -> torch.Tensor:
    return codes.to(torch.float32)


def _decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 (OCP): the float32 bit pattern of each code, ``-0.0`` for code 8 included."""
    code = codes.to(torch.int32)
    exponent, mantissa = (code >> 1) & 3, code & 1
    normal = ((exponent + 126) << 23) | (mantissa << 22)  # 2^(e-1) * (1 + m/2)
    magnitude = torch.where(exponent == 0, mantissa * (126 << 23), normal)  # 0 or 0.5
    return (magnitude | ((code & 8) << 28)).view(torch.float32)


_ARITHMETIC: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "int4": _decode_int4, "uint4": _decode_uint4, "e2m1": _decode_e2m1,
}


@functools.lru_cache(maxsize=64)
def decoder_for(fmt: NumberFormat) -> str:
    """The name of the decoder :func:`dequantize_stored` uses for ``fmt``: an arithmetic one for
    the 4-bit formats it reproduces bit for bit (``"int4"``, ``"uint4"``, ``"e2m1"``), checked here
    against ``fmt.decode`` on every code, else ``"table"`` (``fmt.decode`` itself)."""
    if fmt.bits != 4:
        return TABLE
    if isinstance(fmt, IntFormat):
        candidate = "int4" if fmt.signed else "uint4"
    elif isinstance(fmt, FloatFormat) and fmt.exponent_bits == 2 and fmt.mantissa_bits == 1:
        candidate = "e2m1"
    else:
        return TABLE
    codes = torch.arange(16, dtype=torch.uint8)
    expected = fmt.decode(codes).to(torch.float32)
    got = _ARITHMETIC[candidate](codes)
    same = torch.equal(got.view(torch.int32), expected.view(torch.int32))
    return candidate if same else TABLE


def stored_shape(packed: PackedQuantTensor) -> Optional[Tuple[int, ...]]:
    """The shape :func:`dequantize_stored` takes ``packed``'s codes in (``value_shape`` with the
    last dim halved for nibble pairs), or ``None`` where it does not apply: layouts other than one
    code per byte or two per byte, and nibble pairs that straddle rows (an odd last dim)."""
    shape = tuple(packed.value_shape)
    if packed.layout == "byte":
        return shape
    if packed.layout == "nibble" and shape and shape[-1] % 2 == 0:
        return shape[:-1] + (shape[-1] // 2,)
    return None


def dequantize_stored(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    outer_scale: Optional[torch.Tensor],
    fmt: NumberFormat,
    decoder: str,
    nibbles: bool,
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

    ``codes``: ``uint8`` (or ``int8``) codes in :func:`stored_shape` (``nibbles``: two codes a byte,
    element ``2i`` in the low nibble); ``scale``: float scales or, with ``scale_codes_format``, their
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
        elements = (_ARITHMETIC[decoder](element_codes) if finite else fmt.decode(element_codes)).to(work)
        if subtrahend is not None:
            elements = elements - subtrahend
        value_ = saturate_product(elements * scale_eff, None if finite else elements, rounded)
        return value_.to(rounded).to(value_dtype)

    if not nibbles:
        return values(codes, scale_eff, subtrahend), scale_, zero_point_
    # Decode the low and the high nibbles apart and interleave the values: one vectorized loop over
    # the bytes. A scale or zero point that varies along the last dim is split the same way.
    low, high = [
        values(codes & 15 if half == 0 else codes >> 4, _half(scale_eff, half), _half(subtrahend, half))
        for half in (0, 1)
    ]
    return torch.stack((low, high), -1).flatten(-2), scale_, zero_point_


def _half(t: Optional[torch.Tensor], half: int) -> Optional[torch.Tensor]:
    """The entries of ``t`` (broadcast against ``value_``) that go with the low (``half=0``: even
    positions of the last dim) or high nibbles; ``t`` itself where its last dim broadcasts."""
    if t is None or t.dim() == 0 or t.shape[-1] == 1:
        return t
    return t[..., half::2]
