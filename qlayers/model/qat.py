"""Turning quantization off and on, globally or per layer (QAT warm-up, ablations, debugging).

A layer's quantizer for a role is the submodule ``<role>_quant``, and ``None`` there means "not
quantized" (the layers' own contract). Disabling a role sets it to ``None`` and keeps the module
aside; enabling puts it back, with its observer state and learned ranges untouched. While a role is
disabled its state still appears in ``state_dict`` under the usual keys and loads from them, so a
checkpoint saved with quantization off loads into a model with it on, and the other way round.

- ``with quantization_disabled(model): ...``: float forward for the block (``model`` may be a
  single layer); restores exactly what it turned off.
- ``disable_quantization(module)`` / ``enable_quantization(module)``: persistent, per layer or
  per subtree; ``weights`` / ``activations`` pick what (biases follow the weights, and a bias
  quantized at input scale x weight scale is also turned off with the activations).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from torch import nn

from ..quant_layer import QuantLayer
from .config import name_matches

WEIGHT_ROLES = ("weight", "bias")


def activation_roles(layer: QuantLayer) -> List[str]:
    """``layer``'s roles that quantize activations: every role but ``weight`` and ``bias``
    (``input``, ``output``, ``act``, and the operands of QuantScaledDotProductAttention)."""
    return [r for r in layer.quant_roles if r not in WEIGHT_ROLES]
_STASH = "_qzoo_disabled_quantizers"


def quant_layers(module: nn.Module, layers: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, QuantLayer]]:
    """``(name, layer)`` for every QuantLayer in ``module`` (itself included), optionally only those
    whose name matches one of ``layers`` (globs or regexes, as config overrides)."""
    for name, sub in module.named_modules():
        if isinstance(sub, QuantLayer) and (layers is None or any(name_matches(p, name) for p in layers)):
            yield name, sub


def disabled_roles(layer: QuantLayer) -> List[str]:
    """The roles of ``layer`` whose quantizer is currently disabled."""
    return list(_stash(layer))


def disabled_quantizers(layer: QuantLayer) -> Dict[str, nn.Module]:
    """``role -> quantizer`` for the quantizers of ``layer`` that are currently disabled."""
    return dict(_stash(layer))


def disable_quantization(
    module: nn.Module, *, weights: bool = True, activations: bool = True, layers: Optional[Sequence[str]] = None
) -> List[Tuple[QuantLayer, str]]:
    """Turn quantization off in every QuantLayer of ``module`` (or those matching ``layers``);
    returns the ``(layer, role)`` pairs turned off."""
    changed = []
    for _, layer in quant_layers(module, layers):
        changed += disable_roles(layer, _roles(layer, weights, activations))
    return changed


def disable_roles(layer: QuantLayer, roles: Sequence[str]) -> List[Tuple[QuantLayer, str]]:
    """Turn off ``layer``'s quantizers for ``roles`` (those present); returns the pairs turned off."""
    changed = []
    for role in roles:
        quantizer = getattr(layer, f"{role}_quant", None)
        if quantizer is None:
            continue
        _install_hooks(layer)
        _stash(layer)[role] = quantizer
        setattr(layer, f"{role}_quant", None)
        changed.append((layer, role))
    return changed


def enable_quantization(
    module: nn.Module, *, weights: bool = True, activations: bool = True, layers: Optional[Sequence[str]] = None
) -> List[Tuple[QuantLayer, str]]:
    """Turn back on what :func:`disable_quantization` turned off; returns the pairs turned on."""
    changed = []
    for _, layer in quant_layers(module, layers):
        for role in _roles(layer, weights, activations):
            if role in _stash(layer):
                restore(layer, role)
                changed.append((layer, role))
    return changed


def restore(layer: QuantLayer, role: str) -> None:
    """Put ``layer``'s disabled ``role`` quantizer back (moved to the layer's device)."""
    quantizer = _stash(layer).pop(role)
    device = next((t.device for t in (*layer.parameters(), *layer.buffers())), None)
    setattr(layer, f"{role}_quant", quantizer if device is None else quantizer.to(device))


@contextlib.contextmanager
def quantization_disabled(
    module: nn.Module, *, weights: bool = True, activations: bool = True, layers: Optional[Sequence[str]] = None
):
    """Context manager: float computation in ``module`` (or in the layers matching ``layers``).

    Example::

        with qlayers.quantization_disabled(model):
            float_logits = model(x)
        with qlayers.quantization_disabled(model, layers=["classifier"]):   # one layer only
            ...
    """
    changed = disable_quantization(module, weights=weights, activations=activations, layers=layers)
    try:
        yield module
    finally:
        for layer, role in changed:
            if role in _stash(layer):
                restore(layer, role)


def _roles(layer: QuantLayer, weights: bool, activations: bool) -> List[str]:
    roles = [r for r in layer.quant_roles if (weights and r in WEIGHT_ROLES) or (activations and r not in WEIGHT_ROLES)]
    bias = getattr(layer, "bias_quant", None) or _stash(layer).get("bias")
    if activations and not weights and getattr(bias, "requires_input_scale", False):
        roles.append("bias")
    return roles


def _stash(layer: nn.Module) -> Dict[str, nn.Module]:
    if _STASH not in layer.__dict__:
        layer.__dict__[_STASH] = {}
    return layer.__dict__[_STASH]


def _install_hooks(layer: nn.Module) -> None:
    if layer.__dict__.get("_qzoo_stash_hooks"):
        return
    layer.register_state_dict_post_hook(_save_disabled)
    layer.register_load_state_dict_pre_hook(_load_disabled)
    layer.__dict__["_qzoo_stash_hooks"] = True


def _save_disabled(layer, state_dict, prefix, local_metadata) -> None:
    for role, quantizer in _stash(layer).items():
        quantizer.state_dict(destination=state_dict, prefix=f"{prefix}{role}_quant.")


def _load_disabled(layer, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    for role, quantizer in _stash(layer).items():
        sub_prefix = f"{prefix}{role}_quant."
        own = {key[len(sub_prefix):]: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(sub_prefix)]}
        result = quantizer.load_state_dict(own, strict=False)
        missing_keys.extend(sub_prefix + k for k in result.missing_keys)
        unexpected_keys.extend(sub_prefix + k for k in result.unexpected_keys)

