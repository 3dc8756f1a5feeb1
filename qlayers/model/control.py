"""Model-level controls on a layer's runtime quantizer: calibration without quantization, frozen
static ranges, fixed float ranges and learned (LSQ-style) ranges.

:func:`controlled` turns a :class:`~quantizers.TensorQuantizer` into a
:class:`ControlledTensorQuantizer` in place (a subclass that adds no state until a control is
used, so ``state_dict`` keys stay the same). Every statistic still flows into the scaler of the
quantizer, so the scale rules of :mod:`quantizers` stay the one source of the formulas:

- ``observe_only``: update the observer and return the input unquantized (calibration with
  quantization off, as Brevitas and torch.ao calibrate).
- ``frozen``: a calibrated static quantizer uses its observer's aggregate in training too, and
  stops updating it (torch.ao's ``disable_observer``).
- ``float_range = (min, max)``: fixed ends of the range (either may be None), coreai_opt's
  ``float_range``; implemented by :class:`~quantizers.TensorQuantizer` itself.
- ``learned_range``: an ``nn.Parameter`` holding the range statistic (absmax per scale, or stacked
  ``(min, max)``); scales follow it, so gradients reach it through ``scale = amax / max`` and the
  straight-through fake quantization (LSQ's scale gradient; PACT's clipping range).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from quantizers import TensorQuantizer


class ControlledTensorQuantizer(TensorQuantizer):
    """A :class:`~quantizers.TensorQuantizer` with the controls of the module docstring."""

    observe_only = False
    frozen = False
    learns_range = False

    # ---- statistics ----------------------------------------------------------------------------
    def _learned_statistic(self):
        value = self.learned_range
        if self.scaler.needs == "minmax":
            return value[0], value[1]
        # a per-tensor range is stored with shape (1,): FSDP refuses 0-d parameters
        return value.abs().reshape(()) if self.granularity.kind == "tensor" else value.abs()

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        if self.observe_only:
            if self.observer is not None:
                self.observer.update(self.statistic(x))
            return x
        if self.learns_range and self.learned_range.numel() > 0:
            stat = self._learned_statistic()
            if self.training:
                self._mirror_learned_range()
        elif self.frozen and self.observer is not None and self.observer.high.numel() > 0:
            stat = self.observer.value(self.scaler.needs)
        else:
            return super().forward(x)
        return self.quantize_with(x, stat)

    # ---- learned range -------------------------------------------------------------------------
    def learn_range(self, initial: Optional[object] = None) -> None:
        """Replace the statistic by a learned parameter initialised from ``initial`` (a statistic,
        e.g. ``self.statistic(weight)``); ``None`` leaves it empty until :meth:`init_learned_range`
        fills it from the observer (after calibration)."""
        self.learns_range = True
        self.register_parameter("learned_range", nn.Parameter(_stack(initial) if initial is not None else torch.zeros(0)))

    def init_learned_range(self) -> bool:
        """Fill an empty learned range from the calibrated observer; True if it is set."""
        if not self.learns_range:
            return False
        if self.learned_range.numel() == 0 and self.observer is not None and self.observer.high.numel() > 0:
            with torch.no_grad():
                self.learned_range.data = _stack(self.observer.value(self.scaler.needs)).to(self.learned_range.device)
        return self.learned_range.numel() > 0

    def _mirror_learned_range(self) -> None:
        # The observer follows the learned range (as of the last training step), so what reads the
        # aggregate (range reports, summaries) sees the learned value.
        if self.observer is None:
            return
        with torch.no_grad():
            stat = self._learned_statistic()
            if isinstance(stat, tuple):
                self.observer.low, stat = stat[0].detach().clone(), stat[1]
            self.observer.high = stat.detach().clone()
            initialized = getattr(self.observer, "initialized", None)  # observers that keep a flag buffer
            if isinstance(initialized, torch.Tensor):
                initialized.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "learned_range"
        if self.learns_range and key in state_dict:
            self.learned_range.data = torch.empty_like(state_dict[key], device=self.learned_range.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        flags = [name for name in ("observe_only", "frozen", "learns_range") if getattr(self, name)]
        if self.float_range is not None:
            flags.append(f"float_range={self.float_range}")
        return super().extra_repr() + "".join(f", {f}" for f in flags)


def _stack(stat) -> torch.Tensor:
    """A statistic as one tensor of at least one dimension: ``(min, max)`` stacked on a new first
    axis, an absmax as it is (0-d as shape (1,))."""
    if isinstance(stat, tuple):
        return torch.stack([stat[0].detach(), stat[1].detach()]).clone()
    return stat.detach().clone().reshape(stat.shape or (1,))


_CLASSES: Dict[type, Type[ControlledTensorQuantizer]] = {TensorQuantizer: ControlledTensorQuantizer}


def controlled(quantizer: nn.Module) -> nn.Module:
    """``quantizer`` itself, now a :class:`ControlledTensorQuantizer` if it is a
    :class:`~quantizers.TensorQuantizer` (other modules are returned unchanged)."""
    if isinstance(quantizer, ControlledTensorQuantizer) or not isinstance(quantizer, TensorQuantizer):
        return quantizer
    cls = type(quantizer)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Controlled{cls.__name__}", (ControlledTensorQuantizer, cls), {"__module__": __name__})
    quantizer.__class__ = _CLASSES[cls]
    return quantizer


def configure_quantizers(layer: nn.Module, roles: Mapping[str, Optional[type]]) -> None:
    """Make every quantizer of ``layer`` (a QuantLayer) controllable and apply the options of the
    class each was built from (``roles``: role -> quantizer class); a learned weight range starts
    from the weight's own statistic."""
    for role in layer.quant_roles:
        quantizer = getattr(layer, f"{role}_quant", None)
        if quantizer is None:
            continue
        controlled(quantizer)
        weight = getattr(layer, "weight", None) if role == "weight" else None
        apply_quantizer_options(quantizer, roles.get(role), weight)


def apply_quantizer_options(quantizer: Optional[nn.Module], spec: Optional[type], tensor: Optional[torch.Tensor] = None) -> None:
    """Apply the model-level options a resolved quantizer class carries (``float_range``,
    ``learned_scale``) to the runtime ``quantizer`` built from it; ``tensor`` (a weight)
    initialises a learned range."""
    if quantizer is None or spec is None or not isinstance(quantizer, TensorQuantizer):
        return
    controlled(quantizer)
    if getattr(spec, "float_range", None) is not None:
        quantizer.float_range = tuple(spec.float_range)
    if getattr(spec, "learned_scale", False):
        quantizer.learn_range(quantizer.statistic(tensor.detach()) if tensor is not None else None)
