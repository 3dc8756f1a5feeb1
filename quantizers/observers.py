"""Observers: running range statistics of activations, kept in buffers so ``state_dict`` works.

An observer receives each batch's statistic (an absolute maximum, or a ``(min, max)``
:class:`~quantizers.scaling.statistics.Range`, already reduced per scale) and keeps an aggregate.
Names (the ``observer`` attribute of a quantizer, see :data:`OBSERVERS`):

- ``"last_batch"`` (:class:`LastBatchObserver`): the latest batch's statistic.
- ``"global_minmax"`` (:class:`GlobalMinMaxObserver`): the running minimum of minima and maximum of
  maxima over all batches seen, i.e. torch.ao's ``MinMaxObserver`` (and MQBench's, which the
  MQBench dialect maps here).
- ``"mean"`` (:class:`MeanObserver`): the average of all batches' statistics (Brevitas's statistics
  collection for activations).
- ``"ema_minmax"`` (:class:`EMAMinMaxObserver`): ``s <- (1 - momentum) * s + momentum * s_batch``
  (sophgo-mq's ``EMAMinMaxObserver``, Brevitas's ``scaling_stats_momentum``); the first batch
  initialises it.

Aliases (older names, kept so configs keep working): ``"minmax"`` and ``"static"`` both mean
``"last_batch"``. Note that qzoo's ``"minmax"`` is **not** torch.ao's ``MinMaxObserver``, which is
a running min/max: write ``"global_minmax"`` for that.

Distributed data parallel training and calibration: when ``torch.distributed`` is initialised with
more than one rank, every update first combines the ranks' batch statistics, as ``SyncBatchNorm``
combines batch moments, so every rank holds the same aggregate:

- last batch, global min/max and EMA take the range of the *global* batch (the ranks' batches
  together): the minimum of the ranks' minima and the maximum of their maxima (absolute maxima:
  the maximum). Global min/max over data sharded across ranks therefore equals global min/max over
  the whole data in one process; EMA equals one process that sees each step's global batch. (With
  ``range_method="percentile"`` or ``"mse"`` the ranks' clipped statistics are combined the same
  way, which approximates the global batch's percentile or MSE choice.)
- mean counts each rank's batch as one batch: the aggregate is the mean over every rank's batches
  (the sum of the ranks' statistics is added and the count grows by the world size), which equals
  one process that sees all the batches (up to float summation order).

Every rank must therefore update its observers the same number of times (as with SyncBatchNorm).
Statistics are not synchronised inside ``torch.compile`` graphs (no collective runs inside a
compiled region; run calibration eagerly) nor with a single process.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn

from .compile import is_tracing
from .scaling.statistics import Range, Statistic


class Observer(nn.Module):
    """Base class. Buffers ``low``/``high`` hold the aggregate (``low`` stays empty for absmax);
    they are empty until the first batch, whose statistic gives their shape (see
    :attr:`is_initialized`). Subclasses define :meth:`_combine` (old aggregate, new statistic)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(0))
        self.register_buffer("high", torch.zeros(0))

    @property
    def is_initialized(self) -> bool:
        """Whether any batch was seen (or a calibrated state loaded): read from the buffer's shape,
        never its values, so ``torch.compile(fullgraph=True)`` can trace it."""
        return self.high.numel() > 0

    def reset(self) -> None:
        """Forget every statistic collected: back to the state before the first batch."""
        with torch.no_grad():
            self.low = torch.zeros(0, dtype=self.low.dtype, device=self.low.device)
            self.high = torch.zeros(0, dtype=self.high.dtype, device=self.high.device)

    def update(self, stat: Statistic) -> None:
        """Fold one batch's statistic into the aggregate (combined over ranks first, see the
        module docstring)."""
        low, high = _split(stat)
        with torch.no_grad():
            low, high = self._synchronise(low, high)
            if not self.is_initialized:
                new_low, new_high = low, high
            else:
                new_low = None if low is None else self._combine(self.low, low)
                new_high = self._combine(self.high, high, upper=True)
            if new_low is not None:
                self.low = new_low.detach().clone()
            self.high = new_high.detach().clone()

    def value(self, needs: str) -> Statistic:
        """The aggregate: a :class:`Range` ``(min, max)`` when ``needs == "minmax"``, else the
        absolute maximum."""
        if needs == "minmax":
            return Range(self.low, self.high)
        return self.high

    def _combine(self, old: torch.Tensor, new: torch.Tensor, upper: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def _synchronise(
        self, low: Optional[torch.Tensor], high: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """The global batch's range over all ranks: min of minima, max of maxima (one collective)."""
        if not distributed():
            return low, high
        if low is None:
            high = high.detach().clone()
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            return None, high
        both = torch.stack([-low.detach(), high.detach()])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return -both[0], both[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A float checkpoint has no observer state: leave the observer uncalibrated instead of
        # reporting missing keys. Buffers take the loaded shapes (they follow the first batch);
        # the quantizer that owns the observer checks that they fit its granularity.
        if not any(key.startswith(prefix) for key in state_dict):
            return
        for name in ("low", "high"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LastBatchObserver(Observer):
    """Keeps the latest batch's statistic (``"last_batch"``; aliases ``"minmax"``, ``"static"``)."""

    def _combine(self, old, new, upper=False):
        return new


class GlobalMinMaxObserver(Observer):
    """Running minimum of minima and maximum of maxima (``"global_minmax"``; torch.ao's
    ``MinMaxObserver``)."""

    def _combine(self, old, new, upper=False):
        return torch.maximum(old, new) if upper else torch.minimum(old, new)


class EMAMinMaxObserver(Observer):
    """Exponential moving average ``(1 - momentum) * old + momentum * new`` (``"ema_minmax"``)."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum!r} must lie in (0, 1]")
        self.momentum = momentum

    def _combine(self, old, new, upper=False):
        return old + self.momentum * (new - old)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class MeanObserver(Observer):
    """Arithmetic mean of every batch's statistic (``"mean"``); ``count`` batches seen so far
    (over all ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.count.zero_()

    def update(self, stat: Statistic) -> None:
        """``mean <- mean + (sum - k * mean) / count`` with ``sum`` the sum of the ``k`` new
        statistics (``k`` = 1, or the world size under ``torch.distributed``)."""
        low, high = _split(stat)
        with torch.no_grad():
            k = 1
            if distributed():
                k = dist.get_world_size()
                both = torch.stack([high.detach() if low is None else low.detach(), high.detach()])
                dist.all_reduce(both, op=dist.ReduceOp.SUM)  # one collective for (low, high)
                low, high = (None if low is None else both[0]), both[1]
            self.count += k
            if not self.is_initialized:
                new_low, new_high = (None if low is None else low / k), high / k
            else:
                count = self.count.to(self.high.dtype)
                new_low = None if low is None else self.low + (low - k * self.low) / count
                new_high = self.high + (high - k * self.high) / count
            if new_low is not None:
                self.low = new_low.detach().clone()
            self.high = new_high.detach().clone()


#: Observer names (the ``observer`` attribute of a quantizer) and their classes.
OBSERVERS: Dict[str, Type[Observer]] = {
    "last_batch": LastBatchObserver,
    "global_minmax": GlobalMinMaxObserver,
    "ema_minmax": EMAMinMaxObserver,
    "mean": MeanObserver,
    "minmax": LastBatchObserver,  # alias of "last_batch" (not torch.ao's MinMaxObserver)
    "static": LastBatchObserver,  # alias of "last_batch"
}

#: Older names kept working: alias -> canonical name.
OBSERVER_ALIASES: Dict[str, str] = {"minmax": "last_batch", "static": "last_batch"}


def distributed() -> bool:
    """Whether observers combine statistics across ranks: ``torch.distributed`` is initialised with
    more than one rank and no ``torch.compile`` graph is being traced."""
    return (
        dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        and not is_tracing()
    )


def _split(stat: Statistic) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    if isinstance(stat, tuple):
        return stat[0], stat[1]
    return None, stat
