"""QAT: straight-through gradients, optimizer steps, train/eval, disabling quantization, learned ranges."""
import torch
from torch import nn

import qlayers
from qlayers.model import (
    calibrate,
    disable_quantization,
    enable_quantization,
    quantization_disabled,
    quantize_model,
)

CONFIG = {"weights": {"format": "int8", "granularity": "channel"}, "inputs": {"format": "int8", "observer": "minmax"}}


def _model(config=CONFIG, seed=0):
    torch.manual_seed(seed)
    float_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return float_model, quantize_model(float_model, config)


def test_weight_gradient_is_straight_through():
    _, q = _model({"weights": {"format": "int4", "granularity": "channel"}})
    layer = q[0]
    x = torch.randn(4, 8)
    layer(x).sum().backward()
    # d/dW of sum(x @ W_hat^T) with W_hat = Q(W) and dQ/dW = 1 (no weight is clipped: amax scaling)
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 16).T @ x)


def test_optimizer_step_changes_weights_and_quantized_weights_and_loss_falls():
    _, q = _model()
    calibrate(q, [torch.randn(16, 8)], progress=False)
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    x = torch.randn(64, 8)
    target = x @ torch.randn(8, 2)
    before = q[0].weight.detach().clone()
    q.eval()
    quant_before = q[0].quant_weight().value.detach().clone()
    q.train()
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = nn.functional.mse_loss(q(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(q[0].weight, before)
    q.eval()
    assert not torch.equal(q[0].quant_weight().value, quant_before)  # the eval cache saw the step
    assert losses[-1] < 0.5 * losses[0]


def test_train_and_eval_modes_propagate():
    _, q = _model()
    q.eval()
    assert not any(m.training for m in q.modules())
    q.train()
    assert all(m.training for m in q.modules())


def test_quantization_disabled_gives_the_float_model_and_restores():
    float_model, q = _model()
    calibrate(q, [torch.randn(16, 8)], progress=False)
    x = torch.randn(4, 8)
    with torch.no_grad():
        quantized = q(x)
        with quantization_disabled(q):
            torch.testing.assert_close(q(x), float_model(x), rtol=0, atol=0)
            assert q[0].weight_quant is None and q[0].input_quant is None
        torch.testing.assert_close(q(x), quantized, rtol=0, atol=0)


def test_disable_per_layer_and_by_kind():
    float_model, q = _model()
    calibrate(q, [torch.randn(16, 8)], progress=False)
    x = torch.randn(4, 8)
    with torch.no_grad(), quantization_disabled(q[2]):
        h = q[1](q[0](x))
        torch.testing.assert_close(q(x), float_model[2](h), rtol=0, atol=0)
    with quantization_disabled(q, layers=["0"]):
        assert q[0].weight_quant is None and q[2].weight_quant is not None
    with quantization_disabled(q, weights=False):
        assert q[0].weight_quant is not None and q[0].input_quant is None
    assert q[0].input_quant is not None


def test_persistent_disable_keeps_state_dict_keys_and_loads_both_ways():
    _, q = _model()
    calibrate(q, [torch.randn(16, 8) * 3], progress=False)
    keys = list(q.state_dict())
    saved = q.state_dict()
    disable_quantization(q, layers=["0"])
    assert q[0].input_quant is None
    assert sorted(q.state_dict()) == sorted(keys)
    torch.testing.assert_close(q.state_dict()["0.input_quant.observer.high"], saved["0.input_quant.observer.high"])
    _, fresh = _model(seed=1)
    fresh.load_state_dict(q.state_dict())  # disabled -> enabled
    disable_quantization(fresh)
    _, other = _model(seed=2)
    calibrate(other, [torch.randn(16, 8)], progress=False)
    fresh.load_state_dict(other.state_dict())  # enabled -> disabled
    enable_quantization(fresh)
    torch.testing.assert_close(fresh[0].input_quant.observer.high, other[0].input_quant.observer.high)
    enable_quantization(q)
    assert q[0].input_quant is not None


def test_learned_weight_scale_starts_at_the_statistic_and_learns():
    _, q = _model({"weights": {"format": "int4", "granularity": "channel", "learned_scale": True}})
    layer = q[0]
    torch.testing.assert_close(layer.weight_quant.learned_range.detach(), layer.weight.detach().abs().amax(1, keepdim=True))
    assert "0.weight_quant.learned_range" in dict(q.named_parameters())
    x, target = torch.randn(32, 8), torch.randn(32, 2)
    nn.functional.mse_loss(q(x), target).backward()
    assert layer.weight_quant.learned_range.grad is not None and layer.weight_quant.learned_range.grad.abs().sum() > 0
    before = layer.weight_quant.learned_range.detach().clone()
    torch.optim.SGD(q.parameters(), lr=0.1).step()
    assert not torch.equal(layer.weight_quant.learned_range.detach(), before)
    # the scale follows the learned range: amax / 7 per channel
    torch.testing.assert_close(layer.quant_weight().scale.detach(), layer.weight_quant.learned_range.detach().abs() / 7)


def test_learned_scale_checkpoint_loads_into_a_fresh_model():
    config = {"weights": {"format": "int8", "learned_scale": True}, "inputs": {"format": "int8", "learned_scale": True, "observer": "global_minmax"}}
    _, q = _model(config)
    calibrate(q, [torch.randn(16, 8)], progress=False)
    _, fresh = _model(config, seed=3)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(4, 8)
    q.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


def test_model_tools_are_importable_from_qlayers_model():
    from qlayers import model

    for name in ("quantize_model", "calibrate", "calibration_mode", "quantization_disabled", "summary", "load_config"):
        assert callable(getattr(model, name))
    assert hasattr(qlayers, "QuantLinear")
