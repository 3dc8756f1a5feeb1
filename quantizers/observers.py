"""Observers: running range statistics of activations, kept in buffers so ``state_dict`` works.

An observer receives each batch's statistic (an absolute maximum, or a ``(min, max)`` pair, already
reduced per scale) and keeps an aggregate:

- :class:`LastBatchObserver` (``"minmax"``, "static"): the latest batch's statistic.
- :class:`GlobalMinMaxObserver` (``"global_minmax"``): the running minimum of minima and maximum of
  maxima over all batches seen.
- :class:`MeanObserver` (``"mean"``): the average of all batches' statistics (Brevitas's statistics
  collection for activations).
- :class:`EMAMinMaxObserver` (``"ema_minmax"``): ``s <- (1 - momentum) * s + momentum * s_batch``
  (sophgo-mq's ``EMAMinMaxObserver``, Brevitas's ``scaling_stats_momentum``); the first batch
  initialises it.
"""
from __future__ import annotations

from typing import Dict, Tuple, Type, Union

import torch
from torch import nn

Statistic = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class Observer(nn.Module):
    """Base class. Buffers ``low``/``high`` hold the aggregate (``low`` stays empty for absmax);
    they are empty until the first batch, whose statistic gives their shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(0))
        self.register_buffer("high", torch.zeros(0))

    @property
    def is_initialized(self) -> bool:
        """Whether any batch was seen: read from the buffer's shape, never its values, so
        ``torch.compile(fullgraph=True)`` can trace it."""
        return self.high.numel() > 0

    def update(self, stat: Statistic) -> None:
        """Fold one batch's statistic into the aggregate."""
        low, high = _split(stat)
        with torch.no_grad():
            if not self.is_initialized:
                new_low, new_high = low, high
            else:
                new_low = None if low is None else self._combine(self.low, low)
                new_high = self._combine(self.high, high, upper=True)
            if new_low is not None:
                self.low = new_low.detach().clone()
            self.high = new_high.detach().clone()

    def value(self, needs: str) -> Statistic:
        """The aggregate: ``(min, max)`` when ``needs == "minmax"``, else the absolute maximum."""
        if needs == "minmax":
            return self.low, self.high
        return self.high

    def _combine(self, old: torch.Tensor, new: torch.Tensor, upper: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A float checkpoint has no observer state: leave the observer uncalibrated instead of
        # reporting missing keys. Buffers take the loaded shapes (they follow the first batch).
        if not any(key.startswith(prefix) for key in state_dict):
            return
        for name in ("low", "high"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LastBatchObserver(Observer):
    """Keeps the latest batch's statistic."""

    def _combine(self, old, new, upper=False):
        return new


class GlobalMinMaxObserver(Observer):
    """Running minimum of minima and maximum of maxima."""

    def _combine(self, old, new, upper=False):
        return torch.maximum(old, new) if upper else torch.minimum(old, new)


class EMAMinMaxObserver(Observer):
    """Exponential moving average ``(1 - momentum) * old + momentum * new``."""

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
    """Arithmetic mean of every batch's statistic (``count`` batches seen so far)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def update(self, stat: Statistic) -> None:
        with torch.no_grad():
            self.count += 1
        super().update(stat)

    def _combine(self, old, new, upper=False):
        return old + (new - old) / self.count.to(old.dtype)


OBSERVERS: Dict[str, Type[Observer]] = {
    "minmax": LastBatchObserver,
    "static": LastBatchObserver,
    "global_minmax": GlobalMinMaxObserver,
    "ema_minmax": EMAMinMaxObserver,
    "mean": MeanObserver,
}


def _split(stat: Statistic):
    if isinstance(stat, tuple):
        return stat
    return None, stat
