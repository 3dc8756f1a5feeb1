"""QuantEmbedding: ``nn.Embedding`` looking up rows of the quantized weight."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8WeightPerTensorFloat, QuantTensor

from .quant_args import QuantizerSpec
from .quant_layer import MaybeQuant
from .weight_layer import QuantWeightLayer


class QuantEmbedding(QuantWeightLayer, nn.Embedding):
    """``F.embedding(indices, weight_quant(W))``; weight ``(num_embeddings, embedding_dim)`` with
    ``channel_axis=0`` (one scale per row when per channel) and ``group_dim=1``.

    With ``return_quant_tensor=True`` and a weight quantizer the output is a QuantTensor whose
    scales are the looked-up rows' scales. ``max_norm`` renormalises the float weight in place, as
    ``nn.Embedding`` does, before quantizing it.
    """

    quant_roles = ("weight",)
    float_class = nn.Embedding
    weight_layout = {"channel_axis": 0, "group_dim": 1}

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[torch.Tensor] = None,
        _freeze: bool = False,
        *,
        weight_quant: QuantizerSpec = Int8WeightPerTensorFloat,
        return_quant_tensor: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **overrides: Any,
    ) -> None:
        nn.Embedding.__init__(
            self, num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
            _weight, _freeze, device=device, dtype=dtype,
        )
        self._init_weight_quantizers(weight_quant, None, None, None, return_quant_tensor, overrides)

    def forward(self, input: torch.Tensor) -> MaybeQuant:
        if self.max_norm is not None:
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, input, self.max_norm, self.norm_type)
        packed = self._modules.get("packed_weight")  # qlayers.freeze: dequantize only the rows looked up
        rows = None if packed is None or self.return_quant_tensor else packed.rows(input)
        if rows is not None:
            return rows
        quant_weight = self._quant_weight()
        if quant_weight is not None and self.return_quant_tensor:
            return embed_quant_tensor(input, quant_weight, self._lookup)
        return self._lookup(input, self._weight_value(quant_weight))

    def _lookup(self, input: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, table, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, self.sparse)

    @classmethod
    def float_config(cls, module: nn.Embedding) -> Dict[str, Any]:
        names = ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")
        return dict({n: getattr(module, n) for n in names}, device=module.weight.device, dtype=module.weight.dtype)


def embed_quant_tensor(indices: torch.Tensor, table: QuantTensor, lookup=F.embedding) -> MaybeQuant:
    """The rows ``indices`` of a quantized ``(num, dim)`` table as a QuantTensor of shape
    ``indices.shape + (dim,)``: every stored field (value, scale, zero point) is looked up by row.
    A table grouped along its rows (``group_dim=0``) has no per-row scales: plain tensor."""
    num = table.shape[0]
    if table.is_groupwise and table.group_dim != 1:
        return lookup(indices, table.value)
    stored_ndim = table.value_.dim()

    def rows(a: Optional[torch.Tensor], fn=F.embedding) -> Optional[torch.Tensor]:
        if a is None or a.numel() == 1:
            return None if a is None else a.reshape(())
        a = a.reshape((1,) * (stored_ndim - a.dim()) + tuple(a.shape))
        if a.shape[0] != num:
            return a[0]  # the same for every row: broadcasts
        return fn(indices, a.reshape(num, -1)).unflatten(-1, a.shape[1:])

    changes = {name: rows(getattr(table, name)) for name in ("scale_", "zero_point_", "outer_scale_")}
    value_ = rows(table.value_, lookup)
    if table.is_groupwise:
        changes.update(group_dim=indices.dim(), original_shape=tuple(indices.shape) + (table.shape[1],))
    return table.replace(value_=value_, **changes)
