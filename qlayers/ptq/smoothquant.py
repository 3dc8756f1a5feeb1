"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights with a per-input-
channel scale, before calibration.

For a group of layers sharing one input ``X`` (e.g. q/k/v after a LayerNorm), per input channel
``j``::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

with ``max|X_j|`` over every position of the calibration data (float network) and ``max|W_j|``
over the input channel ``j`` of every layer in the group (all output channels, kernel positions).
Then ``X_j / s_j`` and ``W[:, j] * s_j`` (:mod:`qlayers.ptq.fold`): ``1 / s`` is folded into the
preceding LayerNorm/RMSNorm/Linear/Conv/BatchNorm where that leaves the model's function
unchanged, and otherwise kept as the layer's ``input_multiplier``. ``alpha`` is AMCT's
``smooth_strength`` (default 0.5; smaller for larger outliers).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from . import channel_scales
from .graph import Forward
from .registry import register
from .report import PTQReport


def _check(model: nn.Module, *, alpha=None, smooth_strength=None, layers=None, **_: Any) -> dict:
    _strength(alpha, smooth_strength)
    return channel_scales.check(model, "smoothquant", layers)


def _preflight(model: nn.Module, batch: Any, forward: Forward, *, layers=None, fold=True, input_multiplier=True, **_: Any) -> None:
    channel_scales.preflight(model, batch, forward, algorithm="smoothquant", layers=layers, fold=fold, input_multiplier=input_multiplier)


@register("smoothquant", check=_check, preflight=_preflight)
def smoothquant(
    model: nn.Module,
    data: Any,
    *,
    alpha: Optional[float] = None,
    smooth_strength: Optional[float] = None,
    layers: Optional[Sequence[str]] = None,
    fold: bool = True,
    input_multiplier: bool = True,
    max_rows: int = 512,
    forward: Forward = None,
    progress: bool = True,
) -> PTQReport:
    """Smooth the quantized Linear/Conv layers of ``model`` in place (see the module docstring).

    Args:
        model: a model quantized with :func:`qlayers.quantize_model` (before calibration; ranges
            already calibrated on a smoothed layer are reset).
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        alpha: migration strength in [0, 1] (default 0.5); ``smooth_strength`` is AMCT's name.
        layers: name patterns of the layers to smooth (default: every Linear and groups=1 Conv).
        fold: fold ``1 / s`` into the preceding op where possible.
        input_multiplier: allow an explicit input multiplier where no op can absorb ``1 / s``;
            with False such a layer raises ``ValueError`` before anything changes.
        max_rows: input rows kept per layer to measure the error (the report only).
        forward: ``forward(model, batch)`` for batches the default call does not fit.
        progress: show a tqdm bar (when tqdm is installed).

    Returns:
        A :class:`~qlayers.ptq.report.PTQReport`: per layer the relative output error of the
        quantized layer before and after smoothing, and where the scale went.

    Example::

        qmodel = qlayers.quantize_model(model, {"weights": "Int8WeightPerChannelFloat", "inputs": "Int8ActPerTensorFloat"})
        print(qlayers.ptq.smoothquant(qmodel, batches, alpha=0.5))
        qlayers.calibrate(qmodel, batches)
    """
    strength = _strength(alpha, smooth_strength)

    def choose(layers_, rows, references, stats):
        w_max = torch.stack([_weight_absmax(layer) for layer in layers_]).amax(0)
        return smoothing_scale(stats.absmax, w_max, strength), f"alpha={strength:g}"

    return channel_scales.scale_groups(
        model, data, algorithm="smoothquant", choose=choose, layers=layers, fold_into_producer=fold,
        input_multiplier=input_multiplier, max_rows=max_rows, forward=forward, progress=progress,
    )


def smoothing_scale(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; channels with a zero maximum keep ``s_j = 1``."""
    x_max, w_max = x_max.double(), w_max.double().to(x_max.device)
    s = x_max.pow(alpha) / w_max.pow(1 - alpha)
    ok = (x_max > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp_min(1e-5).float()


def _weight_absmax(layer: nn.Module) -> torch.Tensor:
    """``max|W[:, j, ...]|`` per input channel ``j``."""
    w = layer.weight.detach().float().abs()
    return w.transpose(0, 1).reshape(w.shape[1], -1).amax(1)


def _strength(alpha: Optional[float], smooth_strength: Optional[float]) -> float:
    if alpha is not None and smooth_strength is not None and alpha != smooth_strength:
        raise ValueError(f"smoothquant: give alpha or smooth_strength (its AMCT name), not both: alpha={alpha!r}, smooth_strength={smooth_strength!r}")
    value = 0.5 if alpha is None and smooth_strength is None else alpha if alpha is not None else smooth_strength
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        name = "alpha" if alpha is not None else "smooth_strength"
        raise ValueError(f"smoothquant: {name} must be a number in [0, 1], got {value!r}")
    return float(value)
