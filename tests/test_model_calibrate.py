"""Calibration: observers see float activations, ranges by hand, freezing, the report."""
import sys

import pytest
import torch
from torch import nn

from torch.utils.data import DataLoader, TensorDataset

from qlayers.model import (
    calibrate,
    calibration_mode,
    quantization_disabled,
    quantize_model,
    range_report,
    unfreeze_observers,
)

A8_GLOBAL = {"format": "int8", "observer": "global_minmax"}


def _model(inputs=A8_GLOBAL, weights=None, **extra):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    return float_model, quantize_model(float_model, {"weights": weights, "inputs": inputs, **extra})


def _fake_int8(x, amax):
    scale = amax / 128  # full-range symmetric int8, as Int8ActPerTensorFloat and Brevitas
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def test_observers_see_float_activations_and_collect_the_global_range():
    float_model, q = _model()
    batches = [torch.randn(4, 8) * s for s in (1.0, 3.0, 2.0)]
    with torch.no_grad(), calibration_mode(q):
        for x in batches:
            torch.testing.assert_close(q(x), float_model(x), rtol=0, atol=0)  # no quantization
    expected = max(float(x.abs().max()) for x in batches)
    assert float(q[0].input_quant.observer.high) == expected
    assert range_report(q).ranges["0.input_quant"] == (-expected, expected)


def test_eval_after_calibration_uses_the_aggregate_by_hand():
    float_model, q = _model()
    batches = [torch.randn(4, 8) * s for s in (1.0, 3.0)]
    calibrate(q, batches, progress=False)
    amax0 = max(float(x.abs().max()) for x in batches)
    x = torch.randn(5, 8) * 10  # beyond the calibrated range: saturates
    with torch.no_grad():
        h = torch.relu(float_model[0](_fake_int8(x, torch.tensor(amax0))))
        amax2 = float(q[2].input_quant.observer.high)
        expected = float_model[2](_fake_int8(h, torch.tensor(amax2)))
        torch.testing.assert_close(q(x), expected, rtol=1e-6, atol=1e-6)


def test_calibrated_quantizers_are_frozen_in_training_too():
    _, q = _model()
    calibrate(q, [torch.randn(4, 8)], progress=False)
    high = q[0].input_quant.observer.high.clone()
    q.train()
    x = torch.randn(4, 8) * 100
    y = q(x)
    assert torch.equal(q[0].input_quant.observer.high, high)
    assert q[0].input_quant.range_source == "frozen"
    qt = q[0].input_quant(x)
    assert float(qt.value.abs().max()) <= float(high) * 128 / 127.5 + 1e-6  # clipped to the frozen range
    unfreeze_observers(q)
    q(x)
    assert float(q[0].input_quant.observer.high) > float(high)  # follows the batch again
    assert y.requires_grad


def test_num_batches_tuple_and_dict_batches_and_report():
    _, q = _model()
    data = [(torch.randn(4, 8) * (i + 1), torch.zeros(4)) for i in range(5)]
    report = calibrate(q, data, num_batches=2, progress=False)
    assert float(q[0].input_quant.observer.high) == max(float(x.abs().max()) for x, _ in data[:2])
    assert "0.input_quant" in str(report) and "int8" in str(report)
    assert report.uncalibrated == []

    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(x)

    q2 = quantize_model(Kw(), {"inputs": A8_GLOBAL})
    calibrate(q2, [{"x": torch.ones(2, 8)}], progress=False)
    assert float(q2.fc.input_quant.observer.high) == 1.0


def test_calibration_restores_training_mode_and_reset_starts_afresh():
    _, q = _model()
    q.train()
    calibrate(q, [torch.ones(2, 8) * 4], progress=False)
    assert q.training and q[0].training
    calibrate(q, [torch.ones(2, 8)], progress=False)
    assert float(q[0].input_quant.observer.high) == 4.0  # global range continues
    calibrate(q, [torch.ones(2, 8)], progress=False, reset=True)
    assert float(q[0].input_quant.observer.high) == 1.0


def test_quantize_true_quantizes_during_calibration():
    float_model, q = _model(inputs={"format": "int8", "observer": "minmax"})
    x = torch.randn(4, 8)
    with torch.no_grad(), calibration_mode(q, quantize=True):
        y = q(x)
    assert not torch.equal(y, float_model(x))


def test_int32_bias_is_float_during_calibration_and_quantized_after():
    _, q = _model(weights={"format": "int8", "granularity": "channel"}, bias={"format": "int32"})
    with torch.no_grad(), calibration_mode(q):
        assert q[0].bias_quant is None
        q(torch.randn(4, 8))
    assert q[0].bias_quant is not None
    assert q(torch.randn(4, 8)).shape == (4, 2)


def test_progress_bar_falls_back_silently_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    _, q = _model()
    report = calibrate(q, [torch.randn(2, 8)], verbose=True)
    assert "0.input_quant" in capsys.readouterr().out
    assert report.ranges


def test_learned_activation_range_starts_from_calibration():
    _, q = _model(inputs={"format": "int8", "observer": "global_minmax", "learned_scale": True})
    assert q[0].input_quant.learned_range.numel() == 0
    calibrate(q, [torch.ones(2, 8) * 3], progress=False)
    assert float(q[0].input_quant.learned_range.detach()) == 3.0


def test_nested_calibration_is_refused():
    _, q = _model()
    with pytest.warns(UserWarning, match="observed no batch"), calibration_mode(q):
        with pytest.raises(RuntimeError, match="already calibrating"):
            with calibration_mode(q):
                pass


def test_hand_built_qlayers_models_calibrate_too():
    import qlayers
    import quantizers as qz

    model = nn.Sequential(qlayers.QuantLinear(8, 4, input_quant=qz.Int8ActPerTensorFloat, input_observer="global_minmax",
                                              input_range_method="max"))
    calibrate(model, [torch.ones(2, 8) * 5, torch.ones(2, 8)], progress=False)
    assert float(model[0].input_quant.observer.high) == 5.0 and model[0].input_quant.range_source == "frozen"


# ---- the float network is observed by default (real-model friction 4, issue 9 item 7) --------------
W4 = {"format": "int4", "granularity": "channel"}
EXTRA = dict(outputs={"format": "int8", "dynamic": True}, bias={"format": "int32"})


def _float_input_ranges(float_model, batches):
    """max |input| of each Linear of the float model over ``batches`` (the global min/max oracle)."""
    ranges = {}

    def hook(name):
        return lambda module, args: ranges.__setitem__(name, max(ranges.get(name, 0.0), float(args[0].abs().max())))

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in float_model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for x in batches:
            float_model(x)
    for handle in handles:
        handle.remove()
    return ranges


def test_calibration_computes_the_float_network_bit_for_bit_and_collects_its_ranges():
    float_model, q = _model(weights=W4, **EXTRA)
    batches = [torch.randn(4, 8) * s for s in (1.0, 3.0, 2.0)]
    with torch.no_grad(), calibration_mode(q):
        assert q[0].weight_quant is None and q[0].bias_quant is None  # weights float while observing
        for x in batches:
            assert torch.equal(q(x), float_model(x))
    assert q[0].weight_quant is not None and q[0].output_quant is not None
    assert q[0].output_quant.range_source == "tensor"  # the dynamic quantizer is back too
    oracle = _float_input_ranges(float_model, batches)
    assert float(q[0].input_quant.observer.high) == oracle["0"]
    assert float(q[2].input_quant.observer.high) == oracle["2"]
    assert not torch.equal(q(batches[0]), float_model(batches[0]))  # quantized after calibration


def test_quantize_weights_true_observes_the_weight_quantized_network():
    float_model, q = _model(weights=W4)
    x = torch.randn(16, 8)
    calibrate(q, [x], quantize_weights=True, progress=False)
    with torch.no_grad():
        hidden = torch.relu(nn.functional.linear(x, q[0].quant_weight().value, float_model[0].bias))
    assert float(q[2].input_quant.observer.high) == float(hidden.abs().max())
    assert float(q[2].input_quant.observer.high) != _float_input_ranges(float_model, [x])["2"]


def test_quantize_true_quantizes_weights_too_unless_told_otherwise():
    float_model, q = _model(weights=W4)
    x = torch.randn(4, 8)
    with torch.no_grad(), calibration_mode(q, quantize=True):
        assert q[0].weight_quant is not None
        q(x)
    with torch.no_grad(), calibration_mode(q, quantize=True, quantize_weights=False):
        assert q[0].weight_quant is None
        assert not torch.equal(q(x), float_model(x))  # activations quantized


# ---- K2: calibration that observes nothing warns ------------------------------------------------------
@pytest.mark.parametrize("data, num_batches", [
    ([], None),
    ([torch.randn(2, 8)], 0),
    (DataLoader(TensorDataset(torch.empty(0, 8)), batch_size=4), None),
], ids=["empty_list", "num_batches_0", "empty_dataloader"])
def test_calibrating_with_no_data_warns(data, num_batches):
    _, q = _model()
    with pytest.warns(UserWarning, match="observed no batch") as record:
        report = calibrate(q, data, num_batches=num_batches, progress=False)
    assert record[0].filename == __file__  # points at the caller
    assert report.uncalibrated == ["0.input_quant", "2.input_quant"]


def test_calibrating_inside_quantization_disabled_warns():
    _, q = _model()
    with quantization_disabled(q), pytest.warns(UserWarning, match=r"observes nothing.*'0', '2' are disabled"):
        calibrate(q, [torch.randn(2, 8)], progress=False)
    assert not q[0].input_quant.observer.is_initialized


def test_calibrating_a_model_with_data_does_not_warn(recwarn):
    _, q = _model()
    calibrate(q, [torch.randn(2, 8)], progress=False)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_an_error_inside_calibration_restores_the_model_without_a_no_data_warning(recwarn):
    float_model, q = _model(weights=W4)
    with pytest.raises(ValueError, match="boom"), calibration_mode(q):
        raise ValueError("boom")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    assert q[0].weight_quant is not None and q[0].input_quant.range_source == "observer"  # not calibrated
