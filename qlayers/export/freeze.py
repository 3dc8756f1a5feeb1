"""``freeze(model)``: quantized layers keep only their packed weights and dequantize them in forward.

Each :class:`~qlayers.QuantWeightLayer` with a weight quantizer gets a :class:`PackedWeight`
submodule ``packed_weight`` holding the weight's :meth:`QuantTensor.pack` storage (element codes
at their real width, E8M0/E4M3 scale codes, zero points: :mod:`quantizers.tensor.packed`) as
buffers, and its float ``weight`` parameter is deleted. ``layer.quant_weight()`` then returns the
packed weight dequantized by one fused kernel (:func:`quantizers.tensor.packed_dequant.dequantize_stored`
wrapped in :func:`quantizers.compile.compiled`; 16/32-bit codes, and 4/6-bit codes whose byte groups
would straddle rows, use :func:`quantizers.tensor.packed.dequantize_fields`): ``value_ = decode(codes) * scale``
(minus the zero point for integers) computed in float32 and rounded once, bit for bit the ``value_``
the fake-quant layer used, so a frozen model's outputs equal the fake-quant model's exactly (same
input, bias and output quantizers, same float op). One documented exception of packing: integer
codes have no -0, so an integer weight element ``q = -0.0`` (a small negative weight rounded to 0)
comes back as ``+0.0``; it can show only where the weight reaches the output unsummed
(``QuantEmbedding`` rows).

Speed: the kernel's arguments other than tensors are shared by every layer of one format, so under
the ``"auto"`` compile policy a model's frozen layers pay for compilation together (a few forwards)
and each weight shape then runs its own compiled graph: one loop over the packed bytes that writes
the float weight, nothing else. The weight is dequantized again in every forward (it is not cached:
that would undo the memory saving).

Memory: the weight's bytes drop to the packed bytes (MXFP4: 4.25 bits per element; NVFP4 4.5 +
32 per tensor; INT4 per-group-128 4.25 with a float32 scale), and the eval weight cache holds
nothing. Biases, norms and the other float parameters are unchanged. A frozen layer cannot be
trained (it has no float weight); re-quantizing it needs the float model.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from quantizers.compile import compiled
from quantizers.tensor.packed import PackedQuantTensor, QuantTensor, check_packed, dequantize_fields
from quantizers.tensor.packed_dequant import decoder_for, dequantize_stored, stored_shape

from ..embedding import QuantEmbedding
from ..weight_layer import QuantWeightLayer
from .manifest import CheckpointError

_dequantize = compiled(dequantize_fields, dynamic=False)  # layouts dequantize_stored does not take
_dequantize_stored = compiled(dequantize_stored, dynamic=False)


class PackedWeight(nn.Module):
    """A layer's quantized weight in packed storage; calling it returns the dequantized QuantTensor.

    Buffers: ``codes`` (element codes, e.g. ``uint8`` nibble pairs or ``float8_e4m3fn`` bytes),
    ``scale`` (``float8_e8m0fnu``/``float8_e4m3fn`` codes or float scales) and, where the packed
    tensor has them, ``zero_point`` and ``outer_scale`` (the NVFP4 float32 tensor scale).
    """

    def __init__(self, packed: PackedQuantTensor) -> None:
        super().__init__()
        check_packed(packed)
        self.register_buffer("codes", packed.codes.detach().clone())
        self.register_buffer("scale", packed.scale.detach().clone())
        self.register_buffer("zero_point", _optional(packed.zero_point))
        self.register_buffer("outer_scale", _optional(packed.outer_scale))
        # the fields other than the tensors: the kernel's constant argument (keyed by identity)
        self.meta = dataclasses.replace(packed, codes=None, scale=None, zero_point=None, outer_scale=None)
        self._codes_shape = stored_shape(packed)
        # dequantize_stored's constant arguments: values shared by every layer of the same format (the
        # zero point's shape matters only when it is not stored: zeros of that shape are returned)
        zero_point_shape = tuple(packed.zero_point_shape) if packed.zero_point is None else ()
        self._static = None if self._codes_shape is None else (
            packed.fmt, decoder_for(packed.fmt), packed.layout, packed.scale_codes_format,
            packed.scale_dtype, zero_point_shape, packed.zero_point_dtype,
            packed.kind in ("IntQuantTensor", "GroupwiseIntQuantTensor"),
            packed.value_dtype if packed.rounded_dtype is None else packed.rounded_dtype, packed.value_dtype,
        )

    def packed(self) -> PackedQuantTensor:
        """The PackedQuantTensor these buffers hold."""
        return dataclasses.replace(
            self.meta, codes=self.codes, scale=self.scale, zero_point=self.zero_point, outer_scale=self.outer_scale
        )

    def forward(self) -> QuantTensor:
        codes, scale = _as_bytes(self.codes), self.scale
        if self.meta.scale_codes_format is not None:
            scale = _as_bytes(scale)  # inductor has no float8_e8m0fnu: the kernel reads the bytes
        if self._static is None:
            fields = _dequantize(self.meta, codes, scale, self.zero_point, self.outer_scale)
        else:
            fields = _dequantize_stored(codes.view(self._codes_shape), scale, self.zero_point, self.outer_scale, *self._static)
        return self.packed().quant_tensor(*fields)

    def _apply(self, fn, recurse=True):
        """Device moves apply, dtype casts (``model.half()``) do not: the buffers are stored bits
        (codes, E8M0/E4M3 scale codes, float32 scales), not values to convert."""
        return super()._apply(lambda t: t.to(fn(t.new_empty(0)).device), recurse)

    def rows(self, indices: torch.Tensor) -> Optional[torch.Tensor]:
        """``value_[indices]`` of a weight whose rows are stored apart (an embedding table): only
        the rows looked up are dequantized, bit for bit the rows of the whole table (elementwise
        arithmetic). ``None`` when rows share bytes or scales across rows (the caller then
        dequantizes the whole table)."""
        meta = self.meta
        shape = tuple(meta.original_shape or meta.value_shape)
        num, per_row = meta.value_shape[0], 1
        for size in meta.value_shape[1:]:
            per_row *= size
        if meta.original_shape is not None and (meta.group_dim not in (1, -1) or len(shape) != 2):
            return None
        stored = {"nibble": (per_row % 2 == 0, per_row // 2), "six_bit": (per_row % 4 == 0, per_row * 3 // 4)}
        aligned, row_bytes = stored.get(meta.layout, (True, per_row))
        row_wise = [t for t in (self.scale, self.zero_point) if t is not None and t.numel() > 1]
        if not aligned or any(t.shape[0] != num for t in row_wise):
            return None
        flat = indices.reshape(-1)
        take = lambda t: t if t is None or t.numel() == 1 else t[flat]  # noqa: E731
        codes = self.codes.reshape(num, -1)[flat] if meta.layout in ("nibble", "six_bit") else self.codes[flat]
        gathered = dataclasses.replace(
            meta, value_shape=torch.Size((flat.numel(),) + tuple(meta.value_shape[1:])),
            original_shape=None if meta.original_shape is None else torch.Size((flat.numel(), shape[1])),
        )
        scale = take(self.scale)
        if meta.scale_codes_format is not None:
            scale = _as_bytes(scale)
        if self._static is not None:  # the fused kernel's arithmetic, eager (the row count varies)
            codes = _as_bytes(codes).reshape((flat.numel(),) + tuple(self._codes_shape[1:]))
            value_, _, _ = dequantize_stored(codes, scale, take(self.zero_point), self.outer_scale, *self._static)
        else:
            value_, _, _ = dequantize_fields(gathered, _as_bytes(codes).reshape(-1) if meta.layout in ("nibble", "six_bit") else _as_bytes(codes),
                                             scale, take(self.zero_point), self.outer_scale)
        return value_.reshape(*indices.shape, shape[-1] if len(shape) == 2 else per_row)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        p = self.meta
        return f"fmt={p.fmt.name}, layout={p.layout}, shape={tuple(p.value_shape)}, nbytes={self.nbytes}"


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


def _optional(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().clone()


def freeze(model: nn.Module) -> nn.Module:
    """Replace every quantized weight of ``model`` by its packed storage, in place; returns ``model``.

    Every layer is checked before any changes (a weight that cannot be packed, a ``QuantEmbedding``
    with ``max_norm``, which rewrites its float weight in forward): ``ValueError`` naming the layer.
    Layers already frozen and layers without a weight quantizer are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze expects an nn.Module, got {type(model).__name__}")
    packed = {}
    for name, layer in _weight_layers(model):
        if isinstance(layer, QuantEmbedding) and layer.max_norm is not None:
            raise CheckpointError(f"layer {name or '(root)'!r}: QuantEmbedding with max_norm renormalises its float weight in forward; it cannot be frozen")
        packed[name] = pack_weight(name, layer)
    for name, layer in _weight_layers(model):
        attach(layer, packed[name])
    return model


def pack_weight(name: str, layer: QuantWeightLayer) -> PackedQuantTensor:
    """The packed eval-mode quantized weight of ``layer`` (``ValueError`` naming it if it cannot be packed)."""
    training = layer.training
    try:
        layer.train(False)
        with torch.no_grad():
            return layer.quant_weight().pack(packed_fp6=True)
    except ValueError as error:
        raise CheckpointError(f"layer {name or '(root)'!r}: its quantized weight cannot be packed: {error}") from None
    finally:
        layer.train(training)


def attach(layer: QuantWeightLayer, packed: PackedQuantTensor) -> None:
    """Give ``layer`` the packed weight ``packed`` and delete its float weight."""
    layer.packed_weight = PackedWeight(packed)
    if "weight" in layer._parameters:
        del layer._parameters["weight"]
    layer.clear_weight_cache()


def is_frozen(layer: nn.Module) -> bool:
    return isinstance(getattr(layer, "packed_weight", None), PackedWeight)


def _weight_layers(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, QuantWeightLayer) and module.weight_quant is not None and not is_frozen(module):
            yield name, module
