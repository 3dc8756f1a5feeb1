"""``quant_inference_mode``: Brevitas's context for fast quantized inference.

Outside the context every eval forward of a layer checks its cached quantized weight against a
checksum of the whole float weight (:mod:`qlayers.weight_cache`): one extra read of the weight per
forward, which is what lets the cache see writes torch does not count (``weight.data``, NumPy
views, C extensions), and on CUDA a device synchronisation per layer. Inside the context the model
is declared to be running inference, so that read moves to the exit:

- in eval mode each layer quantizes its weight once and serves it again while torch records no
  change to the weight or the quantizer (the same tensor objects, version counters, storage and
  layout, no optimizer step; ``cache_checks_values="none"``'s rule), at about 10 us a hit and
  without touching the weight's values;
- on exit (and whenever a layer replaces its cached weight inside the context) every cached weight
  is checked once against the checksum taken when it was quantized. If a write torch does not see
  changed a weight (or a quantizer tensor) inside the context, the forwards after it may have used
  the quantized weight from before it: one ``RuntimeWarning`` names those layers. A write torch
  does record (an in-place op, an optimizer step) makes the layer quantize afresh; after one, the
  bytes may differ for either reason and an earlier unrecorded write is no longer told apart.
  Verified entries stay cached under the layer's own ``cache_checks_values`` (``"checksum"`` or
  ``"none"``), so the next forward outside does not recompute.

The flag is per layer, so every thread running the model is in the context while it is open.
Contexts nest (each layer counts the open ones); one context object cannot be entered twice.

Numbers are those of the default cache: the same quantized weights, bit for bit. Training-mode
forwards, ``torch.compile`` tracing, layers whose weight needs a gradient and frozen layers
(:func:`qlayers.freeze`) compute exactly as outside.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

from torch import nn

from quantizers import compile as qcompile

from ..export.freeze import is_frozen
from ..weight_layer import QuantWeightLayer


class quant_inference_mode:  # noqa: N801 - Brevitas's name (brevitas.export.inference.quant_inference_mode)
    """Context manager: fast eval-mode inference of ``model`` (see the module docstring).

    Example::

        model.eval()
        with torch.no_grad(), qlayers.quant_inference_mode(model):
            for x in loader:
                y = model(x)

    Args:
        model: the model (any ``nn.Module``; its quantized weight layers are affected).
        cache_quant_weight: serve each layer's quantized weight without reading the float weight
            per forward (checked once on exit). Brevitas's default is ``False`` because its layers
            otherwise recompute every weight; qzoo's layers always cache, so ``True`` (the default
            here) is what makes the context faster, and ``False`` keeps the per-forward check.
        compile: compile every quantization kernel on its first call inside the context
            (``quantizers.set_compile_enabled(True)``) instead of in the background once it has paid
            off (the ``"auto"`` policy of :mod:`quantizers.compile`); restored on exit.
        enabled: ``False`` makes the context do nothing (a switch for code paths).

    Measured (``python -m benchmarks.run --only eval_linear`` and ``--only transformers/decode``,
    2-core CPU): ``QuantLinear(1024, 1024)`` at batch 64 with an INT8/FP8/MXFP4/NVFP4/INT4 weight
    quantizer runs at 1.02-1.12x ``nn.Linear`` inside the context, against 1.22-1.28x with the
    default per-forward checksum; greedy decoding of a small Llama with FP8 or MXFP4 weights at
    1.16-1.18x the float model, against 1.74x.
    """

    def __init__(self, model: nn.Module, cache_quant_weight: bool = True, compile: bool = False, enabled: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"quant_inference_mode expects an nn.Module, got {type(model).__name__}")
        for name, value in (("cache_quant_weight", cache_quant_weight), ("compile", compile), ("enabled", enabled)):
            if not isinstance(value, bool):
                raise TypeError(f"quant_inference_mode: {name} must be True or False, got {value!r}")
        self.model = model
        self.cache_quant_weight = cache_quant_weight
        self.compile = compile
        self.enabled = enabled
        self._layers: Optional[List[Tuple[str, QuantWeightLayer]]] = None  # None: not entered
        self._compile_setting: Optional[bool] = None

    def __enter__(self) -> nn.Module:
        if self._layers is not None:
            raise RuntimeError("this quant_inference_mode is already entered; use a new quant_inference_mode(model) to nest")
        self._layers = []
        if not self.enabled:
            return self.model
        if self.cache_quant_weight:
            for name, layer in self.model.named_modules():
                if isinstance(layer, QuantWeightLayer) and not is_frozen(layer):
                    self._layers.append((name, layer))
                    layer._quant_inference_depth = layer._quant_inference_depth + 1
        if self.compile:
            self._compile_setting = qcompile.compile_setting()
            qcompile.set_compile_enabled(True)
        return self.model

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        layers, self._layers = self._layers or [], None
        if not self.enabled:
            return
        if self.compile:
            qcompile.set_compile_enabled(self._compile_setting)
        stale = []
        for name, layer in layers:
            depth = layer._quant_inference_depth - 1
            if depth > 0:
                layer._quant_inference_depth = depth  # another context still holds this layer
                continue
            layer.__dict__.pop("_quant_inference_depth", None)  # back to the class default (0)
            if is_frozen(layer):
                continue  # frozen inside the context: the float weight is gone
            if kind is not None:
                layer._weight_cache.clear()
                continue
            weight = layer._parameters.get("weight")
            check = layer.cache_checks_values if layer.cache_quant_weight else None
            if not layer._weight_cache.leave_inference(weight, layer.weight_quant, check):
                stale.append(name or "(root)")
        if stale:
            warnings.warn(
                f"quant_inference_mode: the weights (or weight quantizers) of {', '.join(map(repr, stale))} "
                "changed inside the context through writes torch does not record (weight.data, NumPy views, "
                "C extensions); forwards after such a write used the quantized weight from before it. "
                "Make such writes outside quant_inference_mode, or call layer.clear_weight_cache() after them.",
                RuntimeWarning,
                stacklevel=2,
            )
