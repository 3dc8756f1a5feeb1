"""qlayers.ptq skeleton: the registry, AMCT-style algorithm lists, the layer-by-layer capture runner,
data checks before any work, the per-layer report and the distributed helper (single process).

The runner is exercised with an algorithm registered here ("scale_weight_test") whose effect is
known in closed form; its captured inputs are compared with the intermediates computed by hand."""
import pytest
import torch
from torch import nn

import qlayers
from qlayers import ptq
from qlayers.model import quantize_model

INT8_W = {"weights": {"format": "int8", "granularity": "channel"}}
SEEN = {}


def _applies(layer):
    return None if layer.bias is not None else "it has no bias (this test algorithm scales the bias)"


def _check(model, *, layers=None, factor=0.5):
    return ptq.select_layers(model, "scale_weight_test", _applies, layers)[0]


@ptq.register("scale_weight_test", check=_check)
def scale_weight_test(model, data, *, layers=None, factor=0.5, forward=None, progress=True):
    targets, skipped = ptq.select_layers(model, "scale_weight_test", _applies, layers)

    def step(name, layer, inputs):
        SEEN[name] = [x.clone() for x in inputs]
        SEEN.setdefault("_order", []).append(name)
        with torch.no_grad():
            layer.weight.mul_(factor)
        return f"scaled by {factor}"

    return ptq.run_layer_by_layer(model, data, targets, step, algorithm="scale_weight_test",
                                  forward=forward, progress=progress, skipped=skipped)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 5)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))))


def _model():
    torch.manual_seed(0)
    return quantize_model(Net(), INT8_W)


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 6, generator=g) for _ in range(n)]


def test_parse_algorithms_accepts_amct_forms():
    names = lambda parsed: [(a.name, o) for a, o in parsed]  # noqa: E731
    assert names(ptq.parse_algorithms("scale_weight_test")) == [("scale_weight_test", {})]
    assert names(ptq.parse_algorithms({"scale_weight_test"})) == [("scale_weight_test", {})]
    assert names(ptq.parse_algorithms([{"scale_weight_test": {"factor": 2.0}}, "scale_weight_test"])) == [
        ("scale_weight_test", {"factor": 2.0}), ("scale_weight_test", {})]


def test_parse_algorithms_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="'nope' is unknown; allowed values: .*scale_weight_test"):
        ptq.parse_algorithms(["nope"])
    with pytest.raises(TypeError, match="has no option 'grids'; allowed: layers, factor"):
        ptq.parse_algorithms({"scale_weight_test": {"grids": 3}})
    with pytest.raises(TypeError, match="must be a dict"):
        ptq.parse_algorithms({"scale_weight_test": 3})
    with pytest.raises(TypeError, match="algorithms must be"):
        ptq.parse_algorithms(3)


def test_runner_captures_each_layer_input_from_the_model_as_it_is_now():
    SEEN.clear()
    model, data = _model(), _data()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, qlayers.QuantLinear)}
    report = ptq.apply(model, data, ["scale_weight_test"], progress=False)
    assert SEEN["_order"] == ["fc1", "fc2"]  # model order; head has no bias
    assert [s[1] for s in report.skipped] == ["head"] and "no bias" in report.skipped[0][2]
    for x, seen in zip(data, SEEN["fc1"]):
        torch.testing.assert_close(seen, x, rtol=0, atol=0)
    # fc2 sees fc1 already processed (weight halved), quantized like the model quantizes it
    w1 = before["fc1"] * 0.5
    q1 = w1.abs().amax(1, keepdim=True) / 127
    w1q = torch.clamp(torch.round(w1 / q1), -127, 127) * q1
    for x, seen in zip(data, SEEN["fc2"]):
        torch.testing.assert_close(seen, torch.relu(x @ w1q.T + model.fc1.bias), rtol=1e-6, atol=1e-6)
    assert torch.equal(model.head.weight, before["head"])


def test_report_errors_follow_the_formula():
    SEEN.clear()
    model, data = _model(), _data()
    w0, b0 = model.fc2.weight.detach().clone(), model.fc2.bias.detach().clone()
    report = ptq.apply(model, data, {"scale_weight_test": {"factor": 0.25, "layers": ["fc2"]}}, progress=False)
    (row,) = report["fc2"]
    num = den = 0.0
    for x in SEEN["fc2"]:
        reference = (x @ w0.T + b0).double()
        num += float((model.fc2(x).detach().double() - reference).pow(2).sum())
        den += float(reference.pow(2).sum())
    assert row.error_after == pytest.approx(num / den, rel=1e-9)
    assert row.error_after > row.error_before and row.note == "scaled by 0.25"
    text = str(report)
    assert "error before" in text and "fc2" in text and "scale_weight_test" in text


def test_runner_stops_the_forward_after_the_captured_layer():
    model, data = _model(), _data()
    calls = []
    model.head.register_forward_hook(lambda *a: calls.append(1))
    scale_weight_test(model, data, layers=["fc1"], progress=False)
    assert len(calls) == 1  # the data check runs one full forward; every capture stops after fc1


def test_bad_data_raises_before_any_work_naming_the_layer():
    model = _model()
    weights = [m.weight.detach().clone() for m in (model.fc1, model.fc2)]
    with pytest.raises(ValueError, match="calibration data is empty: no batch reaches layer 'fc1'"):
        ptq.apply(model, [], ["scale_weight_test"], progress=False)
    with pytest.raises(ValueError, match=r"layer 'fc1' \(QuantLinear\): its input has shape \(4, 7\), but it needs \(\.\.\., 6\)"):
        ptq.apply(model, [torch.randn(4, 7)], ["scale_weight_test"], progress=False)
    with pytest.raises(ValueError, match="layer 'fc1' .*its input is on meta but its weight is on cpu"):
        ptq.apply(model, [torch.randn(4, 6, device="meta")], ["scale_weight_test"], progress=False)
    with pytest.raises(ValueError, match="calibration batch 0 fails in layer 'act'"):
        model.act.forward = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))
        ptq.apply(model, _data(), ["scale_weight_test"], progress=False)
    assert all(torch.equal(w, m.weight) for w, m in zip(weights, (model.fc1, model.fc2)))


def test_an_algorithm_that_does_not_apply_to_a_named_layer_raises_before_any_work():
    model = _model()
    weight = model.fc1.weight.detach().clone()
    with pytest.raises(ValueError, match="scale_weight_test does not apply to layer 'head' \\(QuantLinear\\): it has no bias"):
        ptq.apply(model, _data(), ["scale_weight_test", {"scale_weight_test": {"layers": ["head"]}}], progress=False)
    with pytest.raises(ValueError, match="layers entry 'nope' matches no quantized layer"):
        ptq.apply(model, _data(), {"scale_weight_test": {"layers": ["nope"]}}, progress=False)
    assert torch.equal(model.fc1.weight, weight)


def test_runner_restores_training_mode_and_accepts_one_shot_iterators():
    model = _model().train()
    ptq.apply(model, iter(_data()), ["scale_weight_test"], progress=False)
    assert all(m.training for m in model.modules())


def test_distributed_helpers_are_identities_in_one_process():
    t = torch.tensor([1.0, 2.0])
    assert not ptq.is_distributed()
    assert ptq.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert ptq.all_reduce_count(5) == 5
