"""Without gradients, fake quantization leaves saturation to the format's saturating rounding
instead of clamping ``x / s + z`` first (one elementwise pass fewer). The values must be those of
the clamped formula, which the gradient path still computes, for every format, rounding mode,
dtype and out-of-range input (±Inf, just past ±max, far past it, ties at the top of the grid)."""
from __future__ import annotations

import pytest
import torch

from quantizers.fake_quant import fake_quantize
from quantizers.formats import get_format, known_format_names

ELEMENT_FORMATS = known_format_names()  # E8M0 (and custom formats) keep the clamp: rounding_saturates is False
ROUNDINGS = ("even", "away", "zero", "floor", "ceil", "stochastic")


def inputs(fmt, dtype) -> torch.Tensor:
    top, bottom = fmt.max_value, fmt.min_value
    values = [
        float("inf"), float("-inf"), float("nan"), 0.0, -0.0,
        top, bottom, top * 1.0001, bottom * 1.0001, top * 1.5, bottom * 1.5, top * 4, bottom * 4, 1e30, -1e30,
    ]
    grid = fmt.values() if hasattr(fmt, "values") else None
    if grid is not None:  # the midpoint between the two largest values (a tie below max) and beyond
        finite = sorted(v for v in grid.tolist() if v == v and abs(v) != float("inf"))
        values += [(finite[-1] + finite[-2]) / 2, (finite[0] + finite[1]) / 2]
    values += torch.linspace(bottom * 1.2, top * 1.2, 257).tolist()
    return torch.tensor(values, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("saturating", [True, False])
def test_no_grad_values_equal_the_clamped_formula(name, rounding, dtype, saturating):
    fmt = get_format(name)
    x = inputs(fmt, dtype)
    zero_point = torch.tensor(0.0) if fmt.min_value >= 0 else None
    scale = torch.tensor(0.75)
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        fast = fake_quantize(x, scale, fmt, zero_point, rounding=rounding, saturating=saturating, generator=generator())
    learned = scale.clone().requires_grad_(True)  # scale gradients keep the clamp
    clamped = fake_quantize(x, learned, fmt, zero_point, rounding=rounding, saturating=saturating, generator=generator()).detach()
    assert fast.dtype == clamped.dtype == dtype
    assert torch.equal(fast.isnan(), clamped.isnan())
    keep = ~fast.isnan()
    assert torch.equal(fast[keep], clamped[keep])
    assert torch.equal(fast[keep].signbit(), clamped[keep].signbit())
    if fmt._saturates(saturating):
        assert fast[keep].abs().max() <= max(fmt.max_value, -fmt.min_value) * 0.75 * (1 + 2 ** -7)


# ---- OCP MX FLOOR: the product needs no saturation ---------------------------------------------
MX_ACTS = ["MXFloat8e4m3Act", "MXFloat8e5m2Act", "MXFloat6e2m3Act", "MXFloat6e3m2Act", "MXFloat4e2m1Act", "MXInt8Act"]


def top_of(dtype: torch.dtype) -> torch.Tensor:
    """Blocks of 32 whose maxima sit at the top of ``dtype`` (its largest value and the binade
    below), every other element spread over the block's range, plus an ordinary block."""
    big = torch.finfo(dtype).max
    rows = []
    for amax in (big, big * 0.75, big / 2 * 1.999, 1.0):
        fractions = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64)
        rows.append((fractions * amax).clamp(-big, big))
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("name", MX_ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mx_floor_products_stay_in_range_without_the_clamp(name, dtype):
    import quantizers

    quantizer = quantizers.build_tensor_quantizer(getattr(quantizers, name))
    assert quantizer.scaler.bounded_product
    x = top_of(dtype)
    with torch.no_grad():
        fast = quantizer(x).value
    slow = quantizer(x.clone().requires_grad_(True)).value.detach()  # the gradient path saturates
    assert torch.isfinite(fast).all()
    assert torch.equal(fast, slow)


def test_only_floor_mx_scales_skip_the_clamp():
    from quantizers.scaling.scalers import MXScaler

    fmt = get_format("float8_e4m3fn")
    assert [MXScaler(fmt, mode).bounded_product for mode in ("floor", "ceil", "rceil", "even")] == [True, False, False, False]


@pytest.mark.parametrize("narrow", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mx_int_elements_saturate_unless_narrow(narrow, dtype):
    """A full-range int element (-128 x 2^(e - 6) = 2^(e + 1)) can pass the dtype's max: only
    narrow signed ints (MXINT8) skip the clamp."""
    import quantizers

    quantizer = quantizers.build_tensor_quantizer(quantizers.MXInt8Act, narrow_range=narrow)
    assert quantizer.scaler.bounded_product is narrow
    x = -top_of(dtype)
    with torch.no_grad():
        fast = quantizer(x).value
    slow = quantizer(x.clone().requires_grad_(True)).value.detach()
    assert torch.isfinite(fast).all()
    assert torch.equal(fast, slow)
