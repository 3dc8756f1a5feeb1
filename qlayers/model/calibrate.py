"""Calibration: collecting the ranges of static activation quantizers before inference or QAT.

During calibration the model is in eval mode and every static quantizer (one with an observer)
feeds each batch's statistic to its observer. By default calibration observes the **float
network**, as Brevitas's ``calibration_mode`` and torch.ao's observer pass do: activations are not
quantized (every activation quantizer passes its input through, static ones after observing it),
weight and bias quantization is off, so inside calibration the model computes exactly what the
float model computes. Two options change that:

- ``quantize_weights=True``: observe the weight-quantized network (weights and biases with their
  own scale quantized; a bias quantized at input scale x weight scale stays float, as there is no
  input scale yet);
- ``quantize=True``: quantize activations as they are observed (each layer then sees its quantized
  predecessors; ranges of uncalibrated quantizers come from each batch); weights are then
  quantized too unless ``quantize_weights=False``.

When calibration ends, each calibrated quantizer is *frozen* (range source
:attr:`~quantizers.RangeSource.FROZEN`): it uses its observer's aggregate in eval **and** in
training (QAT) and stops updating it (:func:`unfreeze_observers` undoes that), and learned ranges
(``learned_scale``) start from the aggregate. Calibrating again continues the statistics;
``reset=True`` starts them afresh. Calibrating with no data, or a model with no enabled static
quantizer (e.g. inside :func:`~qlayers.model.qat.quantization_disabled`), warns.

Under ``torch.distributed`` every rank calibrates on its own shard and the observers combine the
ranks' statistics (see :mod:`quantizers.observers`): every rank must run the same number of
batches.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from quantizers import RangeSource, TensorQuantizer
from quantizers.nonfinite import NonFiniteWatch, nonfinite_message

from .qat import WEIGHT_ROLES, activation_roles, disable_roles, disabled_quantizers, quant_layers, restore

_STATE = "_qzoo_calibration"


def static_quantizers(model: nn.Module) -> Iterator[Tuple[str, TensorQuantizer]]:
    """``(name, quantizer)`` for every enabled quantizer of ``model`` that has an observer."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.observer is not None:
            yield name, module


def start_calibration(
    model: nn.Module, *, quantize: bool = False, reset: bool = False, quantize_weights: Optional[bool] = None
) -> None:
    """Put ``model`` in calibration (see the module docstring); :func:`finish_calibration` ends it.
    ``quantize_weights`` defaults to ``quantize``."""
    if _STATE in model.__dict__:
        raise RuntimeError(f"{type(model).__name__} is already calibrating; call finish_calibration(model) first")
    quantize_weights = quantize if quantize_weights is None else quantize_weights
    state: Dict[str, Any] = {"training": [(m, m.training) for m in model.modules()], "disabled": [], "sources": []}
    model.eval()
    if not quantize_weights:
        for _, layer in quant_layers(model):
            state["disabled"] += disable_roles(layer, WEIGHT_ROLES)
    if not quantize:
        for _, layer in quant_layers(model):
            if getattr(getattr(layer, "bias_quant", None), "requires_input_scale", False):
                state["disabled"] += disable_roles(layer, ["bias"])
    observing = RangeSource.OBSERVE_AND_QUANTIZE if quantize else RangeSource.OBSERVE
    for _, quantizer in static_quantizers(model):
        if reset:
            quantizer.observer.reset()
        state["sources"].append((quantizer, quantizer.range_source))
        quantizer.range_source = observing
    if not quantize:  # dynamic activation quantizers pass the float activations through too
        for quantizer in _dynamic_activation_quantizers(model):
            state["sources"].append((quantizer, quantizer.range_source))
            quantizer.range_source = RangeSource.OBSERVE
    state["observed"] = [(q, _observer_state(q)) for q, _ in state["sources"] if q.observer is not None]
    if not state["observed"]:
        warnings.warn(_nothing_to_observe(model), UserWarning, stacklevel=_caller_level())
    state["nonfinite"] = NonFiniteWatch(static_quantizers(model))
    model.__dict__[_STATE] = state


def finish_calibration(model: nn.Module) -> "CalibrationReport":
    """End calibration: freeze calibrated quantizers, initialise learned ranges, restore modes."""
    return _finish(model, warn=True)


def _finish(model: nn.Module, warn: bool) -> "CalibrationReport":
    state = model.__dict__.pop(_STATE, None)
    if state is None:  # not calibrating: freeze what is calibrated (as the end of calibration does)
        sources = [(q, q.range_source) for _, q in static_quantizers(model)]
    else:
        sources = state["sources"]
    for quantizer, previous in sources:
        quantizer.range_source = _after_calibration(quantizer, previous)
    if state is not None:
        for layer, role in state["disabled"]:
            restore(layer, role)
        for module, training in state["training"]:
            module.training = training
        observed = state["observed"]
        if warn and observed and all(_observer_unchanged(q, before) for q, before in observed):
            warnings.warn(
                f"calibration of {type(model).__name__} observed no batch: no static quantizer saw any "
                "data (empty data loader, num_batches=0, or a forward that skips the quantized layers?); "
                "its activation ranges are unchanged",
                UserWarning, stacklevel=_caller_level(),
            )
        nonfinite = state["nonfinite"].close()
        if nonfinite:
            warnings.warn(nonfinite_message(nonfinite), RuntimeWarning, stacklevel=_caller_level())
    return range_report(model)


@contextlib.contextmanager
def calibration_mode(
    model: nn.Module, *, quantize: bool = False, reset: bool = False, quantize_weights: Optional[bool] = None
):
    """Context manager: calibrate static activation quantizers with the batches run inside.

    Example::

        with torch.no_grad(), qlayers.calibration_mode(qmodel):
            for x, _ in loader:
                qmodel(x)
    """
    start_calibration(model, quantize=quantize, reset=reset, quantize_weights=quantize_weights)
    try:
        yield model
    except BaseException:
        _finish(model, warn=False)  # restore the model; the error says what went wrong
        raise
    _finish(model, warn=True)


def calibrate(
    model: nn.Module,
    data: Iterable[Any],
    num_batches: Optional[int] = None,
    *,
    quantize: bool = False,
    quantize_weights: Optional[bool] = None,
    reset: bool = False,
    forward: Optional[Callable[[nn.Module, Any], Any]] = None,
    progress: bool = True,
    verbose: bool = False,
) -> "CalibrationReport":
    """Run ``data`` (at most ``num_batches`` batches) through ``model`` in calibration mode and
    return the collected ranges (printed too with ``verbose=True``).

    By default the float network is observed (see the module docstring): ``quantize_weights=True``
    observes the weight-quantized one, ``quantize=True`` the fully quantized one.

    A batch may be a tensor (``model(batch)``), a tuple/list whose first item is the input (as
    ``(inputs, targets)`` loaders give) or a dict (``model(**batch)``); ``forward(model, batch)``
    handles anything else. Tensors are moved to the model's device. Shows a tqdm progress bar when
    tqdm is installed and ``progress=True``.
    """
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0):
        raise TypeError(f"num_batches must be a non-negative int or None, got {num_batches!r}")
    run = forward or _default_forward
    device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), None)
    total = num_batches if num_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    batches = data if num_batches is None else itertools.islice(data, num_batches)
    with torch.no_grad(), calibration_mode(model, quantize=quantize, reset=reset, quantize_weights=quantize_weights):
        for batch in _progress(batches, total, progress):
            run(model, _to_device(batch, device))
    report = range_report(model)
    if verbose:
        print(report)
    return report


def freeze_observers(model: nn.Module) -> None:
    """Calibrated static quantizers use their aggregate in training too and stop updating it."""
    for _, quantizer in static_quantizers(model):
        if quantizer.range_source is RangeSource.OBSERVER and quantizer.observer.is_initialized:
            quantizer.range_source = RangeSource.FROZEN


def unfreeze_observers(model: nn.Module) -> None:
    """Static quantizers follow each training batch again (and update their observers)."""
    for _, quantizer in static_quantizers(model):
        if quantizer.range_source is RangeSource.FROZEN:
            quantizer.range_source = RangeSource.OBSERVER


def _after_calibration(quantizer: TensorQuantizer, previous: RangeSource) -> RangeSource:
    """The range source of ``quantizer`` once calibration ends (``previous``: before it began):
    learned ranges start from the aggregate, calibrated static quantizers freeze."""
    if previous is RangeSource.LEARNED:
        quantizer.range_source = previous
        quantizer.init_learned_range()
        return previous
    if previous in (RangeSource.TENSOR, RangeSource.FIXED):
        return previous
    if quantizer.observer is None:
        return quantizer.default_range_source
    return RangeSource.FROZEN if quantizer.observer.is_initialized else RangeSource.OBSERVER


def _dynamic_activation_quantizers(model: nn.Module) -> Iterator[TensorQuantizer]:
    for _, layer in quant_layers(model):
        for role in activation_roles(layer):
            quantizer = getattr(layer, f"{role}_quant", None)
            if isinstance(quantizer, TensorQuantizer) and quantizer.observer is None:
                yield quantizer


def _observer_state(quantizer: TensorQuantizer) -> Tuple[torch.Tensor, int]:
    """What changes when an observer takes a batch: its ``high`` buffer is replaced or written.
    The buffer itself is kept (not its ``id``, which a new buffer may reuse once it is freed)."""
    high = quantizer.observer.high
    return high, high._version


def _observer_unchanged(quantizer: TensorQuantizer, before: Tuple[torch.Tensor, int]) -> bool:
    high = quantizer.observer.high
    return high is before[0] and high._version == before[1]


def _nothing_to_observe(model: nn.Module) -> str:
    disabled = [
        name or type(layer).__name__ for name, layer in quant_layers(model)
        if any(getattr(q, "observer", None) is not None for q in disabled_quantizers(layer).values())
    ]
    text = f"calibration of {type(model).__name__} observes nothing: it has no enabled static (observer) quantizer"
    if disabled:
        more = " and others" if len(disabled) > 3 else ""
        text += (
            f"; the static quantizers of {', '.join(repr(n) for n in disabled[:3])}{more} are disabled "
            "(inside quantization_disabled, or after disable_quantization?)"
        )
    return text


def _caller_level() -> int:
    """The ``stacklevel`` of the user's frame, above calibrate / calibration_mode / contextlib."""
    frame, level = inspect.currentframe().f_back, 1  # level 1: the function that warns
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("qlayers.", "contextlib")):
        frame, level = frame.f_back, level + 1
    return level


# ---- report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RangeRow:
    """One static quantizer's collected range (over all its scales); ``None`` if uncalibrated."""

    name: str
    format: str
    granularity: str
    scales: int
    low: Optional[float]
    high: Optional[float]


@dataclass(frozen=True)
class CalibrationReport:
    """The collected ranges, one row per static quantizer; prints as a table."""

    rows: Tuple[RangeRow, ...]

    @property
    def ranges(self) -> Dict[str, Tuple[Optional[float], Optional[float]]]:
        return {row.name: (row.low, row.high) for row in self.rows}

    @property
    def uncalibrated(self) -> List[str]:
        return [row.name for row in self.rows if row.high is None]

    def __str__(self) -> str:
        header = ("quantizer", "format", "granularity", "scales", "min", "max")
        lines = [header] + [
            (r.name, r.format, r.granularity, str(r.scales), _num(r.low), _num(r.high)) for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        text.insert(1, "-" * len(text[0]))
        return "\n".join(text)

    __repr__ = __str__


def range_report(model: nn.Module) -> CalibrationReport:
    """The current ranges of every static quantizer of ``model``."""
    rows = []
    for name, quantizer in static_quantizers(model):
        observer = quantizer.observer
        fmt = getattr(quantizer.fmt, "name", str(quantizer.fmt))
        if not observer.is_initialized:
            rows.append(RangeRow(name, fmt, quantizer.granularity.kind, 0, None, None))
            continue
        high = observer.high.detach()
        if observer.low.numel():
            low = observer.low.detach()
        else:
            low = -high if getattr(quantizer.fmt, "signed", True) else torch.zeros_like(high)
        rows.append(RangeRow(name, fmt, quantizer.granularity.kind, high.numel(), float(low.min()), float(high.max())))
    return CalibrationReport(tuple(rows))


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.6g}"


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _to_device(batch: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _progress(batches: Iterable[Any], total: Optional[int], enabled: bool, desc: str = "calibrating") -> Iterable[Any]:
    if not enabled:
        return batches
    try:
        # Plain tqdm, not tqdm.auto: in Jupyter without ipywidgets tqdm.auto warns on import.
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, total=total, desc=desc, leave=False)
