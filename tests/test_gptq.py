"""GPTQ: format-generic by construction. For every predefined weight quantizer and every weight
format/scale rule/granularity a config can name, the GPTQ weight is a fixed point of the layer's
quantizer (bit for bit) and packs exactly; on correlated inputs its output error is at most
round-to-nearest's (both measured here in float64); it matches a textbook float64 GPTQ written in
this file; singular Hessians are dampened, never NaN. Hessians are checked against explicit sums."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qlayers
import quantizers as qz
from qlayers import ptq
from qlayers.model import quantize_model, spec_to_quantizer
from qlayers.ptq.gptq import gptq_quantize
from quantizers.zoo.catalog import predefined_quantizers

IN, OUT = 64, 24


def _correlated(n=256, d=IN, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    return torch.randn(n, d, generator=g) @ mix + 0.05 * torch.randn(n, d, generator=g)


def _weight_quantizers():
    names = []
    for cls in predefined_quantizers():
        if "Weight" in cls.__name__ and not cls.__name__.startswith(("FpOCPWeight", "FpFNUZWeight")):
            names.append(pytest.param(cls, id=cls.__name__))
    return names


SPECS = {  # formats, scale rules and granularities beyond the predefined classes
    "int2_g16": {"format": "int2", "granularity": "group", "group_size": 16},
    "int3_g16_asym": {"format": "int3", "symmetric": False, "granularity": "group", "group_size": 16},
    "int4_channel": {"format": "int4", "granularity": "channel"},
    "int4_channel_asym_minval": {"format": "int4", "symmetric": False, "formulation": "minval", "granularity": "channel"},
    "int5_tensor_po2": {"format": "int5", "scale": "po2"},
    "int6_channel_asym": {"format": "int6", "symmetric": False, "granularity": "channel"},
    "int8_g32": {"format": "int8", "granularity": "group", "group_size": 32},
    "fp8_e4m3fnuz_channel": {"format": "float8_e4m3fnuz", "granularity": "channel"},
    "fp6_e2m3_channel": {"format": "float6_e2m3fn", "granularity": "channel"},
    "fp6_e3m2_g16": {"format": "float6_e3m2fn", "granularity": "group", "group_size": 16},
    "fp4_e2m1_channel": {"format": "float4_e2m1fn", "granularity": "channel"},
    "fp4_e1m2_channel": {"format": "float4_e1m2", "granularity": "channel"},
    "hifloat8": {"format": "hifloat8"},
    "mxfp4_floor": {"format": "mxfp4", "scale": "e8m0_floor"},
    "mxfp4_ceil": {"format": "mxfp4", "scale": "e8m0_ceil"},
    "mxfp4_even": {"format": "mxfp4", "scale": "e8m0_even"},
    "mxfp4_rceil": {"format": "mxfp4", "scale": "e8m0_rceil"},
    "mxfp6_e3m2": {"format": "mxfp6_e3m2"},
    "mxint8": {"format": "mxint8"},
    "nvfp4": {"format": "nvfp4"},
    "fp8_tiles": (qz.Fp8e4m3OCPWeightPerTensorFloat, {"weight_granularity": "tile", "weight_tile_shape": (8, 16)}),
    "int4_tiles": (qz.Int8WeightPerTensorFloat, {"weight_bit_width": 4, "weight_granularity": "tile", "weight_tile_shape": (16, 8)}),
}


def _layer(weight_quant, seed=0, **overrides):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qlayers.QuantLinear(IN, OUT, weight_quant=weight_quant, **overrides)


def _spec_layer(spec):
    if isinstance(spec, tuple):  # (quantizer class, layer overrides): tiles have no config spelling
        return _layer(spec[0], **spec[1])
    return _layer(spec_to_quantizer(spec, role="weight"))


def _check_fixed_point_and_packing(layer, act_order=False, packs=True):
    x = _correlated()
    h = x.double().T @ x.double()
    q, scales, _ = gptq_quantize(layer.weight.detach(), h, layer.weight_quant, act_order=act_order, block_size=16)
    with torch.no_grad():
        layer.weight.copy_(q)
    layer.weight_quant.freeze_scales(scales=scales)
    assert torch.isfinite(q).all()
    again = layer.quant_weight()
    assert torch.equal(again.value, q), "GPTQ weight is not a fixed point of the layer's quantizer"
    if packs:
        assert torch.equal(again.pack().unpack().value, q), "GPTQ weight does not pack exactly"
    layer.eval()
    assert torch.equal(layer.quant_weight().value, q)  # the eval cache path too


@pytest.mark.parametrize("quant", _weight_quantizers())
def test_gptq_weight_is_a_fixed_point_of_every_predefined_weight_quantizer(quant):
    _check_fixed_point_and_packing(_layer(quant))


@pytest.mark.parametrize("name", list(SPECS))
def test_gptq_weight_is_a_fixed_point_for_every_format_and_scale_rule(name):
    # MINVAL values ``q * s + offset`` do not pack exactly even after round-to-nearest (packing
    # stores the affine zero point); the fixed point holds all the same
    _check_fixed_point_and_packing(_spec_layer(SPECS[name]), act_order=name.endswith(("g16", "nvfp4", "tiles")),
                                   packs="minval" not in name)


def _output_error(x, w, q):
    return float((x.double() @ (q.double() - w.double()).T).pow(2).sum().detach())


@pytest.mark.parametrize("name", ["int4_channel", "int3_g16_asym", "mxfp4_floor", "nvfp4", "fp4_e2m1_channel", "fp8_tiles"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_at_most_round_to_nearest(name, act_order):
    layer = _spec_layer(SPECS[name])
    w = layer.weight.detach().clone()
    rtn = layer.quant_weight().value
    x = _correlated()
    q, _, _ = gptq_quantize(w, x.double().T @ x.double(), layer.weight_quant, act_order=act_order)
    assert _output_error(x, w, q) < 0.9 * _output_error(x, w, rtn)


def _textbook_gptq_int4_channel(w, h, percdamp=0.01):
    """GPTQ (Frantar et al., Algorithm 1, no lazy blocks) in float64 with symmetric narrow int4
    per output channel, scales from the original weight."""
    w = w.double().clone()
    h = h.double() + percdamp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    scale = w.abs().amax(1) / 7
    q = torch.zeros_like(w)
    for j in range(w.shape[1]):
        q[:, j] = torch.clamp(torch.round(w[:, j] / scale), -7, 7) * scale
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j:] -= err[:, None] * u[j, j:][None, :]
    return q


def test_gptq_matches_a_textbook_float64_gptq():
    layer = _spec_layer(SPECS["int4_channel"])
    x = _correlated()
    h = x.double().T @ x.double()
    q, _, _ = gptq_quantize(layer.weight.detach(), h, layer.weight_quant, act_order=False, block_size=16)
    expected = _textbook_gptq_int4_channel(layer.weight.detach(), h)
    differ = (q.double() - expected).abs() > 1e-6
    assert differ.float().mean() < 0.01  # float32 vs float64: at most a rare tie flips
    w = layer.weight.detach()
    assert abs(_output_error(x, w, q) / _output_error(x, w, expected) - 1) < 0.01


def test_singular_hessians_are_dampened_never_nan():
    layer = _spec_layer(SPECS["int4_channel"])
    x = _correlated()
    x[:, :10] = 0  # dead inputs
    x[:, 10:20] = x[:, 20:30]  # duplicated inputs: rank deficient
    for h, percdamp in ((x.double().T @ x.double(), 0.0), (torch.zeros(IN, IN, dtype=torch.float64), 0.01)):
        q, _, damp = gptq_quantize(layer.weight.detach(), h, layer.weight_quant, percdamp=percdamp)
        assert torch.isfinite(q).all() and damp >= percdamp
    rtn = layer.quant_weight().value
    q, _, _ = gptq_quantize(layer.weight.detach(), torch.zeros(IN, IN, dtype=torch.float64), layer.weight_quant)
    assert torch.equal(q, rtn)  # nothing to weigh errors with: round to nearest


def test_conv_hessian_is_the_sum_over_receptive_fields():
    torch.manual_seed(5)
    conv = qlayers.QuantConv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                               weight_quant=qz.Int8WeightPerChannelFloat)
    x = torch.randn(2, 3, 5, 7)
    h, rows = ptq.hessian(conv, [x])
    padded = F.pad(x, (0, 0, 1, 1)).double()
    expected, count = torch.zeros(18, 18, dtype=torch.float64), 0
    out_h, out_w = conv(x).shape[-2:]
    for n in range(2):
        for i in range(out_h):
            for j in range(out_w):
                field = padded[n, :, i:i + 3:2, 2 * j:2 * j + 3].reshape(-1)  # (in, kh, kw) like weight.flatten(1)
                expected += torch.outer(field, field)
                count += 1
    assert rows == count and torch.allclose(h, expected, rtol=1e-12, atol=1e-12)
    conv1 = qlayers.QuantConv1d(3, 4, 3, padding="same", padding_mode="reflect", weight_quant=qz.Int8WeightPerChannelFloat)
    y = torch.randn(1, 3, 6)
    h1, rows1 = ptq.hessian(conv1, [y])
    p = F.pad(y, (1, 1), mode="reflect")[0].double()
    expected1 = sum(torch.outer(p[:, t:t + 3].reshape(-1), p[:, t:t + 3].reshape(-1)) for t in range(6))
    assert rows1 == 6 and torch.allclose(h1, expected1, rtol=1e-12, atol=1e-12)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, tokens):
        h = torch.relu(self.conv(self.emb(tokens).transpose(1, 2)))
        return self.fc(h.transpose(1, 2))


def _convnet():
    torch.manual_seed(6)
    return quantize_model(ConvNet(), {"weights": {"format": "int4", "granularity": "channel"}, "targets": ["Embedding", "Conv1d", "Linear"]})


def _tokens():
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 10, (4, 12), generator=g) for _ in range(4)]


def test_gptq_on_a_model_reduces_each_layer_error_and_skips_the_embedding():
    model = _convnet()
    report = ptq.apply(model, _tokens(), ["gptq"], progress=False)
    assert [r.name for r in report] == ["conv", "fc"]
    assert report.skipped == (("gptq", "emb", "an embedding looks rows up; it has no input activations to weigh the rounding error with"),)
    assert all(r.error_after < r.error_before for r in report)
    for layer in (model.conv, model.fc):
        assert layer.weight_quant.scales_frozen and torch.equal(layer.quant_weight().value, layer.weight)


def test_gptq_named_on_an_embedding_or_with_bad_options_raises_before_any_work():
    model = _convnet()
    weight = model.fc.weight.detach().clone()
    with pytest.raises(ValueError, match="gptq does not apply to layer 'emb' \\(QuantEmbedding\\): an embedding looks rows up"):
        ptq.apply(model, _tokens(), ["gptq", {"gptq": {"layers": ["emb"]}}], progress=False)
    with pytest.raises(ValueError, match="percdamp must be a number >= 0"):
        ptq.apply(model, _tokens(), {"gptq": {"percdamp": -1}}, progress=False)
    with pytest.raises(TypeError, match="act_order must be True or False"):
        ptq.gptq(model, _tokens(), act_order="yes")
    assert torch.equal(model.fc.weight, weight) and not model.fc.weight_quant.scales_frozen


def test_gptq_warns_and_reports_layers_with_fewer_calibration_rows_than_input_columns():
    torch.manual_seed(0)
    config = {"weights": {"format": "int4", "granularity": "channel"}}
    few = quantize_model(nn.Sequential(nn.Linear(IN, OUT)), config)
    with pytest.warns(UserWarning, match=r"gptq: 1 layer\(s\) saw fewer calibration rows than input columns: 0 \(16 rows, 64 columns\)"):
        report = ptq.gptq(few, [_correlated(16)], progress=False)
    assert "only 16 calibration rows for 64 input columns" in report.rows[0].note
    enough = quantize_model(nn.Sequential(nn.Linear(IN, OUT)), config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = ptq.gptq(enough, [_correlated(256)], progress=False)
    assert "calibration rows" not in (report.rows[0].note)
