"""Which layers an algorithm works on.

Without ``layers`` an algorithm takes every quantized weight layer it applies to and lists the
others as skipped, with the reason. With ``layers`` (names, globs or regexes, as config overrides
match them) every pattern must match a quantized layer and every matched layer must be one the
algorithm applies to: otherwise ``ValueError`` names the layer and why, before any work.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..model.config import name_matches
from ..model.qat import quant_layers
from ..weight_layer import QuantWeightLayer

Applies = Callable[[nn.Module], Optional[str]]  # layer -> why the algorithm does not apply, or None
Skipped = Tuple[Tuple[str, str, str], ...]  # (algorithm, layer, reason)


def select_layers(
    model: nn.Module, algorithm: str, applies: Applies, layers: Optional[Sequence[str]] = None
) -> Tuple[Dict[str, nn.Module], Skipped]:
    """``(targets, skipped)``: ``name -> layer`` in model order, and the weight layers left out."""
    if layers is None:
        targets: Dict[str, nn.Module] = {}
        skipped: List[Tuple[str, str, str]] = []
        for name, layer in quant_layers(model):
            if not isinstance(layer, QuantWeightLayer):
                continue
            reason = applies(layer)
            if reason is None:
                targets[name] = layer
            else:
                skipped.append((algorithm, name, reason))
        return targets, tuple(skipped)
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers of {algorithm!r} must be a list of layer names or patterns, got {layers!r}")
    every = dict(quant_layers(model))
    targets = {}
    for pattern in layers:
        matched = {n: m for n, m in every.items() if name_matches(pattern, n)}
        if not matched:
            known = ", ".join(list(every)[:8]) + (", ..." if len(every) > 8 else "")
            raise ValueError(f"{algorithm}: layers entry {pattern!r} matches no quantized layer; quantized layers: {known}")
        targets.update(matched)
    for name, layer in targets.items():
        reason = applies(layer)
        if reason is not None:
            raise ValueError(f"{algorithm} does not apply to layer {name!r} ({type(layer).__name__}): {reason}")
    return {n: m for n, m in every.items() if n in targets}, ()
