"""Section 1: one-shot fake quantization of a 4096 x 4096 float32 weight.

``quantizers.quantize(W, Q)`` against ``W.clone()`` (one read and one write of W: the memory
bandwidth floor for anything that returns a new tensor) and against Brevitas's weight quantizer of
the same name, timed as ``QuantLinear(4096, 4096, weight_quant=Q).quant_weight()`` in training mode
(no weight cache) under ``torch.no_grad()`` (no autograd graph, as for the qzoo call).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

import quantizers

from .brevitas_twins import brevitas_nn, brevitas_quantizer
from .cases import BREVITAS, Case, Compare, Context, randn

SHAPE = (4096, 4096)
QUANTIZERS = (
    "Fp8e4m3OCPWeightPerTensorFloat",
    "Fp8e4m3OCPWeightPerChannelFloat",
    "MXFloat8e4m3Weight",
    "MXFloat4e2m1Weight",
    "NVFloat4e2m1Weight",
    "Int8WeightPerChannelFloat",
    "Int4WeightPerGroupFloat",
    "HiFloat8WeightPerTensorFloat",
)
QUICK = ("Fp8e4m3OCPWeightPerTensorFloat", "MXFloat4e2m1Weight", "Int8WeightPerChannelFloat")
TARGET_VS_CLONE = 1.4
#: Formats with more passes: NVFP4's two-level scales, HiFloat8's MSE search over power-of-two scales.
TARGET_VS_CLONE_MULTI_PASS = {"NVFloat4e2m1Weight": 2.0, "HiFloat8WeightPerTensorFloat": 2.0}
TARGET_VS_BREVITAS = 0.1  # at least 10x faster


def _builder(name: str) -> Callable[[Context], Dict[str, Any]]:
    def build(ctx: Context) -> Dict[str, Any]:
        weight = randn(*SHAPE, device=ctx.device)
        quantizer = getattr(quantizers, name)
        fns: Dict[str, Any] = {
            "qzoo": lambda: quantizers.quantize(weight, quantizer),
            "clone": weight.clone,
        }
        twin = brevitas_quantizer(name) if ctx.brevitas else None
        if twin is not None:
            layer = brevitas_nn().QuantLinear(*SHAPE[::-1], bias=False, weight_quant=twin, device=ctx.device)
            with torch.no_grad():
                layer.weight.copy_(weight)
            layer.train()

            def brevitas_quant_weight() -> Any:
                with torch.no_grad():
                    return layer.quant_weight()

            fns[BREVITAS] = brevitas_quant_weight
        return fns

    return build


def cases() -> List[Case]:
    return [
        Case(
            section="fake_quant",
            name=name,
            build=_builder(name),
            compares=(
                Compare("clone", TARGET_VS_CLONE_MULTI_PASS.get(name, TARGET_VS_CLONE)),
                Compare(BREVITAS, TARGET_VS_BREVITAS),
            ),
            quick=name in QUICK,
            meta={"shape": list(SHAPE), "dtype": "float32", "quantizer": name},
        )
        for name in QUANTIZERS
    ]
