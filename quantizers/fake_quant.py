"""Fake quantization with straight-through gradients: the one formula every quantizer applies.

    x_hat = (Q(clamp(x / s + z)) - z) * s

``Q`` rounds onto the element format exactly (:meth:`NumberFormat.quantize`). Gradients:

- to ``x``: straight through ``Q`` (identity) and zero where ``clamp`` saturates, as in Brevitas;
- to ``s`` (when it requires grad, LSQ-style): ``Q(y) - y`` inside the range and the clamp bound
  outside, which is exactly what differentiating the formula with a straight-through ``Q`` gives.

Dtypes: the formula runs in float32 for float16, bfloat16 and float32 inputs (float64 for float64;
see :func:`~quantizers.formats.carrier.compute_dtype`), so ``x / s`` is rounded onto the format
exactly once, and the result ``(q - z) * s`` (float32) is cast back to the input dtype once. A
saturating format also stops where that cast would overflow: the clamp bounds become the grid
values nearest zero-ward of ``±finfo(dtype).max`` (``q = floor(max / s)`` on the grid), so a finite
float16/bfloat16 input never gives Inf and every output is ``dtype((q - z) * s)`` with ``q`` on the
format's grid.
"""
from __future__ import annotations

from typing import Optional

import torch

from .formats import NumberFormat
from .formats.carrier import compute_dtype


class _RoundToFormat(torch.autograd.Function):
    """Exact rounding onto ``fmt`` forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, y, fmt, rounding, saturating, generator):  # noqa: D401 - autograd signature
        return fmt.quantize(y, rounding=rounding, saturating=saturating, generator=generator)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def round_to_format_ste(
    y: torch.Tensor, fmt: NumberFormat, rounding: Optional[str] = None,
    saturating: Optional[bool] = None, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``fmt.quantize(y)`` whose gradient is the identity."""
    if torch.is_grad_enabled() and y.requires_grad:
        return _RoundToFormat.apply(y, fmt, rounding, saturating, generator)
    return fmt.quantize(y, rounding=rounding, saturating=saturating, generator=generator)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    fmt: NumberFormat,
    zero_point: Optional[torch.Tensor] = None,
    rounding: Optional[str] = None,
    saturating: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(Q(clamp(x / scale + zero_point)) - zero_point) * scale`` (see the module docstring).

    ``scale`` and ``zero_point`` broadcast against ``x``. ``saturating=None`` uses the format's
    default; a saturating format clamps to ``[min_value, max_value]`` first (zero gradient outside).
    With a float ``offset`` (coreai_opt's MINVAL formulation, ``offset = min``) the map is
    ``(Q(clamp((x - offset) / scale + zero_point)) - zero_point) * scale + offset``, so the code
    ``zero_point`` dequantizes to ``offset`` exactly.

    When only ``x`` needs a gradient (weights and activations with statistics-derived scales), the
    backward pass keeps nothing but ``x`` and the scales and recomputes the in-range mask, so QAT
    holds no full-size intermediate for backward.
    """
    parameters = tuple(t for t in (scale, zero_point, offset) if isinstance(t, torch.Tensor))
    if (
        torch.is_grad_enabled() and x.requires_grad and rounding != "stochastic"
        and not any(t.requires_grad for t in parameters)
    ):
        return _FakeQuantizeInput.apply(x, scale, zero_point, offset, fmt, rounding, saturating)
    return _fake_quantize(x, scale, fmt, zero_point, rounding, saturating, generator, offset)


def _widened(x, scale, zero_point, offset):
    """``x``, ``scale``, ``zero_point`` and ``offset`` in the compute dtype (exact widening casts)."""
    work = compute_dtype(x.dtype)
    cast = lambda t: t.to(work) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(x), cast(scale), cast(zero_point), cast(offset)


def _scaled(x, scale, zero_point, offset):
    y = (x if offset is None else x - offset) / scale
    return y if zero_point is None else y + zero_point


def _bounds(dtype, device, scale, fmt, zero_point, saturating, offset):
    """The clamp bounds of ``y = x / s + z`` for inputs of ``dtype``: ``None`` without saturation;
    the format's extremes; for dtypes narrower than the compute dtype, also the grid values whose
    ``(q - z) * s`` stays within ``±finfo(dtype).max`` (rounded toward zero onto the grid)."""
    if not fmt._saturates(saturating):
        return None
    if dtype == compute_dtype(dtype):
        return fmt.min_value, fmt.max_value
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in (scale, zero_point, offset)]
    limit = torch.tensor(torch.finfo(dtype).max, dtype=compute_dtype(dtype), device=device)
    high = fmt.quantize(_scaled(limit, *detached), rounding="floor", saturating=True)
    low = fmt.quantize(_scaled(-limit, *detached), rounding="ceil", saturating=True)
    return low, high


def _fake_quantize(x, scale, fmt, zero_point, rounding, saturating, generator, offset):
    """The formula, differentiable in every tensor argument (straight through ``Q``)."""
    dtype = x.dtype
    x, scale, zero_point, offset = _widened(x, scale, zero_point, offset)
    y = _scaled(x, scale, zero_point, offset)
    bounds = _bounds(dtype, x.device, scale, fmt, zero_point, saturating, offset)
    if bounds is not None:
        y = torch.clamp(y, *bounds)
    q = round_to_format_ste(y, fmt, rounding, saturating, generator)
    if zero_point is not None:
        q = q - zero_point
    return saturate_product(q * scale if offset is None else q * scale + offset, q).to(dtype)


def saturate_product(
    value: torch.Tensor, elements: torch.Tensor, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``value = elements * scale`` clamped to ``±finfo(dtype).max`` (``dtype``: the dtype ``value``
    is stored in, default its own) where the element is finite: a finite element times its scale
    can pass the dtype's largest value (an OCP MX block near FLT_MAX under CEIL/RCEIL/EVEN: element
    256 x 2^120 = 2^128), and then saturates instead of becoming Inf. The element stays
    recoverable: ``max / scale`` rounds to nearest onto it, because the overflowing product is the
    power of two just above the dtype's max. Non-finite elements (NaN, a non-saturating format's
    Inf) keep their value."""
    limit = torch.finfo(dtype or value.dtype).max
    return torch.where(torch.isfinite(elements), value.clamp(-limit, limit), value)


class _FakeQuantizeInput(torch.autograd.Function):
    """:func:`fake_quantize` differentiable in ``x`` only: forward is the exact formula, backward
    passes the gradient where ``clamp`` did not saturate, recomputing that mask from ``x``."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, offset, fmt, rounding, saturating):  # noqa: D401
        ctx.save_for_backward(x, scale, zero_point, offset)
        ctx.fmt, ctx.saturating = fmt, saturating
        return _fake_quantize(x, scale, fmt, zero_point, rounding, saturating, None, offset)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point, offset = ctx.saved_tensors
        dtype = x.dtype
        x, scale, zero_point, offset = _widened(x, scale, zero_point, offset)
        bounds = _bounds(dtype, x.device, scale, ctx.fmt, zero_point, ctx.saturating, offset)
        if bounds is not None:
            y = _scaled(x, scale, zero_point, offset)
            grad = torch.where((y >= bounds[0]) & (y <= bounds[1]), grad, torch.zeros_like(grad))
        return grad, None, None, None, None, None, None
