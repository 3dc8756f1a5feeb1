"""Sections 3 and 4: a training step (forward + backward) of ``QuantLinear(1024, 1024)`` with
quantized weight and input, batch 64, against ``nn.Linear``'s step: its time, and its peak memory.

A step is ``zero_grad(set_to_none=True)``, ``y = layer(x)``, ``y.backward(dy)`` with ``x`` and the
parameters requiring grad; the layer is in training mode, so static input quantizers update their
observers every step, as in QAT. There is no optimizer step (identical for both).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from .cases import BREVITAS, Case, Compare, Context, randn
from .layers import brevitas_twin, float_module, qzoo_twin
from .memory import MemoryProbe

IN_FEATURES, OUT_FEATURES, BATCH = 1024, 1024, 64

# name -> (weight quantizer, input quantizer, in --quick)
CONFIGS: Dict[str, Tuple[str, str, bool]] = {
    "fp8": ("Fp8e4m3OCPWeightPerTensorFloat", "Fp8e4m3OCPActPerTensorFloat", True),
    "mxfp4": ("MXFloat4e2m1Weight", "MXFloat4e2m1Act", True),
}
TARGET_TIME = 3.0
TARGET_MEMORY = 1.5


class TrainingStep:
    """One forward + backward of ``layer`` on a fixed batch; inputs require grad."""

    def __init__(self, layer: nn.Module, device: torch.device) -> None:
        self.layer = layer.train()
        self.x = randn(BATCH, IN_FEATURES, device=device).requires_grad_(True)
        self.dy = randn(BATCH, OUT_FEATURES, device=device, seed=1)

    def reset(self) -> None:
        self.layer.zero_grad(set_to_none=True)
        self.x.grad = None

    def __call__(self) -> None:
        self.reset()
        self.layer(self.x).backward(self.dy)

    def resident(self) -> List[torch.Tensor]:
        return [*self.layer.parameters(), *self.layer.buffers(), self.x, self.dy]

    def probe(self) -> MemoryProbe:
        return MemoryProbe(step=self.__call__, reset=self.reset, resident=self.resident)


def _layers(ctx: Context, weight: str, act: str) -> Dict[str, nn.Module]:
    def linear() -> nn.Linear:
        return nn.Linear(IN_FEATURES, OUT_FEATURES)

    module = float_module(linear, ctx.device)
    layers = {"qzoo": qzoo_twin(module, weight, act), "float": module}
    twin = brevitas_twin(module, weight, act) if ctx.brevitas else None
    if twin is not None:
        layers[BREVITAS] = twin
    return layers


def _time_builder(weight: str, act: str) -> Callable[[Context], Dict[str, Any]]:
    def build(ctx: Context) -> Dict[str, Any]:
        return {label: TrainingStep(layer, ctx.device) for label, layer in _layers(ctx, weight, act).items()}

    return build


def _memory_builder(weight: str, act: str) -> Callable[[Context], Dict[str, Any]]:
    def build(ctx: Context) -> Dict[str, Any]:
        layers = _layers(ctx, weight, act)
        layers.pop(BREVITAS, None)
        return {label: TrainingStep(layer, ctx.device).probe() for label, layer in layers.items()}

    return build


def cases() -> List[Case]:
    out = []
    for name, (weight, act, quick) in CONFIGS.items():
        meta = {"layer": f"nn.Linear({IN_FEATURES}, {OUT_FEATURES}), batch {BATCH}", "weight_quant": weight, "input_quant": act}
        out.append(Case(
            section="train_linear", name=name, build=_time_builder(weight, act),
            compares=(Compare("float", TARGET_TIME), Compare(BREVITAS)), quick=quick, meta=meta,
        ))
    for name, (weight, act, quick) in CONFIGS.items():
        meta = {"layer": f"nn.Linear({IN_FEATURES}, {OUT_FEATURES}), batch {BATCH}", "weight_quant": weight, "input_quant": act}
        out.append(Case(
            section="memory", name=f"train_step_{name}", build=_memory_builder(weight, act),
            compares=(Compare("float", TARGET_MEMORY),), kind="memory", quick=quick, meta=meta,
        ))
    return out

