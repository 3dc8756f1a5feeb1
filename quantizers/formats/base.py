"""What every element format offers: value grid, quantize, encode to bit codes, decode.

A subclass describes its format by two things: the value of every code (:meth:`_compute_code_values`, plain
Python floats, the spec written as code) and a kernel that rounds a carrier tensor onto the grid
(:meth:`_round_in_carrier`). Encoding and decoding are derived here from the code table, so they can
never disagree with it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..compile import is_tracing
from .carrier import Carrier, check_float_input, narrow_to, sign_bit, widen_to
from .rounding import check_rounding, uniform_noise


_CACHED_FACTS = (
    "code_values", "has_nan", "has_inf", "max_value", "min_value", "min_subnormal", "magnitude_codes", "dtype_limits",
)
_NARROW_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class NumberFormat:
    """Base class of :class:`FloatFormat`, :class:`IntFormat`, :class:`HiFloat8` and :class:`E8M0`.

    Subclasses are frozen dataclasses; equal formats compare and hash equal.
    """

    #: Rounding used when ``quantize``/``encode`` get ``rounding=None``.
    default_rounding: str = "even"
    #: ``True`` where ``_round_in_carrier`` itself maps every input beyond the format's extremes
    #: (±Inf included) to them whenever :meth:`_saturates` holds, so fake quantization without
    #: gradients need not clamp first (qzoo's float, integer and HiFloat8 formats, tested against
    #: the clamped formula); ``False`` (the default, E8M0 and custom subclasses) keeps the clamp.
    rounding_saturates = False

    # ---- description, provided by subclasses -------------------------------------------------
    @property
    def bits(self) -> int:
        """Width of one code in bits."""
        raise NotImplementedError

    @property
    def signed(self) -> bool:
        raise NotImplementedError

    @property
    def default_saturating(self) -> bool:
        """Overflow policy used when ``saturating=None``."""
        raise NotImplementedError

    def _compute_code_values(self) -> Tuple[float, ...]:
        """The value of every code ``0 .. 2^bits - 1`` (NaN and ±Inf where the format has them)."""
        raise NotImplementedError

    def _round_in_carrier(
        self, x: torch.Tensor, carrier: Carrier, rounding: str, saturating: bool,
        noise: Optional[torch.Tensor],
    ) -> torch.Tensor:
        raise NotImplementedError

    def _carrier(self, dtype: torch.dtype) -> Carrier:
        raise NotImplementedError

    def nan_code(self, negative: torch.Tensor) -> torch.Tensor:
        """Code written for NaN (``negative`` is the NaN's sign bit); formats without NaN raise."""
        raise ValueError(f"{self.name} has no NaN encoding")

    # ---- pickling: only the declared fields, validated again on load -------------------------
    def __getstate__(self) -> Dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: Dict[str, object]) -> None:
        """Restore the declared fields and run the constructor's validation again, so a checkpoint
        loaded with ``torch.load(weights_only=True)`` cannot smuggle in a format that
        ``__init__`` would reject (e.g. 22 mantissa bits, whose code table would never finish).
        Cached facts found in older checkpoints are dropped and recomputed."""
        if not isinstance(state, dict):
            raise TypeError(f"cannot restore {type(self).__name__} from {type(state).__name__}")
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = set(state) - set(fields) - set(_CACHED_FACTS)
        if unknown:
            raise ValueError(f"cannot restore {type(self).__name__}: unknown fields {sorted(unknown)}; allowed: {sorted(fields)}")
        for name, field in fields.items():
            if name in state:
                value = state[name]
            elif field.default is not dataclasses.MISSING:
                value = field.default
            else:
                raise ValueError(f"cannot restore {type(self).__name__}: field {name!r} is missing")
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __copy__(self) -> "NumberFormat":
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> "NumberFormat":
        return self

    # ---- derived facts -----------------------------------------------------------------------
    def _precompute(self) -> None:
        """Fill the cached facts now, so kernels never compute them inside a compiled region
        (``functools.cached_property`` takes a lock there, which ``torch.compile`` cannot trace)."""
        for name in _CACHED_FACTS:
            getattr(self, name)

    @functools.cached_property
    def magnitude_codes(self) -> Tuple[Tuple[float, ...], Tuple[int, ...]]:
        """Ascending finite magnitudes and, for each, the code of its non-negative representative."""
        best: Dict[float, int] = {}
        for code, value in enumerate(self.code_values):
            if math.isfinite(value) and (value > 0 or (value == 0 and math.copysign(1, value) > 0)):
                best.setdefault(value, code)
        magnitudes = tuple(sorted(best))
        return magnitudes, tuple(best[m] for m in magnitudes)

    @functools.cached_property
    def code_values(self) -> Tuple[float, ...]:
        """The value of every code ``0 .. 2^bits - 1`` as Python floats (NaN, ±Inf included)."""
        return tuple(float(v) for v in self._compute_code_values())

    @property
    def name(self) -> str:
        return repr(self)

    @functools.cached_property
    def has_nan(self) -> bool:
        return any(math.isnan(v) for v in self.code_values)

    @functools.cached_property
    def has_inf(self) -> bool:
        return any(math.isinf(v) for v in self.code_values)

    @functools.cached_property
    def max_value(self) -> float:
        """Largest finite value."""
        return max(_finite(self.code_values))

    @functools.cached_property
    def min_value(self) -> float:
        """Smallest (most negative) finite value."""
        return min(_finite(self.code_values))

    @functools.cached_property
    def min_subnormal(self) -> float:
        """Smallest positive value."""
        return min(v for v in _finite(self.code_values) if v > 0)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value (equals ``min_subnormal`` for formats without subnormals)."""
        return self.min_subnormal

    def values(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """Every finite representable value once, ascending, as float32 (±0 appear as one 0)."""
        return torch.tensor(_finite_sorted(self.code_values), dtype=torch.float32, device=device)

    # ---- public operations -------------------------------------------------------------------
    def quantize(
        self,
        x: torch.Tensor,
        rounding: Optional[str] = None,
        saturating: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Round ``x`` to representable values of this format; same shape and dtype as ``x``.

        ``rounding`` is one of :data:`ROUNDING_MODES` (``None``: the format's default). With
        ``saturating=True`` overflow and ±Inf map to ±max; with ``False`` overflow follows the
        format (Inf where it has Inf, else NaN where it has NaN). NaN stays NaN, with its sign bit
        (+NaN in unsigned formats), for every input dtype. The result is exact:
        every output element is a value of :meth:`values` (or NaN/±Inf).

        The rounding runs in a float32 or float64 carrier and the result is cast back to ``x.dtype``
        once. Where the format's extreme values do not exist in ``x.dtype`` (``int16``'s 32767 or
        ``uint16``'s 65535 in float16/bfloat16, E8M0's 2^16 in float16) saturation stops at the
        format's values that do (:meth:`limits_in`), so a saturating result never leaves the format
        and is never Inf for finite input. Without saturation, a value beyond ``x.dtype``'s range
        overflows to Inf on the cast, as IEEE 754 casts do.
        """
        check_float_input(x)
        rounded = self._round(x, rounding, saturating, generator)
        if rounded.dtype != x.dtype and self._saturates(saturating):
            # The cast back must not leave the format: clamp to its extreme values that x.dtype holds
            # exactly (int16's 32767 is 32752 in float16; E8M0's 2^16 is 2^15, its 2^-127 is 2^-24).
            rounded = rounded.clamp(*self.limits_in(x.dtype))
        return narrow_to(rounded, x.dtype)

    def encode(
        self,
        x: torch.Tensor,
        rounding: Optional[str] = None,
        saturating: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Quantize ``x`` and return the bit codes (``torch.uint8``; ``torch.int32`` above 8 bits)."""
        check_float_input(x)
        if not self.has_nan and not is_tracing() and x.device.type != "meta" and bool(torch.isnan(x).any()):
            raise ValueError(f"cannot encode NaN: {self.name} has no NaN code")
        q = self._round(x, rounding, saturating, generator)
        return self._codes_of(q, negative_nan=sign_bit(x)).to(self.code_dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The float32 value of every code (integer tensor with values in ``[0, 2^bits)``)."""
        check_codes(codes, self)
        index = codes.to(torch.int64)
        value = _table(self.code_values, torch.float32, codes.device)[index]
        if self.signed:
            # -0 computed at run time: compiled graphs may fold a table's -0.0 into 0.0.
            negative_zero = ((index >> (self.bits - 1)) & 1).bool() & (value == 0)
            value = torch.where(negative_zero, -value.abs(), value)
        return value

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int32

    def limits_in(self, dtype: torch.dtype) -> Tuple[float, float]:
        """``(lowest, highest)``: the smallest and largest finite values of this format that ``dtype``
        holds exactly (``(min_value, max_value)`` when it holds them all, e.g. float64)."""
        return self.dtype_limits.get(dtype, (self.min_value, self.max_value))

    @functools.cached_property
    def dtype_limits(self) -> Dict[torch.dtype, Tuple[float, float]]:
        """:meth:`limits_in` of float16, bfloat16 and float32, computed once (kernels read it)."""
        values = torch.tensor(_finite_sorted(self.code_values), dtype=torch.float64)
        limits = {}
        for dtype in _NARROW_DTYPES:
            held = values[values.to(dtype).to(torch.float64) == values]
            limits[dtype] = (float(held[0]), float(held[-1]))
        return limits

    def _saturates(self, saturating: Optional[bool]) -> bool:
        """Whether overflow clamps to the extreme values (always for formats without Inf and NaN)."""
        resolved = self.default_saturating if saturating is None else saturating
        return bool(resolved) or not (self.has_inf or self.has_nan)

    # ---- helpers -----------------------------------------------------------------------------
    def _round(
        self, x: torch.Tensor, rounding: Optional[str], saturating: Optional[bool],
        generator: Optional[torch.Generator],
    ) -> torch.Tensor:
        """``x`` rounded onto the grid, in the carrier dtype."""
        rounding, saturating = self._resolve(rounding, saturating)
        carrier = self._carrier(x.dtype)
        xc = widen_to(x, carrier.dtype)
        noise = uniform_noise(xc, generator) if rounding == "stochastic" else None
        return self._round_in_carrier(xc, carrier, rounding, saturating, noise)

    def _resolve(self, rounding: Optional[str], saturating: Optional[bool]) -> Tuple[str, bool]:
        rounding = self.default_rounding if rounding is None else check_rounding(rounding)
        if saturating is None:
            saturating = self.default_saturating
        elif not isinstance(saturating, bool):
            raise TypeError(f"saturating must be True, False or None, got {saturating!r}")
        return rounding, saturating

    def _codes_of(self, q: torch.Tensor, negative_nan: torch.Tensor) -> torch.Tensor:
        """Codes of already-quantized values ``q`` (every element on the grid, or NaN/±Inf).

        NaN codes take their sign from ``negative_nan`` (the input's sign bit, as ml_dtypes does):
        the sign of a NaN produced by arithmetic is not reliable, least of all in compiled code."""
        magnitudes = _table(self.magnitude_codes[0], q.dtype, q.device)
        magnitude_codes = _table(self.magnitude_codes[1], torch.int64, q.device)
        index = torch.searchsorted(magnitudes, q.abs().contiguous()).clamp(max=magnitudes.numel() - 1)
        codes = magnitude_codes[index]
        negative = torch.signbit(q)
        if self.signed:
            codes = torch.where(negative, codes | (1 << (self.bits - 1)), codes)
        if self.has_inf:
            codes = torch.where(torch.isinf(q), self._inf_codes(negative), codes)
        if self.has_nan:
            codes = torch.where(torch.isnan(q), self.nan_code(negative_nan), codes)
        return codes

    def _inf_codes(self, negative: torch.Tensor) -> torch.Tensor:
        values = self.code_values
        positive = values.index(math.inf)
        negative_code = values.index(-math.inf) if -math.inf in values else positive
        return torch.where(negative, negative_code, positive)


@dataclass(frozen=True)
class ByteFormat(NumberFormat):
    """A one-byte format with a fixed layout whose only option is the overflow policy."""

    saturating: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.saturating, bool):
            raise TypeError(f"saturating must be a bool, got {self.saturating!r}")
        self._precompute()

    @property
    def bits(self) -> int:
        return 8

    @property
    def default_saturating(self) -> bool:
        return self.saturating


def check_codes(codes: torch.Tensor, fmt: NumberFormat) -> None:
    """Raise ``TypeError`` unless ``codes`` is an integer tensor, ``ValueError`` if a code is outside
    ``[0, 2^bits)`` (the range check is skipped while compiling and on meta tensors, which hold no values)."""
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype.is_complex \
            or codes.dtype == torch.bool:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"codes must be an integer tensor (e.g. torch.uint8), got {got}")
    if not is_tracing() and codes.numel() > 0 and codes.device.type != "meta":
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= 2 ** fmt.bits:
            raise ValueError(
                f"codes must lie in [0, {2 ** fmt.bits - 1}] for {fmt.name}; got values in [{low}, {high}]"
            )


def _finite(values: Tuple[float, ...]) -> List[float]:
    return [v for v in values if math.isfinite(v)]


def _finite_sorted(values: Tuple[float, ...]) -> List[float]:
    return sorted(set(_finite(values)))


def _table(values: Tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A constant table as a tensor: cached per dtype and device in eager mode; built in place
    while compiling (the compiler folds it into a constant and cannot trace the cache)."""
    if is_tracing():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_table(values, dtype, device)


@functools.lru_cache(maxsize=256)
def _cached_table(values: Tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)
