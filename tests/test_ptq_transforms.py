"""SmoothQuant, AWQ, bias correction, cross-layer equalization and OFMR (qlayers.ptq), and the
layers' input multiplier.

Oracles: float64 formulas written here (the SmoothQuant scale, the bias-correction mean, BatchNorm
folding), the float model itself (every function-preserving transform keeps its outputs within
1e-5 relative), and plain rounding (each algorithm lowers the quantized error on a case built to
need it: outlier input channels for SmoothQuant/AWQ, spread BatchNorm scales for W4A8 CLE)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qlayers
from qlayers import ptq
from qlayers.compat import amct
from qlayers.ptq.equalize import fold_batchnorms

W8A8 = {"weights": {"format": "int8", "granularity": "channel"}, "inputs": {"format": "int8"}}
W4 = {"weights": {"format": "int4", "granularity": "group", "group_size": 32}}
W4A8 = {"weights": {"format": "int4"}, "inputs": {"format": "int8"}}


class Block(nn.Module):
    """LayerNorm -> q, k (shared input) -> add -> fc1 -> ReLU -> fc2; ``residual`` makes the
    LayerNorm output feed the result too (post-LN style: folding into it would change the model)."""

    def __init__(self, width=64, residual=False):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.q, self.k = nn.Linear(width, width), nn.Linear(width, width)
        self.fc1, self.act, self.fc2 = nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)
        self.residual = residual

    def forward(self, x):
        h = self.ln(x)
        y = self.fc2(self.act(self.fc1(self.q(h) + self.k(h))))
        return y + h if self.residual else y


def outlier_block(residual=False, width=64):
    """A block whose LayerNorm output has four outlier channels (x30), as in LLM activations."""
    torch.manual_seed(0)
    model = Block(width, residual).eval()
    with torch.no_grad():
        model.ln.weight[:4] = 30.0
    return model


def batches(n=4, shape=(8, 10, 64), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def rel_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def quantized_error(model, reference_model, data, x):
    qlayers.calibrate(model, data, progress=False)
    with torch.no_grad():
        ref = reference_model(x)
        return float((model(x) - ref).pow(2).sum() / ref.pow(2).sum())


def float_outputs(model, x):
    with torch.no_grad(), qlayers.quantization_disabled(model):
        return model(x)


# ---- the input multiplier ----------------------------------------------------------------------

def test_input_multiplier_scales_each_input_channel_and_is_saved_in_state_dict():
    torch.manual_seed(0)
    layer = qlayers.QuantLinear(16, 8, weight_quant=None)
    m = torch.rand(16) + 0.5
    layer.set_input_multiplier(m)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(layer(x), F.linear(x * m, layer.weight, layer.bias), rtol=1e-6, atol=1e-6)
    conv = qlayers.QuantConv2d(4, 2, 3, weight_quant=None)
    conv.set_input_multiplier(torch.tensor([1.0, 2.0, 0.5, 4.0]))
    xc = torch.randn(2, 4, 6, 6)
    expected = F.conv2d(xc * torch.tensor([1.0, 2.0, 0.5, 4.0]).reshape(1, 4, 1, 1), conv.weight, conv.bias)
    assert torch.allclose(conv(xc), expected, rtol=1e-6, atol=1e-6)
    fresh = qlayers.QuantLinear(16, 8, weight_quant=None)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.input_multiplier, m) and torch.equal(fresh(x), layer(x))
    layer.set_input_multiplier(None)
    assert "input_multiplier" not in layer.state_dict()
    with pytest.raises(TypeError, match="1-D tensor"):
        layer.set_input_multiplier(torch.ones(2, 8))


# ---- SmoothQuant -------------------------------------------------------------------------------

def test_smoothquant_folds_the_scale_formula_into_the_shared_layernorm():
    model = outlier_block()
    data = batches()
    q = qlayers.quantize_model(model, W8A8)
    x = torch.cat(data).reshape(-1, 64).double()
    h = F.layer_norm(x, (64,), model.ln.weight.double(), model.ln.bias.double())
    x_max = h.abs().amax(0)
    w_max = torch.maximum(model.q.weight.double().abs().amax(0), model.k.weight.double().abs().amax(0))
    s = x_max.sqrt() / w_max.sqrt()  # alpha = 0.5
    report = ptq.smoothquant(q, data, progress=False)
    assert "folded into ln" in report["q"][0].note and "folded into ln" in report["k"][0].note
    torch.testing.assert_close(q.ln.weight.double(), model.ln.weight.double() / s, rtol=1e-5, atol=0)
    torch.testing.assert_close(q.q.weight.double(), model.q.weight.double() * s, rtol=1e-5, atol=0)
    assert "input_multiplier" not in q.q._buffers
    assert "folded into fc1" in report["fc2"][0].note  # through the ReLU module
    assert "input multiplier" in report["fc1"][0].note  # its input comes from the residual add
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


def test_smoothquant_keeps_a_multiplier_where_the_layernorm_output_also_feeds_a_residual():
    model = outlier_block(residual=True)
    data = batches()
    q = qlayers.quantize_model(model, W8A8)
    report = ptq.smoothquant(q, data, alpha=0.5, progress=False)
    assert "input multiplier" in report["q"][0].note
    assert torch.equal(q.ln.weight, model.ln.weight)
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


def test_smoothquant_lowers_the_w8a8_error_on_outlier_channels():
    model, data = outlier_block(), batches()
    x = batches(1, (16, 10, 64), seed=7)[0]
    rtn = qlayers.quantize_model(model, W8A8)
    smooth = qlayers.quantize_model(model, W8A8)
    ptq.smoothquant(smooth, data, smooth_strength=0.5, progress=False)
    assert quantized_error(smooth, model, data, x) < 0.7 * quantized_error(rtn, model, data, x)


def test_smoothquant_folds_into_a_batchnorm_before_a_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 20)
    data = [torch.randn(4, 3, 10, 10) for _ in range(2)]
    q = qlayers.quantize_model(model, W8A8)
    report = ptq.smoothquant(q, data, progress=False)
    assert "folded into 1" in report["2"][0].note
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


# ---- AWQ ---------------------------------------------------------------------------------------

def test_awq_without_clipping_keeps_the_float_model():
    model, data = outlier_block(), batches()
    q = qlayers.quantize_model(model, W4)
    ptq.awq(q, data, grids_num=10, clip=False, progress=False)
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


def test_awq_lowers_the_int4_group_error_on_outlier_channels():
    model, data = outlier_block(), batches()
    x = batches(1, (16, 10, 64), seed=7)[0]
    rtn, tuned = qlayers.quantize_model(model, W4), qlayers.quantize_model(model, W4)
    report = ptq.awq(tuned, data, grids_num=20, progress=False)
    assert all(row.error_after <= row.error_before for row in report)
    assert quantized_error(tuned, model, data, x) < 0.7 * quantized_error(rtn, model, data, x)


def test_awq_raises_before_any_change_when_a_layer_has_no_foldable_producer_and_no_multiplier():
    model, data = outlier_block(), batches()
    q = qlayers.quantize_model(model, W4)
    before = copy.deepcopy(q.state_dict())
    with pytest.raises(ValueError, match=r"awq cannot apply to layer 'fc1': it has no foldable preceding op \(its input is not the output of a module.*input_multiplier=False"):
        ptq.awq(q, data, input_multiplier=False, progress=False)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())



@pytest.mark.parametrize("name", ["awq", "smoothquant"])
def test_apply_raises_before_an_earlier_algorithm_changes_anything(name):
    """apply() runs every algorithm's forward-pass checks first: GPTQ (listed first) must not
    have changed a weight when the later algorithm turns out not to apply."""
    model, data = outlier_block(), batches()
    q = qlayers.quantize_model(model, W4)
    before = copy.deepcopy(q.state_dict())
    with pytest.raises(ValueError, match=rf"{name} cannot apply to layer 'fc1'.*input_multiplier=False"):
        ptq.apply(q, data, ["gptq", {name: {"input_multiplier": False}}], progress=False)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())

# ---- bias correction and equalization ----------------------------------------------------------

def spread_cnn():
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-Linear-ReLU-Linear whose first BatchNorm spreads its channels
    over three decades and whose second conv compensates (every channel matters): per-tensor INT4
    weights need equalization; the INT4 rounding bias then needs bias correction."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
        model[1].weight.copy_(torch.logspace(-1.5, 1.5, 16)[torch.randperm(16)])
        model[4].weight.uniform_(0.5, 1.5)
        model[3].weight.mul_(1 / model[1].weight.reshape(1, -1, 1, 1))
    return model.eval()


def test_batchnorm_folding_matches_the_formula_and_keeps_the_float_model():
    model = spread_cnn()
    data = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    q = qlayers.quantize_model(model, W4A8)
    bn = model[1]
    g = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    expected_w = model[0].weight.double() * g.reshape(-1, 1, 1, 1)
    expected_b = (model[0].bias.double() - bn.running_mean.double()) * g + bn.bias.double()
    assert fold_batchnorms(q, data[0]) == [("0", "1"), ("3", "4")]
    assert isinstance(q[1], nn.Identity) and isinstance(q[4], nn.Identity)
    torch.testing.assert_close(q[0].weight.double(), expected_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q[0].bias.double(), expected_b, rtol=1e-6, atol=1e-7)
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


def test_equalization_balances_ranges_and_keeps_the_float_model():
    model = spread_cnn()
    data = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    q = qlayers.quantize_model(model, W4A8)
    ptq.equalize(q, data)
    r1 = q[0].weight.abs().amax(dim=(1, 2, 3))
    r2 = q[3].weight.abs().amax(dim=(0, 2, 3))
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)
    r1, r2 = q[8].weight.abs().amax(1), q[10].weight.abs().amax(0)
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)
    assert rel_error(float_outputs(q, data[0]), model(data[0])) < 1e-5


def test_equalization_and_bias_correction_lower_the_w4a8_cnn_error():
    model = spread_cnn()
    data = [torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    rtn = qlayers.quantize_model(model, W4A8)
    rtn_error = quantized_error(rtn, model, data, x)
    q = qlayers.quantize_model(model, W4A8)
    ptq.equalize(q, data)
    cle_error = quantized_error(q, model, data, x)
    ptq.bias_correction(q, data, progress=False)
    with torch.no_grad():
        both_error = float((q(x) - model(x)).pow(2).sum() / model(x).pow(2).sum())
    assert cle_error < 0.3 * rtn_error and both_error < 0.5 * cle_error


def test_bias_correction_makes_the_mean_output_error_zero_on_the_calibration_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False)).eval()
    data = [torch.rand(64, 32) for _ in range(3)]  # positive inputs: a visible rounding bias
    q = qlayers.quantize_model(model, {"weights": {"format": "int4"}})
    ptq.bias_correction(q, data, progress=False)
    x = torch.cat(data).double()
    w, wq = model[0].weight.double(), q[0].quant_weight().value.double()
    expected_bias = -(x @ (wq - w).T).mean(0)  # b = -E[W_q x - W x]
    torch.testing.assert_close(q[0].bias.double(), expected_bias, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert float((q(torch.cat(data)) - model(torch.cat(data))).mean(0).abs().max()) < 1e-5


# ---- OFMR --------------------------------------------------------------------------------------

def test_ofmr_lowers_the_fp8_error_and_never_raises_a_layer_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()
    scale = torch.logspace(-2, 1, 64)
    data = [torch.randn(32, 64) * scale for _ in range(4)]
    x = torch.cat(data)
    fp8 = {"weights": {"format": "float8_e4m3fn"}, "inputs": {"format": "float8_e4m3fn"}}
    rtn, tuned = qlayers.quantize_model(model, fp8), qlayers.quantize_model(model, fp8)
    rtn_error = quantized_error(rtn, model, data, x)
    report = ptq.ofmr(tuned, data, progress=False)  # calibrates first
    assert all(row.error_after <= row.error_before for row in report)
    with torch.no_grad():
        assert float((tuned(x) - model(x)).pow(2).sum() / model(x).pow(2).sum()) < 0.9 * rtn_error


# ---- apply, AMCT and bad input -----------------------------------------------------------------

def test_apply_runs_amct_style_algorithm_lists():
    model, data = outlier_block(), batches()
    q = qlayers.quantize_model(model, W8A8)
    report = ptq.apply(q, data, [{"smoothquant": {"smooth_strength": 0.5}}], progress=False)
    assert {row.algorithm for row in report} == {"smoothquant"}
    q = qlayers.quantize_model(model, W4)
    report = ptq.apply(q, data, [{"awq": {"grids_num": 20}}], progress=False)
    assert len(report) == 4


@pytest.mark.parametrize("bad, match", [
    (dict(alpha=1.5), r"alpha must be a number in \[0, 1\], got 1.5"),
    (dict(alpha=0.3, smooth_strength=0.5), "not both"),
    (dict(layers=["embed"]), r"does not apply to layer 'embed' \(QuantEmbedding\)"),
])
def test_smoothquant_bad_options_raise_naming_them(bad, match):
    model = nn.Sequential()
    model.embed = nn.Embedding(10, 8)
    model.fc = nn.Linear(8, 4)
    q = qlayers.quantize_model(model, {"weights": {"format": "int8"}, "targets": ["Linear", "Embedding"]})
    with pytest.raises((ValueError, TypeError), match=match):
        ptq.smoothquant(q, [torch.randint(0, 10, (2, 3))], **bad)


def test_bad_options_and_data_raise():
    q = qlayers.quantize_model(outlier_block(), W4)
    with pytest.raises(ValueError, match="grids_num must be a positive int"):
        ptq.awq(q, batches(), grids_num=0)
    with pytest.raises(ValueError, match="ratios must be a non-empty list of positive numbers"):
        ptq.ofmr(q, batches(), ratios=[0.5, -1])
    with pytest.raises(ValueError, match="empty"):
        ptq.smoothquant(q, [])
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        ptq.equalize(q, batches(), iterations=0)



@pytest.mark.parametrize("algorithm, weights, inputs", [
    ({'smoothquant': {'smooth_strength': 0.5}}, {'type': 'int8', 'strategy': 'channel'}, {'type': 'int8', 'strategy': 'tensor'}),
    ({'awq': {'grids_num': 20}}, {'type': 'int4', 'strategy': 'group', 'group_size': 32}, None),
])
def test_amct_algorithm_configs_run_verbatim(algorithm, weights, inputs):
    model, data = outlier_block(), batches(2)
    x = batches(1, (16, 10, 64), seed=7)[0]
    quant_cfg = {'weights': weights} if inputs is None else {'weights': weights, 'inputs': inputs}
    errors = {}
    for name, algo in (("minmax", {'minmax'}), ("algorithm", algorithm)):
        q = copy.deepcopy(model)
        amct.quantize(q, {'batch_num': 2, 'quant_cfg': quant_cfg, 'algorithm': algo})
        with torch.no_grad():
            for batch in data:  # AMCT's calibration calls
                q(batch)
            errors[name] = float((q(x) - model(x)).pow(2).sum() / model(x).pow(2).sum())
    assert errors["algorithm"] < 0.8 * errors["minmax"]


def test_gptq_after_smoothquant_sees_the_multiplied_input():
    model, data = outlier_block(), batches()
    q = qlayers.quantize_model(model, W4)
    report = ptq.apply(q, data, ["smoothquant", "gptq"], progress=False)
    assert "input multiplier" in report["fc1"][0].note
    from qlayers.ptq.hessian import hessian
    x = torch.cat(data).reshape(-1, 64)
    h, rows = hessian(q.fc1, [x])
    xm = x.double() * q.fc1.input_multiplier.double()
    torch.testing.assert_close(h, xm.T @ xm, rtol=1e-5, atol=1e-6 * float(h.abs().max()))
    gptq_rows = [row for row in report if row.algorithm == "gptq"]
    assert gptq_rows and all(row.error_after <= row.error_before for row in gptq_rows)
