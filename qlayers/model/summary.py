"""``summary(model)``: what every quantized layer does and what it costs in memory.

For each QuantLayer: its type, the weight's element format, granularity and scale rule, the range
of its weight scales, the input/output (or activation) quantizers (format, static or dynamic, and
the calibrated range), and the bytes of its parameters before and after packing. "Before" is every
parameter at its stored dtype; "after" is the packed quantized weight
(``QuantTensor.pack().nbytes``: codes, scales, zero points) plus the bias at its quantized width
or stored dtype. Model totals count every parameter of the model, quantized or not. A frozen
layer (``qlayers.freeze``) counts its weight at the float dtype it had before and its packed
buffers after.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from quantizers import QuantTensor, TensorQuantizer
from quantizers.scaling.scalers import FloatScaler, IntScaler, MXScaler, NVFP4Scaler, UnitScaler

from ..quant_layer import QuantLayer
from .qat import disabled_roles


@dataclass(frozen=True)
class LayerSummary:
    """One quantized layer (see the module docstring); scale bounds are None without a weight."""

    name: str
    layer: str
    weight: str
    granularity: str
    scale_min: Optional[float]
    scale_max: Optional[float]
    activations: str
    float_bytes: int
    packed_bytes: int


@dataclass(frozen=True)
class ModelSummary:
    """The per-layer rows and the model's parameter bytes before and after packing; prints as a table."""

    layers: Tuple[LayerSummary, ...]
    total_float_bytes: int
    total_packed_bytes: int

    @property
    def compression(self) -> float:
        return self.total_float_bytes / self.total_packed_bytes if self.total_packed_bytes else float("nan")

    def __str__(self) -> str:
        header = ("layer", "type", "weight", "granularity", "weight scales", "activations", "bytes", "packed")
        rows = [header] + [
            (
                r.name or "(root)", r.layer, r.weight, r.granularity,
                "-" if r.scale_min is None else f"[{r.scale_min:.3g}, {r.scale_max:.3g}]",
                r.activations, _bytes(r.float_bytes), _bytes(r.packed_bytes),
            )
            for r in self.layers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"model parameters: {self._totals()}")
        return "\n".join(lines)

    def __repr__(self) -> str:  # one line: summary() has printed the table already (verbose)
        return f"ModelSummary({len(self.layers)} quantized layers; {self._totals()})"

    def _totals(self) -> str:
        ratio = f" ({self.compression:.2f}x)" if self.total_packed_bytes else " (no parameters)"
        return f"{_bytes(self.total_float_bytes)} -> {_bytes(self.total_packed_bytes)} packed{ratio}"


def summary(model: nn.Module, *, verbose: bool = True) -> ModelSummary:
    """Describe every quantized layer of ``model`` and return the :class:`ModelSummary`.

    ``verbose`` prints the table once (``str(result)`` is the table again; its ``repr`` is one line,
    so a notebook cell ending in ``summary(model)`` shows the table once)."""
    rows = []
    saved = 0  # bytes the packed form saves over the stored parameters
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, QuantLayer):
                row = _layer_summary(name, layer)
                rows.append(row)
                saved += row.float_bytes - row.packed_bytes
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(_frozen_weight_bytes(m) for m in model.modules() if isinstance(m, QuantLayer))  # weights freeze removed
    result = ModelSummary(tuple(rows), total, total - saved)
    if verbose:
        print(result)
    return result


def _layer_summary(name: str, layer: QuantLayer) -> LayerSummary:
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    frozen = _frozen_weight_bytes(layer)  # qlayers.freeze: the weight lives only in packed storage
    float_bytes = frozen + sum(_nbytes(t) for t in (weight, bias) if isinstance(t, torch.Tensor))
    fmt = "float" if isinstance(weight, torch.Tensor) else "-"
    packed_bytes, granularity, scale_min, scale_max = float_bytes, "-", None, None
    quantizer = getattr(layer, "weight_quant", None)
    if (isinstance(weight, torch.Tensor) or frozen) and quantizer is not None:
        qt = layer.quant_weight()
        fmt, granularity = describe_quantizer(quantizer)
        scales = _effective_scales(qt)
        scale_min, scale_max = float(scales.min()), float(scales.max())
        weight_bytes = layer.packed_weight.nbytes if frozen else _packed_nbytes(qt)
        packed_bytes = weight_bytes + _bias_nbytes(layer, bias)
    acts = ", ".join(f"{role}: {_activation(getattr(layer, f'{role}_quant'))}" for role in layer.quant_roles
                     if role in ("input", "output", "act") and getattr(layer, f"{role}_quant", None) is not None)
    off = disabled_roles(layer)
    if off:
        acts = (acts + "; " if acts else "") + f"disabled: {', '.join(off)}"
    return LayerSummary(name, type(layer).__name__, fmt, granularity, scale_min, scale_max, acts or "-", float_bytes, packed_bytes)


def _frozen_weight_bytes(layer: nn.Module) -> int:
    """Bytes the float weight of a frozen layer (``qlayers.freeze``) had; 0 for any other layer."""
    packed = layer._modules.get("packed_weight")
    meta = getattr(packed, "meta", None)
    if meta is None:
        return 0
    shape = meta.original_shape or meta.value_shape
    return math.prod(shape) * torch.empty((), dtype=meta.value_dtype).element_size()


def describe_quantizer(quantizer: nn.Module) -> Tuple[str, str]:
    """``(format, "granularity, scale rule")`` of a runtime quantizer, e.g. ``("int8_narrow", "channel, float")``."""
    if not isinstance(quantizer, TensorQuantizer):
        fmt = getattr(quantizer, "fmt", None)
        return getattr(fmt, "name", type(quantizer).__name__), "accumulator"
    granularity = quantizer.granularity
    where = granularity.kind + (f"({granularity.group_size})" if granularity.group_size else "")
    return quantizer.fmt.name, f"{where}, {scale_rule(quantizer.scaler)}"


def scale_rule(scaler) -> str:
    """A short name of a scaler's rule: ``float``, ``po2 ceil``, ``e8m0 floor``, ``nvfp4``, ``none``."""
    if isinstance(scaler, MXScaler):
        return f"e8m0 {scaler.mode}"
    if isinstance(scaler, NVFP4Scaler):
        return "nvfp4"
    if isinstance(scaler, UnitScaler):
        return "none"
    if isinstance(scaler, (IntScaler, FloatScaler)):
        rule = f"po2 {scaler.power_of_two}" if scaler.power_of_two else "float"
        if isinstance(scaler, IntScaler) and not scaler.symmetric:
            rule += f" asym {scaler.formulation}"
        return rule
    return type(scaler).__name__


def _activation(quantizer: nn.Module) -> str:
    fmt, granularity = describe_quantizer(quantizer)
    if not isinstance(quantizer, TensorQuantizer) or quantizer.observer is None:
        return f"{fmt} {granularity} dynamic"
    observer = quantizer.observer
    state = f"static {float(observer.high.max()):.3g}" if observer.is_initialized else "static uncalibrated"
    return f"{fmt} {granularity} {state}"


def _effective_scales(qt: QuantTensor) -> torch.Tensor:
    scale = qt.scale_.detach()
    outer = getattr(qt, "outer_scale_", None)
    return scale * outer.detach() if outer is not None else scale


def _packed_nbytes(qt: QuantTensor) -> int:
    try:
        return qt.pack().nbytes
    except (ValueError, NotImplementedError, RuntimeError):  # estimate from the element width
        stored = (qt.scale_, getattr(qt, "zero_point_", None), getattr(qt, "outer_scale_", None))
        return math.ceil(qt.value_.numel() * qt.fmt.bits / 8) + sum(_nbytes(t) for t in stored if t is not None)


def _bias_nbytes(layer: QuantLayer, bias: Optional[torch.Tensor]) -> int:
    if bias is None:
        return 0
    quantizer = getattr(layer, "bias_quant", None)
    fmt = getattr(quantizer, "fmt", None)
    if fmt is None:
        return _nbytes(bias)
    return math.ceil(bias.numel() * fmt.bits / 8)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"
