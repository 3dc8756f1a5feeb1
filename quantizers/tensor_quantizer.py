"""The runtime quantizer: an ``nn.Module`` that turns a float tensor into a QuantTensor.

Data flows one way: range statistic (from the tensor itself, or an observer for static
activations) -> :class:`~quantizers.scaling.scalers.Scaler` -> :func:`~quantizers.fake_quant.fake_quantize`
in the granularity's layout -> QuantTensor. Quantizer classes of the zoo build these modules; the
module itself knows nothing about mixins.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import nn

from .compile import compiled
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
MSE_SAMPLE_SIZE = 65536


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
        float_range: fixed ``(min, max)`` ends of the range that override the statistics
            (coreai_opt's ``float_range``); either end may be ``None`` to take it from the data.
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
        float_range: Optional[Tuple[Optional[float], Optional[float]]] = None,
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
        self.float_range = float_range
        self.calibrating = False
        self._warned_uncalibrated = False
        self._warned_padding = False

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
                stat = abs_percentile(x, self.granularity, self.percentile)
            else:
                stat = min_max_percentile(x, self.granularity, self.percentile)
        else:
            stat = _range_statistic(x, self.granularity, self.scaler.needs)
            if self.range_method == "mse":
                stat = self._mse_search(x, stat)
        return self._fixed_range(x, stat)

    def _fixed_range(self, x: torch.Tensor, stat: Statistic) -> Statistic:
        """``stat`` with the ends fixed by ``float_range`` (the free end from the data)."""
        if self.float_range is None:
            return stat
        low, high = self.float_range
        if isinstance(stat, tuple):
            lo, hi = stat
            return (lo if low is None else torch.full_like(lo, low), hi if high is None else torch.full_like(hi, high))
        if low is not None and high is not None:
            return torch.full_like(stat, max(-low, high))
        lo, hi = self.granularity.min_max(x)
        lo = lo if low is None else torch.full_like(lo, low)
        hi = hi if high is None else torch.full_like(hi, high)
        return torch.maximum(-lo, hi).to(stat.dtype)

    def _mse_search(self, x: torch.Tensor, stat: Statistic) -> Statistic:
        """Per scale, the clipping ratio r (statistic * r) among ``mse_ratios`` with the least
        squared quantization error.

        A per-tensor search scores every candidate at once on an evenly strided sample of at most
        ``MSE_SAMPLE_SIZE`` elements, so its cost does not grow with the tensor; finer
        granularities score one candidate at a time on the whole tensor."""
        ratios = self.mse_ratios.to(device=x.device)
        if self.granularity.kind == "tensor":
            sample = x.reshape(-1)
            if sample.numel() > MSE_SAMPLE_SIZE:
                sample = sample[:: sample.numel() // MSE_SAMPLE_SIZE].contiguous()
            best = _best_per_tensor_ratio(sample, stat, ratios.to(sample.dtype), self.scaler, self.fmt, self.rounding, self.saturating)
            return tuple(s * best for s in stat) if isinstance(stat, tuple) else stat * best
        layout = self.granularity.layout(x)
        dims = self.granularity.reduce_dims(x)
        best_error, best = None, stat
        for ratio in ratios.tolist():
            candidate = tuple(s * ratio for s in stat) if isinstance(stat, tuple) else stat * ratio
            error = (self._fake_quantize(layout, self.scaler(candidate)) - layout).pow(2).sum(dim=dims, keepdim=True)
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

        A static quantizer updates its observer in training and calibration (and uses the batch's
        own statistic then); in eval it uses the aggregate without looking at the batch, falling
        back to the batch's own statistic, with a warning, if it was never calibrated.
        """
        if self.observer is None:
            return self.statistic(x)
        if self.training or self.calibrating:
            stat = self.statistic(x)
            self.observer.update(stat)
            return stat
        if self.observer.is_initialized:
            return self.observer.value(self.scaler.needs)
        if not self._warned_uncalibrated and not torch.compiler.is_compiling():
            logger.warning("static quantizer %s was never calibrated; using each batch's own range", self)
            self._warned_uncalibrated = True
        return self.statistic(x)

    # ---- quantization ------------------------------------------------------------------------
    def _fake_quantize(self, layout: torch.Tensor, scales: Scales) -> torch.Tensor:
        return fake_quantize_layout(layout, scales, self.fmt, self.rounding, self.saturating)

    def _warn_if_mostly_padding(self, x: torch.Tensor) -> None:
        granularity = self.granularity
        if not granularity.is_grouped or self._warned_padding or torch.compiler.is_compiling() or x.ndim == 0:
            return
        length = x.shape[granularity.resolve_axis(x.ndim)]
        if 0 < length < granularity.group_size:
            logger.warning(
                "%s: groups of %d along a dimension of only %d elements are mostly zero padding "
                "(packed storage grows, every element gets its own scale); use a smaller group_size "
                "or another format for this tensor", self.extra_repr(), granularity.group_size, length,
            )
            self._warned_padding = True

    def forward(self, x: torch.Tensor) -> QuantTensor:
        self._warn_if_mostly_padding(x)
        if self.observer is None and self.range_method == "max" and self.rounding != "stochastic" and self.float_range is None:
            work = x.float() if x.dtype == torch.float16 else x
            value_, scales = quantize_from_own_range(work, self.fmt, self.granularity, self.scaler, self.rounding, self.saturating)
            return self._wrap(work, value_.to(x.dtype), scales)
        return self.quantize_with(x, self.observed_statistic(x))

    def quantize_with(self, x: torch.Tensor, stat: Statistic) -> QuantTensor:
        """Quantize ``x`` with the scales this quantizer's rule derives from ``stat`` (an absolute
        maximum, or ``(min, max)``, shaped per scale): the extension point for code that supplies
        its own ranges (fixed, learned or frozen). float16 inputs are computed in float32 (float16
        cannot hold scales such as 2^-127) and come back as float16."""
        work = x.float() if x.dtype == torch.float16 else x
        scales = self.scaler(stat)
        value_ = self._fake_quantize(self.granularity.layout(work), scales)
        return self._wrap(work, value_.to(x.dtype), scales)

    def _wrap(self, x: torch.Tensor, value_: torch.Tensor, scales: Scales) -> QuantTensor:
        integer = isinstance(self.fmt, IntFormat)
        zero_point = scales.affine_zero_point
        common = dict(value_=value_, scale_=scales.scale, zero_point_=zero_point, fmt=self.fmt)
        if self.granularity.is_grouped:
            cls = GroupwiseIntQuantTensor if integer else GroupwiseFloatQuantTensor
            return cls(
                **common,
                group_size=self.granularity.group_size,
                group_dim=self.granularity.resolve_axis(x.ndim),
                original_shape=x.shape,
                outer_scale_=scales.outer_scale,
                scale_format=self.scaler.scale_format,
            )
        cls = IntQuantTensor if integer else FloatQuantTensor
        if self.granularity.kind == "tile":  # back to the tensor's shape, scales element-wise
            untile = self.granularity.from_layout
            common.update(
                value_=untile(value_, x.shape),
                scale_=untile(scales.effective_scale, x.shape),
                zero_point_=None if zero_point is None else untile(zero_point, x.shape),
            )
        return cls(**common)


def fake_quantize_layout(
    layout: torch.Tensor, scales: Scales, fmt: NumberFormat, rounding: Optional[str], saturating: Optional[bool]
) -> torch.Tensor:
    """Fake-quantize ``layout`` (the granularity's layout of a tensor) with ``scales``, fused."""
    scale = scales.effective_scale.to(layout.dtype)
    zero_point = None if scales.zero_point is None else scales.zero_point.to(layout.dtype)
    offset = None if scales.offset is None else scales.offset.to(layout.dtype)
    kernel = fake_quantize if rounding == "stochastic" else _fused_fake_quantize
    return kernel(layout, scale, fmt, zero_point, rounding, saturating, None, offset)


_fused_fake_quantize = compiled(fake_quantize)


@compiled
def _best_per_tensor_ratio(sample, stat, ratios, scaler, fmt, rounding, saturating):
    """The ratio (0-d tensor) whose per-tensor candidate ``stat * ratio`` quantizes ``sample`` with
    the least squared error; candidates are scored together (the first wins ties)."""
    if isinstance(stat, tuple):
        candidates = tuple(s * ratios for s in stat)
    else:
        candidates = stat * ratios
    scales = scaler(candidates)
    scale = scales.effective_scale[:, None].to(sample.dtype)
    zero_point = None if scales.zero_point is None else scales.zero_point[:, None].to(sample.dtype)
    quantized = fake_quantize(sample[None, :], scale, fmt, zero_point, rounding, saturating)
    errors = torch.nan_to_num((quantized - sample[None, :]).pow(2).sum(dim=1), nan=torch.inf)
    return ratios.gather(0, torch.argmin(errors).reshape(1)).reshape(())


def range_statistic(x: torch.Tensor, granularity: Granularity, needs: str) -> Statistic:
    """``granularity.amax(x)`` or ``granularity.min_max(x)``, as ``needs`` says."""
    return granularity.amax(x) if needs == "absmax" else granularity.min_max(x)


_range_statistic = compiled(range_statistic)


def _quantize_from_own_range(x, fmt, granularity, scaler, rounding, saturating):
    stat = range_statistic(x.detach(), granularity, scaler.needs)
    scales = scaler(stat)
    value_ = fake_quantize_layout(granularity.layout(x), scales, fmt, rounding, saturating)
    return value_, scales.scale, scales.zero_point, scales.outer_scale, scales.offset


# Parameters keep their shapes: static graphs let inductor keep group sizes static and write QAT
# gradients in place; activations change shape (batch, sequence) and use automatic dynamic shapes.
_fused_for_parameters = compiled(_quantize_from_own_range, dynamic=False)
_fused_for_activations = compiled(_quantize_from_own_range)


def quantize_from_own_range(
    x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, scaler: Scaler,
    rounding: Optional[str], saturating: Optional[bool],
) -> Tuple[torch.Tensor, Scales]:
    """Statistic, scales and fake quantization of a weight or dynamic activation in one fused
    kernel (see :mod:`quantizers.compile`): ``(value_, scales)``."""
    kernel = _fused_for_parameters if isinstance(x, nn.Parameter) else _fused_for_activations
    value_, scale, zero_point, outer_scale, offset = kernel(x, fmt, granularity, scaler, rounding, saturating)
    return value_, Scales(scale, zero_point, outer_scale, offset)
