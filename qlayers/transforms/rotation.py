"""QuaRot-style Hadamard rotations fused into the weights of a Llama/Mistral/Qwen2/Qwen3 causal LM.

With ``Q`` an orthogonal ``d x d`` randomized Hadamard (:class:`.HadamardTransform`, ``d`` the hidden
size), the residual stream ``x`` is carried rotated, ``x @ Q``, through the whole model:

1. every RMSNorm scale ``g`` is folded into the linears that read it (``W <- W * g``, ``g <- g / g
   = 1``; :func:`qlayers.ptq.fold.fold_scale`, shared with SmoothQuant/AWQ), so the norms become
   ``x / rms(x)`` and commute with ``Q`` (``rms(x @ Q) = rms(x)``);
2. embeddings ``E <- E @ Q``; linears that read the stream (``q/k/v_proj``, ``gate/up_proj``,
   ``lm_head``) ``W <- W @ Q``; linears that write to it (``o_proj``, ``down_proj``)
   ``W <- Q.T @ W``, ``b <- b @ Q``;
3. online Hadamard before ``down_proj``: ``down_proj`` becomes ``HadamardInput(down_proj, H)``
   computing ``down_proj(h @ H)`` with ``W <- W @ H`` (``H`` the plain Hadamard of the
   intermediate size, applied by a fast Walsh-Hadamard transform at run time), so the quantizer
   of ``down_proj``'s input sees rotated activations.

The float model computes the same function (logits equal to float32 rounding: relative error
~1e-6; in bfloat16 the fused weights are rounded once from float64, which moves logits by about
bf16's 2^-8 relative step, as any re-rounding of the weights would). Outlier channels of the
activations are spread over all channels, so 4-bit quantization (INT4, MXFP4, NVFP4) of the
linears' inputs and weights loses much less (QuaRot, arXiv 2404.00456; Brevitas's
``--rotation fused``). Tied embeddings are untied (``lm_head`` then holds ``g``, the final norm's
scale; ``config.tie_word_embeddings`` becomes False).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..ptq.fold import fold_scale
from .decoder_layout import decoder_layout
from .hadamard import HadamardInput, HadamardTransform


def _check_float(model: nn.Module) -> None:
    from ..quant_layer import QuantLayer

    for name, module in model.named_modules():
        if isinstance(module, (QuantLayer, HadamardInput)):
            what = "quantized" if isinstance(module, QuantLayer) else "already rotated"
            raise ValueError(
                f"rotate: {type(model).__name__} is {what} ({type(module).__name__} at '{name}'); "
                "rotate the float model once, then quantize_model"
            )


@torch.no_grad()
def _rows(weight: torch.Tensor, rotation: HadamardTransform) -> None:
    """``weight <- weight @ Q`` (each row, or a 1-D bias, rotated), in float64."""
    weight.copy_(rotation(weight.detach().to(torch.float64)))


@torch.no_grad()
def _columns(weight: torch.Tensor, rotation: HadamardTransform) -> None:
    """``weight <- Q.T @ weight`` (each column rotated), in float64."""
    weight.copy_(rotation(weight.detach().to(torch.float64).T).T)


def rotate(model: nn.Module, *, seed: int = 0, online_hadamard: bool = True, inplace: bool = False) -> nn.Module:
    """Fuse the rotation ``x -> x @ Q`` of the residual stream into ``model``'s weights (QuaRot), with
    ``Q = diag(s) H / sqrt(d)`` a randomized Hadamard (orthogonal, ``d`` the hidden size, ``s`` seeded
    random signs), after folding the RMSNorm scales; plus an online Hadamard before ``down_proj``.

    The returned model computes the same logits (see :mod:`qlayers.transforms.rotation` for the
    formulas and tolerances) while its linears' inputs have their outlier channels spread, so a
    following :func:`qlayers.quantize_model` (and GPTQ) at 4 bits loses much less.

    Args:
        model: a float ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or
            ``Qwen3ForCausalLM`` (Hugging Face transformers),
            any size and dtype. Anything else raises ``ValueError`` naming its class before any
            weight is changed.
        seed: seeds the random signs of ``Q = diag(s) H / sqrt(d)`` (same seed, same rotation).
        online_hadamard: also rotate ``down_proj``'s input online (step 3 of the module docstring);
            ``down_proj`` is then ``mlp.down_proj.module`` inside a ``HadamardInput``.
        inplace: change ``model`` itself; otherwise a deep copy (the default, as ``quantize_model``).

    Example::

        rotated = qlayers.rotate(model)              # float, same logits
        qmodel = qlayers.quantize_model(rotated, {"weights": {"format": "mxfp4"},
                                                  "inputs": {"format": "mxfp4"}})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"rotate expects an nn.Module, got {type(model).__name__}")
    _check_float(model)
    decoder_layout(model)  # raises before anything changes
    if not inplace:
        model = copy.deepcopy(model)
    layout = decoder_layout(model)
    if layout.tied:
        layout.lm_head.weight = nn.Parameter(layout.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    with torch.no_grad():
        for norm, readers in [(b.attn_norm, b.readers_attn) for b in layout.blocks] + \
                [(b.mlp_norm, b.readers_mlp) for b in layout.blocks] + [(layout.final_norm, (layout.lm_head,))]:
            fold_scale(norm, readers, norm.weight.detach().clone())

    q = HadamardTransform(layout.embeddings.embedding_dim, seed=seed, random_signs=True)
    _rows(layout.embeddings.weight, q)
    readers = [layout.lm_head] + [lin for b in layout.blocks for lin in (*b.readers_attn, *b.readers_mlp)]
    for linear in readers:
        _rows(linear.weight, q)
    for linear in [w for b in layout.blocks for w in (b.writer_attn, b.writer_mlp)]:
        _columns(linear.weight, q)
        if linear.bias is not None:
            _rows(linear.bias, q)

    if online_hadamard:
        online = {}  # one transform per intermediate size, shared by the layers
        for block in layout.blocks:
            size = block.writer_mlp.in_features
            h = online.setdefault(size, HadamardTransform(size))
            _rows(block.writer_mlp.weight, h)
            block.mlp.down_proj = HadamardInput(block.writer_mlp, h)
    return model
