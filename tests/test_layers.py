"""QuantLinear and QuantEmbedding wiring, quantizer arguments and overrides, bias quantization.

The oracle for the wiring is the float op applied to the quantizers' own ``.value`` tensors
(``F.linear(input_quant(x).value, quant_weight().value, bias)``); the numerics of those tensors are
pinned by the quantizer tests, and here against ``quantizers.quantize`` (same layout, fresh module).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantizers as qz
from qlayers import QuantEmbedding, QuantIdentity, QuantLinear, dequantize

WEIGHT_CASES = [
    # (weight quantizer, input quantizer, kind of quant_weight())
    (qz.Int8WeightPerTensorFloat, None, qz.IntQuantTensor),
    (qz.Int8WeightPerTensorFloat, qz.Int8ActPerTensorFloat, qz.IntQuantTensor),
    (qz.Int8WeightPerChannelFloat, qz.Int8ActPerTensorFloat, qz.IntQuantTensor),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, qz.Fp8e4m3OCPActPerTensorFloat, qz.FloatQuantTensor),
    (qz.MXFloat8e4m3Weight, qz.MXFloat8e4m3Act, qz.GroupwiseFloatQuantTensor),
    (qz.MXFloat4e2m1Weight, qz.MXFloat4e2m1Act, qz.GroupwiseFloatQuantTensor),
    (qz.NVFloat4e2m1Weight, qz.NVFloat4e2m1Act, qz.GroupwiseFloatQuantTensor),
    (qz.Int4WeightPerGroupFloat, None, qz.GroupwiseIntQuantTensor),
    (qz.HiFloat8WeightPerTensorFloat, qz.HiFloat8ActPerTensorFloat, qz.FloatQuantTensor),
]
IDS = [f"{w.__name__}-{i.__name__ if i else 'float_in'}" for w, i, _ in WEIGHT_CASES]


def calibrate(layer: nn.Module, *inputs) -> nn.Module:
    """One forward in training mode (static quantizers record the batch's range), then eval."""
    layer.train()
    with torch.no_grad():
        layer(*inputs)
    return layer.eval()


# ---- wiring -------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_quant, input_quant, kind", WEIGHT_CASES, ids=IDS)
def test_linear_output_is_f_linear_of_the_quantizers_values(weight_quant, input_quant, kind):
    torch.manual_seed(0)
    layer = QuantLinear(40, 24, weight_quant=weight_quant, input_quant=input_quant)
    x = torch.randn(6, 40)
    calibrate(layer, x)
    with torch.no_grad():
        y = layer(x)
        qw = layer.quant_weight()
        qx = layer.input_quant(x) if input_quant else x
        expected = F.linear(dequantize(qx), qw.value, layer.bias)
    assert type(qw) is kind
    assert torch.equal(y, expected)
    assert torch.equal(qw.value, qz.quantize(layer.weight.detach(), weight_quant).value)
    assert not torch.equal(qw.value, layer.weight)  # the weight really is quantized


@pytest.mark.parametrize("weight_quant, input_quant, kind", WEIGHT_CASES[:5], ids=IDS[:5])
def test_linear_in_training_matches_the_wiring_too(weight_quant, input_quant, kind):
    torch.manual_seed(1)
    layer = QuantLinear(40, 24, weight_quant=weight_quant, input_quant=input_quant).train()
    x = torch.randn(6, 40)
    y = layer(x)
    # in training a static quantizer uses the batch's own range, as a one-shot quantize does
    qx = qz.quantize(x, input_quant) if input_quant else x
    assert torch.equal(y, F.linear(dequantize(qx), layer.quant_weight().value, layer.bias))


def test_linear_accepts_3d_inputs_and_groups_the_last_dim():
    layer = QuantLinear(40, 8, weight_quant=qz.MXFloat8e4m3Weight, input_quant=qz.MXFloat8e4m3Act).eval()
    x = torch.randn(2, 3, 40)
    qx = layer.input_quant(x)
    assert qx.group_dim == 2 and qx.value_.shape == (2, 3, 2, 32)
    assert torch.equal(layer(x), F.linear(qx.value, layer.quant_weight().value, layer.bias))


def test_linear_without_quantizers_equals_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(16, 8)
    layer = QuantLinear.from_float(ref, weight_quant=None)
    x = torch.randn(4, 16)
    assert torch.equal(layer(x), ref(x))
    assert layer.quant_weight() is None
    assert isinstance(layer, nn.Linear)


def test_quant_tensor_input_without_input_quant_is_used_as_is():
    torch.manual_seed(0)
    ident = QuantIdentity(return_quant_tensor=True).train()
    layer = QuantLinear(16, 8, input_quant=None)
    qx = ident(torch.randn(4, 16))
    assert isinstance(qx, qz.IntQuantTensor)
    assert torch.equal(layer(qx), F.linear(qx.value, layer.quant_weight().value, layer.bias))


def test_quant_tensor_input_with_input_quant_is_requantized():
    torch.manual_seed(0)
    qx = qz.quantize(torch.randn(4, 40), qz.Int8WeightPerTensorFloat)
    layer = QuantLinear(40, 8, input_quant=qz.MXFloat4e2m1Act)
    again = layer.input_quant(qx.value)
    assert torch.equal(layer(qx), F.linear(again.value, layer.quant_weight().value, layer.bias))


# ---- return_quant_tensor ------------------------------------------------------------------------
@pytest.mark.parametrize("output_quant, kind", [
    (qz.Int8ActPerTensorFloat, qz.IntQuantTensor),
    (qz.Fp8e4m3OCPActPerTensorFloat, qz.FloatQuantTensor),
    (qz.MXFloat8e4m3Act, qz.GroupwiseFloatQuantTensor),
    (qz.MXInt8Act, qz.GroupwiseIntQuantTensor),
    (qz.Int8ActPerTokenFloat, qz.IntQuantTensor),
])
def test_return_quant_tensor_gives_the_output_quantizers_kind(output_quant, kind):
    torch.manual_seed(0)
    layer = QuantLinear(32, 64, output_quant=output_quant, return_quant_tensor=True)
    x = torch.randn(4, 32)
    calibrate(layer, x)
    out = layer(x)
    assert type(out) is kind
    float_out = F.linear(x, layer.quant_weight().value, layer.bias)
    assert torch.equal(out.value, layer.output_quant(float_out).value)
    layer.return_quant_tensor = False
    plain = layer(x)
    assert type(plain) is torch.Tensor and torch.equal(plain, out.value)


def test_return_quant_tensor_without_output_quant_returns_a_plain_tensor():
    layer = QuantLinear(8, 4, input_quant=qz.Int8ActPerTensorFloat, return_quant_tensor=True)
    assert type(layer(torch.randn(2, 8))) is torch.Tensor


# ---- overrides ----------------------------------------------------------------------------------
def test_prefixed_overrides_reach_their_quantizer():
    layer = QuantLinear(
        256, 8, weight_quant=qz.Int4WeightPerGroupFloat, weight_group_size=64, weight_bit_width=3,
        input_quant=qz.MXFloat8e4m3Act, input_scale_rounding="rceil",
        output_quant=qz.Int8ActPerTensorFloat, output_bit_width=6,
    )
    assert layer.weight_quant.granularity.group_size == 64
    assert layer.weight_quant.fmt == qz.IntFormat(bits=3, narrow=True)
    assert layer.input_quant.scaler.mode == "rceil"
    assert layer.output_quant.fmt.bits == 6
    ints = layer.quant_weight().int()
    assert ints.abs().max() <= 3 and layer.quant_weight().scale_.shape == (8, 4, 1)


def test_weight_bit_width_4_gives_int4_codes():
    layer = QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat, weight_bit_width=4)
    ints = layer.quant_weight().int()
    assert ints.abs().max() == 7 and len(ints.unique()) <= 15


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_bitwidth=4), r"'weight_bitwidth'.*did you mean weight_bit_width"),
    (dict(input_quant=qz.Int8ActPerTensorFloat, input_scale_roundig="rceil"), r"'input_scale_roundig'.*input_scale_rounding"),
    (dict(bitwidth=4), r"unexpected keyword argument 'bitwidth'"),
    (dict(return_quant_tensors=True), r"did you mean return_quant_tensor"),
    (dict(act_bit_width=4), r"QuantLinear has no act_quant"),
    (dict(input_bit_width=4), r"input_bit_width=4 override input_quant, but input_quant is None"),
    (dict(bias_bit_width=16), r"bias_quant is None"),
    (dict(weight_quant="int8"), r"weight_quant must be a quantizer class"),
    (dict(weight_quant=qz.Int32Bias), r"bias quantizer.*pass it as bias_quant"),
])
def test_bad_arguments_raise_type_error_naming_the_kwarg(kwargs, message):
    with pytest.raises(TypeError, match=message):
        QuantLinear(8, 4, **kwargs)


def test_override_of_a_shared_instance_is_refused():
    shared = qz.build_tensor_quantizer(qz.Int8ActPerTensorFloat)
    with pytest.raises(TypeError, match=r"input_bit_width=4 cannot apply to input_quant, a shared TensorQuantizer"):
        QuantLinear(8, 4, input_quant=shared, input_bit_width=4)


def test_invalid_override_value_names_the_layer_and_quantizer():
    with pytest.raises(qz.QuantizerConfigError, match=r"QuantLinear.weight_quant: .*scaling"):
        QuantLinear(8, 4, weight_scaling="bogus")


# ---- shared quantizers --------------------------------------------------------------------------
def test_shared_input_quantizer_is_one_module_with_one_set_of_statistics():
    shared = qz.build_tensor_quantizer(qz.Int8ActPerTensorFloat)
    a, b = QuantLinear(8, 4, input_quant=shared), QuantLinear(8, 4, input_quant=shared)
    assert a.input_quant is b.input_quant is shared
    batch = torch.randn(2, 8) * 10
    calibrate(a, batch)  # calibrating a calibrates b
    b.eval()
    assert int(shared.observer.count) == 1
    x = torch.randn(2, 8)
    assert torch.equal(b.input_quant(x).scale, qz.quantize(batch, qz.Int8ActPerTensorFloat).scale)
    b.train()(x)
    assert int(shared.observer.count) == 2
    assert torch.equal(a(x), F.linear(b.input_quant(x).value, a.quant_weight().value, a.bias))


def test_calibration_over_several_batches_averages_the_ranges():
    layer = QuantLinear(8, 4, input_quant=qz.Int8ActPerTensorFloat).train()
    ones = torch.ones(1000, 8)
    layer(ones * 2)
    layer(ones * 4)
    layer.eval()
    assert torch.allclose(layer.input_quant(ones).scale, torch.tensor(3.0 / 128), rtol=1e-6)


def test_shared_weight_quantizer_quantizes_each_layers_own_weight():
    shared = qz.build_tensor_quantizer(qz.Int8WeightPerChannelFloat)
    a, b = QuantLinear(8, 4, weight_quant=shared), QuantLinear(8, 4, weight_quant=shared)
    assert torch.equal(a.quant_weight().value, qz.quantize(a.weight.detach(), qz.Int8WeightPerChannelFloat).value)
    assert torch.equal(b.quant_weight().value, qz.quantize(b.weight.detach(), qz.Int8WeightPerChannelFloat).value)


# ---- bias ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_quant", [qz.Int8WeightPerTensorFloat, qz.Int8WeightPerChannelFloat])
def test_int32_bias_scale_is_input_scale_times_weight_scale(weight_quant):
    torch.manual_seed(0)
    layer = QuantLinear(16, 8, weight_quant=weight_quant, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias)
    x = torch.randn(4, 16)
    calibrate(layer, x)
    with torch.no_grad():
        layer.bias.mul_(3)
        qx, qw = layer.input_quant(x), layer.quant_weight()
        qb = layer.quant_bias(qx)
        scale = qx.scale * qw.scale.reshape(-1)  # (1,) per tensor, (8,) per channel
        expected_bias = torch.round(layer.bias / scale) * scale  # hand formula: no clamp within int32
        y = layer(x)
    assert type(qb) is qz.IntQuantTensor and qb.bit_width == 32
    assert torch.equal(qb.scale.expand(8), scale.expand(8))
    assert torch.equal(qb.value, expected_bias)
    assert torch.equal(qb.int(), torch.round(layer.bias / scale).to(torch.int32))
    assert torch.equal(y, F.linear(qx.value, qw.value, qb.value))


def test_int8_bias_saturates_at_int8_range():
    torch.manual_seed(0)
    layer = QuantLinear(16, 8, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int8Bias).eval()
    with torch.no_grad():
        layer.bias.fill_(1e3)
        qb = layer.quant_bias(layer.input_quant(torch.randn(4, 16)))
    assert qb.int().max() == 127


def test_bias_scale_from_an_incoming_quant_tensor():
    torch.manual_seed(0)
    qx = QuantIdentity(return_quant_tensor=True)(torch.randn(4, 16))
    layer = QuantLinear(16, 8, bias_quant=qz.Int32Bias)
    qb = layer.quant_bias(qx)
    assert torch.equal(qb.scale, qx.scale * layer.quant_weight().scale)
    assert torch.equal(layer(qx), F.linear(qx.value, layer.quant_weight().value, qb.value))


@pytest.mark.parametrize("kwargs, message", [
    (dict(), r"QuantLinear: .*the input is not quantized; set input_quant"),
    (dict(input_quant=qz.MXFloat8e4m3Act), r"QuantLinear: .*per-tensor input scale.*groupwise"),
    (dict(input_quant=qz.Int8ActPerTokenFloat), r"QuantLinear: .*per-tensor input scale.*per-token"),
    (dict(input_quant=qz.Int8ActPerTensorFloat, weight_quant=qz.MXFloat8e4m3Weight), r"QuantLinear: .*weight is quantized groupwise"),
    (dict(input_quant=qz.Int8ActPerTensorFloat, weight_quant=None), r"QuantLinear: .*weight_quant is None"),
])
def test_input_scale_bias_without_a_usable_scale_raises(kwargs, message):
    layer = QuantLinear(32, 8, bias_quant=qz.Int32Bias, **kwargs)
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(2, 32))


def test_bias_quantizer_with_its_own_scale_needs_no_input_scale():
    layer = QuantLinear(16, 8, bias_quant=qz.Int8WeightPerTensorFloat)
    qb = layer.quant_bias()
    assert torch.equal(qb.value, qz.quantize(layer.bias.detach(), qz.Int8WeightPerTensorFloat).value)
    x = torch.randn(2, 16)
    assert torch.equal(layer(x), F.linear(x, layer.quant_weight().value, qb.value))


def test_bias_override_reaches_the_bias_quantizer():
    layer = QuantLinear(16, 8, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias, bias_bit_width=16)
    assert layer.bias_quant.fmt == qz.IntFormat(16)


def test_bias_false_with_bias_quant_runs():
    layer = QuantLinear(16, 8, bias=False, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias).eval()
    x = torch.randn(2, 16)
    assert layer.quant_bias(layer.input_quant(x)) is None
    assert torch.equal(layer(x), F.linear(layer.input_quant(x).value, layer.quant_weight().value))


# ---- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_quant, input_quant, kind", WEIGHT_CASES, ids=IDS)
def test_gradients_reach_weight_bias_and_input_in_training(weight_quant, input_quant, kind):
    torch.manual_seed(0)
    layer = QuantLinear(40, 8, weight_quant=weight_quant, input_quant=input_quant,
                        output_quant=qz.Int8ActPerTensorFloat).train()
    x = torch.randn(4, 40, requires_grad=True)
    layer(x).square().sum().backward()
    for grad in (layer.weight.grad, layer.bias.grad, x.grad):
        assert grad is not None and grad.abs().sum() > 0


def test_gradient_reaches_a_quantized_bias():
    layer = QuantLinear(16, 8, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias).train()
    layer(torch.randn(4, 16)).sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((8,), 4.0))


# ---- embedding ----------------------------------------------------------------------------------
EMBEDDING_CASES = [qz.Int8WeightPerTensorFloat, qz.Int8WeightPerChannelFloat, qz.Fp8e4m3OCPWeightPerTensorFloat,
                   qz.MXFloat8e4m3Weight, qz.NVFloat4e2m1Weight, qz.Int4WeightPerGroupFloat]


@pytest.mark.parametrize("weight_quant", EMBEDDING_CASES, ids=lambda q: q.__name__)
def test_embedding_looks_up_the_quantized_weight(weight_quant):
    torch.manual_seed(0)
    layer = QuantEmbedding(10, 40, weight_quant=weight_quant, weight_group_size=16) if weight_quant is qz.Int4WeightPerGroupFloat \
        else QuantEmbedding(10, 40, weight_quant=weight_quant)
    idx = torch.tensor([[1, 3, 3], [9, 0, 2]])
    qw = layer.quant_weight()
    out = layer(idx)
    assert torch.equal(out, F.embedding(idx, qw.value))
    layer.return_quant_tensor = True
    qout = layer(idx)
    assert type(qout) is type(qw) and qout.shape == (2, 3, 40)
    assert torch.equal(qout.value, out)
    assert torch.equal(qout.scale.expand(2, 3, 40), qw.scale.expand(10, 40)[idx])


def test_embedding_from_float_keeps_its_configuration_and_values():
    ref = nn.Embedding(12, 8, padding_idx=0, max_norm=1.5, scale_grad_by_freq=True)
    layer = QuantEmbedding.from_float(ref, weight_quant=None)
    for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"):
        assert getattr(layer, name) == getattr(ref, name)
    idx = torch.tensor([0, 4, 4, 11])
    assert torch.equal(layer(idx), ref(idx))
    assert torch.equal(layer.weight, ref.weight)  # both renormalised in place


def test_embedding_rejects_bias_and_input_overrides():
    with pytest.raises(TypeError, match=r"QuantEmbedding has no input_quant"):
        QuantEmbedding(4, 4, input_bit_width=4)
