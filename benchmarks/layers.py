"""Section 2: eval-mode forward of ``qlayers.QuantLinear``/``QuantConv2d`` against ``nn.Linear``/
``nn.Conv2d`` with the same parameters, and Brevitas's layers with the same-named quantizers.

Every contender runs under ``torch.no_grad()`` in eval mode (inference). Static input quantizers
are calibrated first with a few training-mode forwards on other batches; dynamic ones (MX) need
none. qzoo serves the quantized weight from its eval-mode cache; Brevitas recomputes it every call
(its default). Cases named ``cache=inference_mode`` run both libraries inside their
``quant_inference_mode`` (``cache_quant_weight=True``): quantized weights cached, no per-forward
check (qzoo checks once on leaving the context).

Baseline ``float_read`` (informational, default cache only): the float layer plus one plain read of
its float weight (``weight.sum()``), the least any cache costs that sees every write by reading the
weight (``cache_checks_values="checksum"``, the default; see :mod:`qlayers.weight_cache`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import qlayers
import quantizers

from .brevitas_twins import brevitas_nn, brevitas_quantizer
from .cases import BREVITAS, Case, Compare, Context, randn

CALIBRATION_BATCHES = 4

WEIGHT_ONLY = ("Int8WeightPerChannelFloat", "Fp8e4m3OCPWeightPerTensorFloat", "MXFloat4e2m1Weight", "NVFloat4e2m1Weight", "Int4WeightPerGroupFloat")
WEIGHT_AND_INPUT = (("Fp8e4m3OCPWeightPerTensorFloat", "Fp8e4m3OCPActPerTensorFloat", 1.5), ("MXFloat8e4m3Weight", "MXFloat8e4m3Act", 2.0))

# (weight quantizer, input quantizer or None, target ratio to the float layer or None, sections in
#  --quick, how the eval cache checks the weight): "checksum" is the default (a read of the whole
#  weight per forward, informational: its floor is the ``float_read`` baseline), "none" the trusted
#  cache without that read, "inference_mode" the layer inside qlayers.quant_inference_mode (checked
#  once on exit); see qlayers.weight_cache.
CONFIGS: Tuple[Tuple[str, Optional[str], Optional[float], Tuple[str, ...], str], ...] = (
    *((w, None, None, ("eval_linear", "eval_conv") if w.startswith("Int8") else (), "checksum") for w in WEIGHT_ONLY),
    *((w, a, None, ("eval_linear", "eval_conv") if w.startswith("Fp8") else ("eval_linear",), "checksum") for w, a, _ in WEIGHT_AND_INPUT),
    *((w, None, 1.10, ("eval_linear",) if w.startswith("Int8") else (), "inference_mode") for w in WEIGHT_ONLY),
    *((w, a, target, ("eval_linear",) if w.startswith("Fp8") else (), "inference_mode") for w, a, target in WEIGHT_AND_INPUT),
    ("Int8WeightPerChannelFloat", None, 1.10, (), "none"),
    ("Fp8e4m3OCPWeightPerTensorFloat", "Fp8e4m3OCPActPerTensorFloat", 1.5, (), "none"),
)

# layer kind -> (float module factory, input shape, section, description)
LINEAR = ("eval_linear", lambda: nn.Linear(1024, 1024), (64, 1024), "nn.Linear(1024, 1024), batch 64")
CONV = ("eval_conv", lambda: nn.Conv2d(64, 64, 3, padding=1), (8, 64, 32, 32), "nn.Conv2d(64, 64, 3, padding=1), input 8x64x32x32")


def config_name(weight: str, act: Optional[str], cache: str = "checksum") -> str:
    return f"w={weight}" + (f",in={act}" if act else "") + ("" if cache == "checksum" else f",cache={cache}")


def float_module(factory: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return factory().to(device)


def qzoo_twin(module: nn.Module, weight: str, act: Optional[str], cache: str = "checksum") -> nn.Module:
    """The qlayers twin of ``module`` with the named qzoo quantizers and eval-cache check
    (``"inference_mode"``: the default check, the layer then enters ``quant_inference_mode``)."""
    layer_class = qlayers.QuantLinear if isinstance(module, nn.Linear) else qlayers.QuantConv2d
    layer = layer_class.from_float(
        module, weight_quant=getattr(quantizers, weight), input_quant=getattr(quantizers, act) if act else None
    )
    if cache != "inference_mode":
        layer.cache_checks_values = cache
    return layer


def in_inference_mode(layer: nn.Module) -> nn.Module:
    """``layer`` inside ``qlayers.quant_inference_mode``, held open for the whole measurement (the
    layer is dropped with its case, so the context is never left)."""
    qlayers.quant_inference_mode(layer).__enter__()
    return layer


def brevitas_twin(module: nn.Module, weight: str, act: Optional[str]) -> Optional[nn.Module]:
    """Brevitas's twin of ``module`` with the same-named quantizers, or None if Brevitas lacks one."""
    weight_quant = brevitas_quantizer(weight)
    input_quant = brevitas_quantizer(act) if act else None
    if weight_quant is None or (act and input_quant is None):
        return None
    bnn = brevitas_nn()
    kwargs = dict(weight_quant=weight_quant, input_quant=input_quant, return_quant_tensor=False)
    if isinstance(module, nn.Linear):
        layer = bnn.QuantLinear(module.in_features, module.out_features, bias=True, **kwargs)
    else:
        layer = bnn.QuantConv2d(
            module.in_channels, module.out_channels, module.kernel_size, padding=module.padding, bias=True, **kwargs
        )
    layer = layer.to(module.weight.device)
    with torch.no_grad():
        layer.weight.copy_(module.weight)
        layer.bias.copy_(module.bias)
    return layer


def calibrate(layer: nn.Module, input_shape: Tuple[int, ...], device: torch.device) -> nn.Module:
    """A few training-mode forwards (static input quantizers collect their range), then eval."""
    layer.train()
    with torch.no_grad():
        for seed in range(1, CALIBRATION_BATCHES + 1):
            layer(randn(*input_shape, device=device, seed=seed))
    return layer.eval()


def inference(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def forward() -> Any:
        with torch.no_grad():
            return layer(x)

    return forward


def brevitas_inference_mode(layer: nn.Module, x: torch.Tensor) -> nn.Module:
    """Brevitas's ``layer`` inside its own ``quant_inference_mode(cache_quant_weight=True)``, held
    open like :func:`in_inference_mode`; its first forward there fills Brevitas's caches."""
    from brevitas.export.inference import quant_inference_mode

    quant_inference_mode(layer, cache_quant_weight=True).__enter__()
    with torch.no_grad():
        layer(x)
    return layer


class _ReadsWeight(nn.Module):
    """``module(x)`` plus one plain read of ``module.weight`` (the baseline ``float_read``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.module.weight.sum()
        return self.module(x)


def _builder(kind: tuple, weight: str, act: Optional[str], cache: str) -> Callable[[Context], Dict[str, Any]]:
    _, factory, input_shape, _ = kind

    def build(ctx: Context) -> Dict[str, Any]:
        module = float_module(factory, ctx.device).eval()
        x = randn(*input_shape, device=ctx.device)
        layer = calibrate(qzoo_twin(module, weight, act, cache), input_shape, ctx.device)
        fns = {
            "qzoo": inference(in_inference_mode(layer) if cache == "inference_mode" else layer, x),
            "float": inference(module, x),
        }
        if cache == "checksum":
            fns["float_read"] = inference(_ReadsWeight(module), x)
        twin = brevitas_twin(module, weight, act) if ctx.brevitas else None
        if twin is not None:
            twin = calibrate(twin, input_shape, ctx.device)
            fns[BREVITAS] = inference(brevitas_inference_mode(twin, x) if cache == "inference_mode" else twin, x)
        return fns

    return build


def cases() -> List[Case]:
    out = []
    for kind in (LINEAR, CONV):
        section, _, input_shape, description = kind
        for weight, act, target, quick, cache in CONFIGS:
            out.append(Case(
                section=section,
                name=config_name(weight, act, cache),
                build=_builder(kind, weight, act, cache),
                compares=(Compare("float", target), Compare(BREVITAS)) + ((Compare("float_read"),) if cache == "checksum" else ()),
                quick=section in quick,
                meta={"layer": description, "weight_quant": weight, "input_quant": act, "cache_checks_values": cache},
            ))
    return out
