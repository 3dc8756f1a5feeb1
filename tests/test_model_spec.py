"""Declarative specs resolve to quantizer classes made of the zoo's mixins (qlayers.model.spec)."""
import pytest
import torch

import quantizers as qz
from qlayers import QuantLinear
from qlayers.model.spec import spec_to_quantizer
from quantizers import resolve_attributes

# (spec, role, the predefined quantizer a user would pick by hand)
EQUIVALENT = [
    ({"format": "int8", "granularity": "channel", "symmetric": True}, "weight", qz.Int8WeightPerChannelFloat),
    ({"format": "int8"}, "weight", qz.Int8WeightPerTensorFloat),
    ({"format": "int8", "scale": "po2"}, "weight", qz.Int8WeightPerTensorFixedPoint),
    ({"format": "int8"}, "input", qz.Int8ActPerTensorFloat),
    ({"format": "uint8"}, "output", qz.Uint8ActPerTensorFloat),
    ({"format": "int8", "granularity": "token"}, "input", qz.Int8ActPerTokenFloat),
    ({"format": "int4", "granularity": "block", "group_size": 128}, "weight", qz.Int4WeightPerGroupFloat),
    ({"format": "int4", "granularity": "group"}, "weight", qz.Int4WeightPerGroupFloat),  # the zoo's default 128
    ({"format": "float8_e4m3fn"}, "weight", qz.Fp8e4m3OCPWeightPerTensorFloat),
    ({"format": "float8_e4m3fn"}, "input", qz.Fp8e4m3OCPActPerTensorFloat),
    ({"format": "float8_e5m2", "granularity": "channel"}, "weight", qz.Fp8e5m2OCPWeightPerChannelFloat),
    ({"format": "float8_e4m3fnuz"}, "weight", qz.Fp8e4m3FNUZWeightPerTensorFloat),
    ({"format": "float8_e4m3fn", "granularity": "token"}, "input", qz.Fp8e4m3OCPActPerTokenFloat),
    ({"format": "mxfp8"}, "weight", qz.MXFloat8e4m3Weight),
    ({"format": "mxfp8"}, "input", qz.MXFloat8e4m3Act),
    ({"format": "mxfp6"}, "weight", qz.MXFloat6e2m3Weight),
    ({"format": "mxfp6_e3m2"}, "weight", qz.MXFloat6e3m2Weight),
    ({"format": "mxfp4"}, "weight", qz.MXFloat4e2m1Weight),
    ({"format": "mxint8"}, "weight", qz.MXInt8Weight),
    ({"format": "nvfp4"}, "weight", qz.NVFloat4e2m1Weight),
    ({"format": "hifloat8"}, "weight", qz.HiFloat8WeightPerTensorFloat),
    ({"format": "hifloat8"}, "input", qz.HiFloat8ActPerTensorFloat),
    ({"format": "int32"}, "bias", qz.Int32Bias),
]


@pytest.mark.parametrize("spec, role, reference", EQUIVALENT, ids=[r.__name__ + "-" + role for _, role, r in EQUIVALENT])
def test_spec_resolves_to_the_predefined_quantizers_attributes(spec, role, reference):
    assert resolve_attributes(spec_to_quantizer(spec, role)) == resolve_attributes(reference)


def test_spec_class_is_built_from_the_mixins_a_user_would_write():
    cls = spec_to_quantizer({"format": "float8_e4m3fn", "granularity": "channel"}, "weight")
    assert cls.__bases__ == (qz.Fp8e4m3Mixin, qz.FpOCPMixin, qz.WeightQuant, qz.PerChannel, qz.FloatScaling)
    assert cls.__name__ == "Fp8e4m3OCPWeightPerChannelFloat"


def test_same_spec_gives_the_same_class():
    a = spec_to_quantizer({"format": "int4", "granularity": "group", "group_size": 32}, "weight")
    b = spec_to_quantizer({"group_size": 32, "granularity": "group", "format": "int4"}, "weight")
    assert a is b


def test_int8_per_channel_spec_quantizes_like_Int8WeightPerChannelFloat():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    cls = spec_to_quantizer({"format": "int8", "granularity": "channel"}, "weight")
    got = QuantLinear(32, 16, weight_quant=cls)
    ref = QuantLinear(32, 16, weight_quant=qz.Int8WeightPerChannelFloat)
    got.weight.data.copy_(w)
    ref.weight.data.copy_(w)
    # hand-computed: scale per row = amax / 127, codes in [-127, 127]
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    expected = torch.clamp(torch.round(w / scale), -127, 127) * scale
    torch.testing.assert_close(got.quant_weight().value, expected, rtol=0, atol=0)
    torch.testing.assert_close(got.quant_weight().value, ref.quant_weight().value, rtol=0, atol=0)


def test_full_range_int8_when_narrow_is_false():
    cls = spec_to_quantizer({"format": "int8", "narrow": False}, "weight")
    x = torch.tensor([-1.0, 0.5, 1.0])
    qt = qz.quantize(x, cls)
    assert float(qt.scale) == 1 / 128  # full range [-128, 127], amax / 128 (Brevitas)
    half = spec_to_quantizer({"format": "int8", "narrow": False, "full_range_divisor": "half_range"}, "weight")
    assert float(qz.quantize(x, half).scale) == pytest.approx(1 / 127.5)  # coreai_opt / MQBench


def test_asymmetric_uint8_has_a_zero_point():
    cls = spec_to_quantizer({"format": "uint8", "symmetric": False}, "weight")
    x = torch.tensor([-1.0, 0.0, 3.0])
    qt = qz.quantize(x, cls)
    assert float(qt.scale) == pytest.approx(4 / 255)
    assert float(qt.zero_point) == round(1 / (4 / 255))


def test_observer_names_map_to_observer_and_range_method():
    cls = spec_to_quantizer({"format": "int8", "observer": "ema_minmax", "momentum": 0.5}, "input")
    assert (cls.observer, cls.range_method, cls.momentum) == ("ema_minmax", "max", 0.5)
    cls = spec_to_quantizer({"format": "int8", "observer": "mse"}, "weight")
    assert (cls.observer, cls.range_method) == (None, "mse")
    cls = spec_to_quantizer({"format": "int8", "dynamic": True}, "input")
    assert (cls.observer, cls.role) == (None, "act")


def test_e8m0_scale_modes_and_bias_with_its_own_scale():
    assert spec_to_quantizer({"format": "mxfp4", "scale": "e8m0_rceil"}, "weight").scale_rounding == "rceil"
    cls = spec_to_quantizer({"format": "int8", "scale": "float"}, "bias")
    assert not cls.requires_input_scale and cls.bit_width == 8


def test_generic_float_format_uses_element_format():
    cls = spec_to_quantizer({"format": "float8_e3m4"}, "weight")
    assert qz.build_tensor_quantizer(cls).fmt.name == "float8_e3m4"


@pytest.mark.parametrize(
    "spec, role, error, pieces",
    [
        ({"format": "int9"}, "weight", ValueError, ["weights.format='int9'", "allowed values", "int8"]),
        ({"format": "int8", "granularity": "chanel"}, "weight", ValueError, ["weights.granularity='chanel'", "did you mean 'channel'"]),
        ({"format": "int8", "group_size": 32}, "weight", ValueError, ["weights.group_size=32", "granularity"]),
        ({"format": "mxfp4", "granularity": "channel"}, "weight", ValueError, ["block format"]),
        ({"format": "mxfp4", "scale": "float"}, "weight", ValueError, ["weights.scale='float'", "e8m0_floor"]),
        ({"format": "float8_e4m3fn", "symmetric": False}, "weight", ValueError, ["symmetric=False"]),
        ({"format": "int8", "observer": "ema_minmax"}, "weight", ValueError, ["weights.observer='ema_minmax'", "minmax"]),
        ({"format": "int8", "observer": "kl"}, "input", ValueError, ["weights.observer='kl'", "percentile"]),
        ({"format": "int8", "granularity": "token"}, "weight", ValueError, ["'token' is for activations"]),
        ({"format": "int8", "granularity": "token", "dynamic": False}, "input", ValueError, ["dynamic=False"]),
        ({"format": "int8", "dynamic": True}, "weight", ValueError, ["weights.dynamic applies to activations"]),
        ({"format": "int8", "rounding": "nearest"}, "weight", ValueError, ["weights.rounding='nearest'", "even"]),
        ({"format": "int8", "symmetric": "yes"}, "weight", TypeError, ["weights.symmetric must be True or False"]),
        ({"format": "int8", "bits": 4}, "weight", ValueError, ["unknown key 'weights.bits'"]),
        ({"format": "int8", "scale": "po2", "learned_scale": True}, "weight", ValueError, ["learned_scale"]),
        ({"format": "int8", "formulation": "minval"}, "weight", ValueError, ["minval"]),
        ({"granularity": "tensor"}, "weight", ValueError, ["weights needs a 'format'"]),
    ],
)
def test_spec_errors_name_the_key_the_value_and_the_choices(spec, role, error, pieces):
    with pytest.raises(error) as info:
        spec_to_quantizer(spec, role, path="weights")
    for piece in pieces:
        assert piece in str(info.value)
