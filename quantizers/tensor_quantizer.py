"""The runtime quantizer: an ``nn.Module`` that turns a float tensor into a QuantTensor.

Data flows one way: range statistic (from the tensor itself, or an observer for static
activations) -> :class:`~quantizers.scaling.scalers.Scaler` -> :func:`~quantizers.fake_quant.fake_quantize`
in the granularity's layout -> QuantTensor. Quantizer classes of the zoo build these modules; the
module itself knows nothing about mixins.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from .fake_quant import fake_quantize
from .formats import IntFormat, NumberFormat
from .observers import Observer
from .scaling.granularity import Granularity
from .scaling.scalers import Scaler, Scales, Statistic
from .scaling.statistics import abs_percentile, min_max_percentile
from .tensor import (
    FloatQuantTensor,
    GroupwiseFloatQuantTensor,
    GroupwiseIntQuantTensor,
    IntQuantTensor,
    QuantTensor,
)

logger = logging.getLogger(__name__)

RANGE_METHODS = ("max", "percentile", "mse")


class TensorQuantizer(nn.Module):
    """Quantize tensors to ``fmt`` with scales shared per ``granularity``.

    Args:
        fmt: element format.
        granularity: which elements share a scale.
        scaler: statistic -> scales rule (bound to ``fmt``).
        range_method: ``"max"`` (absmax or min/max), ``"percentile"`` (clip at ``percentile``) or
            ``"mse"`` (pick, per scale, the clipping ratio among ``mse_ratios`` that minimises the
            squared quantization error).
        observer: for static activations, aggregates statistics over batches; ``None`` computes
            the statistic from every tensor it sees (weights, dynamic activations).
        rounding, saturating: passed to the format (``None``: the format's defaults).
    """

    def __init__(
        self,
        fmt: NumberFormat,
        granularity: Granularity,
        scaler: Scaler,
        range_method: str = "max",
        percentile: float = 99.999,
        mse_ratios: Optional[torch.Tensor] = None,
        observer: Optional[Observer] = None,
        rounding: Optional[str] = None,
        saturating: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if range_method not in RANGE_METHODS:
            raise ValueError(f"range_method={range_method!r} is unknown; allowed values: {', '.join(RANGE_METHODS)}")
        self.fmt = fmt
        self.granularity = granularity
        self.scaler = scaler
        self.range_method = range_method
        self.percentile = percentile
        self.mse_ratios = mse_ratios if mse_ratios is not None else torch.linspace(0.3, 1.0, 36)
        self.observer = observer
        self.rounding = rounding
        self.saturating = saturating
        self.calibrating = False
        self._warned_uncalibrated = False

    @property
    def is_static(self) -> bool:
        return self.observer is not None

    def extra_repr(self) -> str:
        return (
            f"fmt={getattr(self.fmt, 'name', self.fmt)}, granularity={self.granularity}, "
            f"scaler={type(self.scaler).__name__}, range_method={self.range_method!r}"
        )

    # ---- statistics --------------------------------------------------------------------------
    def statistic(self, x: torch.Tensor) -> Statistic:
        """This tensor's statistic, as the scaler needs it (absmax or (min, max))."""
        x = x.detach()
        if self.range_method == "percentile":
            if self.scaler.needs == "absmax":
                return abs_percentile(x, self.granularity, self.percentile)
            return min_max_percentile(x, self.granularity, self.percentile)
        if self.scaler.needs == "absmax":
            stat = self.granularity.amax(x)
        else:
            stat = self.granularity.min_max(x)
        if self.range_method == "mse":
            stat = self._mse_search(x, stat)
        return stat

    def _mse_search(self, x: torch.Tensor, stat: Statistic) -> Statistic:
        """Per scale, the clipping ratio r (statistic * r) with the least squared error."""
        layout = self.granularity.layout(x)
        dims = self.granularity.reduce_dims(x)
        best_error, best = None, stat
        for ratio in self.mse_ratios.tolist():
            candidate = tuple(s * ratio for s in stat) if isinstance(stat, tuple) else stat * ratio
            scales = self.scaler(candidate)
            error = (self._fake_quantize(layout, scales) - layout).pow(2)
            error = error.sum(dim=dims, keepdim=self.granularity.kind != "tensor") if dims else error
            if best_error is None:
                best_error, best = error, candidate
                continue
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            if isinstance(stat, tuple):
                best = tuple(torch.where(better, c, b) for c, b in zip(candidate, best))
            else:
                best = torch.where(better, candidate, best)
        return best

    def observed_statistic(self, x: torch.Tensor) -> Statistic:
        """The statistic used for ``x``: its own, or the observer's aggregate for static quantizers.

        A static quantizer updates its observer in training and calibration; in eval it uses the
        aggregate (falling back to the batch's own statistic, with a warning, if never calibrated).
        """
        stat = self.statistic(x)
        if self.observer is None:
            return stat
        if self.training or self.calibrating:
            self.observer.update(stat)
            return stat
        if not self.observer.is_initialized:
            if not self._warned_uncalibrated:
                logger.warning("static quantizer %s was never calibrated; using each batch's own range", self)
                self._warned_uncalibrated = True
            return stat
        return self.observer.value(stat)

    # ---- quantization ------------------------------------------------------------------------
    def _fake_quantize(self, layout: torch.Tensor, scales: Scales) -> torch.Tensor:
        scale = scales.effective_scale.to(layout.dtype)
        zero_point = None if scales.zero_point is None else scales.zero_point.to(layout.dtype)
        return fake_quantize(layout, scale, self.fmt, zero_point, self.rounding, self.saturating)

    def forward(self, x: torch.Tensor) -> QuantTensor:
        scales = self.scaler(self.observed_statistic(x))
        value_ = self._fake_quantize(self.granularity.layout(x), scales)
        return self._wrap(x, value_, scales)

    def _wrap(self, x: torch.Tensor, value_: torch.Tensor, scales: Scales) -> QuantTensor:
        integer = isinstance(self.fmt, IntFormat)
        zero_point = scales.zero_point if scales.zero_point is not None else torch.zeros_like(scales.scale)
        common = dict(value_=value_, scale_=scales.scale.to(value_.dtype), zero_point_=zero_point.to(value_.dtype), fmt=self.fmt)
        if self.granularity.is_grouped:
            cls = GroupwiseIntQuantTensor if integer else GroupwiseFloatQuantTensor
            return cls(
                **common,
                group_size=self.granularity.group_size,
                group_dim=self.granularity.resolve_axis(x.ndim),
                original_shape=x.shape,
                outer_scale_=scales.outer_scale,
                scale_format=scales.scale_format,
            )
        cls = IntQuantTensor if integer else FloatQuantTensor
        return cls(**common)
