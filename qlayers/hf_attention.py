"""Quantized attention inside Hugging Face ``transformers`` models, without editing their code.

Hugging Face attention modules (``BertSelfAttention``, ``GPT2Attention``, ``LlamaAttention``,
``Qwen2Attention``, ...) compute ``softmax(Q Kᵀ * scaling + mask) V`` by calling the function that
``transformers.AttentionInterface`` registers under ``config._attn_implementation``.
:func:`quantize_attention` registers one more, ``"qzoo"`` (:func:`qzoo_attention_forward`, with
the boolean masks of ``"sdpa"`` from ``AttentionMaskInterface``), gives each attention module a
:class:`~qlayers.QuantScaledDotProductAttention` submodule ``attn_quant`` and sets the model's
``config._attn_implementation = "qzoo"``. The function calls the module's ``attn_quant`` (a module
without one gets torch's SDPA), so quantizers, observers and ``state_dict`` keys live in the model
(``...self_attn.attn_quant.k_transposed_quant...``) and calibration, ``quantization_disabled`` and
re-quantization treat them like any layer's.

A model with attention that does not dispatch through the registry (``nn.MultiheadAttention``, a
hand-written attention, older ``transformers`` classes) raises ``ValueError`` naming the module and
its class before anything changes.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from quantizers import Quantizer

from .attention import QuantScaledDotProductAttention

IMPLEMENTATION = "qzoo"
"""The name the quantized attention function is registered under in ``transformers``."""
_ROLES = ("q_scaled", "k_transposed", "v", "softmax_input", "attn_output_weights")
_SOURCE: Dict[type, bool] = {}


def qzoo_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs: Any,
) -> Tuple[torch.Tensor, None]:
    """The ``transformers`` attention function: ``module.attn_quant(query, key, value, ...)``
    transposed to ``(batch, length, heads, head_dim)``, as ``sdpa_attention_forward`` returns.

    ``query`` is ``(batch, heads, length, head_dim)``, ``key``/``value`` may have fewer (KV) heads;
    ``attention_mask`` is the boolean (True = attend) or additive mask of the ``"sdpa"`` mask
    function, or None where the mask is causal (then ``is_causal``, else the module's own
    ``is_causal``, decides for a query longer than one token)."""
    attention = getattr(module, "attn_quant", None)
    if attention is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    out = attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal, scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register :func:`qzoo_attention_forward` (and the ``"sdpa"`` mask) as ``"qzoo"`` in transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, qzoo_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def dispatches_through_registry(module: nn.Module) -> bool:
    """Whether ``module``'s forward calls transformers' attention registry (``ALL_ATTENTION_FUNCTIONS``)."""
    cls = type(module)
    if cls not in _SOURCE:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _SOURCE[cls] = "ALL_ATTENTION_FUNCTIONS" in source and hasattr(module, "config")
    return _SOURCE[cls]


def attention_modules(model: nn.Module) -> Tuple[List[Tuple[str, nn.Module]], List[Tuple[str, nn.Module]]]:
    """``(interceptable, other)``: the registry-dispatching attention modules of ``model``, and the
    attention-like modules (``nn.MultiheadAttention``, a class named ``*Attention``) that neither
    dispatch nor contain or sit in one that does."""
    found = [(n, m) for n, m in model.named_modules() if dispatches_through_registry(m)]
    names = [n for n, _ in found]
    other = []
    for name, module in model.named_modules():
        if isinstance(module, QuantScaledDotProductAttention) or (name, module) in found:
            continue
        looks = isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith(("Attention", "Attn"))
        related = any(n == "" or name.startswith(n + ".") or n.startswith(name + ".") or name == "" for n in names)
        if looks and (isinstance(module, nn.MultiheadAttention) or not related):
            other.append((name, module))
    return found, other


def quantize_attention(
    model: nn.Module, quantizers: Mapping[str, Optional[Type[Quantizer]]], skip: Callable[[str], bool] = lambda name: False,
) -> List[str]:
    """Quantize the attention matmuls of a Hugging Face model in place; returns the module names.

    ``quantizers`` maps :class:`~qlayers.QuantScaledDotProductAttention` roles (``"q_scaled"``,
    ``"k_transposed"``, ``"v"``, ``"softmax_input"``, ``"attn_output_weights"``) to quantizer classes
    or None; ``skip(name)`` leaves a module's attention float. Raises ``ValueError`` (nothing
    changed) when the model has attention this cannot intercept, or none at all."""
    for role in quantizers:
        if role not in _ROLES:
            raise ValueError(f"quantize_attention: unknown quantizer role {role!r}; allowed: {', '.join(_ROLES)}")
    found, other = attention_modules(model)
    if other:
        listed = ", ".join(f"{type(m).__name__} at {n!r}" for n, m in other[:4])
        raise ValueError(
            f"quantize_model: 'attention' cannot intercept {listed}: its forward does not call transformers' "
            "attention registry. Supported: Hugging Face transformers attention modules that dispatch through "
            "AttentionInterface / config._attn_implementation (BertSelfAttention, GPT2Attention, LlamaAttention, "
            "Qwen2Attention, ...); elsewhere call qlayers.QuantScaledDotProductAttention in your own forward"
        )
    if not found:
        raise ValueError(
            f"quantize_model: 'attention' found no attention module in {type(model).__name__}. Supported: Hugging "
            "Face transformers attention modules that dispatch through AttentionInterface / "
            "config._attn_implementation; elsewhere call qlayers.QuantScaledDotProductAttention in your own forward"
        )
    register()
    spec = {f"{role}_quant": quantizers.get(role) for role in _ROLES}
    done = []
    for name, module in found:
        if skip(name):
            continue
        module.attn_quant = QuantScaledDotProductAttention(**spec, sdpa_output_quant=None).to(_device(module))
        module.config._attn_implementation = IMPLEMENTATION
        done.append(name)
    if getattr(model, "config", None) is not None:
        model.config._attn_implementation = IMPLEMENTATION
    return done


def remove_attention_quantization(model: nn.Module) -> bool:
    """Undo :func:`quantize_attention` (back to ``"sdpa"``); whether anything was undone."""
    undone = False
    for module in model.modules():
        if isinstance(getattr(module, "attn_quant", None), QuantScaledDotProductAttention):
            del module.attn_quant
            undone = True
            if getattr(module.config, "_attn_implementation", None) == IMPLEMENTATION:
                module.config._attn_implementation = "sdpa"
    config = getattr(model, "config", None)
    if undone and getattr(config, "_attn_implementation", None) == IMPLEMENTATION:
        config._attn_implementation = "sdpa"
    return undone


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
