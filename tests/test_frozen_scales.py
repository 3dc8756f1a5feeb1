"""Frozen weight scales: a quantizer keeps the scales a tensor gets now (scale, zero point, NVFP4
tensor scale, MX shared exponents) in buffers, uses them until unfrozen, and saves/loads them in
state_dict. Oracles: scales and quantization written out by hand in float64/float32."""
import pytest
import torch

import qlayers
import quantizers as qz
from quantizers.scaling.scalers import Scales


def _int8_channel(w, amax):
    scale = amax / 127
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


def test_frozen_scales_stay_while_the_weight_changes_and_unfreeze_restores_the_own_statistic():
    torch.manual_seed(0)
    layer = qlayers.QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat)
    w0 = layer.weight.detach().clone()
    amax0 = w0.abs().amax(1, keepdim=True)
    frozen = layer.weight_quant.freeze_scales(layer.weight)
    assert torch.equal(frozen.scale, amax0 / 127) and layer.weight_quant.scales_frozen
    with torch.no_grad():
        layer.weight.mul_(1.5)
    expected = _int8_channel(layer.weight.detach(), amax0)
    for mode in (True, False):
        layer.train(mode)
        assert torch.equal(layer.quant_weight().value, expected)
    assert "scales frozen" in repr(layer.weight_quant)
    layer.weight_quant.unfreeze_scales()
    assert not layer.weight_quant.scales_frozen and layer.weight_quant.frozen_scales is None
    assert torch.equal(layer.quant_weight().value, _int8_channel(layer.weight.detach(), layer.weight.detach().abs().amax(1, keepdim=True)))


@pytest.mark.parametrize("quant, parts", [
    (qz.Int8WeightPerChannelFloat, {"scale"}),
    (qz.Uint4WeightPerGroupFloat, {"scale", "zero_point"}),
    (qz.MXFloat4e2m1Weight, {"scale"}),
    (qz.NVFloat4e2m1Weight, {"scale", "outer_scale"}),
])
def test_frozen_scales_are_saved_in_state_dict_and_freeze_the_layer_they_load_into(quant, parts):
    torch.manual_seed(1)
    layer = qlayers.QuantLinear(64, 8, weight_quant=quant).eval()
    layer.weight_quant.freeze_scales(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(0.7)  # the own statistic now differs from the frozen scales
    state = layer.state_dict()
    assert {k[len("weight_quant.frozen_"):] for k in state if k.startswith("weight_quant.frozen_")} == parts
    fresh = qlayers.QuantLinear(64, 8, weight_quant=quant).eval()
    assert not fresh.weight_quant.scales_frozen
    fresh.load_state_dict(state)
    assert fresh.weight_quant.scales_frozen
    assert torch.equal(fresh.quant_weight().value, layer.quant_weight().value)
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), layer(x))
    unfrozen = qlayers.QuantLinear(64, 8, weight_quant=quant)
    layer.weight_quant.unfreeze_scales()
    assert not any(k.startswith("weight_quant.frozen_") for k in layer.state_dict())
    unfrozen.load_state_dict(layer.state_dict())
    assert not unfrozen.weight_quant.scales_frozen


def test_mx_frozen_shared_exponents_are_powers_of_two_per_block_of_32():
    torch.manual_seed(2)
    w = torch.randn(4, 64)
    q = qlayers.QuantLinear(64, 4, weight_quant=qz.MXFloat4e2m1Weight).weight_quant
    scale = q.freeze_scales(w).scale
    amax = w.reshape(4, 2, 32).abs().amax(-1, keepdim=True).double()
    expected = torch.exp2(torch.floor(torch.log2(amax)) - 2)  # OCP MX: 2^(floor(log2 amax) - emax(E2M1)=2)
    assert torch.equal(scale.double(), expected)


def test_nvfp4_block_scales_for_a_fixed_tensor_scale_follow_the_two_level_formula():
    torch.manual_seed(3)
    w = torch.randn(4, 32)
    q = qlayers.QuantLinear(32, 4, weight_quant=qz.NVFloat4e2m1Weight).weight_quant
    outer = torch.tensor(0.001, dtype=torch.float32)
    scales = q.compute_scales(w, outer_scale=outer)
    amax = w.reshape(4, 2, 16).abs().amax(-1, keepdim=True)
    expected = (amax / 6 / outer).clamp(2 ** -9, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(scales.scale, expected) and torch.equal(scales.outer_scale, outer)
    with pytest.raises(ValueError, match="has no per-tensor outer scale"):
        qlayers.QuantLinear(32, 4, weight_quant=qz.Int8WeightPerChannelFloat).weight_quant.compute_scales(w, outer_scale=outer)


def test_element_scales_spread_group_and_tile_scales_over_their_elements():
    torch.manual_seed(4)
    w = torch.randn(6, 40)
    group = qlayers.QuantLinear(40, 6, weight_quant=qz.Int4WeightPerGroupFloat, weight_group_size=16).weight_quant
    scales = group.compute_scales(w)
    spread = group.element_scales(scales, w.shape)
    assert spread.scale.shape == w.shape
    for j in range(40):
        assert torch.equal(spread.scale[:, j], scales.scale[:, j // 16, 0])
    tile = qlayers.QuantLinear(40, 6, weight_quant=qz.Int8WeightPerTensorFloat, weight_granularity="tile",
                               weight_tile_shape=(4, 16)).weight_quant
    spread = tile.element_scales(tile.compute_scales(w), w.shape).scale
    assert spread[5, 39] == w[4:, 32:].abs().max() / 127 and spread[0, 0] == w[:4, :16].abs().max() / 127
    assert torch.equal(tile.quantize_elements(w, tile.element_scales(tile.compute_scales(w), w.shape)), tile(w).value)


def test_freezing_needs_exactly_one_source_and_scales_that_fit():
    q = qlayers.QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat).weight_quant
    with pytest.raises(TypeError, match="exactly one"):
        q.freeze_scales()
    with pytest.raises(TypeError, match="must be a quantizers.scaling.scalers.Scales"):
        q.freeze_scales(scales=torch.ones(8, 1))
    q.freeze_scales(scales=Scales(torch.ones(8, 1)))
    with pytest.raises(ValueError, match=r"frozen scales of shape \(8, 1\) do not fit a tensor of shape \(4, 16\)"):
        q(torch.randn(4, 16))
