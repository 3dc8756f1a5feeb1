"""Post-training quantization (PTQ) algorithms that run on a quantized model with calibration data.

``qlayers.ptq.apply(model, data, algorithms=[...])`` runs algorithms in order, each given as a name
or ``{name: {options}}`` (AMCT's style: ``'gptq'``, ``{'gptq': {'percdamp': 0.01}}``); each is also
a function ``qlayers.ptq.<name>(model, data, **options)``. Every algorithm and the data are checked
before any work starts: an algorithm that does not apply to a layer named in its ``layers`` option
raises ``ValueError`` naming the layer and why, and so does data that is empty, on the wrong device
or of the wrong shape (naming the first failing layer). The result is a
:class:`~qlayers.ptq.report.PTQReport`: per layer, the output error before and after each algorithm.

Example::

    qmodel = qlayers.quantize_model(model, {"weights": {"format": "int4", "granularity": "group",
                                                          "group_size": 128}})
    report = qlayers.ptq.apply(qmodel, batches, algorithms=["gptq"])
    print(report)

The algorithms: :func:`smoothquant`, :func:`awq` (per-input-channel scales folded into the
preceding op or kept as an input multiplier), :func:`equalize` (BatchNorm folding and cross-layer
equalization), :func:`bias_correction` and :func:`ofmr` (FP8/HiFloat8 scale search); their
modules' docstrings give the formulas. Algorithms register themselves with
:func:`~qlayers.ptq.registry.register`; the layer-by-layer runner (:mod:`~qlayers.ptq.runner`)
holds one layer's inputs at a time, and under ``torch.distributed`` the statistics are summed over ranks (:mod:`~qlayers.ptq.distributed`).
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

from ..model.convert import PTQ_ALGORITHMS_ATTRIBUTE

from .capture import CalibrationDataError, as_batches, capture_inputs, check_data, first_batch
from .distributed import all_reduce_count, all_reduce_sum, is_distributed
from .gptq import gptq, gptq_quantize
from .hessian import hessian
from .registry import Algorithm, algorithm_names, get_algorithm, parse_algorithms, register
from .report import LayerReport, PTQReport
from .runner import eval_mode, output_error, run_layer_by_layer
from .targets import select_layers
# the algorithms (each registers itself)
from .awq import awq
from .bias_correction import bias_correction
from .equalize import equalize
from .ofmr import ofmr
from .smoothquant import smoothquant


def apply(model: nn.Module, data: Any, algorithms: Any = None, *, forward=None, progress: bool = True) -> PTQReport:
    """Run ``algorithms`` (in order) on the quantized ``model`` with calibration ``data`` (an
    iterable of batches; see :mod:`qlayers.ptq.capture`); returns the combined report.

    ``algorithms``: a name, ``{name: options}``, or a list (or set) of those; see
    :func:`algorithm_names` for what is registered. ``None``: the ``"algorithm"`` section of the
    config ``quantize_model`` built the model with. ``forward(model, batch)`` runs one batch when
    the default conventions (tensor, ``(input, target)``, dict of keyword arguments) do not fit.
    Everything is validated before any work starts.
    """
    if algorithms is None:
        algorithms = getattr(model, PTQ_ALGORITHMS_ATTRIBUTE, None)
        if algorithms is None:
            raise ValueError("algorithms is None and the model's quantize_model config has no 'algorithm' section; "
                             f"give algorithms=[...] (registered: {', '.join(algorithm_names())})")
    parsed = parse_algorithms(algorithms)
    if not parsed:
        raise ValueError(f"algorithms is empty; give at least one of: {', '.join(algorithm_names())}")
    batches = as_batches(data)
    layers: Dict[str, nn.Module] = {}
    for algorithm, options in parsed:
        layers.update(algorithm.check(model, **options))
    with eval_mode(model):
        check_data(model, batches, {n: m for n, m in model.named_modules() if n in layers}, forward)
        first = first_batch(batches)
        for algorithm, options in parsed:
            if algorithm.preflight is not None:
                algorithm.preflight(model, first, forward, **options)
    report = PTQReport()
    for algorithm, options in parsed:
        report = report + algorithm.function(model, batches, forward=forward, progress=progress, **options)
    return report


__all__ = [
    "apply", "gptq", "gptq_quantize", "hessian", "register", "algorithm_names", "get_algorithm", "parse_algorithms", "Algorithm",
    "PTQReport", "LayerReport", "CalibrationDataError", "run_layer_by_layer", "capture_inputs", "check_data",
    "as_batches", "select_layers", "output_error", "eval_mode", "all_reduce_sum", "all_reduce_count", "is_distributed",
    "awq", "bias_correction", "equalize", "ofmr", "smoothquant",
]
