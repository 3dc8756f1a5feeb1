"""QuantScaledDotProductAttention: ``F.scaled_dot_product_attention`` with its matmul operands quantized.

``out = sdpa_output_quant(P @ v_quant(V))`` with
``P = attn_output_weights_quant(softmax(softmax_input_quant(q_scaled_quant(Q * scale) @ k_transposed_quant(K)^T) + mask))``,
the quantizer names and order of Brevitas's ``QuantScaledDotProductAttention``. Short aliases:
``q_quant`` = ``q_scaled_quant``, ``k_quant`` = ``k_transposed_quant``, ``softmax_quant`` =
``attn_output_weights_quant`` (the softmax output), each with its own prefixed overrides
(``q_bit_width=4`` = ``q_scaled_bit_width=4``).

Layout: every quantizer sees its tensor as ``(N, H, L or S, E)`` (softmax: ``(N, H, L, S)``):
``channel_axis=1`` (one scale per head for ``"channel"`` granularity), ``group_dim=-1`` (``"token"``
granularity: one scale per (batch, head, token) over the head dimension; ``"group"``: blocks of the
head dimension; softmax: over the keys). K is quantized in that layout, before it is transposed, so
per-token K scales are per key token (Brevitas hands the quantizer Kᵀ). With grouped-query attention
(``enable_gqa=True``) K and V are quantized before their heads are repeated (per-head scales are per
KV head). ``softmax_input_quant`` quantizes the scores before the mask is added (a mask's -inf would
otherwise set the range); Brevitas adds the mask first.

Computation: when neither the scores nor the softmax output is quantized, the quantized Q, K, V go
through torch's fused ``F.scaled_dot_product_attention``; otherwise scores and the softmax are
computed in float32 for half inputs (as Hugging Face's eager attention), the output in the inputs'
dtype. A query row whose keys are all masked gives zeros (as
``F.scaled_dot_product_attention``'s memory-efficient kernel), not NaN.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

from .quant_args import QuantizerSpec
from .quant_layer import QuantLayer, dequantize

_ALIASES = {"q": "q_scaled", "k": "k_transposed", "softmax": "attn_output_weights"}
"""Short role name -> Brevitas role name."""
_UNSET: Any = object()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class QuantScaledDotProductAttention(QuantLayer):
    """Scaled dot-product attention with quantized Q, K, V, scores, softmax output and output.

    ``forward(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False)`` computes, with ``s = scale`` (default ``1 / sqrt(E)``)::

        A = q_scaled_quant(Q * s) @ k_transposed_quant(K)^T          # (N, H, L, S)
        P = attn_output_weights_quant(softmax(softmax_input_quant(A) + bias, dim=-1))
        out = sdpa_output_quant(P @ v_quant(V))                      # (N, H, L, Ev)

    where ``bias`` is the float ``attn_mask`` added as it is, or -inf where a boolean ``attn_mask``
    is False or ``is_causal`` hides a key. Quantizer arguments take a quantizer class, a shared
    quantizer module or None (off); defaults are Brevitas's (INT8 per-tensor Q, K, V; UINT8
    per-tensor softmax output). See the module docstring for layouts and aliases.

    Example::

        >>> from quantizers import Fp8e4m3OCPActPerTokenFloat as FP8
        >>> attn = QuantScaledDotProductAttention(q_quant=FP8, k_quant=FP8, v_quant=FP8, softmax_quant=FP8)
        >>> attn(torch.randn(1, 4, 8, 16), torch.randn(1, 4, 8, 16), torch.randn(1, 4, 8, 16)).shape
        torch.Size([1, 4, 8, 16])
    """

    quant_roles = ("q_scaled", "k_transposed", "v", "softmax_input", "attn_output_weights", "sdpa_output")
    act_layout = {"channel_axis": 1, "group_dim": -1}

    def __init__(
        self,
        pre_process_q: Optional[Callable[[torch.Tensor], torch.Tensor]] = _identity,
        pre_process_k: Optional[Callable[[torch.Tensor], torch.Tensor]] = _identity,
        pre_process_v: Optional[Callable[[torch.Tensor], torch.Tensor]] = _identity,
        softmax_input_quant: QuantizerSpec = None,
        attn_output_weights_quant: QuantizerSpec = Uint8ActPerTensorFloat,
        q_scaled_quant: QuantizerSpec = Int8ActPerTensorFloat,
        k_transposed_quant: QuantizerSpec = Int8ActPerTensorFloat,
        v_quant: QuantizerSpec = Int8ActPerTensorFloat,
        sdpa_output_quant: QuantizerSpec = None,
        *,
        q_quant: QuantizerSpec = _UNSET,
        k_quant: QuantizerSpec = _UNSET,
        softmax_quant: QuantizerSpec = _UNSET,
        return_quant_tensor: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        specs: Dict[str, QuantizerSpec] = dict(
            q_scaled=q_scaled_quant, k_transposed=k_transposed_quant, v=v_quant, softmax_input=softmax_input_quant,
            attn_output_weights=attn_output_weights_quant, sdpa_output=sdpa_output_quant,
        )
        for alias, spec in (("q", q_quant), ("k", k_quant), ("softmax", softmax_quant)):
            if spec is not _UNSET:
                specs[_ALIASES[alias]] = spec
        layouts = {role: self.act_layout for role in self.quant_roles}
        self._init_quantizers(specs, _unalias(overrides), layouts, return_quant_tensor)
        for name, fn in (("pre_process_q", pre_process_q), ("pre_process_k", pre_process_k), ("pre_process_v", pre_process_v)):
            if fn is not None and not callable(fn):
                raise TypeError(f"QuantScaledDotProductAttention: {name} must be callable or None, got {fn!r}")
            setattr(self, name, _identity if fn is None else fn)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: Optional[float] = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        return self._quant_output(
            attend(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa), self.sdpa_output_quant
        )


def attend(
    owner: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor],
    dropout_p: float, is_causal: bool, scale: Optional[float], enable_gqa: bool, fused: bool = True,
) -> torch.Tensor:
    """``P @ v_quant(V)`` of :meth:`QuantScaledDotProductAttention.forward` (before ``sdpa_output_quant``)
    for ``owner``, a QuantScaledDotProductAttention or its ONNX export twin (the same quantizer
    attributes and ``pre_process_*``). ``fused=False`` writes scores and softmax out even when
    neither is quantized (the export: ONNX ops instead of torch's fused kernel)."""
    query, key, value = (dequantize(t) for t in (query, key, value))
    _check_shapes(query, key, value, enable_gqa)
    if is_causal and attn_mask is not None:
        raise ValueError("QuantScaledDotProductAttention: give attn_mask or is_causal=True, not both")
    dtype = query.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    s = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    query, key, value = owner.pre_process_q(query), owner.pre_process_k(key), owner.pre_process_v(value)
    q = _q(owner.q_scaled_quant, query * s)
    k = _q(owner.k_transposed_quant, key)
    v = _q(owner.v_quant, value)
    if fused and owner.softmax_input_quant is None and owner.attn_output_weights_quant is None:
        return _float_attention(q, k, v, attn_mask, dropout_p, is_causal)
    if enable_gqa and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
    scores = _q(owner.softmax_input_quant, (q @ k.transpose(-2, -1)).to(work))
    bias = _bias(attn_mask, is_causal, q.size(-2), k.size(-2), work, q.device)
    if bias is not None:
        scores = scores + bias
        hidden = torch.isneginf(scores).all(dim=-1, keepdim=True)  # every key masked: zeros, not NaN
        scores = scores.masked_fill(hidden, 0.0)
    weights = torch.softmax(scores, dim=-1)
    if bias is not None:
        weights = weights.masked_fill(hidden, 0.0)
    if dropout_p > 0.0:
        weights = torch.dropout(weights, dropout_p, train=True)
    weights = _q(owner.attn_output_weights_quant, weights.to(dtype))
    return weights @ v


def _float_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], dropout_p: float, is_causal: bool) -> torch.Tensor:
    """``softmax(q kᵀ + bias) v`` by torch's fused SDPA (``q`` already scaled), for when nothing
    quantizes the scores or the softmax output; a query row that sees no key gives zeros."""
    gqa = q.dim() >= 3 and k.size(-3) != q.size(-3)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=1.0, enable_gqa=gqa)
    if mask is not None:
        hidden = ~mask.any(-1, keepdim=True) if mask.dtype == torch.bool else torch.isneginf(mask).all(-1, keepdim=True)
        out = out.masked_fill(hidden, 0.0)
    return out


def _q(quantizer: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else dequantize(quantizer(x))


def _bias(mask: Optional[torch.Tensor], is_causal: bool, L: int, S: int, dtype: torch.dtype, device) -> Optional[torch.Tensor]:
    """The additive score bias of ``mask`` / ``is_causal`` (-inf where a key is hidden), or None."""
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=device).tril()
        return torch.zeros(L, S, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _check_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool) -> None:
    if query.dim() < 2 or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"QuantScaledDotProductAttention: query, key and value must have the same rank >= 2 ((N, ..., H, L, E)); "
            f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.size(-1) != key.size(-1) or key.size(-2) != value.size(-2):
        raise ValueError(
            f"QuantScaledDotProductAttention: query and key need the same head dimension E and key and value the same "
            f"length S; got query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if query.dim() >= 3 and key.size(-3) != query.size(-3):
        if not enable_gqa or query.size(-3) % key.size(-3):
            raise ValueError(
                f"QuantScaledDotProductAttention: query has {query.size(-3)} heads and key {key.size(-3)}; different "
                "head counts need enable_gqa=True and a query head count that is a multiple of the key's"
            )


def _unalias(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``q_bit_width`` -> ``q_scaled_bit_width`` etc.; Brevitas's full prefixes win when both match."""
    roles = QuantScaledDotProductAttention.quant_roles
    out: Dict[str, Any] = {}
    for key, value in overrides.items():
        if not any(key.startswith(r + "_") for r in roles):
            alias = next((a for a in _ALIASES if key.startswith(a + "_")), None)
            if alias is not None:
                key = _ALIASES[alias] + key[len(alias):]
        out[key] = value
    return out
