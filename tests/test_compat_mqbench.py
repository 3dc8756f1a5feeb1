"""sophgo-mq / MQBench prepare_by_platform, with the seed document's own example configs."""
import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers.compat.mqbench import disable_all, enable_calibration, enable_quantization, prepare_by_platform, translate
from qlayers.model.spec import spec_to_quantizer
from quantizers import resolve_attributes


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


E4M3_SEED = {
      'quant_dict': {
                      'chip': 'BM1690',
                      'quantmode': 'weight_activation',
                      'strategy': 'CNN',
                     },
      'extra_qconfig_dict': {
                              'w_observer': 'MinMaxObserver',
                              'a_observer': 'EMAMinMaxObserver',
                              "w_fakequantize": 'E4M3FakeQuantize',
                              "a_fakequantize": 'E4M3FakeQuantize',
                              'w_qscheme': {  'bit': 8,
                                              'symmetry': True,
                                              'per_channel': False,
                                              'pot_scale': False },
                              'a_qscheme': {  'bit': 8,
                                              'symmetry': True,
                                              'per_channel': False,
                                              'pot_scale': False }
                            }
      }

E5M2_SEED = {
      'quant_dict': {
                      'chip': 'BM1690',
                      'quantmode': 'weight_activation',
                      'strategy': 'CNN',
                     },
      'extra_qconfig_dict': {
                              'w_observer': 'MinMaxObserver',
                              'a_observer': 'EMAMinMaxObserver',
                              "w_fakequantize": 'E5M2FakeQuantize',
                              "a_fakequantize": 'E5M2FakeQuantize',
                              'w_qscheme': {  'bit': 8,
                                              'symmetry': True,
                                              'per_channel': False,
                                              'pot_scale': False },
                              'a_qscheme': {  'bit': 8,
                                              'symmetry': True,
                                              'per_channel': False,
                                              'pot_scale': False }
                            }
      }


def test_e4m3_seed_example_runs_unchanged_and_calibrates_with_ema():
    model = build_model()
    prepare_custom_config_dict = E4M3_SEED
    model = prepare_by_platform(model, prepare_custom_config_dict)
    assert type(model[0]) is qlayers.QuantLinear
    ref = qlayers.QuantLinear.from_float(build_model()[0], weight_quant=qz.Fp8e4m3OCPWeightPerTensorFloat)
    assert torch.equal(model[0].quant_weight().value, ref.quant_weight().value)
    enable_calibration(model)
    a, b = torch.randn(4, 16), torch.randn(4, 16) * 3
    with torch.no_grad():
        model(a), model(b)
    enable_quantization(model)
    amax_a, amax_b = a.abs().max(), b.abs().max()
    ema = amax_a + 0.1 * (amax_b - amax_a)  # EMAMinMaxObserver, ema_ratio 0.9
    quantizer = model[0].input_quant
    torch.testing.assert_close(quantizer.observer.high, ema)
    x = torch.randn(4, 16)
    expected = qz.get_format("float8_e4m3fn").quantize(x / (ema / 448)) * (ema / 448)
    torch.testing.assert_close(quantizer(x).value, expected, rtol=0, atol=0)


def test_e5m2_seed_example_runs_unchanged():
    model = build_model()
    prepare_custom_config_dict = E5M2_SEED
    model = prepare_by_platform(model, prepare_custom_config_dict)
    weights = spec_to_quantizer(translate(E5M2_SEED)["weights"], "weight")
    assert resolve_attributes(weights) == resolve_attributes(qz.Fp8e5m2OCPWeightPerTensorFloat)
    assert model[2].input_quant.fmt.name == "float8_e5m2"
    assert model(torch.randn(2, 16)).shape == (2, 4)


def test_platform_first_signature_and_chip_defaults():
    model = prepare_by_platform(build_model(), "BM1690", {"quant_dict": {"quantmode": "weight_activation", "strategy": "CNN"}})
    # BM1690: LearnableFakeQuantize, per-channel symmetric int8 weights (full range, MinMax), EMA acts
    weight_quant = model[0].weight_quant
    assert weight_quant.fmt.name == "int8" and weight_quant.granularity.kind == "channel"
    assert weight_quant.range_source == "learned"
    assert model[0].input_quant.range_source == "learned" and model[0].input_quant.learned_range.numel() == 0
    enable_calibration(model)
    model(torch.randn(4, 16))
    enable_quantization(model)
    assert model[0].input_quant.learned_range.numel() == 1
    narrow = translate({"quant_dict": {"chip": "CV183X", "quantmode": "weight_activation", "strategy": "CNN"}})
    assert narrow["weights"]["narrow"] is True


def test_fixed_int8_weights_use_the_mqbench_scale():
    cfg = {"quant_dict": {"chip": "Academic", "quantmode": "weight_only", "strategy": "Transformer"},
           "extra_qconfig_dict": {"w_fakequantize": "FixedFakeQuantize",
                                  "w_qscheme": {"bit": 8, "symmetry": True, "per_channel": True, "pot_scale": False}}}
    float_model = build_model()
    model = prepare_by_platform(float_model, cfg)
    assert model[0].input_quant is None
    w = float_model[0].weight.detach()
    scale = w.abs().amax(1, keepdim=True) / 127.5  # max_val / ((quant_max - quant_min) / 2) on [-128, 127]
    expected = torch.clamp(torch.round(w / scale), -128, 127) * scale
    torch.testing.assert_close(model[0].quant_weight().value, expected, rtol=0, atol=0)


def test_asymmetric_and_power_of_two_schemes():
    cfg = {"quant_dict": {"chip": "Academic", "quantmode": "weight_activation", "strategy": "CNN"},
           "extra_qconfig_dict": {"w_fakequantize": "FixedFakeQuantize", "a_fakequantize": "FixedFakeQuantize",
                                  "w_qscheme": {"bit": 4, "symmetry": True, "per_channel": False, "pot_scale": True},
                                  "a_qscheme": {"bit": 8, "symmetry": False, "per_channel": False, "pot_scale": False}}}
    out = translate(cfg)
    assert out["weights"] == {"format": "int4", "narrow": False, "full_range_divisor": "half_range", "granularity": "tensor", "scale": "po2_round"}
    assert out["inputs"] == {"format": "uint8", "symmetric": False, "granularity": "tensor", "observer": "ema_minmax"}
    model = prepare_by_platform(build_model(), cfg)
    scale = model[0].quant_weight().scale
    assert float(torch.log2(scale)) == round(float(torch.log2(scale)))


def test_disable_all_gives_the_float_model():
    float_model = build_model()
    model = prepare_by_platform(float_model, E4M3_SEED)
    x = torch.randn(2, 16)
    disable_all(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), float_model(x), rtol=0, atol=0)
    enable_quantization(model)
    assert model[0].weight_quant is not None


@pytest.mark.parametrize(
    "cfg, error, pieces",
    [
        ({"quant_dict": {"chip": "BM1691"}}, ValueError, ["quant_dict.chip='BM1691'", "BM1690"]),
        ({"quant_dict": {"chip": "BM1690", "quantmode": "int8"}}, ValueError, ["quant_dict.quantmode='int8'"]),
        ({"quant_dict": {"chip": "BM1690", "quantmode": "weight_only", "strategy": "CNN"}}, ValueError, ["weight_only"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"w_fakequantize": "PACTFakeQuantize"}}, NotImplementedError, ["PACTFakeQuantize", "not yet supported"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"a_observer": "KLDObserver"}}, NotImplementedError, ["KLDObserver"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"a_observer": "MinMaxObservr"}}, ValueError, ["a_observer='MinMaxObservr'", "did you mean"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"w_qscheme": {"bits": 8}}}, ValueError, ["unknown key 'extra_qconfig_dict.w_qscheme.bits'"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"w_qscheme": {"bit": 16}}}, ValueError, ["w_qscheme.bit=16"]),
        ({"quant_dict": {"chip": "BM1690"}, "extra_qconfig_dict": {"module_name": {"fc": {}}}}, NotImplementedError, ["module_name"]),
    ],
)
def test_config_errors(cfg, error, pieces):
    with pytest.raises(error) as info:
        translate(cfg)
    for piece in pieces:
        assert piece in str(info.value), str(info.value)
