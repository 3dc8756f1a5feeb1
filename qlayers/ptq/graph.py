"""Which module produces each layer's input, found by running one batch (no torch.fx tracing).

One forward of a probe batch with hooks on every module records the tensor object each module
received and returned. A layer's input is matched to the module that returned that very tensor
(the innermost one: a ``Sequential`` returns its last child's tensor). Pass-through modules that
commute with a positive per-channel scale (``f(x / s) = f(x) / s`` for ``s > 0``: ReLU, LeakyReLU,
Dropout in eval, Identity, max and average pooling) are walked through. Layers that receive the same tensor (the q/k/v
projections after a LayerNorm) form one :class:`InputGroup`: they must share one scale vector.

The match says who *computed* the input, not who else *reads* it: a post-LN transformer's
LayerNorm output also feeds a residual add, so dividing it by ``s`` would change the model.
:func:`fold_preserves` settles that empirically: it folds a random power-of-two scale (exact in
floating point) into the group, runs the probe batch and compares every output of the model with
the reference bit for bit (up to ``1e-6`` relative), then restores the weights.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..model.qat import quantization_disabled
from . import fold
from .capture import Forward, run_batch

#: Modules ``f`` with ``f(x / s) = f(x) / s`` for a positive per-channel ``s`` (in eval mode).
PASS_THROUGH = (
    nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)


@dataclass
class InputGroup:
    """Layers that receive one and the same input tensor, and the module that produced it.

    ``producer`` is the name of a module that can absorb a per-channel scale of its output
    (:func:`qlayers.ptq.fold.output_channel_params`), or None; ``reason`` says why there is none
    (or why folding into it would change the model)."""

    consumers: List[str]
    producer: Optional[str] = None
    reason: str = ""
    through: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """Where a scale of this group goes, in words."""
        return f"folded into {self.producer}" if self.producer else "input multiplier"


@dataclass
class _Record:
    calls: int = 0
    input: Optional[int] = None
    output: Optional[int] = None


def trace_tensors(model: nn.Module, batch: Any, forward: Optional[Forward] = None) -> Tuple[Dict[str, _Record], Dict[int, str]]:
    """``(records, produced)``: each module's call count and first input/output tensor ids, and
    for every tensor id the innermost module that returned it (one forward of ``batch``, after
    one without hooks: a model's first call may run extra checks, see
    :mod:`qlayers.model.functional`). The float network runs (quantization disabled)."""
    records: Dict[str, _Record] = {}
    produced: Dict[int, str] = {}
    alive: List[torch.Tensor] = []  # keeps tensors alive so their ids are never reused

    def pre(name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
            record = records.setdefault(name, _Record())
            record.calls += 1
            if isinstance(x, torch.Tensor) and record.input is None:
                record.input = id(x)
                alive.append(x)
        return hook

    def post(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                produced.setdefault(id(output), name)
                alive.append(output)
                if records[name].output is None:
                    records[name].output = id(output)
        return hook

    _outputs(model, batch, forward)
    handles = []
    for name, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(module.register_forward_hook(post(name)))
    try:
        with quantization_disabled(model), torch.no_grad():
            run_batch(model, batch, forward)
    finally:
        for handle in handles:
            handle.remove()
    return records, produced


def input_groups(
    model: nn.Module, names: Sequence[str], batch: Any, forward: Optional[Forward] = None,
    producer_kinds: Optional[tuple] = None,
) -> List[InputGroup]:
    """Group the layers ``names`` by the input tensor they receive and find each group's producer
    (see the module docstring). ``producer_kinds`` restricts the producers (module classes) that
    count as foldable (default: any :func:`~qlayers.ptq.fold.output_channel_params` module)."""
    records, produced = trace_tensors(model, batch, forward)
    modules = dict(model.named_modules())
    by_tensor: Dict[Any, List[str]] = {}
    for name in names:
        record = records.get(name)
        if record is None or record.calls == 0:
            raise ValueError(f"layer {name!r} was not called by the model on the calibration batch; leave it out of `layers`")
        key = record.input if record.calls == 1 else ("called", name)
        by_tensor.setdefault(key, []).append(name)
    groups = []
    for key, consumers in by_tensor.items():
        group = InputGroup(consumers)
        if isinstance(key, tuple):
            group.reason = f"{consumers[0]} is called {records[consumers[0]].calls} times per forward (shared weights)"
        else:
            _find_producer(group, key, records, produced, modules, producer_kinds)
        groups.append(group)
    return groups


def _find_producer(group, tensor_id, records, produced, modules, producer_kinds) -> None:
    consumer = modules[group.consumers[0]]
    channels = fold.input_channels(consumer)
    while True:
        name = produced.get(tensor_id)
        if name is None:
            group.reason = "its input is not the output of a module (the model's input or a functional op)"
            return
        module = modules[name]
        if isinstance(module, PASS_THROUGH) and records[name].input is not None:
            group.through.append(name)
            tensor_id = records[name].input
            continue
        if records[name].calls != 1:
            group.reason = f"its producer {name} is called {records[name].calls} times per forward"
            return
        params = fold.output_channel_params(module)
        if params is None or (producer_kinds is not None and not isinstance(module, producer_kinds)):
            group.reason = f"its producer {name} ({type(module).__name__}) cannot absorb a per-channel scale"
            return
        if fold.output_channels(module) != channels or fold.output_channel_axis(module) != fold.input_channel_axis(consumer):
            group.reason = f"its producer {name} ({type(module).__name__}) has no channel axis matching the input channels of {group.consumers[0]}"
            return
        group.producer = name
        return


def fold_preserves(model: nn.Module, groups: Sequence[InputGroup], batch: Any, forward: Optional[Forward] = None) -> List[InputGroup]:
    """Check that folding into each group's producer leaves the model's outputs unchanged (see
    the module docstring); a group that fails loses its producer (with the reason). Returns
    ``groups``. One forward for all groups, one more per group when any fails."""
    candidates = [g for g in groups if g.producer is not None]
    if not candidates:
        return list(groups)
    reference = _outputs(model, batch, forward)
    if _preserved(model, candidates, batch, forward, reference):
        return list(groups)
    for group in candidates:
        if not _preserved(model, [group], batch, forward, reference):
            group.reason = (
                f"dividing the output of {group.producer} by a scale changes the model's output: "
                "another op (e.g. a residual add) reads it too"
            )
            group.producer = None
    return list(groups)


def _preserved(model, groups, batch, forward, reference) -> bool:
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)
    with _restored(model):
        for group in groups:
            consumer = modules[group.consumers[0]]
            s = torch.pow(2.0, torch.randint(-2, 3, (fold.input_channels(consumer),), generator=generator).float())
            fold.fold_scale(modules[group.producer], [modules[c] for c in group.consumers], s)
        got = _outputs(model, batch, forward)
    return len(got) == len(reference) and all(_close(a, b) for a, b in zip(got, reference))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or not a.is_floating_point():
        return torch.equal(a, b)
    return bool(((a - b).abs() <= 1e-6 * b.abs().amax().clamp_min(1e-30)).all())


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    saved = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    try:
        yield
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)


def _outputs(model: nn.Module, batch: Any, forward: Optional[Forward]) -> List[torch.Tensor]:
    with quantization_disabled(model), torch.no_grad():
        out = run_batch(model, batch, forward)
    return [t.detach().float() for t in _tensors(out)]


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for value in out.values():
            yield from _tensors(value)
    elif isinstance(out, (tuple, list)):
        for value in out:
            yield from _tensors(value)
