"""State: from_float, state_dict round trips and float checkpoints, the eval-mode weight cache
(never stale), gradients in training, and torch.compile(fullgraph=True) equal to eager."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import quantizers as qz
from qlayers import QuantConv2d, QuantConvTranspose2d, QuantEltwiseAdd, QuantLinear, QuantReLU
from test_layers import calibrate, eager_kernels  # noqa: F401  (autouse fixture)


def fresh(layer: QuantLinear) -> torch.Tensor:
    """The weight quantized from scratch, the oracle a cached weight must equal."""
    return qz.quantize(layer.weight.detach(), qz.Int8WeightPerTensorFloat).value


# ---- from_float ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: nn.Linear(6, 4, dtype=torch.float64),
    lambda: nn.Linear(6, 4, bias=False),
    lambda: nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=2, groups=2, padding_mode="reflect"),
    lambda: nn.ConvTranspose2d(6, 4, 3, stride=2, output_padding=1, groups=2, bias=False),
], ids=["linear_f64", "linear_nobias", "conv2d", "convT2d"])
def test_from_float_copies_configuration_parameters_and_mode(make):
    torch.manual_seed(0)
    ref = make().eval()
    ref.weight.requires_grad_(False)
    qcls = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d}[type(ref)]
    layer = qcls.from_float(ref, weight_quant=qz.Int8WeightPerChannelFloat, weight_bit_width=6)
    assert type(layer) is qcls and isinstance(layer, type(ref))
    assert list(layer.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], value) and layer.state_dict()[name].dtype == value.dtype
    assert layer.weight is not ref.weight  # copied, not shared
    assert not layer.weight.requires_grad and not layer.training
    assert layer.weight_quant.fmt.bits == 6
    assert repr(ref).split("(", 1)[1].rstrip(")") in repr(layer)


def test_from_float_keeps_the_device():
    layer = QuantLinear.from_float(nn.Linear(4, 3, device="meta"))
    assert layer.weight.device.type == "meta" and layer.bias.device.type == "meta"


# ---- state_dict ---------------------------------------------------------------------------------
def float_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def quant_model() -> nn.Module:
    return nn.Sequential(
        QuantConv2d(3, 8, 3, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat,
                    bias_quant=qz.Int32Bias),
        QuantReLU(act_quant=qz.Uint8ActPerTensorFloat),
        nn.Flatten(),
        QuantLinear(8 * 4 * 4, 5, weight_quant=qz.MXFloat4e2m1Weight, input_quant=qz.Fp8e4m3OCPActPerTensorFloat,
                    output_quant=qz.Int8ActPerTensorFloat),
    )


def test_state_dict_has_float_parameters_and_quantizer_buffers_under_their_modules():
    keys = list(quant_model().state_dict())
    assert keys[:2] == ["0.weight", "0.bias"]
    assert "0.input_quant.observer.high" in keys and "1.act_quant.observer.count" in keys
    assert "3.output_quant.observer.high" in keys and "3.weight" in keys


def test_float_checkpoint_loads_strictly_and_leaves_quantizers_uncalibrated():
    torch.manual_seed(0)
    ref = float_model()
    model = quant_model()
    result = model.load_state_dict(ref.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    assert not model[0].input_quant.observer.is_initialized
    x = torch.randn(2, 3, 6, 6)
    calibrate(model, x)
    assert model[0].input_quant.observer.is_initialized


def test_quantized_state_dict_round_trips_with_calibrated_statistics():
    torch.manual_seed(0)
    model = quant_model()
    x = torch.randn(4, 3, 6, 6)
    calibrate(model, x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = quant_model()
    clone.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    clone.eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), name
    test = torch.randn(4, 3, 6, 6) * 2
    with torch.no_grad():
        assert torch.equal(clone(test), model(test))
    assert torch.equal(clone[0].input_quant(test).scale, model[0].input_quant(test).scale)


# ---- the eval-mode weight cache -----------------------------------------------------------------
def cached_layer() -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear(16, 8).eval()


def test_eval_cache_serves_the_same_quant_tensor_while_nothing_changes():
    layer = cached_layer()
    with torch.no_grad():
        first = layer.quant_weight()
        assert layer.quant_weight() is first
        layer(torch.randn(2, 16))
        assert layer.quant_weight() is first
    assert torch.equal(first.value, fresh(layer))


@pytest.mark.parametrize("change", [
    pytest.param(lambda l: l.weight.data.mul_(2), id="weight.data.mul_"),
    pytest.param(lambda l: l.weight.mul_(2), id="no_grad_mul_"),
    pytest.param(lambda l: l.load_state_dict({"weight": torch.randn(8, 16), "bias": l.bias.detach()}), id="load_state_dict"),
    pytest.param(lambda l: setattr(l, "weight", nn.Parameter(torch.randn(8, 16))), id="new_parameter"),
    pytest.param(lambda l: setattr(l.weight, "data", torch.randn(8, 16)), id="weight.data="),
    pytest.param(lambda l: l.weight.detach().numpy().__imul__(3), id="numpy_view"),
    pytest.param(lambda l: nn.init.normal_(l.weight), id="nn.init"),
])
def test_eval_cache_never_serves_a_stale_weight(change):
    layer = cached_layer()
    with torch.no_grad():
        before = layer.quant_weight()
        change(layer)
        after = layer.quant_weight()
    assert torch.equal(after.value, fresh(layer))
    assert not torch.equal(after.value, before.value)


def test_eval_cache_follows_train_and_eval():
    layer = cached_layer()
    with torch.no_grad():
        first = layer.quant_weight()
        layer.train()
        layer.weight.add_(1)
        assert torch.equal(layer.quant_weight().value, fresh(layer))
        layer.eval()
        second = layer.quant_weight()
    assert second is not first and torch.equal(second.value, fresh(layer))


def test_eval_cache_follows_optimizer_steps():
    layer = cached_layer()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    with torch.no_grad():
        before = layer.quant_weight()
    for _ in range(2):  # training steps while the layer stays in eval mode
        optimizer.zero_grad()
        layer(torch.randn(4, 16)).square().sum().backward()
        optimizer.step()
        with torch.no_grad():
            assert torch.equal(layer.quant_weight().value, fresh(layer))
    assert not torch.equal(layer.quant_weight().value, before.value)


def test_eval_cache_follows_a_replaced_or_modified_weight_quantizer():
    layer = cached_layer()
    with torch.no_grad():
        int8 = layer.quant_weight()
        layer.weight_quant = qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat, bit_width=4)
        int4 = layer.quant_weight()
        assert int4.int().abs().max() == 7
        layer.weight_quant.fmt = qz.IntFormat(bits=3, narrow=True)
        assert layer.quant_weight().int().abs().max() <= 3
        layer.weight_quant.rounding = "floor"
        floor = layer.quant_weight()
        # the oracle: an independent copy of the modified quantizer, applied afresh
        assert torch.equal(floor.value, copy.deepcopy(layer.weight_quant)(layer.weight).value)
        assert floor.fmt.bits == 3 and not torch.equal(floor.value, int4.value)
    assert not torch.equal(int8.value, int4.value)


def test_eval_cache_follows_dtype_and_device_moves():
    layer = cached_layer()
    with torch.no_grad():
        layer.quant_weight()
        layer.double()
        qw = layer.quant_weight()
    assert qw.dtype == torch.float64 and torch.equal(qw.value, fresh(layer))


def test_eval_without_no_grad_recomputes_so_gradients_reach_the_weight():
    layer = cached_layer()
    for _ in range(2):
        layer.zero_grad()
        layer(torch.randn(2, 16)).sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_eval_cache_made_in_inference_mode_is_not_served_outside_it():
    layer = cached_layer()
    with torch.inference_mode():
        inside = layer.quant_weight()
        assert layer.quant_weight() is inside
    with torch.no_grad():
        outside = layer.quant_weight()
    assert outside is not inside and not outside.value.is_inference()
    x = torch.randn(2, 16, requires_grad=True)
    layer.weight.requires_grad_(False)
    layer(x).sum().backward()  # an inference tensor here could not be saved for backward
    assert x.grad is not None


def test_eval_cache_can_be_switched_off():
    layer = cached_layer()
    layer.cache_quant_weight = False
    with torch.no_grad():
        assert layer.quant_weight() is not layer.quant_weight()


def test_version_checked_cache_without_value_copies_still_sees_in_place_updates():
    layer = cached_layer()
    layer.cache_checks_values = "none"
    with torch.no_grad():
        first = layer.quant_weight()
        assert layer.quant_weight() is first
        layer.weight.mul_(2)  # bumps the version counter
        assert torch.equal(layer.quant_weight().value, fresh(layer))
    assert layer._weight_cache._snapshot is None


# ---- training -----------------------------------------------------------------------------------
def test_quantization_aware_training_reduces_the_loss():
    torch.manual_seed(0)
    layer = QuantLinear(8, 1, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTokenFloat,
                        output_quant=qz.Int8ActPerTokenFloat)
    x, target = torch.randn(64, 8), torch.randn(64, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = (layer(x) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ---- torch.compile ------------------------------------------------------------------------------
class SmallNet(nn.Module):
    """Static int8 input with an Int32 bias, a QuantTensor passed between layers (the next bias takes
    its scale), MX weights and activations, a dynamic shared quantizer in an add, NVFP4 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = QuantConv2d(3, 40, 3, weight_quant=qz.Int8WeightPerChannelFloat,
                                 input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias)
        self.relu = QuantReLU(return_quant_tensor=True)
        self.conv2 = QuantConv2d(40, 8, 3, weight_quant=qz.Int8WeightPerTensorFloat, bias_quant=qz.Int32Bias)
        self.conv3 = QuantConv2d(40, 8, 3, weight_quant=qz.MXFloat8e4m3Weight, input_quant=qz.MXFloat8e4m3Act)
        self.add = QuantEltwiseAdd(input_quant=qz.MXInt8Act)
        self.fc = QuantLinear(8 * 4 * 4, 10, weight_quant=qz.NVFloat4e2m1Weight, input_quant=qz.Int8ActPerTensorFloat,
                              output_quant=qz.Int8ActPerTensorFloat, return_quant_tensor=True)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        return self.fc(self.add(self.conv2(h), self.conv3(h)).flatten(1))


def test_compiled_model_equals_eager():
    torch.manual_seed(0)
    model = SmallNet()
    calibrate(model, torch.randn(4, 3, 8, 8))
    compiled = torch.compile(model, fullgraph=True)
    for scale in (1.0, 3.0):
        x = torch.randn(2, 3, 8, 8) * scale
        with torch.no_grad():
            expected, got = model(x), compiled(x)
        assert type(got) is type(expected) is qz.IntQuantTensor
        assert torch.equal(got.value, expected.value) and torch.equal(got.scale, expected.scale)
