"""Gradients of fake quantization: straight through the rounding, zero where the clamp saturates,
and LSQ's scale gradient, checked against torch.autograd.gradcheck in float64.

Rounding is piecewise constant, so its true derivative is 0 almost everywhere; the straight-through
estimator treats it as the identity. The surrogate ``g(x, s) = (clamp((x - o)/s + z) + r) * s + o``,
with ``r = Q(y0) - y0`` frozen at the evaluation point, has exactly the gradients the STE defines,
and is smooth there, so gradcheck can verify it numerically; the library's gradients must equal it.
"""
import pytest
import torch

import quantizers as qz
from quantizers.fake_quant import fake_quantize

CASES = [
    ("float8_e4m3fn", None, None),
    ("float4_e2m1fn", None, None),
    ("int8", None, None),
    ("uint4", 3.0, None),          # asymmetric: integer zero point
    ("uint8", 0.0, -0.8),          # MINVAL: offset
]


def _surrogate(fmt, zero_point, offset, residual):
    def g(x, scale):
        y = (x if offset is None else x - offset) / scale
        if zero_point is not None:
            y = y + zero_point
        y = torch.clamp(y, fmt.min_value, fmt.max_value) + residual
        if zero_point is not None:
            y = y - zero_point
        return y * scale if offset is None else y * scale + offset
    return g


def _inputs(fmt, seed):
    torch.manual_seed(seed)
    scale = torch.tensor(0.05, dtype=torch.float64)
    x = torch.randn(64, dtype=torch.float64) * fmt.max_value * scale * 0.7
    x[:4] = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64) * fmt.max_value * scale * 1.5  # saturate
    return x, scale


@pytest.mark.parametrize("name, zero_point, offset", CASES)
def test_input_and_scale_gradients_equal_the_gradcheck_verified_surrogate(name, zero_point, offset):
    fmt = qz.get_format(name)
    x, scale = _inputs(fmt, 0)
    zp = None if zero_point is None else torch.tensor(zero_point, dtype=torch.float64)
    off = None if offset is None else torch.tensor(offset, dtype=torch.float64)
    y0 = (x if off is None else x - off) / scale + (0 if zp is None else zp)
    y0 = torch.clamp(y0, fmt.min_value, fmt.max_value)
    residual = fmt.quantize(y0) - y0
    g = _surrogate(fmt, zp, off, residual)
    # keep the numerical probe inside one rounding cell and off the clamp edges
    assert torch.autograd.gradcheck(g, (x.clone().requires_grad_(), scale.clone().requires_grad_()), eps=1e-9, atol=1e-6)

    xs, ss = x.clone().requires_grad_(), scale.clone().requires_grad_()
    value = fake_quantize(xs, ss, fmt, zp, offset=off)
    assert torch.equal(value.detach(), g(x, scale).detach())  # the surrogate is the same function here
    weights = torch.randn_like(x)
    (value * weights).sum().backward()
    xr, sr = x.clone().requires_grad_(), scale.clone().requires_grad_()
    (g(xr, sr) * weights).sum().backward()
    assert torch.allclose(xs.grad, xr.grad, rtol=0, atol=1e-12)
    assert torch.allclose(ss.grad, sr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "int4", "float4_e2m1fn"])
def test_input_only_gradient_passes_inside_the_range_and_stops_where_it_saturates(name):
    fmt = qz.get_format(name)
    x, scale = _inputs(fmt, 1)
    xs = x.clone().requires_grad_()
    fake_quantize(xs, scale, fmt).sum().backward()
    inside = (x / scale >= fmt.min_value) & (x / scale <= fmt.max_value)
    assert torch.equal(xs.grad, inside.to(torch.float64))
    assert not inside[:4].any()


def test_quantizer_values_carry_gradients_to_weights_through_every_kind():
    w = torch.randn(16, 64, requires_grad=True)
    for quantizer in (qz.Int8WeightPerChannelFloat, qz.MXFloat4e2m1Weight, qz.NVFloat4e2m1Weight, qz.Uint4WeightPerGroupFloat):
        w.grad = None
        qz.quantize(w, quantizer).value.sum().backward()
        assert w.grad is not None and w.grad.shape == w.shape and (w.grad >= 0).all()
