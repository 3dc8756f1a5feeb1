"""qlayers.freeze (layers keep only packed weights) and torch.export of quantized models: outputs
equal the fake-quant model bit for bit (the oracle is the unfrozen model's own eager forward, whose
numerics the format tests check against ml_dtypes and float64 formulas), the float weights are gone
and the resident bytes drop to the packed sizes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers.export import PackedWeight
from quantizers.compile import wait_for_compiles

CASES = {
    "mxfp4": dict(weight_quant=qz.MXFloat4e2m1Weight, input_quant=qz.Int8ActPerTokenFloat),
    "nvfp4": dict(weight_quant=qz.NVFloat4e2m1Weight),
    "int4_group": dict(weight_quant=qz.Int4WeightPerGroupFloat, weight_group_size=32, input_quant=qz.Int8ActPerTensorFloat),
    "uint4_group": dict(weight_quant=qz.Uint4WeightPerGroupFloat, weight_group_size=32),
    "fp8_channel_int32_bias": dict(weight_quant=qz.Fp8e4m3OCPWeightPerChannelFloat),
    "int8_int32_bias": dict(weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat, bias_quant=qz.Int32Bias),
    "hifloat8": dict(weight_quant=qz.HiFloat8WeightPerTensorFloat),
    "mxfp6": dict(weight_quant=qz.MXFloat6e3m2Weight),
}


class Net(nn.Module):
    def __init__(self, dtype=torch.float32, **quant):
        super().__init__()
        conv_quant = {k: v for k, v in quant.items() if k != "bias_quant"}
        self.emb = qlayers.QuantEmbedding(50, 64, weight_quant=quant["weight_quant"], dtype=dtype,
                                          **{k: v for k, v in quant.items() if k.startswith("weight_") and k != "weight_quant"})
        self.conv = qlayers.QuantConv1d(64, 64, 1, dtype=dtype, **conv_quant)
        self.fc = qlayers.QuantLinear(64, 16, dtype=dtype, **quant)

    def forward(self, tokens):
        x = self.emb(tokens)
        x = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.fc(x)


def calibrated(dtype=torch.float32, **quant) -> nn.Module:
    torch.manual_seed(0)
    net = Net(dtype, **quant)
    with qlayers.calibration_mode(net):
        net(torch.randint(0, 50, (4, 7)))
    return net.eval()


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                                              b.view(torch.int16 if b.element_size() == 2 else torch.int32))


@pytest.mark.parametrize("case, dtype", [(c, torch.float32) for c in CASES] + [
    (c, torch.bfloat16) for c in ("mxfp4", "nvfp4", "int8_int32_bias")])
def test_frozen_model_equals_the_fake_quant_model_bit_for_bit(case, dtype):
    net = calibrated(dtype, **CASES[case])
    tokens = torch.randint(0, 50, (3, 9))
    expected = net(tokens)
    weights = {name: m.quant_weight() for name, m in net.named_modules() if isinstance(m, qlayers.QuantWeightLayer)}
    assert qlayers.freeze(net) is net
    assert same_bits(net(tokens), expected)
    for name, m in net.named_modules():
        if isinstance(m, qlayers.QuantWeightLayer):
            assert "weight" not in dict(m.named_parameters(recurse=False)) and isinstance(m.packed_weight, PackedWeight)
            expected_value = weights[name].value.detach()
            if isinstance(weights[name].fmt, qz.formats.IntFormat):
                expected_value = expected_value + 0.0  # integer codes have no -0: q = -0.0 packs as 0
            assert same_bits(m.quant_weight().value, expected_value)
            assert torch.equal(m.quant_weight().scale_, weights[name].scale_)


@pytest.mark.parametrize("quant, ratio", [(qz.MXFloat4e2m1Weight, 4.25 / 32), (qz.NVFloat4e2m1Weight, 4.5 / 32),
                                          (qz.Int4WeightPerGroupFloat, 4.25 / 32), (qz.Int8WeightPerChannelFloat, 8 / 32)])
def test_resident_bytes_drop_to_the_packed_size(quant, ratio):
    layer = qlayers.QuantLinear(512, 256, bias=False, weight_quant=quant).eval()
    before = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    qlayers.freeze(layer)
    after = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert before == 512 * 256 * 4 and after <= ratio * before + 1100  # + per-channel float32 scales


def test_freeze_refuses_an_embedding_with_max_norm_before_changing_anything():
    net = nn.Sequential(qlayers.QuantLinear(4, 4), qlayers.QuantEmbedding(5, 4, max_norm=1.0))
    with pytest.raises(ValueError, match=r"layer '1'.*max_norm"):
        qlayers.freeze(net)
    assert "weight" in dict(net[0].named_parameters())


@pytest.mark.parametrize("case", ["nvfp4", "int8_int32_bias", pytest.param("mxfp4", marks=pytest.mark.slow),
                                  pytest.param("hifloat8", marks=pytest.mark.slow)])
def test_torch_export_program_equals_eager_fake_quant_and_frozen(case):
    net = calibrated(**CASES[case])
    tokens = torch.randint(0, 50, (3, 9))
    wait_for_compiles()  # torch.export and a background torch.compile must not trace at the same time
    program = torch.export.export(net, (tokens,))
    other = torch.randint(0, 50, (3, 9))
    assert same_bits(program.module()(tokens), net(tokens)) and same_bits(program.module()(other), net(other))
    qlayers.freeze(net)
    program = torch.export.export(net, (tokens,))
    assert same_bits(program.module()(other), net(other))
    constants = list(program.state_dict.values()) + list(program.constants.values())
    assert not any(t.dtype == torch.float32 and t.numel() >= 1024 for t in constants)  # no float weights


def test_dtype_casts_leave_the_packed_bits_alone():
    net = calibrated(**CASES["nvfp4"])
    qlayers.freeze(net)
    packed = net.fc.packed_weight
    before = {name: (b.dtype, b.clone()) for name, b in packed.named_buffers()}
    net.half()
    for name, b in packed.named_buffers():
        assert b.dtype == before[name][0] and torch.equal(b.view(torch.uint8) if b.element_size() == 1 else b, before[name][1].view(torch.uint8) if b.element_size() == 1 else before[name][1])


def test_summary_of_a_frozen_model_equals_the_fake_quant_models():
    net = calibrated(**CASES["int4_group"])
    before = qlayers.summary(net, verbose=False)
    after = qlayers.summary(qlayers.freeze(net), verbose=False)
    assert after.layers == before.layers
    assert (after.total_float_bytes, after.total_packed_bytes) == (before.total_float_bytes, before.total_packed_bytes)
