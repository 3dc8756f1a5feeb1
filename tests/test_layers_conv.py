"""QuantConv1d/2d/3d and QuantConvTranspose1d/2d/3d: wiring against F.conv* / nn.Conv* applied to
the quantizers' own values, every nn argument, channel counts that don't fill a group, bias."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantizers as qz
from qlayers import (
    QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d, QuantConvTranspose2d, QuantConvTranspose3d,
    QuantIdentity, dequantize,
)
from test_layers import WEIGHT_CASES, IDS, calibrate

SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 4)}
CONV = {1: (QuantConv1d, F.conv1d), 2: (QuantConv2d, F.conv2d), 3: (QuantConv3d, F.conv3d)}
TRANSPOSED = {1: (QuantConvTranspose1d, F.conv_transpose1d), 2: (QuantConvTranspose2d, F.conv_transpose2d),
              3: (QuantConvTranspose3d, F.conv_transpose3d)}
# every weight quantizer in 2d; per channel, MX and NVFP4 (padded groups, two-level scales) in 1d and 3d
CASES = [pytest.param(dims, *case, id=f"{dims}d-{name}") for dims in (1, 2, 3)
         for case, name in zip(WEIGHT_CASES, IDS) if dims == 2 or name.split("-")[0] in
         ("Int8WeightPerChannelFloat", "MXFloat8e4m3Weight", "NVFloat4e2m1Weight")]


def _one_shot(layer, weight_quant, transposed):
    layout = dict(channel_axis=1, group_dim=0) if transposed else dict(channel_axis=0, group_dim=1)
    return qz.quantize(layer.weight.detach(), weight_quant, **layout)


@pytest.mark.parametrize("dims, weight_quant, input_quant, kind", CASES)
def test_conv_output_is_f_conv_of_the_quantizers_values(dims, weight_quant, input_quant, kind):
    torch.manual_seed(0)
    layer_cls, conv = CONV[dims]
    layer = layer_cls(40, 16, 3, padding=1, weight_quant=weight_quant, input_quant=input_quant)  # 40: not a multiple of 32
    x = torch.randn(2, 40, *SPATIAL[dims])
    calibrate(layer, x)
    with torch.no_grad():
        qw = layer.quant_weight()
        qx = layer.input_quant(x) if input_quant else x
        expected = conv(dequantize(qx), qw.value, layer.bias, 1, 1)
        y = layer(x)
    assert type(qw) is kind and qw.shape == layer.weight.shape
    assert torch.equal(y, expected)
    assert torch.equal(qw.value, _one_shot(layer, weight_quant, False).value)
    if input_quant is not None and qx.is_groupwise:
        assert qx.group_dim == 1  # activations group along channels


@pytest.mark.parametrize("dims, weight_quant, input_quant, kind", CASES)
def test_conv_transpose_output_is_f_conv_transpose_of_the_quantizers_values(dims, weight_quant, input_quant, kind):
    torch.manual_seed(0)
    layer_cls, conv = TRANSPOSED[dims]
    layer = layer_cls(40, 16, 3, stride=2, weight_quant=weight_quant, input_quant=input_quant)
    x = torch.randn(2, 40, *SPATIAL[dims])
    calibrate(layer, x)
    with torch.no_grad():
        qw = layer.quant_weight()
        qx = layer.input_quant(x) if input_quant else x
        expected = conv(dequantize(qx), qw.value, layer.bias, 2)
        y = layer(x)
    assert type(qw) is kind
    assert torch.equal(y, expected)
    assert torch.equal(qw.value, _one_shot(layer, weight_quant, True).value)


def test_conv_transpose_weight_groups_along_its_input_channels_and_scales_per_output_channel():
    layer = QuantConvTranspose2d(40, 16, 3, weight_quant=qz.MXFloat8e4m3Weight)
    assert layer.quant_weight().group_dim == 0 and layer.quant_weight().value_.shape == (2, 32, 16, 3, 3)
    per_channel = QuantConvTranspose2d(40, 16, 3, weight_quant=qz.Int8WeightPerChannelFloat)
    assert per_channel.quant_weight().scale.shape == (1, 16, 1, 1)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("weight_quant", [qz.Int8WeightPerChannelFloat, qz.MXFloat8e4m3Weight], ids=lambda q: q.__name__)
def test_conv2d_keeps_stride_padding_dilation_groups_and_padding_mode(padding_mode, weight_quant):
    torch.manual_seed(0)
    ref = nn.Conv2d(40, 24, 3, stride=2, padding=2, dilation=2, groups=4, padding_mode=padding_mode)
    layer = QuantConv2d.from_float(ref, weight_quant=weight_quant, input_quant=qz.Int8ActPerTensorFloat)
    x = torch.randn(2, 40, 9, 9)
    calibrate(layer, x)
    with torch.no_grad():
        ref.weight.copy_(layer.quant_weight().value)
        expected = ref(layer.input_quant(x).value)
        assert torch.equal(layer(x), expected)


def test_conv1d_padding_same_and_bias_false():
    torch.manual_seed(0)
    ref = nn.Conv1d(8, 6, 4, padding="same", dilation=2, bias=False)
    layer = QuantConv1d.from_float(ref, weight_quant=qz.Fp8e4m3OCPWeightPerTensorFloat)
    assert layer.bias is None and layer.padding == "same"
    x = torch.randn(3, 8, 11)
    with torch.no_grad():
        y = layer(x)
        ref.weight.copy_(layer.quant_weight().value)
        assert torch.equal(y, ref(x)) and y.shape == (3, 6, 11)


@pytest.mark.parametrize("output_size", [None, [12, 14]])
def test_conv_transpose2d_keeps_output_padding_groups_dilation_and_output_size(output_size):
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(40, 24, 3, stride=2, padding=1, output_padding=1, groups=4, dilation=1, bias=False)
    layer = QuantConvTranspose2d.from_float(ref, weight_quant=qz.Int4WeightPerGroupFloat, weight_group_size=8)
    x = torch.randn(2, 40, 6, 7)
    with torch.no_grad():
        y = layer(x, output_size=output_size) if output_size else layer(x)
        ref.weight.copy_(layer.quant_weight().value)
        expected = ref(x, output_size=output_size) if output_size else ref(x)
    assert torch.equal(y, expected)
    assert y.shape == (2, 24, 12, 14) if output_size else (2, 24, 12, 14)


def test_conv_transpose_rejects_non_zero_padding_mode_like_nn():
    with pytest.raises(ValueError, match="zeros"):
        QuantConvTranspose1d(4, 4, 3, padding_mode="reflect")


@pytest.mark.parametrize("make_ref", [
    lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2, padding_mode="circular"),
    lambda: nn.Conv3d(4, 2, (1, 2, 3), dilation=(1, 2, 1), bias=False),
    lambda: nn.ConvTranspose1d(6, 9, 4, stride=3, output_padding=2, groups=3, dilation=2),
    lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, bias=False),
], ids=["conv2d", "conv3d", "convT1d", "convT3d"])
def test_conv_without_quantizers_equals_the_float_module(make_ref):
    torch.manual_seed(0)
    ref = make_ref()
    qcls = {nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d, nn.ConvTranspose1d: QuantConvTranspose1d,
            nn.ConvTranspose3d: QuantConvTranspose3d}[type(ref)]
    layer = qcls.from_float(ref, weight_quant=None)
    assert isinstance(layer, type(ref))
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode", "output_padding"):
        assert getattr(layer, name) == getattr(ref, name), name
    assert list(layer.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, ref.in_channels, *([5] * (ref.weight.dim() - 2)))
    assert torch.equal(layer(x), ref(x))


# ---- bias ---------------------------------------------------------------------------------------
def test_conv_int32_bias_with_per_channel_weight_scales_per_output_channel():
    torch.manual_seed(0)
    layer = QuantConv2d(8, 6, 3, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat,
                        bias_quant=qz.Int32Bias)
    x = torch.randn(2, 8, 5, 5)
    calibrate(layer, x)
    with torch.no_grad():
        qx, qw = layer.input_quant(x), layer.quant_weight()
        qb = layer.quant_bias(qx)
        assert torch.equal(qb.scale, qx.scale * qw.scale.reshape(6))
        assert torch.equal(layer(x), F.conv2d(qx.value, qw.value, qb.value))


def test_conv_transpose_int32_bias_repeats_the_per_channel_scale_over_groups():
    torch.manual_seed(0)
    layer = QuantConvTranspose2d(8, 6, 3, groups=2, weight_quant=qz.Int8WeightPerChannelFloat,
                                 input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias)
    x = torch.randn(2, 8, 4, 4)
    calibrate(layer, x)
    with torch.no_grad():
        qx, qw = layer.input_quant(x), layer.quant_weight()
        assert qw.scale.shape == (1, 3, 1, 1)
        qb = layer.quant_bias(qx)
        assert torch.equal(qb.scale, qx.scale * qw.scale.reshape(3).repeat(2))
        assert torch.equal(layer(x), F.conv_transpose2d(qx.value, qw.value, qb.value, groups=2))


def test_conv_bias_quant_without_quantized_input_names_the_layer():
    layer = QuantConv2d(4, 4, 1, bias_quant=qz.Int32Bias)
    with pytest.raises(ValueError, match="QuantConv2d: .*input is not quantized"):
        layer(torch.randn(1, 4, 2, 2))


# ---- outputs ------------------------------------------------------------------------------------
def test_conv_output_quant_groups_along_channels_and_returns_the_quant_tensor():
    torch.manual_seed(0)
    layer = QuantConv2d(8, 40, 1, output_quant=qz.MXFloat8e4m3Act, return_quant_tensor=True)
    x = torch.randn(2, 8, 3, 3)
    out = layer(x)
    assert type(out) is qz.GroupwiseFloatQuantTensor and out.group_dim == 1 and out.shape == (2, 40, 3, 3)
    assert torch.equal(out.value, layer.output_quant(F.conv2d(x, layer.quant_weight().value, layer.bias)).value)


def test_conv_accepts_a_quant_tensor_from_the_previous_layer():
    torch.manual_seed(0)
    ident = QuantIdentity(return_quant_tensor=True)
    conv = QuantConv2d(3, 4, 3)
    qx = ident(torch.randn(1, 3, 5, 5))
    assert torch.equal(conv(qx), F.conv2d(qx.value, conv.quant_weight().value, conv.bias))


def test_conv_gradients_reach_weight_and_input():
    layer = QuantConvTranspose2d(40, 8, 3, weight_quant=qz.MXFloat4e2m1Weight, input_quant=qz.MXFloat4e2m1Act).train()
    x = torch.randn(1, 40, 3, 3, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


# ---- the Brevitas minifloat/groupwise tutorial, ported by changing imports --------------------------
class OCPFP8Weight(qz.FpOCPWeightPerTensorFloat, qz.Fp8e4m3Mixin):
    pass


class OCPFP8Act(qz.FpOCPActPerTensorFloat, qz.Fp8e4m3Mixin):
    pass


class MXFloat8WeightNoPadding(qz.MXFloat8e4m3Weight, qz.Fp8e4m3Mixin):
    group_size = 8


class MXFloat8ActNoPadding(qz.MXFloat8e4m3Act, qz.Fp8e4m3Mixin):
    group_size = 8


def test_tutorial_fp8_and_mx_conv_models():
    x = torch.randn(1, 32, 8, 8)
    fp8 = QuantConv2d(32, 64, 3, weight_quant=OCPFP8Weight, input_quant=OCPFP8Act).eval()
    fp8(x)
    assert isinstance(fp8.input_quant(x), qz.FloatQuantTensor)
    assert isinstance(fp8.quant_weight(), qz.FloatQuantTensor)
    mx = QuantConv2d(32, 64, 3, weight_quant=qz.MXFloat8e4m3Weight, input_quant=qz.MXFloat8e4m3Act).eval()
    mx(x)
    assert isinstance(mx.input_quant(x), qz.GroupwiseFloatQuantTensor)
    assert isinstance(mx.quant_weight(), qz.GroupwiseFloatQuantTensor)
    mxint = QuantConv2d(32, 64, 3, weight_quant=qz.MXInt8Weight, input_quant=qz.MXInt8Act).eval()
    mxint(x)
    assert isinstance(mxint.input_quant(x), qz.GroupwiseIntQuantTensor)


def test_tutorial_mx_padding_gives_the_same_output_as_exact_groups():
    no_padding = QuantConv2d(8, 64, 3, weight_quant=MXFloat8WeightNoPadding, input_quant=MXFloat8ActNoPadding).eval()
    padded = QuantConv2d(8, 64, 3, weight_quant=qz.MXFloat8e4m3Weight, input_quant=qz.MXFloat8e4m3Act).eval()
    no_padding.load_state_dict(padded.state_dict())
    x = torch.randn(1, 8, 8, 8)
    assert torch.equal(padded(x), no_padding(x))
    assert padded.quant_weight().value.shape == no_padding.quant_weight().value.shape == (64, 8, 3, 3)
    assert padded.quant_weight().value_.shape == (64, 1, 32, 3, 3)
