"""Cross-layer equalization (Nagel et al. 2019, data-free quantization) for CNNs and MLPs, with
BatchNorm folded first.

1. **BatchNorm folding**: a BatchNorm (eval) whose input is a Linear/Conv's output folds into it
   (:func:`qlayers.ptq.fold.fold_batchnorm_into`) and becomes ``nn.Identity``.
2. **Equalization**: for every pair producer -> consumer(s) (Conv-ReLU-Conv, Linear-ReLU-Linear,
   also with max/average pooling, Dropout, Identity or nothing between; consumers sharing the
   input form one group),
   with ``r1_i`` the range ``max|W1[i, ...]|`` of the producer's output channel ``i`` and ``r2_i``
   the range ``max|W2[:, i, ...]|`` of input channel ``i`` over the consumers::

       s_i = sqrt(r1_i / r2_i),    W1[i] <- W1[i] / s_i,  b1[i] <- b1[i] / s_i,  W2[:, i] <- W2[:, i] * s_i

   after which both ranges equal ``sqrt(r1_i r2_i)``. ReLU commutes with the positive ``s``, so
   the float function is unchanged. Chains (conv1 -> conv2 -> conv3) are swept until every
   ``|log s_i| < 1e-3`` or ``iterations`` sweeps.

The pairs come from :mod:`qlayers.ptq.graph` on the first calibration batch (the data is used for
nothing else), and every fold is checked to leave the model's outputs unchanged.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..model.config import name_matches
from ..weight_layer import QuantWeightLayer
from . import fold
from .capture import Forward, as_batches
from .graph import InputGroup, _outputs, fold_preserves, input_groups, trace_tensors
from .layer_inputs import collect_inputs, float_output, relative_error
from .registry import register
from .report import LayerReport, PTQReport

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register("equalize")
def equalize(
    model: nn.Module, data: Any, *, iterations: int = 20, fold_batchnorm: bool = True,
    layers: Optional[Sequence[str]] = None, forward: Forward = None, progress: bool = True,
) -> PTQReport:
    """Fold BatchNorms and equalize the ranges of consecutive layers of ``model`` in place (see
    the module docstring); float or quantized models (run it before calibration).

    Args:
        model: the model (put in eval mode).
        data: calibration batches; only the first is run (to find the pairs, check the folds and
            measure the errors).
        iterations: the most sweeps over the pairs.
        fold_batchnorm: fold BatchNorms into their preceding Linear/Conv first.
        layers: name patterns of the consumer layers to equalize (default: every Linear and
            groups=1 Conv with a Linear/Conv producer).
        forward: ``forward(model, batch)`` for batches the default call does not fit.
        progress: unused (one batch); accepted as every algorithm's.

    Returns:
        A :class:`~qlayers.ptq.report.PTQReport` with a row per quantized layer that changed:
        its relative output error on the first batch after BatchNorm folding and after
        equalization (a float model has no rows).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"equalize: iterations must be a positive int, got {iterations!r}")
    probe = next(iter(as_batches(data)), None)
    if probe is None:
        raise ValueError("equalize: data is empty; give at least one batch")
    model.eval()
    start = time.perf_counter()
    reference = _outputs(model, probe, forward)
    notes: Dict[str, List[str]] = {}
    if fold_batchnorm:
        for layer_name, bn_name in fold_batchnorms(model, probe, forward):
            notes.setdefault(layer_name, []).append(f"{bn_name} folded in")
    names = [n for n, m in model.named_modules() if fold.is_consumer(m) and (layers is None or any(name_matches(p, n) for p in layers))]
    groups = [g for g in input_groups(model, names, probe, forward, producer_kinds=_LAYERS) if g.producer]
    groups = [g for g in fold_preserves(model, groups, probe, forward) if g.producer]
    for group in groups:
        notes.setdefault(group.producer, []).append(f"equalized with {', '.join(group.consumers)}")
        for name in group.consumers:
            notes.setdefault(name, []).append(f"equalized with {group.producer}")
    modules = dict(model.named_modules())
    measured = [n for n in notes if isinstance(modules[n], QuantWeightLayer)]
    before = _errors(model, measured, probe, forward)
    sweeps = _sweep(modules, groups, iterations)
    after = _errors(model, measured, probe, forward)
    _check_unchanged(model, probe, forward, reference)
    seconds = (time.perf_counter() - start) / max(1, len(measured))
    rows = tuple(
        LayerReport(n, "equalize", before[n], after[n], seconds, "; ".join(notes[n]) + (f" ({sweeps} sweeps)" if groups else ""))
        for n in measured
    )
    return PTQReport(rows)


def _sweep(modules: Dict[str, nn.Module], groups: Sequence[InputGroup], iterations: int) -> int:
    """Equalize every group until no scale moves by more than 0.1% (or ``iterations`` sweeps)."""
    for sweep in range(1, iterations + 1):
        change = 0.0
        for group in groups:
            producer, consumers = modules[group.producer], [modules[n] for n in group.consumers]
            s = equalization_scale(producer, consumers)
            fold.fold_scale(producer, consumers, s)
            change = max(change, float(s.log().abs().max()))
        if change < 1e-3:
            return sweep
    return iterations


def _errors(model: nn.Module, names: Sequence[str], batch: Any, forward: Forward) -> Dict[str, float]:
    """Each layer's relative output error on its (float network) inputs from ``batch``."""
    if not names:
        return {}
    inputs = collect_inputs(model, names, [batch], max_rows=1 << 30, forward=forward)
    modules = dict(model.named_modules())
    return {n: relative_error(modules[n], inputs[n].rows, float_output(modules[n], inputs[n].rows)) for n in names}


def equalization_scale(producer: nn.Module, consumers: Sequence[nn.Module]) -> torch.Tensor:
    """``s_i = sqrt(r1_i / r2_i)`` (see the module docstring); 1 where a range is zero."""
    w1 = producer.weight.detach().double().abs()
    r1 = w1.reshape(w1.shape[0], -1).amax(1)
    r2 = torch.stack([c.weight.detach().double().abs().transpose(0, 1).reshape(c.weight.shape[1], -1).amax(1) for c in consumers]).amax(0)
    ok = (r1 > 0) & (r2 > 0)
    return torch.where(ok, (r1 / torch.where(ok, r2, torch.ones_like(r2))).sqrt(), torch.ones_like(r1)).float()


def fold_batchnorms(model: nn.Module, batch: Any, forward: Optional[Forward] = None) -> List[Tuple[str, str]]:
    """Fold every BatchNorm whose input is a Linear/Conv output into that layer and replace it
    with ``nn.Identity`` (kept only where the model's outputs stay unchanged within 1e-4
    relative: the layer's output may feed something else too). Returns ``(layer, batchnorm)`` names."""
    records, produced = trace_tensors(model, batch, forward)
    modules = dict(model.named_modules())
    folded = []
    for bn_name, bn in list(modules.items()):
        record = records.get(bn_name)
        if not isinstance(bn, _BATCHNORMS) or record is None or record.calls != 1 or record.input is None:
            continue
        layer_name = produced.get(record.input)
        layer = modules.get(layer_name)
        if not isinstance(layer, _LAYERS) or records[layer_name].calls != 1:
            continue
        reference = _outputs(model, batch, forward)
        saved = (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
        fold.fold_batchnorm_into(layer, bn)
        _set_child(model, bn_name, nn.Identity())
        if _unchanged(_outputs(model, batch, forward), reference, 1e-4):
            folded.append((layer_name, bn_name))
            continue
        with torch.no_grad():
            layer.weight.copy_(saved[0])
            if saved[1] is None:
                layer.bias = None
            else:
                layer.bias.copy_(saved[1])
        _set_child(model, bn_name, bn)
    return folded


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _unchanged(got: List[torch.Tensor], reference: List[torch.Tensor], rtol: float) -> bool:
    return len(got) == len(reference) and all(
        a.shape == b.shape and bool(((a - b).abs() <= rtol * b.abs().amax().clamp_min(1e-30)).all()) for a, b in zip(got, reference)
    )


def _check_unchanged(model: nn.Module, batch: Any, forward: Optional[Forward], reference: List[torch.Tensor]) -> None:
    if not _unchanged(_outputs(model, batch, forward), reference, 1e-4):
        raise RuntimeError("equalize changed the float model's outputs on the first calibration batch (more than 1e-4 relative); please report this model")
