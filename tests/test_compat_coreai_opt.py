"""coreai_opt QuantizationSpec dicts: the spec's own examples and its formula tables, by hand."""
import pytest
import torch
from torch import nn

import quantizers as qz
from qlayers import QuantLinear
from qlayers.compat.coreai_opt import spec_to_quantizer, translate
from qlayers.model import calibrate, quantize_model
from quantizers import resolve_attributes

X = torch.tensor([[-2.0, -0.7, 0.1, 0.33, 1.0, 1.5]])


def fq(spec, x=X, role="weight"):
    return qz.quantize(x, spec_to_quantizer(spec, role)).value


def test_seed_examples_resolve():
    # QuantizationSpec(): int8, symmetric, per tensor
    assert resolve_attributes(spec_to_quantizer({})) == resolve_attributes(spec_to_quantizer({"dtype": "int8"}))
    spec = dict(dtype=torch.int8, qscheme="symmetric", granularity={"type": "per_channel", "axis": 1},
                fake_quantize_cls="default", qparam_calculator_cls="default", range_calculator_cls="minmax")
    cls = spec_to_quantizer(spec, "weight")
    assert (cls.granularity, cls.channel_axis, cls.bit_width, cls.narrow_range) == ("channel", 1, 8, False)
    spec = dict(dtype="int8", qscheme="symmetric", granularity={"type": "per_tensor"}, fake_quantize_cls="default",
                qparam_calculator_cls="moving_average", range_calculator_cls="minmax", float_range=[-1.0, 1.0])
    cls = spec_to_quantizer(spec, "input")
    assert (cls.observer, cls.momentum, cls.float_range) == ("ema_minmax", 0.01, (-1.0, 1.0))
    # default_weight_quantization_spec / default_activation_quantization_spec
    weight = spec_to_quantizer(dict(dtype=torch.int8, qscheme="symmetric", granularity={"type": "per_channel", "axis": 0},
                                    qparam_calculator_cls="static", range_calculator_cls="minmax"), "weight")
    assert (weight.observer, weight.granularity, weight.channel_axis) == (None, "channel", 0)
    act = spec_to_quantizer(dict(dtype=torch.int8, qscheme="symmetric", granularity={"type": "per_tensor"},
                                 qparam_calculator_cls="moving_average", range_calculator_cls="minmax"), "input")
    assert act.observer == "ema_minmax" and act.range_method == "max"


def test_zp_table_int8_and_uint8_by_hand():
    amax, low, high = 2.0, -2.0, 1.5
    s = amax / 127.5
    torch.testing.assert_close(fq({"dtype": "int8", "qscheme": "symmetric"}), torch.clamp(torch.round(X / s), -128, 127) * s)
    s = amax / 127
    torch.testing.assert_close(fq({"dtype": "int8", "qscheme": "symmetric_with_clipping"}), torch.clamp(torch.round(X / s), -127, 127) * s)
    s = (high - low) / 255
    zp = max(-128, min(127, -128 - round(low / s)))
    torch.testing.assert_close(fq({"dtype": "int8", "qscheme": "asymmetric"}), (torch.clamp(torch.round(X / s) + zp, -128, 127) - zp) * s)
    s = amax / 127.5  # UINT8 symmetric: zero point 128
    torch.testing.assert_close(fq({"dtype": "uint8", "qscheme": "symmetric"}), (torch.clamp(torch.round(X / s) + 128, 0, 255) - 128) * s)
    torch.testing.assert_close(fq({"dtype": "uint8", "qscheme": "symmetric_with_clipping"}), (torch.clamp(torch.round(X / s) + 128, 0, 255) - 128) * s)
    s = (high - low) / 255
    zp = max(0, min(255, -round(low / s)))
    torch.testing.assert_close(fq({"dtype": "uint8", "qscheme": "asymmetric"}), (torch.clamp(torch.round(X / s) + zp, 0, 255) - zp) * s)
    s = amax / 7.5
    torch.testing.assert_close(fq({"dtype": torch.int4}), torch.clamp(torch.round(X / s), -8, 7) * s)


def test_minval_table_by_hand():
    low, high = -2.0, 1.5
    for dtype, qmin, qmax in (("int8", -128, 127), ("uint8", 0, 255)):
        s = (high - low) / 255
        q = torch.clamp(torch.round((X - low) / s) + qmin, qmin, qmax)
        expected = (q - qmin) * s + low
        torch.testing.assert_close(fq({"dtype": dtype, "qscheme": "asymmetric", "qformulation": "minval"}), expected)


def test_float_scales_by_hand():
    e4m3 = qz.get_format("float8_e4m3fn")
    s = 2.0 / 448
    torch.testing.assert_close(fq({"dtype": "float8_e4m3fn"}), e4m3.quantize(X / s) * s)
    s = 2.0 ** (1 - 8)  # floor(log2 2.0) - 8
    torch.testing.assert_close(fq({"dtype": torch.float8_e4m3fn, "scale_dtype": "float8_e8m0fnu"}), e4m3.quantize(X / s) * s)
    fp4 = qz.get_format("float4_e2m1fn")
    s = 2.0 ** (1 - 2)  # FP4 defaults to e8m0, target_max_pow2 = 2
    torch.testing.assert_close(fq({"dtype": "float4_e2m1fn_x2"}), fp4.quantize(X / s) * s)


def test_per_block_granularity():
    cls = spec_to_quantizer({"dtype": "int4", "granularity": {"type": "per_block", "axis": 1, "block_size": 32}})
    assert (cls.granularity, cls.group_size, cls.group_dim) == ("group", 32, 1)
    same = spec_to_quantizer({"dtype": "int4", "granularity": {"type": "per_block", "axis": None, "block_size": (1, 32)}})
    assert (same.group_size, same.group_dim) == (32, 1)
    w = torch.randn(4, 64)
    layer = QuantLinear(64, 4, weight_quant=cls)
    layer.weight.data.copy_(w)
    blocks = w.reshape(4, 2, 32)
    s = blocks.abs().amax(-1, keepdim=True) / 7.5
    torch.testing.assert_close(layer.quant_weight().value, (torch.clamp(torch.round(blocks / s), -8, 7) * s).reshape(4, 64))


def test_float_range_fixes_the_range_of_activations():
    model = quantize_model(nn.Sequential(nn.Linear(4, 4)), {"inputs": {"dtype": "int8", "qparam_calculator_cls": "static", "float_range": [-1.0, 1.0]}})
    calibrate(model, [torch.randn(8, 4) * 10], progress=False)
    quantizer = model[0].input_quant
    assert float(quantizer.observer.high) == 1.0
    x = torch.tensor([[-3.0, -0.5, 0.25, 0.9]])
    s = 1.0 / 127.5
    torch.testing.assert_close(quantizer(x).value, torch.clamp(torch.round(x / s), -128, 127) * s)
    half = quantize_model(nn.Sequential(nn.Linear(4, 4)), {"inputs": {"dtype": "int8", "qparam_calculator_cls": "static", "float_range": [None, 6.0]}})
    calibrate(half, [torch.tensor([[-8.0, 1.0, 2.0, 3.0]])], progress=False)
    assert float(half[0].input_quant.observer.high) == 8.0  # max(|min| from data, fixed max 6)


def test_coreai_dict_as_a_config_section_and_pydantic_like_objects():
    class Spec:  # stands in for a coreai_opt QuantizationSpec (pydantic): model_dump() with computed fields
        def model_dump(self):
            return {"dtype": torch.int8, "qscheme": "symmetric", "granularity": {"type": "per_channel", "axis": 0},
                    "fake_quantize_cls": "default", "qparam_calculator_cls": "static", "range_calculator_cls": "minmax",
                    "float_range": [None, None], "scale_dtype": None, "n_bits": 8, "quant_min": -128, "quant_max": 127}

    model = quantize_model(nn.Sequential(nn.Linear(4, 4)), {"weights": Spec()})
    assert model[0].weight_quant.granularity.kind == "channel" and model[0].weight_quant.fmt.name == "int8"


@pytest.mark.parametrize(
    "spec, role, error, pieces",
    [
        ({"dtype": "int16"}, "weight", ValueError, ["spec.dtype='int16'", "Unsupported dtype", "float8_e4m3fn"]),
        ({"dtype": "float8_e4m3fn", "qscheme": "asymmetric"}, "weight", ValueError, ["requires the symmetric scheme"]),
        ({"dtype": "float8_e4m3fn", "qformulation": "minval"}, "weight", ValueError, ["zero-point formulation"]),
        ({"dtype": "int8", "scale_dtype": "float8_e8m0fnu"}, "weight", ValueError, ["must be None for integer dtypes"]),
        ({"dtype": "int8", "qformulation": "minval"}, "weight", NotImplementedError, ["not yet supported"]),
        ({"dtype": "int8", "granularity": {"type": "per_block", "block_size": (4, 8)}}, "weight", NotImplementedError, ["several axes"]),
        ({"dtype": "int8", "granularity": {"type": "per_row"}}, "weight", ValueError, ["spec.granularity.type='per_row'", "per_block"]),
        ({"dtype": "int8", "qparam_calculator_cls": "moving_average"}, "weight", NotImplementedError, ["for weights"]),
        ({"dtype": "int8", "qparam_calculator_cls": "kl"}, "input", ValueError, ["qparam_calculator_cls='kl'"]),
        ({"dtype": "int8", "float_range": [1.0, 2.0]}, "input", ValueError, ["spec.float_range=(1.0, 2.0)", "min <= 0 <= max"]),
        ({"dtype": "int8", "axis": 0}, "weight", ValueError, ["unknown key 'spec.axis'"]),
    ],
)
def test_spec_errors(spec, role, error, pieces):
    with pytest.raises(error) as info:
        spec_to_quantizer(spec, role)
    for piece in pieces:
        assert piece in str(info.value), str(info.value)


def test_translate_is_a_declarative_spec():
    assert translate({"dtype": "uint4", "qscheme": "asymmetric", "granularity": {"type": "per_channel", "axis": 0}}) == {
        "format": "uint4", "symmetric": False, "granularity": "channel", "channel_axis": 0,
    }
