"""Where the residual stream of a Llama/Qwen2/Qwen3/Mistral-style causal LM is read and written.

The rotation (:mod:`qlayers.transforms.rotation`) needs, for each decoder layer, the RMSNorm and
the linears that read it (``q/k/v_proj`` after ``input_layernorm``, ``gate/up_proj`` after
``post_attention_layernorm``) and the linears that write back into the residual stream
(``o_proj``, ``down_proj``), plus the token embeddings, the final norm and ``lm_head``. This
module finds them and checks every one before anything is changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
"""Model classes (Hugging Face ``transformers``) whose layout this module knows. Qwen3's per-head
``q_norm``/``k_norm`` act on the projections' outputs, which the residual rotation leaves unchanged."""


@dataclass
class DecoderBlock:
    """One decoder layer: ``attn_norm -> readers_attn``, ``writer_attn``; ``mlp_norm -> readers_mlp``,
    ``writer_mlp`` (``down_proj``, an attribute of ``mlp``)."""

    attn_norm: nn.Module
    readers_attn: Tuple[nn.Linear, ...]
    writer_attn: nn.Linear
    mlp_norm: nn.Module
    readers_mlp: Tuple[nn.Linear, ...]
    mlp: nn.Module
    writer_mlp: nn.Linear


@dataclass
class DecoderLayout:
    """The residual stream of a causal LM: ``embeddings``, ``blocks``, ``final_norm``, ``lm_head``."""

    embeddings: nn.Embedding
    blocks: List[DecoderBlock]
    final_norm: nn.Module
    lm_head: nn.Linear

    @property
    def tied(self) -> bool:
        """Whether ``lm_head`` shares its weight with the embeddings."""
        return self.lm_head.weight is self.embeddings.weight


def is_rms_norm(module: nn.Module) -> bool:
    """Whether ``module`` is an RMSNorm, ``x / rms(x) * weight`` (torch's ``nn.RMSNorm`` or a Hugging
    Face ``*RMSNorm``): a 1-D ``weight`` and no bias (a LayerNorm's mean subtraction would not
    commute with the rotation)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and getattr(module, "bias", None) is None)


def _unsupported(model: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"rotate: {type(model).__name__} is not supported ({why}); supported: {', '.join(SUPPORTED)} "
        "from Hugging Face transformers, float (rotate before quantize_model), with nn.Linear projections "
        "and RMSNorm layers"
    )


def _get(model: nn.Module, path: str, kind: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part, None)
    ok = is_rms_norm(module) if kind == "RMSNorm" else type(module) is getattr(nn, kind)
    if module is None or not ok:
        found = "nothing" if module is None else type(module).__name__
        raise _unsupported(model, f"expected {kind} at '{path}', found {found}")
    return module


def decoder_layout(model: nn.Module) -> DecoderLayout:
    """The layout of ``model``, or ``ValueError`` naming its class and what is supported."""
    if type(model).__name__ not in SUPPORTED:
        raise _unsupported(model, "unknown architecture")
    layout = DecoderLayout(
        embeddings=_get(model, "model.embed_tokens", "Embedding"),
        blocks=[],
        final_norm=_get(model, "model.norm", "RMSNorm"),
        lm_head=_get(model, "lm_head", "Linear"),
    )
    for i in range(len(model.model.layers)):
        def get(path: str, kind: str = "Linear") -> nn.Module:
            return _get(model, f"model.layers.{i}.{path}", kind)
        layout.blocks.append(DecoderBlock(
            attn_norm=get("input_layernorm", "RMSNorm"),
            readers_attn=tuple(get(f"self_attn.{p}_proj") for p in "qkv"),
            writer_attn=get("self_attn.o_proj"),
            mlp_norm=get("post_attention_layernorm", "RMSNorm"),
            readers_mlp=(get("mlp.gate_proj"), get("mlp.up_proj")),
            mlp=model.model.layers[i].mlp,
            writer_mlp=get("mlp.down_proj"),
        ))
    return layout
