"""Quantized activations (QuantIdentity, QuantReLU, QuantSigmoid, QuantTanh, QuantHardTanh) and
the merging layers (QuantEltwiseAdd, QuantCat)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantizers as qz
from qlayers import QuantCat, QuantEltwiseAdd, QuantHardTanh, QuantIdentity, QuantReLU, QuantSigmoid, QuantTanh
from test_layers import calibrate

ACTIVATIONS = [
    # (layer class, its nn twin, the float function, default act_quant)
    (QuantIdentity, nn.Identity, lambda x: x, qz.Int8ActPerTensorFloat),
    (QuantReLU, nn.ReLU, F.relu, qz.Uint8ActPerTensorFloat),
    (QuantSigmoid, nn.Sigmoid, torch.sigmoid, qz.Uint8ActPerTensorFloat),
    (QuantTanh, nn.Tanh, torch.tanh, qz.Int8ActPerTensorFloat),
    (QuantHardTanh, nn.Hardtanh, F.hardtanh, qz.Int8ActPerTensorFloat),
]
ACT_IDS = [a[0].__name__ for a in ACTIVATIONS]


@pytest.mark.parametrize("layer_cls, float_cls, fn, default", ACTIVATIONS, ids=ACT_IDS)
def test_activation_quantizes_the_float_activation_with_its_default_quantizer(layer_cls, float_cls, fn, default):
    torch.manual_seed(0)
    layer = layer_cls().train()
    x = torch.randn(4, 3, 5) * 2
    y = layer(x)
    # training: the batch's own range, which a one-shot quantize of the activation reproduces
    assert torch.equal(y, qz.quantize(fn(x), default).value)
    assert isinstance(layer, float_cls)
    assert layer.act_quant.fmt == qz.build_tensor_quantizer(default).fmt
    layer.eval()
    assert torch.equal(layer(x * 3), layer.act_quant(fn(x * 3)).value)
    assert torch.equal(layer.act_quant(fn(x * 3)).scale, qz.quantize(fn(x), default).scale)  # calibrated range


@pytest.mark.parametrize("act_quant, kind", [
    (qz.Uint8ActPerTensorFloat, qz.IntQuantTensor),
    (qz.Fp8e4m3OCPActPerTensorFloat, qz.FloatQuantTensor),
    (qz.MXFloat8e4m3Act, qz.GroupwiseFloatQuantTensor),
    (qz.NVFloat4e2m1Act, qz.GroupwiseFloatQuantTensor),
    (qz.MXInt8Act, qz.GroupwiseIntQuantTensor),
])
def test_return_quant_tensor_gives_the_act_quantizers_kind(act_quant, kind):
    torch.manual_seed(0)
    layer = QuantReLU(act_quant=act_quant, return_quant_tensor=True).train()
    x = torch.randn(2, 40)
    out = layer(x)
    assert type(out) is kind and out.shape == x.shape
    assert torch.equal(out.value, qz.quantize(F.relu(x), act_quant).value)
    if out.is_groupwise:
        assert out.group_dim == 1  # the last dim by default


def test_group_dim_override_groups_activations_along_channels():
    layer = QuantIdentity(qz.MXFloat8e4m3Act, act_group_dim=1, return_quant_tensor=True)
    out = layer(torch.randn(2, 40, 3, 3))
    assert out.group_dim == 1 and out.value_.shape == (2, 2, 32, 3, 3)


def test_input_quant_comes_before_the_activation():
    torch.manual_seed(0)
    layer = QuantTanh(input_quant=qz.Fp8e4m3OCPActPerTensorFloat).train()
    x = torch.randn(4, 8)
    qx = qz.quantize(x, qz.Fp8e4m3OCPActPerTensorFloat)
    assert torch.equal(layer(x), qz.quantize(torch.tanh(qx.value), qz.Int8ActPerTensorFloat).value)


def test_hardtanh_keeps_its_limits():
    layer = QuantHardTanh(-0.5, 2.0, act_quant=None)
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(layer(x), F.hardtanh(x, -0.5, 2.0))
    assert (layer.min_val, layer.max_val) == (-0.5, 2.0)


@pytest.mark.parametrize("layer_cls, float_cls, fn, default", ACTIVATIONS, ids=ACT_IDS)
def test_activation_without_quantizers_equals_the_float_module(layer_cls, float_cls, fn, default):
    x = torch.randn(3, 7)
    assert torch.equal(layer_cls(act_quant=None)(x), float_cls()(x))


def test_without_act_quant_a_quant_tensor_passes_through_identity_and_relu():
    qx = qz.quantize(torch.randn(4, 8), qz.Int8WeightPerTensorFloat)
    same = QuantIdentity(act_quant=None, return_quant_tensor=True)(qx)
    assert same is qx
    relu = QuantReLU(act_quant=None, return_quant_tensor=True)(qx)
    assert type(relu) is qz.IntQuantTensor and torch.equal(relu.value, F.relu(qx.value))
    sigmoid = QuantSigmoid(act_quant=None, return_quant_tensor=True)(qx)
    assert type(sigmoid) is torch.Tensor  # not on the grid any more
    assert type(QuantReLU(act_quant=None)(qx)) is torch.Tensor


def test_activation_overrides_and_their_errors():
    layer = QuantReLU(act_bit_width=4)
    assert layer.act_quant.fmt == qz.IntFormat(bits=4, signed=False)
    with pytest.raises(TypeError, match=r"'act_bitwidth'.*did you mean act_bit_width"):
        QuantReLU(act_bitwidth=4)
    with pytest.raises(TypeError, match=r"QuantReLU has no weight_quant"):
        QuantReLU(weight_bit_width=4)
    with pytest.raises(TypeError, match=r"act_quant is None"):
        QuantTanh(act_quant=None, act_bit_width=4)


@pytest.mark.parametrize("float_module, layer_cls", [
    (nn.ReLU(inplace=True), QuantReLU), (nn.Hardtanh(-2.0, 3.0), QuantHardTanh), (nn.Identity(), QuantIdentity),
    (nn.Sigmoid(), QuantSigmoid), (nn.Tanh(), QuantTanh),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else v.__name__)
def test_activation_from_float_keeps_the_configuration(float_module, layer_cls):
    layer = layer_cls.from_float(float_module, act_quant=qz.Fp8e4m3OCPActPerTensorFloat)
    assert isinstance(layer, type(float_module))
    for name in ("inplace", "min_val", "max_val"):
        assert getattr(layer, name, None) == getattr(float_module, name, None)
    assert isinstance(layer.act_quant, qz.TensorQuantizer) and layer.act_quant.fmt.name == "float8_e4m3fn"


def test_from_float_rejects_another_module_type():
    with pytest.raises(TypeError, match=r"QuantReLU.from_float expects an nn.ReLU, got Tanh"):
        QuantReLU.from_float(nn.Tanh())


def test_activation_gradient_reaches_the_input():
    layer = QuantSigmoid(input_quant=qz.Int8ActPerTensorFloat).train()
    x = torch.randn(4, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.abs().sum() > 0


# ---- merging layers -----------------------------------------------------------------------------
def _calibrated_add(**kwargs):
    add = QuantEltwiseAdd(**kwargs)
    calibrate(add.input_quant, torch.randn(64, 8) * 2)  # one batch through the shared quantizer
    if add.output_quant is not None:
        calibrate(add.output_quant, torch.randn(64, 8) * 3)
    return add.eval()


def test_eltwise_add_quantizes_both_operands_with_one_shared_quantizer():
    torch.manual_seed(0)
    add = _calibrated_add()
    a, b = torch.randn(4, 8), torch.randn(4, 8) * 5
    qa, qb = add.input_quant(a), add.input_quant(b)
    assert torch.equal(qa.scale, qb.scale)  # one calibrated grid for both
    assert torch.equal(add(a, b), qa.value + qb.value)


def test_eltwise_add_returns_a_quant_tensor_only_with_an_output_quantizer():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    plain = _calibrated_add(return_quant_tensor=True)(a, b)
    assert type(plain) is torch.Tensor
    add = _calibrated_add(output_quant=qz.Int8ActPerTensorFloat, return_quant_tensor=True)
    out = add(a, b)
    assert type(out) is qz.IntQuantTensor
    assert torch.equal(out.value, add.output_quant(add.input_quant(a).value + add.input_quant(b).value).value)


def test_eltwise_add_accepts_quant_tensors_and_no_quantizers():
    qa = qz.quantize(torch.randn(4, 8), qz.Int8WeightPerTensorFloat)
    b = torch.randn(4, 8)
    assert torch.equal(QuantEltwiseAdd(input_quant=None)(qa, b), qa.value + b)


def test_eltwise_add_in_training_feeds_both_operands_to_the_shared_observer():
    torch.manual_seed(0)
    add = QuantEltwiseAdd().train()
    a, b = torch.randn(4, 8), torch.randn(4, 8) * 4
    out = add(a, b)  # training: each operand on its own batch range
    assert torch.equal(out, qz.quantize(a, qz.Int8ActPerTensorFloat).value + qz.quantize(b, qz.Int8ActPerTensorFloat).value)
    assert int(add.input_quant.observer.count) == 2


def test_cat_quantizes_every_tensor_with_the_shared_quantizer():
    torch.manual_seed(0)
    cat = QuantCat()
    calibrate(cat.input_quant, torch.randn(64, 8))
    tensors = [torch.randn(2, 3), torch.randn(2, 5) * 4, torch.randn(2, 1)]
    expected = torch.cat([cat.input_quant(t).value for t in tensors], dim=1)
    assert torch.equal(cat(tensors, dim=1), expected)
    cat = QuantCat(input_quant=qz.MXFloat8e4m3Act, output_quant=qz.Fp8e4m3OCPActPerTensorFloat, return_quant_tensor=True)
    out = cat(tensors, dim=1)
    assert type(out) is qz.FloatQuantTensor and out.shape == (2, 9)


def test_merge_layers_reject_unknown_overrides():
    with pytest.raises(TypeError, match=r"QuantCat got an unexpected keyword argument 'bit_width'"):
        QuantCat(bit_width=4)
    assert QuantEltwiseAdd(input_bit_width=4).input_quant.fmt.bits == 4
