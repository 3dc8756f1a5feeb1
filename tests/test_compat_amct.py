"""Huawei AMCT's quantize(model, config), with the seed document's own example config."""
import copy

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers.compat.amct import convert, quantize, translate
from qlayers.model.spec import spec_to_quantizer
from quantizers import resolve_attributes


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def test_seed_example_runs_unchanged():
    # 调用示例 of the AMCT quantize document, verbatim
    ori_model = build_model()
    model = copy.deepcopy(ori_model)
    cfg = {
            'batch_num': 1,
            'quant_cfg': {
                'weights': {
                    'type': 'int8',
                    'symmetric': True,
                    'strategy': 'tensor',
                },
            },
            'algorithm': {'minmax'},
            }
    quantize(model, cfg)
    # the same numbers as qzoo's Int8WeightPerTensorFloat: max|w| / 127 on [-127, 127]
    assert type(model[0]) is qlayers.QuantLinear and model[0].input_quant is None
    for i in (0, 2):
        ref = qlayers.QuantLinear.from_float(ori_model[i], weight_quant=qz.Int8WeightPerTensorFloat)
        assert torch.equal(model[i].quant_weight().value, ref.quant_weight().value)
        w = ori_model[i].weight.detach()
        scale = w.abs().max() / 127
        assert torch.equal(model[i].quant_weight().value, torch.round(w / scale) * scale)
    x = torch.randn(4, 64)
    with torch.no_grad():
        hidden = torch.relu(nn.functional.linear(x, model[0].quant_weight().value, ori_model[0].bias))
        expected = nn.functional.linear(hidden, model[2].quant_weight().value, ori_model[2].bias)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_int8_inputs_calibrate_over_batch_num_batches_then_quantize():
    ori_model = build_model()
    model = copy.deepcopy(ori_model)
    cfg = {'batch_num': 2,
           'quant_cfg': {'weights': {'type': 'int8', 'symmetric': True, 'strategy': 'channel'},
                         'inputs': {'type': 'int8', 'symmetric': True, 'strategy': 'tensor'}},
           'algorithm': {'minmax'}}
    quantize(model, cfg)
    batches = [torch.randn(4, 64), torch.randn(4, 64) * 3]
    with torch.no_grad():
        for x in batches:  # calibration (float activations) ends by itself after batch_num calls
            model(x)
    quantizer = model[0].input_quant
    assert quantizer.range_source == "frozen"
    amax = max(float(x.abs().max()) for x in batches)
    assert float(quantizer.observer.high) == amax  # min/max over the calibration batches
    x = torch.randn(4, 64) * 5
    scale = amax / 127
    expected_input = torch.clamp(torch.round(x / scale), -127, 127) * scale
    assert torch.equal(quantizer(x).value, expected_input)
    # equivalent hand-written qzoo quantizer
    class AmctInt8Act(qz.NarrowIntQuant, qz.ActQuant, qz.PerTensor, qz.FloatScaling):
        bit_width = 8
        observer = "global_minmax"
        range_method = "max"
    assert resolve_attributes(spec_to_quantizer(translate(cfg)[0]["inputs"], "input")) == resolve_attributes(AmctInt8Act)


@pytest.mark.parametrize(
    "weights, reference",
    [
        ({'type': 'int8', 'symmetric': True, 'strategy': 'channel'}, qz.Int8WeightPerChannelFloat),
        ({'type': 'mxfp4_e2m1'}, qz.MXFloat4e2m1Weight),
        ({'type': 'mxfp8_e4m3fn'}, qz.MXFloat8e4m3Weight),
        ({'type': 'float8_e4m3fn', 'strategy': 'tensor'}, qz.Fp8e4m3OCPWeightPerTensorFloat),
        ({'type': 'hifloat8', 'strategy': 'tensor'}, qz.HiFloat8WeightPerTensorFloat),
        ({'type': 'int4', 'symmetric': True, 'strategy': 'group', 'group_size': 128}, qz.Int4WeightPerGroupFloat),
    ],
)
def test_weight_types_match_the_equivalent_qzoo_quantizers(weights, reference):
    spec = translate({'quant_cfg': {'weights': weights}})[0]["weights"]
    assert resolve_attributes(spec_to_quantizer(spec, "weight")) == resolve_attributes(reference)


def test_other_types_and_strategies():
    out, _ = translate({'quant_cfg': {'weights': {'type': 'float4_e2m1', 'strategy': 'group', 'group_size': 32},
                                      'inputs': {'type': 'int8', 'strategy': 'token'}}})
    assert out["weights"] == {"format": "float4_e2m1fn", "granularity": "group", "group_size": 32}
    assert spec_to_quantizer(out["inputs"], "input").granularity == "token"
    out, _ = translate({'quant_cfg': {'weights': {'type': 'int4', 'symmetric': False, 'strategy': 'channel'}}})
    assert spec_to_quantizer(out["weights"], "weight").symmetric is False
    out, _ = translate({'quant_cfg': {'inputs': {'type': 'mxfp8_e4m3fn'}}})
    assert resolve_attributes(spec_to_quantizer(out["inputs"], "input")) == resolve_attributes(qz.MXFloat8e4m3Act)


@pytest.mark.parametrize("algorithm", [{'smoothquant': {'smooth_strength': 0.5}}, {'awq': {'grids_num': 20}}])
def test_amct_smoothquant_and_awq_entries_run_on_the_recorded_batches(algorithm):
    # AMCT's own option names, verbatim; the algorithm runs after batch_num calls (activations
    # calibrated first), and the model then computes with the transformed weights
    model = build_model()
    before = model[0].weight.detach().clone()
    quantize(model, {'batch_num': 1, 'quant_cfg': {'weights': {'type': 'int8', 'strategy': 'channel'},
                                                  'inputs': {'type': 'int8', 'symmetric': True, 'strategy': 'tensor'}},
                     'algorithm': algorithm})
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model(torch.randn(16, 64, generator=g))
        assert torch.isfinite(model(torch.randn(4, 64, generator=g))).all()
    name = next(iter(algorithm))
    changed = not torch.equal(model[2].weight, build_model()[2].weight) or not torch.equal(model[0].weight, before)
    multiplier = any(getattr(m, "input_multiplier", None) is not None for m in model.modules())
    assert changed or multiplier, name


def test_skip_layers_are_substrings():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_fc = nn.Linear(4, 4)
            self.lm_head = nn.Linear(4, 4)

    model = Named()
    quantize(model, {'quant_cfg': {'weights': {'type': 'int8'}}, 'skip_layers': ['head']})
    assert type(model.encoder_fc) is qlayers.QuantLinear and type(model.lm_head) is nn.Linear


def test_convert_ends_calibration_early():
    model = build_model()
    quantize(model, {'batch_num': 100, 'quant_cfg': {'weights': {'type': 'int8'}, 'inputs': {'type': 'int8'}}})
    model(torch.ones(2, 64))
    assert model[0].input_quant.range_source == "observe"
    convert(model)
    assert model[0].input_quant.range_source == "frozen"


@pytest.mark.parametrize(
    "cfg, pieces",
    [
        ({'quant_cfg': {'weights': {'type': 'int3'}}}, ["quant_cfg.weights.type='int3'", "int8"]),
        ({'quant_cfg': {'weights': {'type': 'int8', 'strategy': 'token'}}}, ["quant_cfg.weights.strategy='token'", "channel"]),
        ({'quant_cfg': {'weights': {'type': 'int4', 'strategy': 'group', 'group_size': 48}}}, ["group_size", "multiple of 32"]),
        ({'quant_cfg': {'inputs': {'type': 'mxfp4_e2m1'}}}, ["quant_cfg.inputs.type='mxfp4_e2m1'"]),
        ({'quant_cfg': {'weights': {'type': 'int8', 'symetric': True}}}, ["unknown key 'quant_cfg.weights.symetric'", "symmetric"]),
        ({'batch_num': 0, 'quant_cfg': {}}, ["batch_num must be a positive int"]),
        ({'quant_cfg': {'weights': {'type': 'hifloat8', 'symmetric': False}}}, ["symmetric"]),
        ({'algorithm': {'minmax'}, 'quant_cfg': {}, 'calib': 1}, ["unknown key 'calib'"]),
    ],
)
def test_config_errors_name_the_key(cfg, pieces):
    with pytest.raises((ValueError, TypeError)) as info:
        translate(cfg)
    for piece in pieces:
        assert piece in str(info.value), str(info.value)


def _gptq_cfg(algorithm):
    # weight-only INT4 per group with GPTQ, in AMCT's own keys
    return {'batch_num': 2,
            'quant_cfg': {'weights': {'type': 'int4', 'symmetric': True, 'strategy': 'group', 'group_size': 32}},
            'algorithm': algorithm}


@pytest.mark.parametrize("algorithm", [{'gptq'}, 'gptq', ['minmax', 'gptq'], {'gptq': {}}])
def test_gptq_runs_on_the_batch_num_batches_after_quantize(algorithm):
    ori_model = build_model()
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(64, 64, generator=g) / 8
    batches = [torch.randn(32, 64, generator=g) @ mix for _ in range(2)]
    model = copy.deepcopy(ori_model)
    quantize(model, _gptq_cfg(algorithm))
    rtn = [model[i].quant_weight().value.clone() for i in (0, 2)]
    with torch.no_grad():
        model(batches[0])
        assert not model[0].weight_quant.scales_frozen  # waits for batch_num batches
        model(batches[1])
    assert model[0].weight_quant.scales_frozen and model[2].weight_quant.scales_frozen
    # the same as GPTQ run by hand on the same batches
    by_hand = qlayers.quantize_model(ori_model, {'weights': {'format': 'int4', 'granularity': 'group', 'group_size': 32}})
    qlayers.ptq.gptq(by_hand, batches, progress=False)
    for i in (0, 2):
        assert torch.equal(model[i].weight, by_hand[i].weight)
    x = torch.cat(batches)
    w = ori_model[0].weight.detach()
    error = lambda q: float((x @ (q.detach() - w).T).pow(2).sum())  # noqa: E731
    assert error(model[0].quant_weight().value) < error(rtn[0])


def test_convert_runs_gptq_on_the_batches_seen_so_far():
    model = build_model()
    quantize(model, _gptq_cfg({'gptq'}))
    with torch.no_grad():
        model(torch.randn(16, 64))
    convert(model)
    assert model[0].weight_quant.scales_frozen
    assert torch.equal(model[0].quant_weight().value, model[0].weight)
