"""GPTQ (Frantar et al., 2023) for every weight format: the layer's own quantizer rounds each
column, with its scales held fixed, and the rounding error is spread over the columns not yet
quantized so that the layer's output on the calibration inputs changes least.

With ``W`` the weight as ``(rows, columns)`` (``weight.flatten(1)``) and ``H = sum x x^T`` over the
calibration rows (:mod:`qlayers.ptq.hessian`):

1. Columns that never see a nonzero input (``H_jj = 0``) get ``H_jj = 1`` (rounded, nothing spread).
2. ``act_order`` (default True, llm-compressor's default "static" activation ordering; False is
   the paper's and Brevitas's left-to-right order): columns are processed in order of decreasing
   ``H_jj``. Groups stay the weight's own contiguous column blocks, so nothing is permuted at
   inference.
3. Dampening: ``H += percdamp * mean(diag H) * I``; when the Cholesky factorisation still fails
   (a singular or ill-conditioned ``H``), the dampening is multiplied by 10 until it succeeds, so
   the result is never NaN. ``U = cholesky(H^-1)^T`` (upper).
4. For each column ``j`` in order: ``q_j = Q(w_j)``, ``e_j = (w_j - q_j) / U_jj``,
   ``w_k -= e_j U_jk`` for the later columns ``k``; lazily in blocks of ``block_size`` columns
   (the update of the columns after a block is one matrix product).

Scales are fixed as GPTQ with groups fixes them: every scale (a channel's, a group's, a tile's,
an OCP MX block's shared exponent, an NVFP4 E4M3 block scale) is computed from the current,
already-updated weight when the first of its columns is reached, and kept; a per-tensor or
per-channel scale therefore comes from the original weight, and NVFP4's per-tensor (global) scale
is fixed from the original weight before the pass. ``Q`` is the layer's own weight quantizer
(:meth:`quantizers.TensorQuantizer.quantize_elements` with those scales), so every format and
granularity the quantizer supports works. The result: ``layer.weight`` holds the quantized
weight and the quantizer's scales are frozen
(:meth:`quantizers.TensorQuantizer.freeze_scales`), so the weight is a fixed point of the layer's
quantizer (quantizing it again changes no bit) and packs exactly.

Calibration data: ``H`` has rank at most the number of calibration rows (tokens, for a
transformer). With fewer rows than input columns GPTQ can zero the error on those rows while
moving the weight far from where other inputs need it, so the model gets worse on other data
(measured on all-MiniLM-L6-v2 block 0 in MXFP4, 1536 input columns in ``output.dense``: 1 - cosine
0.0027 with RTN; after GPTQ on 550 rows 0.0074 in left-to-right order, worse than RTN, and 0.0020 in
activation order; on 1100 rows 0.00068 and on 2200 rows 0.00050 in activation order). Such layers
are named in a warning and in the report.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from quantizers import TensorQuantizer
from quantizers.scaling.scalers import Scales

from ..quant_layer import QuantLayer
from .hessian import hessian
from .registry import register
from .runner import run_layer_by_layer
from .targets import select_layers

MAX_DAMPENING_TRIES = 8


def gptq_applies(layer: nn.Module) -> Optional[str]:
    """Why GPTQ cannot quantize ``layer``, or None."""
    if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)) or not isinstance(layer, QuantLayer):
        if isinstance(layer, nn.Embedding):
            return "an embedding looks rows up; it has no input activations to weigh the rounding error with"
        return "GPTQ needs the input Hessian of a quantized Linear, Conv1d or Conv2d layer"
    quantizer = getattr(layer, "weight_quant", None)
    if quantizer is None:
        return "it has no weight quantizer (weight_quant is None)"
    if not isinstance(quantizer, TensorQuantizer):
        return f"its weight quantizer is a {type(quantizer).__name__}, not a TensorQuantizer"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups != 1:
        return f"grouped convolutions (groups={layer.groups}) are not supported"
    return None


def _check(model: nn.Module, *, layers: Optional[Sequence[str]] = None, percdamp: float = 0.01,
           act_order: bool = True, block_size: int = 128) -> Dict[str, nn.Module]:
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 <= percdamp:
        raise ValueError(f"gptq: percdamp must be a number >= 0 (a fraction of the mean Hessian diagonal), got {percdamp!r}")
    if not isinstance(act_order, bool):
        raise TypeError(f"gptq: act_order must be True or False, got {act_order!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"gptq: block_size must be a positive int, got {block_size!r}")
    return select_layers(model, "gptq", gptq_applies, layers)[0]


@register("gptq", check=_check)
def gptq(
    model: nn.Module,
    data: Any,
    *,
    layers: Optional[Sequence[str]] = None,
    percdamp: float = 0.01,
    act_order: bool = True,
    block_size: int = 128,
    forward=None,
    progress: bool = True,
):
    """GPTQ on every quantized Linear/Conv1d/Conv2d of ``model`` (or those matching ``layers``),
    layer by layer in the order the model runs them; see the module docstring. ``percdamp``: the
    dampening as a fraction of the mean Hessian diagonal; ``act_order``: process columns by
    decreasing Hessian diagonal (default; ``False``: left to right, Brevitas's default);
    ``block_size``: columns per lazy block. Returns the
    :class:`~qlayers.ptq.report.PTQReport` (relative output error before/after per layer).

    Example::

        report = qlayers.ptq.gptq(qmodel, batches)  # act_order=True by default
    """
    _check(model, layers=layers, percdamp=percdamp, act_order=act_order, block_size=block_size)
    targets, skipped = select_layers(model, "gptq", gptq_applies, layers)

    underdetermined: List[str] = []

    def step(name: str, layer: nn.Module, inputs) -> Optional[str]:
        h, count = hessian(layer, inputs)
        quantized, scales, damp = gptq_quantize(layer.weight.detach(), h, layer.weight_quant, percdamp, act_order, block_size)
        with torch.no_grad():
            layer.weight.copy_(quantized)
        layer.weight_quant.freeze_scales(scales=scales)
        notes = [] if damp <= percdamp else [f"dampening raised to {damp:g} (ill-conditioned Hessian)"]
        if count < h.shape[0]:
            underdetermined.append(f"{name} ({count} rows, {h.shape[0]} columns)")
            notes.append(f"only {count} calibration rows for {h.shape[0]} input columns (rank-deficient Hessian)")
        return "; ".join(notes) or None

    report = run_layer_by_layer(model, data, targets, step, algorithm="gptq", forward=forward, progress=progress, skipped=skipped)
    if underdetermined:
        warnings.warn(
            f"gptq: {len(underdetermined)} layer(s) saw fewer calibration rows than input columns: "
            f"{', '.join(underdetermined[:3])}{', ...' if len(underdetermined) > 3 else ''}. Their Hessian is "
            "rank-deficient, so GPTQ fits the calibration data and can make the model worse on other data "
            "(the report's errors are measured on the calibration rows); calibrate with more data "
            "(at least as many rows as input columns, several times more is better).",
            stacklevel=2,
        )
    return report


def gptq_quantize(
    weight: torch.Tensor, h: torch.Tensor, quantizer: TensorQuantizer, percdamp: float = 0.01,
    act_order: bool = True, block_size: int = 128,
) -> Tuple[torch.Tensor, Scales, float]:
    """``(quantized weight, scales, dampening used)`` for ``weight`` (any shape whose
    ``flatten(1)`` the Hessian ``h`` is over), quantized by ``quantizer``; see the module docstring."""
    shape, rows, columns = weight.shape, weight.shape[0], weight[0].numel()
    w = weight.detach().to(torch.float32).reshape(rows, columns).clone()
    h = h.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(columns, device=w.device)
    h = h[order][:, order]
    u, damp = _inverse_cholesky(h, percdamp)
    wt = w[:, order].T.contiguous()  # (columns, rows): a column is a contiguous row here
    tracker = _ScaleTracker(quantizer, weight, order)
    quantized = torch.empty_like(wt)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = wt[start:end].clone()
        errors = torch.zeros_like(block)
        u_block = u[start:end, start:end]
        for i in range(end - start):
            if tracker.freezes_at(start + i):
                current = wt.clone()
                current[start:end] = block
                current[end:] -= u[start:start + i, end:].T @ errors[:i]
                tracker.freeze(start + i, current.T)
            column = block[i]
            q = tracker.quantize(column, start + i)
            quantized[start + i] = q
            error = errors[i]
            torch.div(column - q, u_block[i, i], out=error)
            block[i:].addmm_(u_block[i, i:, None], error[None, :], alpha=-1.0)
        wt[end:].addmm_(u[start:end, end:].T, errors, alpha=-1.0)
    quantized = quantized.T
    inverse = torch.argsort(order)
    return quantized[:, inverse].reshape(shape).to(weight.dtype), tracker.scales, damp


def _inverse_cholesky(h: torch.Tensor, percdamp: float) -> Tuple[torch.Tensor, float]:
    """``(U, damp)``: the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float32),
    ``damp`` starting at ``percdamp`` and growing tenfold until the factorisation succeeds."""
    mean = float(torch.diagonal(h).mean())
    damp = percdamp
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(MAX_DAMPENING_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean * eye)
        if int(info) == 0:
            inverse = torch.cholesky_solve(eye, lower)  # H^-1 (faster than cholesky_inverse on CPU)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper.to(torch.float32), damp
        damp = max(damp * 10, 1e-6)
    raise ValueError(f"gptq: the Hessian stays singular after dampening up to {damp / 10:g} x its mean diagonal; "
                     "check the calibration data for NaN/Inf")


class _ScaleTracker:
    """The scales of ``quantizer`` as GPTQ fixes them (see the module docstring): each scale's
    *freeze rank* is the first position, in processing order, of a column it covers."""

    def __init__(self, quantizer: TensorQuantizer, weight: torch.Tensor, order: torch.Tensor) -> None:
        self.quantizer, self.shape, self.order = quantizer, weight.shape, order
        rows, columns = weight.shape[0], weight[0].numel()
        rank = torch.empty(columns, dtype=torch.float32, device=weight.device)
        rank[order] = torch.arange(columns, dtype=torch.float32, device=weight.device)
        remaining = (columns - rank).expand(rows, columns).reshape(weight.shape)  # > 0, so padding (0) never wins
        self.freeze_rank = columns - quantizer.granularity.amax(remaining)  # per scale
        self.steps = set(int(k) for k in torch.unique(self.freeze_rank).tolist())
        self.scales: Optional[Scales] = None
        self.outer_scale = quantizer.compute_scales(weight.detach().to(torch.float32)).outer_scale
        self.columns: Optional[Scales] = None

    def freezes_at(self, position: int) -> bool:
        return position in self.steps

    def freeze(self, position: int, current: torch.Tensor) -> None:
        """Fix the scales whose freeze rank is ``position``, from ``current`` (processing order)."""
        weight = current[:, torch.argsort(self.order)].reshape(self.shape)
        new = self.quantizer.compute_scales(weight, outer_scale=self.outer_scale)
        if self.scales is None:
            self.scales = new
        else:
            mask = self.freeze_rank == position
            pick = lambda a, b: None if a is None else torch.where(mask, a, b)  # noqa: E731
            self.scales = Scales(pick(new.scale, self.scales.scale), pick(new.zero_point, self.scales.zero_point),
                                 self.scales.outer_scale, pick(new.offset, self.scales.offset))
        elements = self.quantizer.element_scales(self.scales, self.shape)
        flat = lambda t: None if t is None else t.reshape(self.shape[0], -1)[:, self.order]  # noqa: E731
        self.columns = Scales(flat(elements.scale), flat(elements.zero_point), None, flat(elements.offset))

    def quantize(self, column: torch.Tensor, position: int) -> torch.Tensor:
        """``column`` (processing position ``position``) quantized with its fixed scales."""
        c = self.columns
        at = lambda t: None if t is None else t[:, position]  # noqa: E731
        return self.quantizer.quantize_elements(column, Scales(at(c.scale), at(c.zero_point), None, at(c.offset)))
