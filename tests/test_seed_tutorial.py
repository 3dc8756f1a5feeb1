"""Brevitas's "Minifloat and Groupwise quantization" tutorial, ported to qzoo by changing imports.

One test per code cell of the tutorial, keeping its logic and its asserts. The only edits are the
imports (``brevitas.nn`` -> ``qlayers``; ``brevitas.quant.*`` and ``brevitas.quant_tensor`` ->
``quantizers``) and, where qzoo's documented behaviour differs from Brevitas on purpose, an
adapted assert with a comment saying why. The tutorial's prints became asserts.

The tutorial evaluates models whose static activation quantizers (``FpOCPActPerTensorFloat``) were
never calibrated; qzoo then uses each batch's own range and logs a warning, which is expected here.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import qlayers as qnn
from quantizers import (
    FloatQuantTensor,
    Fp8e4m3Mixin,
    FpOCPActPerTensorFloat,
    FpOCPWeightPerTensorFloat,
    GroupwiseFloatQuantTensor,
    GroupwiseIntQuantTensor,
    MXFloat8e4m3Act,
    MXFloat8e4m3Weight,
    MXFloat8e4m3WeightMSE,
    MXInt8Act,
    MXInt8Weight,
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# ---- tutorial cell 1: minifloat (OCP FP8) ---------------------------------------------------------


class OCPFP8Weight(FpOCPWeightPerTensorFloat, Fp8e4m3Mixin):
    pass


class OCPFP8Act(FpOCPActPerTensorFloat, Fp8e4m3Mixin):
    pass


class FP8Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = qnn.QuantConv2d(32, 64, 3, weight_quant=OCPFP8Weight, input_quant=OCPFP8Act)

    def forward(self, x):
        return self.conv(x)


def test_ocp_fp8_conv_quantizes_input_and_weight_to_float_quant_tensors():
    ocp_fp8_model = FP8Model()
    x = torch.randn(1, 32, 8, 8)
    ocp_fp8_model.eval()
    o = ocp_fp8_model(x)

    intermediate_input = ocp_fp8_model.conv.input_quant(x)
    assert isinstance(intermediate_input, FloatQuantTensor)
    assert isinstance(ocp_fp8_model.conv.quant_weight(), FloatQuantTensor)
    assert o.shape == (1, 64, 6, 6)


# ---- tutorial cell 2: groupwise (MXFP8) ------------------------------------------------------------


class MXFloat8Weight(MXFloat8e4m3Weight, Fp8e4m3Mixin):
    # The group dimension for the weights it is automatically identified based on the layer type
    # If a new layer type is used, it can be manually specified
    pass


class MXFloat8Act(MXFloat8e4m3Act, Fp8e4m3Mixin):
    # In layerwise quantization, groupdim is automatically determined
    pass


class MXModel(nn.Module):
    def __init__(self, in_channels=32, weight_quant=MXFloat8Weight, input_quant=MXFloat8Act):
        super().__init__()
        self.conv = qnn.QuantConv2d(in_channels, 64, 3, weight_quant=weight_quant, input_quant=input_quant)

    def forward(self, x):
        return self.conv(x)


def test_mx_fp8_conv_quantizes_input_and_weight_to_groupwise_float_quant_tensors():
    mx_model = MXModel()
    x = torch.randn(1, 32, 8, 8)
    mx_model.eval()
    o = mx_model(x)

    intermediate_input = mx_model.conv.input_quant(x)
    assert isinstance(intermediate_input, GroupwiseFloatQuantTensor)
    assert isinstance(mx_model.conv.quant_weight(), GroupwiseFloatQuantTensor)
    assert o.shape == (1, 64, 6, 6)


# ---- tutorial cell 3: padding when channels don't divide the group size --------------------------


class MXFloat8WeightNoPadding(MXFloat8e4m3Weight, Fp8e4m3Mixin):
    group_size = 8


class MXFloat8ActNoPadding(MXFloat8e4m3Act, Fp8e4m3Mixin):
    group_size = 8


class MXModelNoPadding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = qnn.QuantConv2d(
            8, 64, 3, weight_quant=MXFloat8WeightNoPadding, input_quant=MXFloat8ActNoPadding)

    def forward(self, x):
        return self.conv(x)


def test_mx_padding_to_the_group_size_leaves_the_output_unchanged():
    mx_model_no_padding = MXModelNoPadding()
    mx_model = MXModel(in_channels=8)
    # Make sure that the modules are the same
    mx_model_no_padding.load_state_dict(mx_model.state_dict())

    x = torch.randn(1, 8, 8, 8)
    mx_model.eval()
    mx_model_no_padding.eval()
    o_no_padding = mx_model_no_padding(x)
    o = mx_model(x)

    # The tutorial prints the weights' `value` shapes: Brevitas's padded model gives [64, 32, 3, 3].
    # qzoo's `value` is the un-padded tensor in the layer's shape (DESIGN.md section 4); the padding
    # lives only in the compressed `value_`, [out, n_groups, group_size, kH, kW].
    assert mx_model_no_padding.conv.quant_weight().value.shape == (64, 8, 3, 3)
    assert mx_model.conv.quant_weight().value.shape == (64, 8, 3, 3)
    assert mx_model_no_padding.conv.quant_weight().value_.shape == (64, 1, 8, 3, 3)
    assert mx_model.conv.quant_weight().value_.shape == (64, 1, 32, 3, 3)

    # However, results are still the same
    assert torch.allclose(o, o_no_padding)


# ---- tutorial cell 4: MSE-searched MX weight scales ------------------------------------------------


class MXFloat8WeightMSE(MXFloat8e4m3WeightMSE, Fp8e4m3Mixin):
    pass


def test_mx_fp8_mse_weight_conv_quantizes_input_to_groupwise_float_quant_tensor():
    mx_model = MXModel(weight_quant=MXFloat8WeightMSE)
    x = torch.randn(1, 32, 8, 8)
    mx_model.eval()
    o = mx_model(x)

    intermediate_input = mx_model.conv.input_quant(x)
    assert isinstance(intermediate_input, GroupwiseFloatQuantTensor)
    assert isinstance(mx_model.conv.quant_weight(), GroupwiseFloatQuantTensor)
    assert o.shape == (1, 64, 6, 6)


# ---- tutorial cell 5: MXINT8 -----------------------------------------------------------------------
# The tutorial shadows the imported names with same-named subclasses; the classes below do the same
# in a local scope. qzoo's MXInt8Weight follows the OCP spec (elements k/64, |k| <= 127, scale
# 2^floor(log2 amax)), not Brevitas 0.13.4's finer grid; the tutorial's asserts hold either way.


def test_mx_int8_conv_quantizes_input_to_groupwise_int_quant_tensor():
    class MXInt8WeightSubclass(MXInt8Weight):
        pass

    class MXInt8ActSubclass(MXInt8Act):
        pass

    mx_model = MXModel(weight_quant=MXInt8WeightSubclass, input_quant=MXInt8ActSubclass)
    x = torch.randn(1, 32, 8, 8)
    mx_model.eval()
    o = mx_model(x)

    intermediate_input = mx_model.conv.input_quant(x)
    assert isinstance(intermediate_input, GroupwiseIntQuantTensor)
    assert isinstance(mx_model.conv.quant_weight(), GroupwiseIntQuantTensor)
    assert o.shape == (1, 64, 6, 6)
    # qzoo-specific (spec): the integer codes never use -128.
    assert mx_model.conv.quant_weight().int().abs().max() <= 127
