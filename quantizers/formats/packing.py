"""Bit-packing of sub-byte codes: two 4-bit codes per byte, four 6-bit codes per three bytes.

Every layout here is one little-endian bit stream: ``k`` codes of ``b`` bits form the word
``w = c0 | c1 << b | ... | c(k-1) << (k-1)*b``, stored low byte first. FP4/INT4 is ``b=4, k=2``
(element ``2i`` in the low nibble, ``2i+1`` in the high nibble); FP6 is ``b=6, k=4`` (3 bytes).
The last dim is padded with zero codes to a multiple of ``k``; unpacking takes the original length
to trim the padding again.

All functions are pure tensor code (no loops over elements) and work under
``torch.compile(fullgraph=True)``, on any device, for any leading shape. Data-dependent checks
(codes in range) are skipped while compiling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..compile import is_tracing


@dataclass(frozen=True)
class _BitLayout:
    """``codes_per_group`` codes of ``bits`` bits packed little-endian into whole bytes."""

    bits: int
    codes_per_group: int

    @property
    def bytes_per_group(self) -> int:
        return self.bits * self.codes_per_group // 8

    @property
    def max_code(self) -> int:
        return 2 ** self.bits - 1


_NIBBLES = _BitLayout(bits=4, codes_per_group=2)
_SIX_BIT = _BitLayout(bits=6, codes_per_group=4)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (e.g. ``get_format("float4_e2m1fn").encode(x)``) two per byte.

    Layout along the last dim, ``n`` codes -> ``ceil(n / 2)`` bytes::

        byte[i] = codes[2i] | codes[2i + 1] << 4        (low nibble first)

    An odd ``n`` is padded with a zero code. This is the layout of ``torch.float4_e2m1fn_x2``
    (``pack_fp4(codes).view(torch.float4_e2m1fn_x2)``), of the OCP MX spec and of torchao/JAX packed
    FP4 with ml_dtypes ``float4_e2m1fn`` code values.

    Args:
        codes: ``torch.uint8`` tensor, at least 1-d, with values in ``[0, 15]``.

    Returns:
        ``torch.uint8`` tensor of shape ``(*codes.shape[:-1], ceil(codes.shape[-1] / 2))``.

    Example:
        >>> pack_fp4(torch.tensor([1, 2, 15], dtype=torch.uint8)).tolist()  # 0x21, 0x0F
        [33, 15]
    """
    return _pack(codes, _NIBBLES, "codes")


def unpack_fp4(packed: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: ``codes[2i] = byte[i] & 0xF``, ``codes[2i + 1] = byte[i] >> 4``.

    Args:
        packed: ``torch.uint8`` tensor, at least 1-d (a ``torch.float4_e2m1fn_x2`` tensor can be
            passed as ``t.view(torch.uint8)``).
        length: number of codes to keep along the last dim (the ``n`` given to :func:`pack_fp4`);
            ``None`` keeps all ``2 * packed.shape[-1]``.

    Example:
        >>> unpack_fp4(torch.tensor([0x21, 0x0F], dtype=torch.uint8), length=3).tolist()
        [1, 2, 15]
    """
    return _unpack(packed, _NIBBLES, length)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int4/uint4 codes two per byte, same layout as :func:`pack_fp4`::

        byte[i] = codes[2i] | codes[2i + 1] << 4

    ``codes`` are the 4-bit patterns ``IntFormat(4).encode`` produces (two's complement nibbles, so
    -1 is ``0xF``, -8 is ``0x8``), ``torch.uint8`` in ``[0, 15]``. Odd lengths get a zero code.

    Example:
        >>> pack_int4(torch.tensor([0xF, 0x8, 3], dtype=torch.uint8)).tolist()  # [-1, -8, 3]
        [143, 3]
    """
    return _pack(codes, _NIBBLES, "codes")


def unpack_int4(packed: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """Inverse of :func:`pack_int4`; returns the 4-bit codes (``uint8`` in ``[0, 15]``), not the
    signed integers (``IntFormat(4).decode`` gives those).

    Example:
        >>> unpack_int4(torch.tensor([0x8F, 0x03], dtype=torch.uint8), length=3).tolist()
        [15, 8, 3]
    """
    return _unpack(packed, _NIBBLES, length)


def pack_fp6(codes: torch.Tensor) -> torch.Tensor:
    """Pack 6-bit codes (e.g. ``get_format("float6_e2m3fn").encode(x)``) four per three bytes.

    Along the last dim, codes ``c0..c3`` of each group of four form the 24-bit little-endian word::

        w = c0 | c1 << 6 | c2 << 12 | c3 << 18
        bytes = (w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF)

    ``n`` codes become ``3 * ceil(n / 4)`` bytes; the last group is padded with zero codes. This is a
    plain little-endian bit stream (as ``numpy.packbits(..., bitorder="little")`` of the codes' bits),
    not the split 2+4-bit layout of FP6-LLM kernels.

    Args:
        codes: ``torch.uint8`` tensor, at least 1-d, with values in ``[0, 63]``.

    Example:
        >>> pack_fp6(torch.tensor([1, 2, 3, 4], dtype=torch.uint8)).tolist()  # w = 0x103081
        [129, 48, 16]
    """
    return _pack(codes, _SIX_BIT, "codes")


def unpack_fp6(packed: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """Inverse of :func:`pack_fp6`: ``w = b0 | b1 << 8 | b2 << 16``, ``c_j = (w >> 6j) & 0x3F``.

    Args:
        packed: ``torch.uint8`` tensor, at least 1-d, whose last dim is a multiple of 3.
        length: number of codes to keep along the last dim (the ``n`` given to :func:`pack_fp6`);
            ``None`` keeps all ``4 * packed.shape[-1] / 3``.

    Example:
        >>> unpack_fp6(torch.tensor([0x81, 0x30, 0x10], dtype=torch.uint8), length=3).tolist()
        [1, 2, 3]
    """
    return _unpack(packed, _SIX_BIT, length)


# ---- the one packing kernel -----------------------------------------------------------------
def _pack(codes: torch.Tensor, layout: _BitLayout, argument: str) -> torch.Tensor:
    _check_uint8(codes, argument)
    if not is_tracing() and codes.numel() > 0:
        high = int(codes.max())
        if high > layout.max_code:
            raise ValueError(
                f"{argument} must lie in [0, {layout.max_code}] for {layout.bits}-bit packing; got a "
                f"maximum of {high}. Encode with a {layout.bits}-bit format, or mask with "
                f"`& {layout.max_code}` if the high bits are known to be unused."
            )
    k = layout.codes_per_group
    n = codes.shape[-1]
    groups = F.pad(codes, (0, (-n) % k)).reshape(*codes.shape[:-1], (n + k - 1) // k, k)
    # Fields do not overlap, so the sum is the bitwise OR: w = sum_j c_j << (bits * j).
    word = (groups.to(torch.int32) << _shifts(layout.bits, k, codes.device)).sum(-1, dtype=torch.int32)
    packed = (word.unsqueeze(-1) >> _shifts(8, layout.bytes_per_group, codes.device)) & 0xFF
    return packed.flatten(-2).to(torch.uint8)


def _unpack(packed: torch.Tensor, layout: _BitLayout, length: Optional[int]) -> torch.Tensor:
    _check_uint8(packed, "packed")
    size = layout.bytes_per_group
    if packed.shape[-1] % size:
        raise ValueError(
            f"packed has {packed.shape[-1]} bytes in its last dim; {layout.bits}-bit packing stores "
            f"{layout.codes_per_group} codes in {size} bytes, so it must be a multiple of {size}"
        )
    groups = packed.reshape(*packed.shape[:-1], packed.shape[-1] // size, size)
    word = (groups.to(torch.int32) << _shifts(8, size, packed.device)).sum(-1, dtype=torch.int32)
    codes = (word.unsqueeze(-1) >> _shifts(layout.bits, layout.codes_per_group, packed.device)) & layout.max_code
    codes = codes.flatten(-2).to(torch.uint8)
    capacity = codes.shape[-1]
    if length is None:
        return codes
    _check_length(length, capacity, layout.codes_per_group)
    return codes[..., :length]


def _shifts(bits: int, count: int, device: torch.device) -> torch.Tensor:
    """``[0, bits, 2*bits, ...]``: the bit offset of each field in a little-endian word."""
    return torch.arange(0, bits * count, bits, dtype=torch.int32, device=device)


# ---- validation -----------------------------------------------------------------------------
def _check_uint8(x: torch.Tensor, argument: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor of dtype torch.uint8, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(
            f"{argument} has dtype {x.dtype}; packing needs torch.uint8 codes (convert with "
            f"`{argument}.to(torch.uint8)` after checking the values fit)"
        )
    if x.dim() == 0:
        raise ValueError(f"{argument} is 0-d; packing works along the last dim, pass at least a 1-d tensor")


def _check_length(length: int, capacity: int, codes_per_group: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"length must be an int or None, got {length!r}")
    lowest = max(0, capacity - codes_per_group + 1)
    if not lowest <= length <= capacity:
        raise ValueError(
            f"length={length} does not match packed data holding {capacity} codes (padded to a multiple "
            f"of {codes_per_group}); allowed lengths: {lowest}..{capacity}"
        )
