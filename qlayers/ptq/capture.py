"""Capturing the inputs of quantized layers with forward hooks, and checking calibration data.

- :func:`check_data` runs the first batch once with hooks on every module and returns the order in
  which the target layers first run and how often each runs per forward. Empty data, an input on
  another device than the layer's weight or of the wrong shape raise ``ValueError`` naming the
  first failing layer (any other exception in that forward is re-raised naming the innermost
  module it happened in).
- :func:`capture_inputs` runs all batches and keeps the inputs of the named layers only (one
  layer's at a time in the layer-by-layer runner: memory-frugal). When every captured layer runs
  once per forward, the forward stops right after the last of them (an internal exception), so
  layers deep in the model cost less than a full forward.

A batch is a tensor (``model(batch)``), a tuple/list whose first item is the input, or a dict
(``model(**batch)``); ``forward(model, batch)`` handles anything else. Batches are not moved: the
data must be on the device of the layers it reaches.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..conv import QuantConvNd
from ..linear import QuantLinear
from ..model.calibrate import _default_forward
from ..quant_layer import dequantize

Forward = Optional[Callable[[nn.Module, Any], Any]]


class CalibrationDataError(ValueError):
    """Calibration data that does not fit the model (empty, wrong device or shape)."""


class _Stop(Exception):
    """Raised by a capture hook once everything needed from this forward is captured."""


def as_batches(data: Iterable[Any]) -> Sequence[Any]:
    """``data`` as something that can be iterated more than once (a one-shot iterator becomes a
    list; lists, tuples and DataLoaders are kept)."""
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be an iterable of batches (e.g. a list of tensors or a DataLoader), got a single tensor; wrap it: [x]")
    if not hasattr(data, "__iter__"):
        raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}")
    return list(data) if iter(data) is data else data


def first_batch(batches: Sequence[Any]) -> Any:
    """The first batch of :func:`as_batches`'s result (what one-batch probes run on)."""
    return batches[0] if isinstance(batches, (list, tuple)) else next(iter(batches))


def run_batch(model: nn.Module, batch: Any, forward: Forward = None) -> Any:
    """One forward of ``model`` on ``batch`` (see the module docstring)."""
    return (forward or _default_forward)(model, batch)


def input_problem(layer: nn.Module, x: Any) -> Optional[str]:
    """Why ``x`` cannot be this layer's input (device or shape), or None."""
    if not isinstance(x, torch.Tensor):
        return None
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and x.device != weight.device:
        return f"its input is on {x.device} but its weight is on {weight.device}; move the data to {weight.device}"
    if isinstance(layer, QuantLinear) and (x.ndim == 0 or x.shape[-1] != layer.in_features):
        return f"its input has shape {tuple(x.shape)}, but it needs (..., {layer.in_features}) (in_features={layer.in_features})"
    if isinstance(layer, QuantConvNd):
        spatial = len(layer.kernel_size)
        if x.ndim not in (spatial + 1, spatial + 2) or x.shape[-spatial - 1] != layer.in_channels:
            need = ", ".join(["N", str(layer.in_channels)] + ["..."] * spatial)
            return f"its input has shape {tuple(x.shape)}, but it needs ({need}) (in_channels={layer.in_channels})"
    return None


def first_input(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    x = args[0] if args else next(iter(kwargs.values()), None)
    return dequantize(x) if x is not None and not isinstance(x, (str, int, float)) else x


def check_data(
    model: nn.Module, data: Sequence[Any], targets: Mapping[str, nn.Module], forward: Forward = None
) -> Tuple[List[str], Dict[str, int]]:
    """Run the first batch with checking hooks; returns the target names in the order they first
    run and ``name -> calls per forward``. Raises ``ValueError`` (see the module docstring)."""
    first_target = next(iter(targets), "(none)")
    batch = next(iter(data), _EMPTY)
    if batch is _EMPTY:
        raise CalibrationDataError(f"calibration data is empty: no batch reaches layer {first_target!r}; give at least one batch")
    names = {id(m): n for n, m in model.named_modules()}
    stack: List[str] = []
    order: List[str] = []
    calls: Dict[str, int] = {name: 0 for name in targets}
    wanted = {id(m): n for n, m in targets.items()}

    def enter(module, args, kwargs):
        name = names.get(id(module), type(module).__name__)
        stack.append(name)
        if id(module) in wanted:
            problem = input_problem(module, first_input(args, kwargs))
            if problem is not None:
                raise CalibrationDataError(f"calibration data does not fit layer {name!r} ({type(module).__name__}): {problem}")
            calls[name] += 1
            if calls[name] == 1:
                order.append(name)

    def leave(module, args, kwargs, output):
        if stack:
            stack.pop()

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(module.register_forward_hook(leave, with_kwargs=True))
        with torch.no_grad():
            try:
                run_batch(model, batch, forward)
            except CalibrationDataError:
                raise
            except Exception as error:  # the model's own error, said with the layer it happened in
                where = stack[-1] if stack and stack[-1] else "(the model)"
                raise CalibrationDataError(f"calibration batch 0 fails in layer {where!r}: {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
    never = [name for name, n in calls.items() if n == 0]
    if never:
        raise CalibrationDataError(f"layer {never[0]!r} never runs on the calibration data (first batch), so it cannot be calibrated; "
                         "exclude it with layers=[...] or give data that reaches it")
    return order, calls


_EMPTY = object()


def capture_inputs(
    model: nn.Module, data: Sequence[Any], layers: Mapping[str, nn.Module], forward: Forward = None,
    stop_early: bool = True,
) -> Dict[str, List[torch.Tensor]]:
    """``name -> [input of each call]`` for ``layers`` over all batches (first positional input,
    dequantized, detached and cloned). With ``stop_early`` each forward stops once every layer has
    been called once (pass False when a layer runs several times per forward)."""
    captured: Dict[str, List[torch.Tensor]] = {name: [] for name in layers}
    pending = set()

    def hook(name):
        def capture(module, args, kwargs):
            captured[name].append(first_input(args, kwargs).detach().clone())
            pending.discard(name)
            if stop_early and not pending:
                raise _Stop
        return capture

    handles = [layer.register_forward_pre_hook(hook(name), with_kwargs=True) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for batch in data:
                pending.update(layers)
                try:
                    run_batch(model, batch, forward)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return captured
