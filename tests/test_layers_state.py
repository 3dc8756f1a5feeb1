"""State: from_float, state_dict round trips and float checkpoints, gradients in training, and
torch.compile(fullgraph=True) equal to eager (the eval-mode weight cache: test_weight_cache.py)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import quantizers as qz
from qlayers import QuantConv2d, QuantConvTranspose2d, QuantEltwiseAdd, QuantLinear, QuantReLU
from test_layers import calibrate


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
