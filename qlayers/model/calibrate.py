"""Calibration: collecting the ranges of static activation quantizers before inference or QAT.

During calibration the model is in eval mode and every static quantizer (one with an observer)
feeds each batch's statistic to its observer. By default activations are **not** quantized while
calibrating (``quantize=False``): observers see the float network's activations, as in Brevitas's
``calibration_mode`` and torch.ao's observer pass; weights stay quantized, and biases quantized at
input scale x weight scale are left float. ``quantize=True`` quantizes as it goes (each layer then
sees its quantized predecessors; ranges of uncalibrated quantizers come from each batch).

When calibration ends, each calibrated quantizer is *frozen*: it uses its observer's aggregate in
eval **and** in training (QAT) and stops updating it (:func:`unfreeze_observers` undoes that), and
learned ranges (``learned_scale``) start from the aggregate. Calibrating again continues the
statistics; ``reset=True`` starts them afresh.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from quantizers import TensorQuantizer

from .control import ControlledTensorQuantizer, controlled
from .qat import disable_roles, quant_layers, restore

_STATE = "_qzoo_calibration"


def static_quantizers(model: nn.Module) -> Iterator[Tuple[str, TensorQuantizer]]:
    """``(name, quantizer)`` for every enabled quantizer of ``model`` that has an observer."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.observer is not None:
            yield name, module


def start_calibration(model: nn.Module, *, quantize: bool = False, reset: bool = False) -> None:
    """Put ``model`` in calibration (see the module docstring); :func:`finish_calibration` ends it."""
    if _STATE in model.__dict__:
        raise RuntimeError(f"{type(model).__name__} is already calibrating; call finish_calibration(model) first")
    state: Dict[str, Any] = {"training": [(m, m.training) for m in model.modules()], "disabled": []}
    model.eval()
    for _, quantizer in static_quantizers(model):
        controlled(quantizer)
        if reset:
            reset_observer(quantizer.observer)
        quantizer.calibrating, quantizer.frozen, quantizer.observe_only = True, False, not quantize
    if not quantize:
        for _, layer in quant_layers(model):
            if getattr(getattr(layer, "bias_quant", None), "requires_input_scale", False):
                state["disabled"] += disable_roles(layer, ["bias"])
    model.__dict__[_STATE] = state


def finish_calibration(model: nn.Module) -> "CalibrationReport":
    """End calibration: freeze calibrated quantizers, initialise learned ranges, restore modes."""
    state = model.__dict__.pop(_STATE, None)
    for _, quantizer in static_quantizers(model):
        quantizer.calibrating = False
        if isinstance(quantizer, ControlledTensorQuantizer):
            quantizer.observe_only = False
            if quantizer.observer.high.numel() > 0:
                quantizer.frozen = True
            quantizer.init_learned_range()
    if state is not None:
        for layer, role in state["disabled"]:
            restore(layer, role)
        for module, training in state["training"]:
            module.training = training
    return range_report(model)


@contextlib.contextmanager
def calibration_mode(model: nn.Module, *, quantize: bool = False, reset: bool = False):
    """Context manager: calibrate static activation quantizers with the batches run inside.

    Example::

        with torch.no_grad(), qlayers.calibration_mode(qmodel):
            for x, _ in loader:
                qmodel(x)
    """
    start_calibration(model, quantize=quantize, reset=reset)
    try:
        yield model
    finally:
        finish_calibration(model)


def calibrate(
    model: nn.Module,
    data: Iterable[Any],
    num_batches: Optional[int] = None,
    *,
    quantize: bool = False,
    reset: bool = False,
    forward: Optional[Callable[[nn.Module, Any], Any]] = None,
    progress: bool = True,
    verbose: bool = False,
) -> "CalibrationReport":
    """Run ``data`` (at most ``num_batches`` batches) through ``model`` in calibration mode and
    return the collected ranges (printed too with ``verbose=True``).

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
    with torch.no_grad(), calibration_mode(model, quantize=quantize, reset=reset):
        for batch in _progress(batches, total, progress):
            run(model, _to_device(batch, device))
    report = range_report(model)
    if verbose:
        print(report)
    return report


def freeze_observers(model: nn.Module) -> None:
    """Calibrated static quantizers use their aggregate in training too and stop updating it."""
    for _, quantizer in static_quantizers(model):
        controlled(quantizer).frozen = quantizer.observer.high.numel() > 0


def unfreeze_observers(model: nn.Module) -> None:
    """Static quantizers follow each training batch again (and update their observers)."""
    for _, quantizer in static_quantizers(model):
        controlled(quantizer).frozen = False


def reset_observer(observer: nn.Module) -> None:
    """Forget every statistic ``observer`` collected."""
    for name, buffer in list(observer.named_buffers(recurse=False)):
        if name in ("low", "high"):
            setattr(observer, name, torch.zeros(0, dtype=buffer.dtype, device=buffer.device))
        else:
            buffer.zero_()


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
        if observer.high.numel() == 0:
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


def _progress(batches: Iterable[Any], total: Optional[int], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return batches
    return tqdm(batches, total=total, desc="calibrating", leave=False)
