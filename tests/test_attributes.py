"""The declared attribute schema: every attribute rejects a bad value, misspelt class attributes fail
at class creation, attributes that do not apply are rejected, every V1/E1/M3 case of the
reliability report raises, custom scalers and observers plug in, and ``quantize`` follows class
attribute changes (A1)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import pytest
import torch

import qlayers as qnn
import quantizers as qz
from quantizers import QuantizerAttributes, QuantizerConfigError, resolve_attributes
from qlayers.model import spec_to_quantizer
from quantizers.scaling.scalers import FloatScaler, Scaler, Scales


# ---- every attribute rejects a bad value ---------------------------------------------------------------

BAD_VALUES = {  # attribute: (a quantizer it applies to, a bad value)
    "role": (qz.Int8WeightPerTensorFloat, "activation"),
    "quant_type": (qz.Int8WeightPerTensorFloat, "fixed"),
    "element_format": (qz.Int8WeightPerTensorFloat, 8),
    "bit_width": (qz.Int8WeightPerTensorFloat, "8"),
    "signed": (qz.Int8WeightPerTensorFloat, "yes"),
    "narrow_range": (qz.Int8WeightPerTensorFloat, 1),
    "exponent_bit_width": (qz.Fp8e4m3OCPWeightPerTensorFloat, -1),
    "mantissa_bit_width": (qz.Fp8e4m3OCPWeightPerTensorFloat, 2.5),
    "exponent_bias": (qz.Fp8e4m3OCPWeightPerTensorFloat, "7"),
    "float_standard": (qz.Fp8e4m3OCPWeightPerTensorFloat, "ibm"),
    "saturating": (qz.Fp8e4m3OCPWeightPerTensorFloat, "no"),
    "rounding": (qz.Int8WeightPerTensorFloat, "nearest"),
    "scaling": (qz.Int8WeightPerTensorFloat, "floaty"),
    "scale_rounding": (qz.Int8WeightPerTensorFixedPoint, "bogus"),
    "symmetric": (qz.Uint4WeightPerGroupFloat, "no"),
    "zero_point_formulation": (qz.Uint4WeightPerGroupFloat, "x"),
    "full_range_divisor": (qz.Int8ActPerTensorFloat, "max_int"),
    "granularity": (qz.Int8WeightPerTensorFloat, "row"),
    "channel_axis": (qz.Int8WeightPerChannelFloat, 1.0),
    "group_size": (qz.Int4WeightPerGroupFloat, 0),
    "group_dim": (qz.Int4WeightPerGroupFloat, "1"),
    "tile_shape": (qz.Int8WeightPerTensorFloat, 8),
    "range_method": (qz.Int8WeightPerTensorFloat, "minmax"),
    "percentile": (qz.Int8ActPerTensorFloat, 120),
    "mse_ratios": (qz.Int8WeightPerTensorFloatMSE, []),
    "float_range": (qz.Int8WeightPerTensorFloat, (1.0, -1.0)),
    "observer": (qz.Int8ActPerTensorFloat, "minmaxx"),
    "momentum": (qz.Int8ActPerTensorFloat, 0),
    "learned_scale": (qz.Int8WeightPerTensorFloat, "yes"),
    "requires_input_scale": (qz.Int8Bias, 1),
}


def test_the_bad_value_table_covers_every_declared_attribute():
    assert sorted(BAD_VALUES) == sorted(f.name for f in fields(QuantizerAttributes))


@pytest.mark.parametrize("name", [f.name for f in fields(QuantizerAttributes)])
def test_every_attribute_rejects_a_bad_value_naming_class_attribute_value_and_allowed(name):
    quantizer, bad = BAD_VALUES[name]
    with pytest.raises(QuantizerConfigError) as info:
        resolve_attributes(quantizer, **{name: bad})
    message = str(info.value)
    assert message.startswith(quantizer.__name__ + ":")
    assert f"{name}={bad!r}" in message and "allowed" in message
    assert info.value.attribute == name


@pytest.mark.parametrize("name", [f.name for f in fields(QuantizerAttributes)])
def test_every_attribute_documents_its_default_and_allowed_values(name):
    row = next(r for r in qz.attribute_table() if r["name"] == name)
    assert row["doc"] and row["allowed"] and row["applies"]


def test_wrong_types_are_type_errors_too():
    with pytest.raises(TypeError, match=r"bit_width='8'.*allowed values: an int >= 1 or None"):
        resolve_attributes(qz.Int8WeightPerTensorFloat, bit_width="8")


def test_mode_strings_resolve_to_str_enums_equal_to_the_strings():
    a = resolve_attributes(qz.MXFloat4e2m1Weight, scale_rounding="rceil")
    assert a.scaling is qz.Scaling.E8M0 and a.scaling == "e8m0" and qz.Scaling("e8m0") is qz.Scaling.E8M0
    assert a.scale_rounding is qz.ScaleRounding.RCEIL and {"rceil": 1}[a.scale_rounding] == 1
    assert a.granularity is qz.GranularityKind.GROUP and a.role is qz.Role.WEIGHT


# ---- names are checked when a class is created -------------------------------------------------------------


def test_misspelt_subclass_attribute_raises_at_class_creation_with_a_suggestion():
    with pytest.raises(TypeError, match=r"MyQ sets 'bitwidth'.*did you mean bit_width"):
        class MyQ(qz.Int8WeightPerChannelFloat):
            bitwidth = 4


def test_misspelt_attribute_set_on_an_existing_class_raises():
    class MyQ(qz.Int8WeightPerChannelFloat):
        pass

    with pytest.raises(TypeError, match=r"MyQ sets 'bitwidth'.*did you mean bit_width"):
        MyQ.bitwidth = 4
    MyQ.bit_width = 4  # a real attribute can still be changed (quantize follows it, see A1)


def test_private_names_and_methods_stay_allowed_in_quantizer_classes():
    class Documented(qz.Int8WeightPerChannelFloat):
        _note = "private"
        bit_width = 4

        def helper(self):
            return 1

        @classmethod
        def make(cls):
            return cls

        @property
        def shown(self):
            return 2

    assert qz.quantize(torch.randn(4, 8), Documented).bit_width == 4


def test_with_overrides_checks_names_too():
    with pytest.raises(TypeError, match="did you mean bit_width"):
        qz.Int8WeightPerChannelFloat.with_overrides(bitwidht=4)


# ---- V1: nonsense values and attributes that do not apply raise --------------------------------------------

W = torch.randn(64, 256) * 0.05

V1_CASES = [  # (quantizer, overrides, attribute named in the message)
    (qz.Int8WeightPerChannelFloatMSE, {"mse_ratios": [0.0]}, "mse_ratios"),
    (qz.Int8WeightPerChannelFloatMSE, {"mse_ratios": [-1.0]}, "mse_ratios"),
    (qz.Int8WeightPerChannelFloatMSE, {"mse_ratios": []}, "mse_ratios"),
    (qz.Int8WeightPerTensorFloatMSE, {"mse_ratios": []}, "mse_ratios"),
    (qz.Int8WeightPerChannelFloatMSE, {"mse_ratios": "abc"}, "mse_ratios"),
    (qz.Int8WeightPerChannelFloat, {"float_range": (1.0, -1.0)}, "float_range"),
    (qz.Int8WeightPerChannelFloat, {"float_range": (math.nan, 1.0)}, "float_range"),
    (qz.Int8WeightPerChannelFloat, {"float_range": (0.0, 0.0)}, "float_range"),
    (qz.Int8WeightPerChannelFloat, {"float_range": (-math.inf, math.inf)}, "float_range"),
    (qz.Uint4WeightPerGroupFloat, {"symmetric": "no"}, "symmetric"),
    (qz.Int8WeightPerChannelFloat, {"group_size": 32}, "group_size"),
    (qz.Int8WeightPerChannelFloat, {"tile_shape": (8, 8)}, "tile_shape"),
    (qz.Int8WeightPerChannelFloat, {"scale_rounding": "bogus"}, "scale_rounding"),
    (qz.Int8WeightPerChannelFloat, {"scale_rounding": "floor"}, "scale_rounding"),
    (qz.Int8WeightPerTensorFixedPoint, {"scale_rounding": "rceil"}, "scale_rounding"),
    (qz.Int8ActPerTensorFloat, {"momentum": 0.5}, "momentum"),
    (qz.Int8WeightPerChannelFloat, {"percentile": 99.0}, "percentile"),
    (qz.Int8WeightPerChannelFloat, {"mse_ratios": [0.5, 1.0]}, "mse_ratios"),
    (qz.Int8WeightPerChannelFloat, {"role": "activation"}, "role"),
    (qz.Int8WeightPerChannelFloat, {"element_format": "e8m0"}, "element_format"),
    (qz.Int8WeightPerChannelFloat, {"tile_shape": 8}, "tile_shape"),
    (qz.Int8WeightPerChannelFloat, {"bit_width": "8"}, "bit_width"),
    (qz.Int8WeightPerChannelFloat, {"observer": "mean"}, "observer"),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, {"narrow_range": True}, "narrow_range"),
    (qz.Int8WeightPerTensorFloat, {"exponent_bit_width": 4}, "exponent_bit_width"),
    (qz.MXFloat8e4m3Weight, {"symmetric": False}, "symmetric"),
    (qz.Int8WeightPerChannelFloat, {"learned_scale": True, "scaling": "po2"}, "learned_scale"),
    (qz.Int8ActPerTensorFloat, {"zero_point_formulation": "minval"}, "zero_point_formulation"),
]


@pytest.mark.parametrize("quantizer, overrides, attribute", V1_CASES, ids=lambda v: str(v)[:40])
def test_v1_nonsense_or_inapplicable_attributes_raise_naming_class_attribute_and_value(quantizer, overrides, attribute):
    with pytest.raises(QuantizerConfigError) as info:
        qz.quantize(W, quantizer, **overrides)
    message = str(info.value)
    assert message.startswith(quantizer.__name__) and attribute in message
    assert info.value.attribute == attribute


@pytest.mark.parametrize("bias_quant", [qz.Int8Bias, qz.Int16Bias, qz.Int32Bias])
def test_v1_quantize_of_a_bias_quantizer_without_input_and_weight_scales_raises(bias_quant):
    with pytest.raises(QuantizerConfigError, match=r"input scale x weight scale.*bias_quant"):
        qz.quantize(torch.randn(16) * 0.01, bias_quant)


def test_v1_return_quant_tensor_must_be_a_bool():
    with pytest.raises(TypeError, match=r"return_quant_tensor must be True or False, got 'no'"):
        qnn.QuantLinear(8, 4, return_quant_tensor="no")


@pytest.mark.parametrize("spec, role, path", [
    ({"format": "int8", "percentile": 50}, "weight", "weights.percentile"),
    ({"format": "int8", "observer": "mean", "momentum": 0.5}, "input", "weights.momentum"),
    ({"format": "int8", "float_range": [1, -1]}, "weight", "weights.float_range"),
])
def test_v1_declarative_specs_reject_attributes_that_do_not_apply(spec, role, path):
    with pytest.raises(ValueError, match=rf"^{path}="):
        spec_to_quantizer(spec, role, path="weights")


def test_bias_options_fail_at_layer_construction_naming_the_keyword():
    with pytest.raises(QuantizerConfigError, match=r"QuantLinear.bias_quant: Int8Bias: rounding='nearest'.*allowed values"):
        qnn.QuantLinear(8, 4, bias_quant=qz.Int8Bias, input_quant=qz.Int8ActPerTensorFloat, bias_rounding="nearest")


# ---- E1: config errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer, shown", [
    ("Int8WeightPerChannelFloat", "got the string 'Int8WeightPerChannelFloat'; pass the class itself"),
    (None, "got None"),
    (torch.nn.Linear, "got <class 'torch.nn"),
])
def test_e1_quantize_with_something_other_than_a_quantizer_class_is_a_clear_type_error(quantizer, shown):
    with pytest.raises(TypeError, match=r"quantizer must be a quantizer class") as info:
        qz.quantize(W, quantizer)
    assert shown in str(info.value)


def test_e1_scale_format_as_element_format_is_rejected_at_build():
    with pytest.raises(QuantizerConfigError, match=r"element_format='e8m0' is float8_e8m0fnu, a scale format"):
        qz.build_tensor_quantizer(qz.Int8WeightPerChannelFloat, element_format="e8m0")


# ---- M3: static observers need batch-independent scales -----------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"input_granularity": "token"}, {"input_granularity": "group", "input_group_size": 32}])
def test_m3_static_observer_with_token_or_group_granularity_is_rejected_pointing_to_dynamic(overrides):
    with pytest.raises(QuantizerConfigError, match=r"observer='mean'.*dynamic quantization"):
        qnn.QuantLinear(64, 8, input_quant=qz.Int8ActPerTensorFloat, **overrides)


def test_m3_the_dynamic_form_of_the_same_override_builds():
    layer = qnn.QuantLinear(64, 8, input_quant=qz.Int8ActPerTensorFloat, input_granularity="token",
                            input_observer=None, input_range_method="max")
    assert layer.input_quant.observer is None


# ---- extension points: a Scaler or Observer subclass as the attribute value ------------------------------------


@dataclass(frozen=True)
class HalfRangeScaler(Scaler):
    """scale = amax / (max / 2): the format's upper half is never used."""

    fmt: qz.NumberFormat

    def __call__(self, stat):
        return Scales(stat / (self.fmt.max_value / 2))


def test_a_scaler_subclass_as_scaling_plugs_in():
    class HalfRangeFP8(qz.Fp8e4m3OCPWeightPerTensorFloat):
        scaling = HalfRangeScaler

    x = torch.randn(32, 64)
    qt = qz.quantize(x, HalfRangeFP8)
    assert qt.scale.item() == pytest.approx(x.abs().max().item() / 224.0, rel=1e-6)
    assert qt.value.abs().max() <= 224.0 * qt.scale


def test_the_builtin_float_scaler_class_equals_scaling_float():
    class ByClass(qz.Int8WeightPerChannelFloat):
        scaling = FloatScaler  # FloatScaler(IntFormat) scales by amax / 127 as "float" does for narrow int8

    x = torch.randn(16, 32)
    assert torch.equal(qz.quantize(x, ByClass).value, qz.quantize(x, qz.Int8WeightPerChannelFloat).value)


def test_an_observer_subclass_as_observer_plugs_in():
    class RunningMax(qz.Int8ActPerTensorFloat):
        observer = qz.GlobalMinMaxObserver
        range_method = "max"

    layer = qnn.QuantIdentity(act_quant=RunningMax)
    assert type(layer.act_quant.observer) is qz.GlobalMinMaxObserver
    layer.train()
    layer(torch.tensor([1.0, -3.0]))
    layer(torch.tensor([2.0, -1.0]))
    assert layer.act_quant.observer.high.item() == 3.0  # the running max of |x|, not the last batch


# ---- A1: quantize follows class attribute changes ------------------------------------------------------------


def test_a1_quantize_never_serves_a_module_built_from_stale_class_attributes():
    class MyQ(qz.Int8WeightPerTensorFloat):
        pass

    x = torch.randn(8, 16)
    assert qz.quantize(x, MyQ).fmt.name == "int8_narrow"
    MyQ.bit_width = 4
    qt = qz.quantize(x, MyQ)
    assert qt.fmt.name == "int4_narrow" and qt.int().abs().max() == 7
    MyQ.granularity = "channel"
    assert qz.quantize(x, MyQ).scale.shape == (8, 1)


# ---- learned_scale is an attribute: a layer keyword too ----------------------------------------------------


def test_learned_scale_works_as_a_layer_keyword():
    torch.manual_seed(0)
    layer = qnn.QuantLinear(16, 4, weight_quant=qz.Int8WeightPerChannelFloat, weight_learned_scale=True)
    assert layer.weight_quant.range_source is qz.RangeSource.LEARNED
    layer(torch.randn(2, 16)).sum().backward()  # the first forward starts the range from the weight
    amax = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    assert torch.equal(layer.weight_quant.learned_range.detach(), amax)
    assert layer.weight_quant.learned_range.grad is not None


def test_learned_scale_is_rejected_where_it_does_not_apply():
    with pytest.raises(QuantizerConfigError, match=r"learned_scale=True does not apply.*observer=None"):
        qnn.QuantLinear(16, 4, input_quant=qz.Int8ActPerTokenFloat, input_learned_scale=True)


def test_inapplicable_attribute_message_shows_plain_values_and_what_is_allowed():
    with pytest.raises(QuantizerConfigError) as info:
        resolve_attributes(qz.MXFloat8e4m3Weight, scaling="float")
    assert str(info.value) == (
        "MXFloat8e4m3Weight: scale_rounding='floor' does not apply here: scale_rounding is used only with "
        "scaling in ('po2', 'e8m0'), and this quantizer has scaling='float'; allowed here: None (remove it)"
    )
