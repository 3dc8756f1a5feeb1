"""The runtime quantizer: an ``nn.Module`` that turns a float tensor into a QuantTensor.

Data flows one way: range statistic (from the tensor itself, an observer, fixed ends or a learned
parameter, as :class:`RangeSource` says) -> :class:`~quantizers.scaling.scalers.Scaler` ->
:func:`~quantizers.fake_quant.fake_quantize` in the granularity's layout -> QuantTensor. Quantizer
classes of the zoo build these modules; the module itself knows nothing about mixins.
"""
from __future__ import annotations

import logging
from enum import Enum
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .compile import compiled, is_tracing
from .fake_quant import fake_quantize
from .formats import IntFormat, NumberFormat
from .formats.carrier import compute_dtype, widen
from .observers import Observer
from .scaling.granularity import Granularity, finite_or_zero
from .scaling.scalers import Scaler, Scales
from .scaling.statistics import (
    Range, Statistic, abs_percentile, mark_nonfinite_blocks, min_max_percentile, range_statistic,
)
from .tensor.grouping import from_groups
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


class RangeSource(str, Enum):
    """Where a :class:`TensorQuantizer` takes the range statistic its scales come from (its one
    runtime mode, the attribute ``range_source``; a ``str`` enum, so ``"frozen"`` works too).

    - ``TENSOR``: each tensor's own statistic (weights, dynamic activations).
    - ``OBSERVER``: a static activation quantizer in its normal mode. In training each batch updates
      the observer and is quantized with its own statistic; in eval the observer's aggregate is used
      and not updated (an observer never calibrated falls back to the batch's own statistic, with a
      warning).
    - ``OBSERVE``: calibration. The observer (if any) is updated and the input is returned
      **unquantized**, so later layers see float activations (Brevitas's ``calibration_mode``,
      torch.ao's observer pass).
    - ``OBSERVE_AND_QUANTIZE``: calibration that quantizes as it goes: the observer is updated and
      the batch quantized with its own statistic.
    - ``FROZEN``: the observer's aggregate, in training too, never updated (torch.ao's
      ``disable_observer``; set after calibration).
    - ``FIXED``: ``float_range`` fixes both ends; no statistic or calibration is needed.
    - ``LEARNED``: the ``learned_range`` parameter (LSQ/PACT-style); gradients reach it through
      ``scale = amax / max`` and the straight-through fake quantization. It starts from the
      observer's aggregate after calibration, or from the first tensor's own statistic (weights);
      until then the quantizer behaves as ``OBSERVER`` (static) or ``TENSOR``.

    Frozen scales (:meth:`TensorQuantizer.freeze_scales`, the weight case of freezing) override
    every source until :meth:`TensorQuantizer.unfreeze_scales`.
    """

    TENSOR = "tensor"
    OBSERVER = "observer"
    OBSERVE = "observe"
    OBSERVE_AND_QUANTIZE = "observe_and_quantize"
    FROZEN = "frozen"
    FIXED = "fixed"
    LEARNED = "learned"

    def __str__(self) -> str:
        return self.value


_NEEDS_OBSERVER = (RangeSource.OBSERVER, RangeSource.OBSERVE_AND_QUANTIZE, RangeSource.FROZEN)


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
        learned_scale: learn the range (:attr:`RangeSource.LEARNED`): registers the
            ``learned_range`` parameter (empty until it is initialised, see
            :meth:`init_learned_range`).

    The attribute ``range_source`` (a :class:`RangeSource`) is the runtime mode; it starts as
    ``LEARNED`` (``learned_scale``), ``FIXED`` (both ends of ``float_range``), ``OBSERVER`` (an
    observer) or ``TENSOR``, and the model tools (calibration, freezing) set it.

    **Frozen scales** (weights above all): :meth:`freeze_scales` keeps the scales a tensor gets
    now (scale, zero point, NVFP4's per-tensor scale, OCP MX shared exponents, MINVAL offset) in
    buffers ``frozen_scale``, ``frozen_zero_point``, ``frozen_outer_scale``, ``frozen_offset``
    (those the format has). While they exist they are used in place of any range the
    ``range_source`` would give, in training and eval; they are saved in ``state_dict`` and a
    checkpoint holding them freezes the quantizer it is loaded into; :meth:`unfreeze_scales`
    removes them. PTQ (GPTQ) freezes the scales it rounded the weight with, so the weight stays
    a fixed point of its quantizer::

        q = layer.weight_quant
        q.freeze_scales(layer.weight)   # scales of the current weight, kept
        layer.weight.data += 1e-3       # later changes no longer move the scales
        q.unfreeze_scales()             # back to the weight's own statistic
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
        learned_scale: bool = False,
    ) -> None:
        super().__init__()
        if range_method not in RANGE_METHODS:
            raise ValueError(f"range_method={range_method!r} is unknown; allowed values: {', '.join(RANGE_METHODS)}")
        if not isinstance(learned_scale, bool):
            raise TypeError(f"learned_scale must be a bool, got {learned_scale!r}")
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
        self._warned_uncalibrated = False
        self._warned_padding = False
        if learned_scale:
            self.range_source = RangeSource.LEARNED
        elif float_range is not None and None not in tuple(float_range):
            self.range_source = RangeSource.FIXED
        else:
            self.range_source = self.default_range_source

    # ---- range source ------------------------------------------------------------------------
    @property
    def range_source(self) -> RangeSource:
        """The runtime mode (see :class:`RangeSource`); assign a member or its string."""
        return self._range_source

    @range_source.setter
    def range_source(self, source: Union[RangeSource, str]) -> None:
        try:
            source = RangeSource(source)
        except ValueError:
            allowed = ", ".join(repr(s.value) for s in RangeSource)
            raise ValueError(f"range_source={source!r} is unknown; allowed values: {allowed}") from None
        if source in _NEEDS_OBSERVER and self.observer is None:
            raise ValueError(f"range_source={source.value!r} needs an observer; this quantizer has none ({self.extra_repr()})")
        if source is RangeSource.LEARNED and "learned_range" not in self._parameters:
            # a per-tensor range is stored with shape (1,) (FSDP refuses 0-d parameters)
            self.register_parameter("learned_range", nn.Parameter(torch.zeros(0)))
        self._range_source = source

    @property
    def default_range_source(self) -> RangeSource:
        """The mode without calibration, freezing, fixed or learned ranges: ``OBSERVER`` for a
        static quantizer, ``TENSOR`` otherwise."""
        return RangeSource.TENSOR if self.observer is None else RangeSource.OBSERVER

    @property
    def is_static(self) -> bool:
        return self.observer is not None

    # ---- frozen scales -----------------------------------------------------------------------
    @property
    def scales_frozen(self) -> bool:
        """True while frozen scales (see the class docstring) are in use."""
        return "frozen_scale" in self._buffers

    @property
    def frozen_scales(self) -> Optional[Scales]:
        """The frozen :class:`~quantizers.scaling.scalers.Scales`, or None when not frozen."""
        if not self.scales_frozen:
            return None
        part = lambda name: self._buffers.get("frozen_" + name)  # noqa: E731
        return Scales(part("scale"), part("zero_point"), part("outer_scale"), part("offset"))

    def freeze_scales(self, x: Optional[torch.Tensor] = None, *, scales: Optional[Scales] = None) -> Scales:
        """Keep scales in buffers until :meth:`unfreeze_scales`: those ``x`` gets now
        (:meth:`compute_scales`), or ``scales`` as given (shaped per scale, as :meth:`compute_scales`
        returns them). Returns the frozen scales."""
        if (x is None) == (scales is None):
            raise TypeError("freeze_scales takes either a tensor x or scales=..., exactly one of them")
        if scales is None:
            scales = self.compute_scales(x)
        if not isinstance(scales, Scales):
            raise TypeError(f"scales must be a quantizers.scaling.scalers.Scales, got {type(scales).__name__}")
        self.unfreeze_scales()
        for name in _FROZEN_PARTS:
            value = getattr(scales, name)
            if value is not None:
                self.register_buffer("frozen_" + name, value.detach().to(torch.float32).clone())
        return self.frozen_scales

    def unfreeze_scales(self) -> None:
        """Drop the frozen scales: the range source decides again."""
        for name in _FROZEN_PARTS:
            self._buffers.pop("frozen_" + name, None)

    def compute_scales(self, x: torch.Tensor, outer_scale: Optional[torch.Tensor] = None) -> Scales:
        """The scales ``x`` gets from the range :attr:`range_source` gives (frozen scales aside;
        an observer is not updated), shaped per scale (float32). ``outer_scale`` keeps a two-level
        scaler's per-tensor scale (NVFP4's global scale) and computes only the block scales."""
        source = self._range_source
        if source in (RangeSource.TENSOR, RangeSource.FIXED, RangeSource.OBSERVE, RangeSource.OBSERVE_AND_QUANTIZE) or (
            source is RangeSource.OBSERVER and not self.observer.is_initialized
        ):
            stat = self.statistic(x)
        else:
            stat = self.range_for(x)
        stat = widen_statistic(stat, x.dtype)
        if outer_scale is None:
            return self.scaler(stat)
        if not getattr(self.scaler, "two_level", False):
            raise ValueError(f"outer_scale is given, but this quantizer's scale rule ({type(self.scaler).__name__}) has no per-tensor outer scale")
        return self.scaler.with_outer_scale(stat, outer_scale)

    def element_scales(self, scales: Scales, shape: Sequence[int]) -> Scales:
        """``scales`` (shaped per scale, for a tensor of ``shape``) as one value per element of
        ``shape``: the effective scale (outer scale folded in), zero point and offset, so that
        :meth:`quantize_elements` can quantize any subset of the elements."""
        shape = torch.Size(shape)
        spread = lambda t: None if t is None else self._per_element(t, shape)  # noqa: E731
        return Scales(spread(scales.effective_scale), spread(scales.zero_point), None, spread(scales.offset))

    def _per_element(self, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        granularity = self.granularity
        if granularity.kind == "group":
            laid_out = granularity.layout(torch.empty(shape, device="meta")).shape
            return from_groups(value.expand(laid_out), granularity.resolve_axis(len(shape)), shape).contiguous()
        if granularity.kind == "tile":
            return granularity.from_layout(value, shape).contiguous()
        return value.expand(shape).contiguous()

    def quantize_elements(self, x: torch.Tensor, scales: Scales) -> torch.Tensor:
        """``x`` fake-quantized with scales that broadcast against ``x`` itself (element-wise, from
        :meth:`element_scales`): the same formula and rounding as :meth:`forward`, for any subset of
        a tensor's elements (GPTQ quantizes one column at a time this way)."""
        return self._fake_quantize(x, scales)

    def _quantize_frozen(self, x: torch.Tensor) -> QuantTensor:
        scales = self.frozen_scales
        layout = self.granularity.layout(x)
        for name in _FROZEN_PARTS:
            value = getattr(scales, name)
            if value is not None and name != "outer_scale" and not _broadcasts_to(value.shape, layout.shape):
                raise ValueError(
                    f"frozen scales of shape {tuple(value.shape)} do not fit a tensor of shape {tuple(x.shape)} "
                    f"(layout {tuple(layout.shape)}, granularity {self.granularity}); unfreeze_scales() or freeze them for this tensor"
                )
        return self._wrap(x, self._fake_quantize(layout, scales), scales)

    def extra_repr(self) -> str:
        text = (
            f"fmt={getattr(self.fmt, 'name', self.fmt)}, granularity={self.granularity}, "
            f"scaler={type(self.scaler).__name__}, range_method={self.range_method!r}"
        )
        if getattr(self, "_range_source", None) is not None and self._range_source is not self.default_range_source:
            text += f", range_source={self._range_source.value}"
        if self.float_range is not None:
            text += f", float_range={self.float_range}"
        if self.scales_frozen:
            text += ", scales frozen"
        return text

    # ---- statistics --------------------------------------------------------------------------
    def statistic(self, x: torch.Tensor) -> Statistic:
        """This tensor's statistic, as the scaler needs it (absmax or (min, max)), over its finite
        elements (NaN/Inf blocks marked for block scales: the policy of :mod:`quantizers.scaling`),
        computed in float32 for float16/bfloat16 input."""
        # Every reduction below reads NaN and ±Inf as 0 itself (amax, min_max, percentile, the MSE
        # search), so no finite copy of the whole tensor is made.
        raw = widen(x.detach())
        if self.range_method == "percentile":
            if self.scaler.needs == "absmax":
                stat = abs_percentile(raw, self.granularity, self.percentile)
            else:
                stat = min_max_percentile(raw, self.granularity, self.percentile)
        else:
            stat = _range_statistic(raw, self.granularity, self.scaler.needs)
            if self.range_method == "mse":
                stat = self._mse_search(raw, stat)
        stat = self._fixed_range(raw, stat)
        return mark_nonfinite_blocks(stat, raw, self.granularity) if self.scaler.nan_blocks else stat

    def _fixed_range(self, x: torch.Tensor, stat: Statistic) -> Statistic:
        """``stat`` with the ends fixed by ``float_range`` (the free end from the data)."""
        if self.float_range is None:
            return stat
        low, high = self.float_range
        if isinstance(stat, tuple):
            lo, hi = stat
            return Range(lo if low is None else torch.full_like(lo, low), hi if high is None else torch.full_like(hi, high))
        if low is not None and high is not None:
            return torch.full_like(stat, max(-low, high))
        lo, hi = self.granularity.min_max(x)
        lo = lo if low is None else torch.full_like(lo, low)
        hi = hi if high is None else torch.full_like(hi, high)
        return torch.maximum(-lo, hi).to(stat.dtype)

    def _mse_search(self, x: torch.Tensor, stat: Statistic) -> Statistic:
        """Per scale, the clipping ratio r (statistic * r) among ``mse_ratios`` with the least
        squared quantization error, NaN and ±Inf elements of ``x`` read as 0.

        A per-tensor search scores every candidate at once on an evenly strided sample of at most
        ``MSE_SAMPLE_SIZE`` elements, so its cost does not grow with the tensor; finer
        granularities score one candidate at a time on the whole tensor."""
        ratios = self.mse_ratios.to(device=x.device)
        if self.granularity.kind == "tensor":
            sample = x.reshape(-1)
            if sample.numel() > MSE_SAMPLE_SIZE:
                sample = sample[:: sample.numel() // MSE_SAMPLE_SIZE]
            sample = finite_or_zero(sample.contiguous())
            best = _best_per_tensor_ratio(sample, stat, ratios.to(sample.dtype), self.scaler, self.fmt, self.rounding, self.saturating)
            return Range(*(s * best for s in stat)) if isinstance(stat, tuple) else stat * best
        x = finite_or_zero(x)
        layout = self.granularity.layout(x)
        dims = self.granularity.reduce_dims(x)
        best_error, best = None, stat
        for ratio in ratios.tolist():
            candidate = Range(*(s * ratio for s in stat)) if isinstance(stat, tuple) else stat * ratio
            error = (self._fake_quantize(layout, self.scaler(candidate)) - layout).pow(2).sum(dim=dims, keepdim=True)
            if best_error is None:
                best_error, best = error, candidate
                continue
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            if isinstance(stat, tuple):
                best = Range(*(torch.where(better, c, b) for c, b in zip(candidate, best)))
            else:
                best = torch.where(better, candidate, best)
        return best

    def range_for(self, x: torch.Tensor) -> Statistic:
        """The statistic that quantizes ``x`` under the current :attr:`range_source` (updating
        the observer where the source says so)."""
        source = self._range_source
        if source is RangeSource.LEARNED:
            if self.learned_range.numel() == 0 and self.observer is None and not is_tracing():
                self.init_learned_range(x)  # a weight's range starts from the weight itself
            if self.learned_range.numel() > 0:
                if self.training:
                    self._mirror_learned_range()
                return self._learned_statistic()
            source = self.default_range_source  # static and not calibrated yet
        if source is RangeSource.TENSOR or source is RangeSource.FIXED:
            return self.statistic(x)
        if source is RangeSource.OBSERVE_AND_QUANTIZE or source is RangeSource.OBSERVE or (
            source is RangeSource.OBSERVER and self.training
        ):
            return self._observe(x)
        if self.observer.is_initialized:  # OBSERVER in eval, FROZEN
            return self.observer.value(self.scaler.needs)
        if not self._warned_uncalibrated and not is_tracing():
            logger.warning(
                "static quantizer (%s) was never calibrated; using each batch's own range "
                "(run qlayers.calibrate first)", self.extra_repr(),
            )
            self._warned_uncalibrated = True
        return self.statistic(x)

    def _observe(self, x: torch.Tensor) -> Statistic:
        stat = self.statistic(x)
        if self.observer is not None:
            self.observer.update(stat)
        return stat

    # ---- learned range -----------------------------------------------------------------------
    def init_learned_range(self, tensor: Optional[torch.Tensor] = None) -> bool:
        """Fill an empty learned range from ``tensor``'s own statistic (e.g. the weight) or, without
        one, from the calibrated observer; True if the learned range is set. Initialise it before
        building the optimizer or a ``DistributedDataParallel`` wrapper: its shape (per scale) is
        known only then (:func:`qlayers.quantize_model` does it for weights)."""
        if self._range_source is not RangeSource.LEARNED:
            return False
        if self.learned_range.numel() == 0:
            if tensor is not None:
                stat = self.statistic(tensor)
            elif self.observer is not None and self.observer.is_initialized:
                stat = self.observer.value(self.scaler.needs)
            else:
                return False
            with torch.no_grad():
                self.learned_range.data = _stack(stat).to(self.learned_range.device)
        return True

    def _learned_statistic(self) -> Statistic:
        value = self.learned_range
        if self.scaler.needs == "minmax":
            return Range(value[0], value[1])
        return value.abs().reshape(()) if self.granularity.kind == "tensor" else value.abs()

    def _mirror_learned_range(self) -> None:
        # The observer follows the learned range (as of the last training step), so what reads the
        # aggregate (range reports, summaries) sees the learned value.
        if self.observer is None:
            return
        with torch.no_grad():
            stat = self._learned_statistic()
            if isinstance(stat, tuple):
                self.observer.low, stat = stat[0].detach().clone(), stat[1]
            self.observer.high = stat.detach().clone()

    # ---- state -------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        error_msgs.extend(self._state_shape_errors(state_dict, prefix))
        if any(prefix + "frozen_" + name in state_dict for name in _FROZEN_PARTS):  # a frozen checkpoint freezes
            self.unfreeze_scales()
            for name in _FROZEN_PARTS:
                if prefix + "frozen_" + name in state_dict:
                    value = state_dict[prefix + "frozen_" + name]
                    self.register_buffer("frozen_" + name, torch.empty_like(value, dtype=torch.float32, device=_device_of(self, value)))
        key = prefix + "learned_range"
        if "learned_range" in self._parameters and key in state_dict:
            self.learned_range.data = torch.empty_like(state_dict[key], device=self.learned_range.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _state_shape_errors(self, state_dict, prefix) -> List[str]:
        """Size-mismatch messages (as ``load_state_dict`` reports them) for observer statistics and
        learned ranges whose shape does not fit this quantizer.

        Checked: an initialised state must keep its shape; before the first batch the exact
        per-channel shape is unknown, so a per-tensor quantizer accepts only 0-d statistics (a
        learned range of one value, two for ``(min, max)``) and a per-channel one only statistics
        of at least one dimension with at most one dimension (the channel axis) longer than 1; an
        asymmetric quantizer needs ``observer.low`` shaped like ``observer.high``. Empty tensors
        (an uncalibrated checkpoint) always load."""
        errors = []
        kind = self.granularity.kind
        if self.observer is not None:
            loaded = {n: tuple(state_dict[prefix + "observer." + n].shape) for n in ("low", "high") if prefix + "observer." + n in state_dict}
            for name, shape in loaded.items():
                key = f"{prefix}observer.{name}"
                current = tuple(getattr(self.observer, name).shape)
                if shape == (0,):
                    continue
                if current != (0,) and shape != current:
                    errors.append(f"size mismatch for {key}: copying a statistic with shape {shape} from checkpoint, the shape in current model is {current}.")
                elif kind == "tensor" and shape != ():
                    errors.append(f"size mismatch for {key}: copying a statistic with shape {shape} from checkpoint into a per-tensor quantizer, which keeps 0-d statistics.")
                elif kind != "tensor" and not _fits_per_scale(shape, self.granularity):
                    errors.append(
                        f"size mismatch for {key}: copying a statistic with shape {shape} from checkpoint into a "
                        f"{kind} quantizer (axis {self.granularity.axis}), which keeps one value per {kind} "
                        "(a shape with at least one dimension, longer than 1 only along its axis)."
                    )
            high = loaded.get("high", tuple(self.observer.high.shape))
            low = loaded.get("low", tuple(self.observer.low.shape))
            if self.scaler.needs == "minmax" and high != (0,) and low != high:
                errors.append(
                    f"size mismatch for {prefix}observer.low: an asymmetric quantizer needs (min, max) statistics, "
                    f"but the checkpoint has observer.low of shape {low} for observer.high of shape {high} "
                    "(statistics of a symmetric quantizer?)."
                )
        key = prefix + "learned_range"
        if "learned_range" in self._parameters and key in state_dict:
            shape, current = tuple(state_dict[key].shape), tuple(self.learned_range.shape)
            values = 2 if self.scaler.needs == "minmax" else 1
            if shape != (0,) and current != (0,) and shape != current:
                errors.append(f"size mismatch for {key}: copying a param with shape {shape} from checkpoint, the shape in current model is {current}.")
            elif shape != (0,) and kind == "tensor" and shape != (values,):
                errors.append(f"size mismatch for {key}: copying a param with shape {shape} from checkpoint into a per-tensor quantizer, which keeps shape ({values},).")
        return errors

    # ---- quantization ------------------------------------------------------------------------
    def _fake_quantize(self, layout: torch.Tensor, scales: Scales, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return fake_quantize_layout(layout, scales, self.fmt, self.rounding, self.saturating, generator)

    def _warn_if_mostly_padding(self, x: torch.Tensor) -> None:
        granularity = self.granularity
        if not granularity.is_grouped or self._warned_padding or is_tracing() or x.ndim == 0:
            return
        length = x.shape[granularity.resolve_axis(x.ndim)]
        if 0 < length < granularity.group_size:
            logger.warning(
                "%s: groups of %d along a dimension of only %d elements are mostly zero padding "
                "(packed storage grows, every element gets its own scale); use a smaller group_size "
                "or another format for this tensor", self.extra_repr(), granularity.group_size, length,
            )
            self._warned_padding = True

    def forward(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None, static_shape: bool = False
    ) -> Union[QuantTensor, torch.Tensor]:
        """``x`` quantized with the range :attr:`range_source` gives; under ``OBSERVE`` (calibration
        without quantization) ``x`` itself, after updating the observer. ``generator`` draws the
        noise of ``rounding="stochastic"`` (default: torch's global generator). ``static_shape=True``
        says ``x``'s shape never changes (a weight), which selects shape-specialised compiled
        kernels (see :func:`quantize_from_own_range`)."""
        self._warn_if_mostly_padding(x)
        if self.scales_frozen:
            return self._quantize_frozen(x)
        source = self._range_source
        if source is RangeSource.OBSERVE:
            self._observe(x)
            return x
        if source is RangeSource.TENSOR and self.range_method == "max" and self.rounding != "stochastic" and self.float_range is None:
            value_, scales = quantize_from_own_range(
                x, self.fmt, self.granularity, self.scaler, self.rounding, self.saturating, static_shape
            )
            return self._wrap(x, value_, scales)
        return self.quantize_with(x, self.range_for(x), generator)

    def quantize_with(self, x: torch.Tensor, stat: Statistic, generator: Optional[torch.Generator] = None) -> QuantTensor:
        """Quantize ``x`` with the scales this quantizer's rule derives from ``stat`` (an absolute
        maximum, or ``(min, max)``, shaped per scale): the extension point for code that supplies
        its own ranges (fixed, learned or frozen). Statistics, scales and ``x / s`` are computed in
        float32 for float16/bfloat16/float32 inputs (float64 for float64); ``value_`` comes back in
        ``x``'s dtype, cast once (see :mod:`quantizers.fake_quant`), and ``scale_`` stays float32."""
        scales = self.scaler(widen_statistic(stat, x.dtype))
        value_ = self._fake_quantize(self.granularity.layout(x), scales, generator)
        return self._wrap(x, value_, scales)

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


_FROZEN_PARTS = ("scale", "zero_point", "outer_scale", "offset")


def fake_quantize_layout(
    layout: torch.Tensor, scales: Scales, fmt: NumberFormat, rounding: Optional[str], saturating: Optional[bool],
    generator: Optional[torch.Generator] = None, bounded_product: bool = False,
) -> torch.Tensor:
    """Fake-quantize ``layout`` (the granularity's layout of a tensor) with ``scales``, fused
    (eagerly for ``rounding="stochastic"``, whose noise comes from ``generator``), computed in
    float32 (float64 for float64) and returned in ``layout``'s dtype; ``bounded_product`` as in
    :func:`~quantizers.fake_quant.fake_quantize` (scales from ``layout``'s own statistic)."""
    work = compute_dtype(layout.dtype)
    scale = scales.effective_scale.to(work)
    zero_point = None if scales.zero_point is None else scales.zero_point.to(work)
    offset = None if scales.offset is None else scales.offset.to(work)
    if rounding == "stochastic":
        return fake_quantize(layout, scale, fmt, zero_point, rounding, saturating, generator, offset, bounded_product)
    return _fused_fake_quantize(layout, scale, fmt, zero_point, rounding, saturating, None, offset, bounded_product)


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


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _device_of(module: nn.Module, default: torch.Tensor) -> torch.device:
    """The device of ``module``'s tensors (``default``'s when it has none)."""
    return next(iter(module.buffers()), next(iter(module.parameters()), default)).device


def _stack(stat: Statistic) -> torch.Tensor:
    """A statistic as one tensor of at least one dimension: ``(min, max)`` stacked on a new first
    axis, an absmax as it is (0-d as shape (1,))."""
    if isinstance(stat, tuple):
        return torch.stack([stat[0].detach(), stat[1].detach()]).clone()
    return stat.detach().clone().reshape(stat.shape or (1,))


def _fits_per_scale(shape: Tuple[int, ...], granularity: Granularity) -> bool:
    """Whether a statistic of ``shape`` can come from ``granularity`` (not per-tensor): at least one
    dimension, and for ``"channel"`` longer than 1 only along the channel axis."""
    if len(shape) == 0:
        return False
    if granularity.kind != "channel":
        return True
    try:
        axis = granularity.resolve_axis(len(shape))
    except ValueError:
        return False
    return all(n == 1 for d, n in enumerate(shape) if d != axis)


_range_statistic = compiled(range_statistic)


def widen_statistic(stat: Statistic, dtype: torch.dtype) -> Statistic:
    """``stat`` in the compute dtype of inputs of ``dtype`` (an observer's buffers or a learned range
    may have been cast to float16/bfloat16 by ``module.half()``; the scale is still computed in
    float32)."""
    work = compute_dtype(dtype)
    if isinstance(stat, tuple):
        return Range(*(s.to(work) for s in stat))
    return stat.to(work)


def _quantize_from_own_range(x, fmt, granularity, scaler, rounding, saturating):
    stat = range_statistic(widen(x.detach()), granularity, scaler.needs, scaler.nan_blocks)
    scales = scaler(stat)
    value_ = fake_quantize_layout(granularity.layout(x), scales, fmt, rounding, saturating, bounded_product=scaler.bounded_product)
    return value_, scales.scale, scales.zero_point, scales.outer_scale, scales.offset


# Weights keep their shapes: static graphs let inductor keep group sizes static and write QAT
# gradients in place; activations change shape (batch, sequence) and use automatic dynamic shapes.
_fused_static_shape = compiled(_quantize_from_own_range, dynamic=False)
_fused_dynamic_shape = compiled(_quantize_from_own_range)


def quantize_from_own_range(
    x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, scaler: Scaler,
    rounding: Optional[str], saturating: Optional[bool], static_shape: bool = False,
) -> Tuple[torch.Tensor, Scales]:
    """Statistic, scales and fake quantization of a weight or dynamic activation in one fused
    kernel (see :mod:`quantizers.compile`): ``(value_, scales)``. ``static_shape=True`` (the
    caller's word that ``x`` is a weight, whose shape never changes) compiles one graph per
    shape; otherwise shapes become dynamic once a second shape is seen."""
    kernel = _fused_static_shape if static_shape else _fused_dynamic_shape
    value_, scale, zero_point, outer_scale, offset = kernel(x, fmt, granularity, scaler, rounding, saturating)
    return value_, Scales(scale, zero_point, outer_scale, offset)
