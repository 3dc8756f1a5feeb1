"""E1 (layer level): wrong inputs and out-of-range axes give errors that name the layer and the fix;
edge inputs (empty NVFP4, 0-d percentile, meta tensors) work or say why not."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz


@pytest.mark.parametrize("bad", [[[1.0, 2.0, 3.0, 4.0]], None, "abc"], ids=["list", "None", "str"])
@pytest.mark.parametrize("layer", [
    qlayers.QuantLinear(4, 4, input_quant=qz.Int8ActPerTensorFloat),
    qlayers.QuantLinear(4, 4),
    qlayers.QuantReLU(),
    qlayers.QuantIdentity(),
], ids=["linear_input_quant", "linear_weight_only", "relu", "identity"])
def test_layers_fed_a_non_tensor_raise_a_type_error_naming_the_layer(layer, bad):
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}: input must be a torch.Tensor or QuantTensor, got {type(bad).__name__}"):
        layer(bad)


def test_eltwise_add_fed_none_raises_a_type_error():
    with pytest.raises(TypeError, match="QuantEltwiseAdd: input must be a torch.Tensor or QuantTensor, got NoneType"):
        qlayers.QuantEltwiseAdd(input_quant=qz.Int8ActPerTensorFloat)(torch.ones(2), None)


def test_calibrating_with_strings_names_the_layer_that_got_one():
    model = nn.Sequential(qlayers.QuantLinear(4, 4, input_quant=qz.Int8ActPerTensorFloat))
    with pytest.raises(TypeError, match="QuantLinear: input must be a torch.Tensor or QuantTensor, got str"):
        qlayers.calibrate(model, ["abc"], progress=False)


@pytest.mark.parametrize("quantizer, override, value, shape", [
    (qz.Int8WeightPerChannelFloat, "weight_channel_axis", 3, (4, 8)),
    (qz.Int8WeightPerChannelFloat, "weight_channel_axis", -3, (4, 8)),
    (qz.Int4WeightPerGroupFloat, "weight_group_dim", 7, (4, 8)),
])
def test_an_out_of_range_weight_axis_is_reported_at_construction(quantizer, override, value, shape):
    with pytest.raises(ValueError, match=rf"QuantLinear: {override}={value} is out of range for its weight of shape \(4, 8\); allowed: -2..1"):
        qlayers.QuantLinear(8, 4, weight_quant=quantizer, **{override: value})


def test_a_conv_weight_accepts_its_own_axes():
    conv = qlayers.QuantConv2d(4, 8, 3, weight_quant=qz.Int8WeightPerChannelFloat, weight_channel_axis=3)
    assert conv.quant_weight().scale.shape == (1, 1, 1, 3)
    with pytest.raises(ValueError, match=r"QuantConv2d: weight_channel_axis=4 .* allowed: -4..3"):
        qlayers.QuantConv2d(4, 8, 3, weight_quant=qz.Int8WeightPerChannelFloat, weight_channel_axis=4)


def test_nvfp4_quantizes_an_empty_tensor_to_an_empty_tensor():
    qt = qz.quantize(torch.empty(0, 32), qz.NVFloat4e2m1Weight)
    assert qt.value.shape == (0, 32)


@pytest.mark.parametrize("name", ["Int8ActPerTensorFloat", "Uint8ActPerTensorFloat", "Fp8e4m3OCPActPerTensorFloat"])
def test_percentile_quantizers_accept_a_0d_tensor(name):
    quantizer = getattr(qz, name)
    qt = qz.quantize(torch.tensor(-2.5 if quantizer.signed else 2.5), quantizer.with_overrides(range_method="percentile"))
    assert qt.value.shape == () and float(qt.value) == (-2.5 if quantizer.signed else 2.5)  # amax maps onto the grid's end


def test_grouping_a_0d_tensor_says_it_has_no_dimension():
    with pytest.raises(ValueError, match="group_dim=0: a 0-d tensor \\(a scalar\\) has no dimension to group"):
        qz.quantize(torch.tensor(1.0), qz.Int4WeightPerGroupFloat)


@pytest.mark.parametrize("fmt", ["int4", "float8_e4m3fn", "float4_e2m1fn"])
def test_encode_and_decode_work_on_meta_tensors(fmt):
    f = qz.get_format(fmt)
    codes = f.encode(torch.empty(5, device="meta"))
    assert codes.device.type == "meta" and codes.shape == (5,) and codes.dtype == f.code_dtype
    values = f.decode(torch.empty(5, dtype=f.code_dtype, device="meta"))
    assert values.device.type == "meta" and values.shape == (5,)
