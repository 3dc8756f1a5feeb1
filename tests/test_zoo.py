"""The quantizer zoo: composition by Python's MRO, describe(), overrides, configuration errors, and
every predefined quantizer building and quantizing to the right QuantTensor kind and format."""
from __future__ import annotations

import pytest
import torch

import quantizers as qz
from quantizers.zoo.build import build_tensor_quantizer
from quantizers.zoo.catalog import catalog_markdown, predefined_quantizers
from quantizers.zoo.base import Quantizer, QuantizerConfigError, describe

Int, Float = qz.IntQuantTensor, qz.FloatQuantTensor
GInt, GFloat = qz.GroupwiseIntQuantTensor, qz.GroupwiseFloatQuantTensor


# ---- composition ---------------------------------------------------------------------------------------


def test_format_mixin_after_the_base_resolves_e4m3fn():
    class OCPFP8Weight(qz.FpOCPWeightPerTensorFloat, qz.Fp8e4m3Mixin):
        pass

    qt = qz.quantize(torch.randn(8, 8), OCPFP8Weight)
    assert isinstance(qt, Float) and qt.fmt.name == "float8_e4m3fn"
    assert (qt.exponent_bit_width, qt.mantissa_bit_width, qt.exponent_bias) == (4, 3, 7)


def test_fnuz_base_with_a_format_mixin_resolves_the_fnuz_format():
    class FNUZ8(qz.FpFNUZWeightPerTensorFloat, qz.Fp8e5m2Mixin):
        pass

    assert qz.quantize(torch.randn(8, 8), FNUZ8).fmt.name == "float8_e5m2fnuz"


def test_leftmost_base_wins():
    class E5M2First(qz.Fp8e5m2Mixin, qz.Fp8e4m3Mixin, qz.FpOCPWeightPerTensorFloat):
        pass

    class E4M3First(qz.Fp8e4m3Mixin, qz.Fp8e5m2Mixin, qz.FpOCPWeightPerTensorFloat):
        pass

    assert qz.quantize(torch.randn(4, 4), E5M2First).fmt.name == "float8_e5m2"
    assert qz.quantize(torch.randn(4, 4), E4M3First).fmt.name == "float8_e4m3fn"


class _Top(qz.NarrowIntQuant, qz.WeightQuant, qz.PerTensor, qz.FloatScaling):
    bit_width = 8


class _Left(_Top):
    bit_width = 4


class _Right(_Top):
    narrow_range = False


def test_diamond_resolves_like_python_mro():
    class LeftRight(_Left, _Right):   # MRO: LeftRight, _Left, _Right, _Top, ...
        pass

    class RightLeft(_Right, _Left):   # MRO: RightLeft, _Right, _Left, _Top: bit_width from _Left,
        pass                          # not _Top (a depth-first lookup would pick _Top's 8)

    for quantizer in (LeftRight, RightLeft):
        qt = qz.quantize(torch.randn(4, 4), quantizer)
        assert qt.fmt.name == "int4"  # 4 bits from _Left, full range from _Right
        assert qt.bit_width == quantizer.bit_width == 4


def test_describe_lists_attributes_with_their_defining_class():
    class OCPFP8Weight(qz.FpOCPWeightPerTensorFloat, qz.Fp8e4m3Mixin):
        pass

    text = describe(OCPFP8Weight)
    lines = {line.split("=")[0].strip(): line for line in text.splitlines()[1:]}
    assert text.splitlines()[0] == "OCPFP8Weight:"
    assert "# from Fp8e4m3Mixin" in lines["exponent_bit_width"] and "4" in lines["exponent_bit_width"]
    assert "# from FpOCPMixin" in lines["float_standard"] and "'ocp'" in lines["float_standard"]
    assert "# from PerTensor" in lines["granularity"]
    assert "# from FloatScaling" in lines["scaling"]
    assert "# from WeightQuant" in lines["role"]
    assert "# from Quantizer" in lines["exponent_bias"]
    assert {"bit_width", "mantissa_bit_width", "observer", "saturating"} <= set(lines)


def test_describe_rejects_a_non_quantizer():
    with pytest.raises(TypeError):
        describe(torch.nn.Linear)


# ---- overrides --------------------------------------------------------------------------------------------


def test_bit_width_override_gives_int4():
    qt = qz.quantize(torch.randn(8, 8), qz.Int8WeightPerTensorFloat, bit_width=4)
    assert qt.fmt.name == "int4_narrow" and qt.bit_width == 4
    assert qt.int().abs().max() == 7


def test_group_size_override_changes_the_grouping():
    qt = qz.quantize(torch.randn(4, 128), qz.Int4WeightPerGroupFloat, group_size=32)
    assert qt.group_size == 32 and qt.scale_.shape == (4, 4, 1)


def test_with_overrides_builds_a_subclass():
    Q = qz.Int8WeightPerTensorFloat.with_overrides(bit_width=6)
    assert issubclass(Q, qz.Int8WeightPerTensorFloat) and Q.bit_width == 6
    with pytest.raises(TypeError, match="bit_width"):
        qz.Int8WeightPerTensorFloat.with_overrides(bitwidth=6)


def test_misspelt_override_raises_type_error_suggesting_the_name():
    with pytest.raises(TypeError, match=r"'bitwidth'.*did you mean bit_width"):
        qz.quantize(torch.randn(4, 4), qz.Int8WeightPerTensorFloat, bitwidth=4)


def test_unknown_override_without_close_match_still_raises():
    with pytest.raises(TypeError, match="'frobnicate'"):
        qz.quantize(torch.randn(4, 4), qz.Int8WeightPerTensorFloat, frobnicate=1)


# ---- configuration errors ------------------------------------------------------------------------------------


def test_float_quantizer_without_exponent_widths_names_class_and_attribute():
    class Bad(qz.FpOCPWeightPerTensorFloat):
        pass

    with pytest.raises(QuantizerConfigError, match=r"^Bad\b.*exponent_bit_width"):
        qz.quantize(torch.randn(4, 4), Bad)


@pytest.mark.parametrize("quantizer, overrides, message", [
    (qz.Fp8e4m3OCPWeightPerTensorFloat, {"bit_width": 4}, r"bit_width=4 contradicts"),
    (qz.Int4WeightPerGroupFloat, {"group_size": 0}, r"group_size.*0"),
    (qz.Int4WeightPerGroupFloat, {"group_size": -32}, r"group_size.*-32"),
    (qz.Int4WeightPerGroupFloat, {"group_size": None}, r"needs group_size"),
    (qz.MXFloat4e2m1Weight, {"saturating": False}, r"saturating=False.*neither"),
    (qz.MXFloat6e2m3Weight, {"saturating": False}, r"saturating=False.*neither"),
    (qz.MXFloat6e3m2Weight, {"saturating": False}, r"saturating=False.*neither"),
    (qz.NVFloat4e2m1Weight, {"saturating": False}, r"saturating=False.*neither"),
    (qz.Int8WeightPerTensorFloat, {"scaling": "floaty"}, r"scaling='floaty'.*allowed.*e8m0"),
    (qz.Int8ActPerTensorFloat, {"observer": "minmaxx"}, r"observer='minmaxx'.*allowed.*global_minmax"),
    (qz.Int8WeightPerTensorFloat, {"granularity": "row"}, r"granularity='row'.*allowed"),
    (qz.Int8WeightPerTensorFloat, {"range_method": "minmax"}, r"range_method='minmax'.*allowed"),
    (qz.Int8WeightPerTensorFloat, {"quant_type": "fixed"}, r"quant_type='fixed'"),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, {"float_standard": "ibm"}, r"float_standard='ibm'"),
    (qz.Int8WeightPerTensorFloat, {"symmetric": False, "zero_point_formulation": "x"}, r"zero_point_formulation"),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, {"symmetric": False}, r"integer format"),
    (qz.Int8WeightPerTensorFloat, {"element_format": "float9"}, r"float9"),
    (qz.Int8WeightPerTensorFloat, {"bit_width": None}, r"needs bit_width"),
    (qz.Int8ActPerTensorFloat, {"observer": "ema_minmax", "momentum": 0}, r"momentum"),
])
def test_bad_configurations_raise_quantizer_config_error_naming_the_class(quantizer, overrides, message):
    with pytest.raises(QuantizerConfigError, match=message) as info:
        build_tensor_quantizer(quantizer, **overrides)
    assert quantizer.__name__ in str(info.value)
    assert "DependencyError" not in type(info.value).__name__


@pytest.mark.parametrize("quantizer, overrides", [
    (qz.MXFloat8e4m3Weight, {"scale_rounding": "nearest"}),
    (qz.Int8WeightPerTensorFixedPoint, {"scale_rounding": "nearest"}),
    (qz.Int8WeightPerTensorFloat, {"range_method": "percentile", "percentile": 120}),
])
def test_bad_attribute_values_are_rejected_when_the_quantizer_is_built(quantizer, overrides):
    with pytest.raises(QuantizerConfigError, match=quantizer.__name__):
        build_tensor_quantizer(quantizer, **overrides)


def test_fnuz_formats_allow_saturating_false_and_overflow_to_nan():
    q = build_tensor_quantizer(qz.Fp8e4m3FNUZWeightPerTensorFloat, saturating=False, scaling="none")
    qt = q(torch.tensor([1.0, 1000.0]))
    assert qt.value[0].item() == 1.0 and torch.isnan(qt.value[1])


def test_saturating_fnuz_clamps_to_240():
    qt = build_tensor_quantizer(qz.Fp8e4m3FNUZWeightPerTensorFloat, scaling="none")(torch.tensor([1000.0]))
    assert qt.value.item() == 240.0


def test_build_rejects_something_that_is_not_a_quantizer_class():
    with pytest.raises(TypeError, match="quantizer class"):
        build_tensor_quantizer(torch.nn.Linear)


# ---- every predefined quantizer -------------------------------------------------------------------------------

EXPECTED = {  # name: (QuantTensor kind, format name); None for biases and format-less bases
    "Int8WeightPerTensorFloat": (Int, "int8_narrow"),
    "Int8WeightPerChannelFloat": (Int, "int8_narrow"),
    "Int8ActPerTensorFloat": (Int, "int8"),
    "Uint8ActPerTensorFloat": (Int, "uint8"),
    "Int8Bias": None,
    "Int16Bias": None,
    "Int32Bias": None,
    "Int8WeightPerTensorFloatMSE": (Int, "int8_narrow"),
    "Int8WeightPerChannelFloatMSE": (Int, "int8_narrow"),
    "Int8ActPerTensorFloatMSE": (Int, "int8"),
    "Uint8ActPerTensorFloatMSE": (Int, "uint8"),
    "Int8WeightPerTensorFixedPoint": (Int, "int8_narrow"),
    "Int8ActPerTensorFixedPoint": (Int, "int8"),
    "Int4WeightPerGroupFloat": (GInt, "int4_narrow"),
    "Uint4WeightPerGroupFloat": (GInt, "uint4"),
    "Int2WeightPerGroupFloat": (GInt, "int2_narrow"),
    "Int8ActPerTokenFloat": (Int, "int8_narrow"),
    "FpOCPWeightPerTensorFloat": None,
    "FpOCPWeightPerChannelFloat": None,
    "FpOCPActPerTensorFloat": None,
    "FpOCPActPerChannelFloat2d": None,
    "FpFNUZWeightPerTensorFloat": None,
    "FpFNUZWeightPerChannelFloat": None,
    "FpFNUZActPerTensorFloat": None,
    "FpFNUZActPerChannelFloat2d": None,
    "Fp8e4m3OCPWeightPerTensorFloat": (Float, "float8_e4m3fn"),
    "Fp8e4m3OCPWeightPerChannelFloat": (Float, "float8_e4m3fn"),
    "Fp8e4m3OCPActPerTensorFloat": (Float, "float8_e4m3fn"),
    "Fp8e4m3OCPActPerChannelFloat2d": (Float, "float8_e4m3fn"),
    "Fp8e5m2OCPWeightPerTensorFloat": (Float, "float8_e5m2"),
    "Fp8e5m2OCPWeightPerChannelFloat": (Float, "float8_e5m2"),
    "Fp8e5m2OCPActPerTensorFloat": (Float, "float8_e5m2"),
    "Fp8e5m2OCPActPerChannelFloat2d": (Float, "float8_e5m2"),
    "Fp8e4m3FNUZWeightPerTensorFloat": (Float, "float8_e4m3fnuz"),
    "Fp8e4m3FNUZWeightPerChannelFloat": (Float, "float8_e4m3fnuz"),
    "Fp8e4m3FNUZActPerTensorFloat": (Float, "float8_e4m3fnuz"),
    "Fp8e4m3FNUZActPerChannelFloat2d": (Float, "float8_e4m3fnuz"),
    "Fp8e5m2FNUZWeightPerTensorFloat": (Float, "float8_e5m2fnuz"),
    "Fp8e5m2FNUZWeightPerChannelFloat": (Float, "float8_e5m2fnuz"),
    "Fp8e5m2FNUZActPerTensorFloat": (Float, "float8_e5m2fnuz"),
    "Fp8e5m2FNUZActPerChannelFloat2d": (Float, "float8_e5m2fnuz"),
    "Fp8e4m3OCPActPerTokenFloat": (Float, "float8_e4m3fn"),
    "Fp8e4m3Weight": (Float, "e4m3(bias=7, none)"),  # Brevitas: no special codes, max 480
    "Fp8e5m2Weight": (Float, "e5m2(bias=15, none)"),  # max 114688
    "Fp8e4m3Act": (Float, "e4m3(bias=7, none)"),
    "Fp8e5m2Act": (Float, "e5m2(bias=15, none)"),
    "Fp8e4m3OCPWeight": (Float, "float8_e4m3fn"),
    "Fp8e5m2OCPWeight": (Float, "float8_e5m2"),
    "Fp8e4m3OCPAct": (Float, "float8_e4m3fn"),
    "Fp8e5m2OCPAct": (Float, "float8_e5m2"),
    "Fp8e4m3FNUZWeight": (Float, "float8_e4m3fnuz"),
    "Fp8e5m2FNUZWeight": (Float, "float8_e5m2fnuz"),
    "Fp8e4m3FNUZAct": (Float, "float8_e4m3fnuz"),
    "Fp8e5m2FNUZAct": (Float, "float8_e5m2fnuz"),
    "MXFloat8e4m3Weight": (GFloat, "float8_e4m3fn"),
    "MXFloat8e4m3Act": (GFloat, "float8_e4m3fn"),
    "MXFloat8e4m3WeightMSE": (GFloat, "float8_e4m3fn"),
    "MXFloat8e5m2Weight": (GFloat, "float8_e5m2"),
    "MXFloat8e5m2Act": (GFloat, "float8_e5m2"),
    "MXFloat6e2m3Weight": (GFloat, "float6_e2m3fn"),
    "MXFloat6e2m3Act": (GFloat, "float6_e2m3fn"),
    "MXFloat6e3m2Weight": (GFloat, "float6_e3m2fn"),
    "MXFloat6e3m2Act": (GFloat, "float6_e3m2fn"),
    "MXFloat4e2m1Weight": (GFloat, "float4_e2m1fn"),
    "MXFloat4e2m1Act": (GFloat, "float4_e2m1fn"),
    "MXInt8Weight": (GInt, "int8_narrow"),
    "MXInt8Act": (GInt, "int8_narrow"),
    "NVFloat4e2m1Weight": (GFloat, "float4_e2m1fn"),
    "NVFloat4e2m1Act": (GFloat, "float4_e2m1fn"),
    "HiFloat8WeightPerTensorFloat": (Float, "hifloat8"),
    "HiFloat8ActPerTensorFloat": (Float, "hifloat8"),
}
FORMAT_LESS_BASES = [name for name, expected in EXPECTED.items() if expected is None and "Bias" not in name]
PREDEFINED = predefined_quantizers()
QUANTIZING = [q for q in PREDEFINED if EXPECTED.get(q.__name__) is not None]


def test_expected_table_covers_exactly_the_predefined_quantizers():
    assert [q.__name__ for q in PREDEFINED] == list(EXPECTED)


def test_predefined_quantizers_are_exported_from_the_package():
    for quantizer in PREDEFINED:
        assert getattr(qz, quantizer.__name__) is quantizer


@pytest.mark.parametrize("quantizer", QUANTIZING, ids=lambda q: q.__name__)
def test_every_predefined_quantizer_quantizes_to_its_kind_and_format(quantizer):
    kind, fmt = EXPECTED[quantizer.__name__]
    torch.manual_seed(0)
    inputs = [torch.randn(48, 256)] if quantizer.role == "weight" else [torch.randn(2, 8, 5, 40)]
    if quantizer.role == "weight":
        inputs.append(torch.randn(8, 40, 3, 3))  # a conv weight
    for x in inputs:
        qt = qz.quantize(x, quantizer)
        assert type(qt) is kind
        assert qt.fmt.name == fmt
        assert qt.value.shape == x.shape and qt.value.dtype == x.dtype
        assert torch.isfinite(qt.value).all()
        assert (qt.value - x).abs().max() < x.abs().max()  # a quantization of x, not noise


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if e is None and "Bias" in n])
def test_bias_quantizers_take_their_scale_from_input_and_weight(name):
    quantizer = getattr(qz, name)
    assert quantizer.role == "bias" and quantizer.requires_input_scale
    assert quantizer.bit_width == int(name[3:5].rstrip("B"))


@pytest.mark.parametrize("name", FORMAT_LESS_BASES)
@pytest.mark.parametrize("mixin, fmt", [(qz.Fp8e4m3Mixin, "e4m3"), (qz.Fp8e5m2Mixin, "e5m2")])
def test_format_less_bases_need_a_format_mixin(name, mixin, fmt):
    base = getattr(qz, name)
    with pytest.raises(QuantizerConfigError, match=rf"^{name}\b.*exponent_bit_width"):
        build_tensor_quantizer(base)
    composed = type(f"{name}{fmt}", (base, mixin), {})
    x = torch.randn(2, 8, 4, 4) if base.role == "act" else torch.randn(8, 32)
    qt = qz.quantize(x, composed)
    assert type(qt) is Float and fmt in qt.fmt.name
    assert ("fnuz" in qt.fmt.name) == ("FNUZ" in name)


DTYPE_QUANTIZERS = [
    qz.Int8WeightPerChannelFloat, qz.Fp8e4m3OCPWeightPerTensorFloat, qz.MXFloat4e2m1Weight,
    qz.NVFloat4e2m1Weight, qz.Int4WeightPerGroupFloat, qz.HiFloat8WeightPerTensorFloat,
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("quantizer", DTYPE_QUANTIZERS, ids=lambda q: q.__name__)
def test_quantize_accepts_half_bfloat16_and_double(quantizer, dtype):
    torch.manual_seed(1)
    x32 = torch.randn(16, 256).to(dtype).to(torch.float32)  # exactly representable in dtype
    qt = qz.quantize(x32.to(dtype), quantizer)
    reference = qz.quantize(x32, quantizer).value
    assert qt.value.dtype == dtype and qt.value.shape == x32.shape
    assert torch.isfinite(qt.value).all()
    if dtype == torch.float64:
        assert torch.allclose(qt.value.to(torch.float32), reference, rtol=1e-6, atol=1e-9)
    else:  # scales are rounded to the input dtype, which may move an element by one level
        error = (qt.value.to(torch.float32) - x32).pow(2).mean()
        assert error <= 1.5 * (reference - x32).pow(2).mean() + 1e-8


def test_quantize_rejects_a_non_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        qz.quantize([1.0, 2.0], qz.Int8WeightPerTensorFloat)


def test_catalog_markdown_lists_every_predefined_quantizer_once():
    rows = [line for line in catalog_markdown().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [q.__name__ for q in PREDEFINED]
    for row in rows:
        expected = EXPECTED[row.split("`")[1]]
        if expected is not None:
            assert f"| {expected[1]} |" in row
