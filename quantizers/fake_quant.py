"""Fake quantization with straight-through gradients: the one formula every quantizer applies.

    x_hat = (Q(clamp(x / s + z)) - z) * s

``Q`` rounds onto the element format exactly (:meth:`NumberFormat.quantize`). Gradients:

- to ``x``: straight through ``Q`` (identity) and zero where ``clamp`` saturates, as in Brevitas;
- to ``s`` (when it requires grad, LSQ-style): ``Q(y) - y`` inside the range and the clamp bound
  outside, which is exactly what differentiating the formula with a straight-through ``Q`` gives.

Dtypes: the formula runs in float32 for float16, bfloat16 and float32 inputs (float64 for float64;
see :func:`~quantizers.formats.carrier.compute_dtype`), so ``x / s`` is rounded onto the format
exactly once, and the result ``(q - z) * s`` (float32) is cast back to the input dtype once. The
elements ``q`` never depend on the input dtype: they are the format's rounding of ``x / s + z``
(clamped to the format's range when it saturates), exactly as OCP MX and torchao's ``to_mx``
compute them. Where ``(q - z) * s`` passes the largest finite value of the input dtype (an MX
block at the top of the float32, bfloat16 or float16 range under CEIL/RCEIL/EVEN: element 256 x
2^120 = 2^128), the stored value saturates to ``±finfo(dtype).max`` instead of becoming Inf
(:func:`saturate_product`); ``value_ / s`` still rounds to nearest onto ``q``, so packing keeps the
OCP code. A finite input therefore never gives Inf in any dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .formats import NumberFormat
from .formats.carrier import compute_dtype, narrow_to, widen_to


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
    bounded_product: bool = False,
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

    ``bounded_product=True`` is the caller's word that no element times its scale can pass the
    largest value of ``x.dtype`` (:attr:`~quantizers.scaling.scalers.Scaler.bounded_product`: OCP MX
    FLOOR scales from ``x``'s own block maxima), so the product is not saturated (an elementwise
    clamp fewer); with gradients it is saturated regardless.
    """
    parameters = tuple(t for t in (scale, zero_point, offset) if isinstance(t, torch.Tensor))
    if (
        torch.is_grad_enabled() and x.requires_grad and rounding != "stochastic"
        and not any(t.requires_grad for t in parameters)
    ):
        return _FakeQuantizeInput.apply(x, scale, zero_point, offset, fmt, rounding, saturating)
    return _fake_quantize(x, scale, fmt, zero_point, rounding, saturating, generator, offset, bounded_product)


def _widened(x, scale, zero_point, offset):
    """``x``, ``scale``, ``zero_point`` and ``offset`` in the compute dtype (exact widening casts)."""
    work = compute_dtype(x.dtype)
    cast = lambda t: widen_to(t, work) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(x), cast(scale), cast(zero_point), cast(offset)


def _scaled(x, scale, zero_point, offset):
    y = (x if offset is None else x - offset) / scale
    return y if zero_point is None else y + zero_point


def _bounds(fmt, saturating):
    """The clamp bounds of ``y = x / s + z``: the format's extremes when it saturates, else ``None``
    (the same for every input dtype; the product's overflow is :func:`saturate_product`'s)."""
    return (fmt.min_value, fmt.max_value) if fmt._saturates(saturating) else None


def _fake_quantize(x, scale, fmt, zero_point, rounding, saturating, generator, offset, bounded_product=False):
    """The formula, differentiable in every tensor argument (straight through ``Q``)."""
    dtype = x.dtype
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (x, scale, zero_point, offset)
    )
    x, scale, zero_point, offset = _widened(x, scale, zero_point, offset)
    y = _scaled(x, scale, zero_point, offset)
    bounds = _bounds(fmt, saturating)
    if bounds is not None and (needs_grad or not fmt.rounding_saturates):
        # The clamp gives the gradients their zeros outside the range. Without gradients it is left to
        # a format whose saturating rounding maps everything beyond ±max to ±max itself
        # (NumberFormat.rounding_saturates; ±max are grid points, so no rounding of a clamped value
        # could pass them either): the same values, one elementwise clamp fewer (~10% of an FP8
        # activation kernel on CPU).
        y = torch.clamp(y, *bounds)
    q = round_to_format_ste(y, fmt, rounding, saturating, generator)
    if zero_point is not None:
        q = q - zero_point
    value = q * scale if offset is None else q * scale + offset
    if bounded_product and bounds is not None and not needs_grad:
        return narrow_to(value, dtype)
    # A saturating format's elements are finite or NaN: a plain clamp saturates the product.
    return narrow_to(saturate_product(value, None if bounds is not None else q, dtype), dtype)


def saturate_product(
    value: torch.Tensor, elements: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``value = elements * scale`` clamped to ``±finfo(dtype).max`` (``dtype``: the dtype ``value``
    is stored in, default its own) where the element is finite: a finite element times its scale
    can pass the dtype's largest value (an OCP MX block near the dtype's max under CEIL/RCEIL/EVEN:
    element 256 x 2^120 = 2^128), and then saturates instead of becoming Inf. The element stays
    recoverable: ``max / scale`` rounds to nearest onto it, because the overflowing product is the
    power of two just above the dtype's max. Non-finite elements (NaN, a non-saturating format's
    Inf) keep their value. ``elements=None`` is the caller's word that every element is finite or
    NaN (a saturating format): then the clamp alone does it, NaN staying NaN."""
    limit = torch.finfo(dtype or value.dtype).max
    clamped = value.clamp(-limit, limit)
    return clamped if elements is None else torch.where(torch.isfinite(elements), clamped, value)


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
        x, scale, zero_point, offset = _widened(x, scale, zero_point, offset)
        bounds = _bounds(ctx.fmt, ctx.saturating)
        if bounds is not None:
            y = _scaled(x, scale, zero_point, offset)
            grad = torch.where((y >= bounds[0]) & (y <= bounds[1]), grad, torch.zeros_like(grad))
        return grad, None, None, None, None, None, None
