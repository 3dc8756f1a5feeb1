"""Rounding of real numbers to integers, the one step every format kernel shares.

A format kernel scales its input so that the representable neighbours of every element are
consecutive integers, rounds with :func:`round_to_integer`, and scales back. Keeping the rounding
here means every format offers exactly the same modes with exactly the same meaning.
"""
from __future__ import annotations

from typing import Optional

import torch

ROUNDING_MODES = ("even", "away", "zero", "floor", "ceil", "stochastic")
"""Names accepted by every ``quantize``/``encode``:

- ``"even"``: round to nearest, ties to even (IEEE 754 roundTiesToEven, RNE).
- ``"away"``: round to nearest, ties away from zero (roundTiesToAway).
- ``"zero"``: toward zero (truncation).
- ``"floor"``: toward -inf.  ``"ceil"``: toward +inf.
- ``"stochastic"``: up with probability equal to the distance from the lower neighbour divided by
  the gap, so the expectation equals the input (unbiased); reproducible with a ``torch.Generator``.
"""


def check_rounding(rounding: str) -> str:
    """Return ``rounding`` if it names a known mode, else raise ``ValueError`` listing the modes."""
    if not isinstance(rounding, str) or rounding not in ROUNDING_MODES:
        raise ValueError(
            f"rounding={rounding!r} is not a rounding mode; allowed values: {', '.join(ROUNDING_MODES)}"
        )
    return rounding


def uniform_noise(
    like: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Uniform samples in [0, 1) with the shape, dtype and device of ``like`` (for ``"stochastic"``)."""
    return torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def round_to_integer(
    y: torch.Tensor,
    rounding: str,
    noise: Optional[torch.Tensor] = None,
    ties_up_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Round every element of ``y`` to an integer-valued float with mode ``rounding``.

    ``noise`` (uniform in [0, 1), same shape) is required for ``"stochastic"``:
    ``floor(y) + (noise < y - floor(y))``, whose expectation is ``y``.

    ``ties_up_mask`` marks elements whose two neighbours have the same significand digit (binades of a
    format without mantissa bits); ``"even"`` then cannot pick an even significand and rounds ties away
    from zero, as ``ml_dtypes`` and ``torch`` do for ``float8_e8m0fnu``.
    """
    if rounding == "even":
        rounded = torch.round(y)
        if ties_up_mask is not None:
            rounded = torch.where(ties_up_mask, _round_half_away(y), rounded)
        return rounded
    if rounding == "away":
        return _round_half_away(y)
    if rounding == "zero":
        return torch.trunc(y)
    if rounding == "floor":
        return torch.floor(y)
    if rounding == "ceil":
        return torch.ceil(y)
    if rounding == "stochastic":
        if noise is None:
            raise ValueError('rounding="stochastic" needs uniform noise in [0, 1)')
        lower = torch.floor(y)
        return lower + (noise < (y - lower)).to(y.dtype)
    raise ValueError(check_rounding(rounding))


def _round_half_away(y: torch.Tensor) -> torch.Tensor:
    # floor(|y|) + (frac >= 0.5) is exact for every float, unlike trunc(y + 0.5).
    magnitude = y.abs()
    lower = torch.floor(magnitude)
    return torch.copysign(lower + (magnitude - lower >= 0.5).to(y.dtype), y)
