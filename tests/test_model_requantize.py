"""Model-level reliability: re-quantizing (M1), in-place conversion (M2), checked fx traces (real-model
friction 1), summary printing (K1) and substring skip entries (K4). Oracles are float formulas here."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import qlayers
from qlayers.model import calibrate, quantize_model, summary
from qlayers.model.functional import traced_adds

INT8_WA = {"weights": {"format": "int8"}, "inputs": {"format": "int8"}, "functional_adds": True}


def fake_int(x: torch.Tensor, amax: torch.Tensor, levels: float, low: float, high: float) -> torch.Tensor:
    scale = amax / levels
    return torch.clamp(torch.round(x / scale), low, high) * scale


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.fc2(self.fc1(x) + x)


# ---- M1 ---------------------------------------------------------------------------------------


def test_quantizing_a_quantized_model_again_applies_the_new_config():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 16))
    q1 = quantize_model(float_model, {"weights": {"format": "int8"}})
    with pytest.warns(UserWarning, match="already quantized"):
        q2 = quantize_model(q1, {"weights": {"format": "int4", "granularity": "group", "group_size": 8}})
    assert q2[0].weight_quant.fmt.name == "int4_narrow"
    w = float_model[0].weight.detach()
    groups = w.reshape(16, 2, 8)
    expected = fake_int(groups, groups.abs().amax(-1, keepdim=True), 7, -7, 7).reshape(16, 16)
    torch.testing.assert_close(q2[0].quant_weight().value, expected, rtol=0, atol=1e-7)
    assert q1[0].weight_quant.fmt.name == "int8_narrow"  # inplace=False: q1 is left alone


def test_requantizing_in_place_keeps_the_parameters_and_undoes_traced_adds():
    torch.manual_seed(0)
    model = Res()
    params = list(model.parameters())
    quantize_model(model, INT8_WA, inplace=True)
    assert traced_adds(model) == ("eltwise_add",)
    with pytest.warns(UserWarning, match="already quantized"):
        again = quantize_model(model, {"weights": {"format": "int8"}}, inplace=True)
    assert again is model and list(model.parameters()) == params
    assert traced_adds(model) == () and not hasattr(model, "eltwise_add")
    assert type(model.fc1) is qlayers.QuantLinear and model.fc1.input_quant is None
    x = torch.randn(4, 16)
    w1, w2 = (fc.weight.detach() for fc in (model.fc1, model.fc2))
    q = [fake_int(w, w.abs().max(), 127, -127, 127) for w in (w1, w2)]  # int8 narrow, per tensor
    h = x @ q[0].T + model.fc1.bias
    expected = (h + x) @ q[1].T + model.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_requantizing_with_no_sections_gives_back_the_float_model():
    torch.manual_seed(0)
    model = Res()
    x = torch.randn(4, 16)
    with torch.no_grad():
        reference = model(x)
    q = quantize_model(model, INT8_WA)
    with pytest.warns(UserWarning, match="already quantized"):
        back = quantize_model(q, {"weights": None})
    assert type(back.fc1) is nn.Linear and not traced_adds(back)
    with torch.no_grad():
        assert torch.equal(back(x), reference)


# ---- M2 ---------------------------------------------------------------------------------------


def test_inplace_returns_the_callers_model_with_its_residual_add_quantized():
    torch.manual_seed(0)
    m = Res()
    ret = quantize_model(m, {"weights": {"format": "int8"}, "inputs": {"format": "int8", "observer": "global_minmax"}, "functional_adds": True}, inplace=True)
    assert ret is m and isinstance(m.eltwise_add, qlayers.QuantEltwiseAdd)
    x = torch.randn(4, 16)
    calibrate(m, [x], progress=False)
    m.eval()
    assert "eltwise_add.input_quant.observer.high" in m.state_dict()
    with torch.no_grad():
        h = m.fc1(x)
        amax = torch.maximum(h.abs().max(), x.abs().max())  # one shared static grid for both operands
        added = fake_int(h, amax, 128, -128, 127) + fake_int(x, amax, 128, -128, 127)
        torch.testing.assert_close(m(x), m.fc2(added), rtol=1e-6, atol=1e-6)


def test_inplace_on_a_bare_layer_raises_instead_of_returning_another_object():
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"inplace=True\) cannot convert a bare Linear"):
        quantize_model(layer, {"weights": {"format": "int8"}}, inplace=True)
    assert type(layer) is nn.Linear
    assert type(quantize_model(layer, {"weights": {"format": "int8"}})) is qlayers.QuantLinear


# ---- real-model friction 1: a trace must compute what the module computes ---------------------


class Optional_(nn.Module):
    """fx takes the ``extra is not None`` branch for every call: the trace drops ``self.emb``."""

    def __init__(self):
        super().__init__()
        self.fc, self.emb = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, extra=None):
        if extra is None:
            extra = self.emb(x)
        return self.fc(x) + extra


def test_a_trace_that_fails_on_the_first_call_falls_back_to_the_module_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(Optional_())
    q = quantize_model(model, {"inputs": {"format": "int8"}, "functional_adds": True})
    assert traced_adds(q[0]) == ("eltwise_add",)
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"trace of Optional_ at '0' does not compute what its forward computes") as record:
        out = q(x)
    assert sum("does not compute" in str(w.message) for w in record) == 1
    assert traced_adds(q[0]) == () and not hasattr(q[0], "eltwise_add")
    with torch.no_grad():
        expected = q[0].fc(x) + q[0].emb(x)  # the module's own forward with its quantized layers
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(x)  # decided once


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.scale = nn.Linear(4, 4), 2.0

    def forward(self, x):
        return self.fc(x) * self.scale + x  # fx bakes self.scale into the graph


def test_a_trace_that_runs_but_differs_falls_back_too():
    q = quantize_model(Scaled(), {"inputs": {"format": "int8"}, "functional_adds": True})
    q.scale = 3.0
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match=r"trace of Scaled does not compute.*output differs"):
        out = q(x)
    with torch.no_grad():
        torch.testing.assert_close(out, q.fc(x) * 3.0 + x, rtol=0, atol=0)


def test_a_faithful_trace_is_kept_and_observers_see_each_batch_once():
    torch.manual_seed(0)
    q = quantize_model(Res(), {"inputs": {"format": "int8", "observer": "global_minmax"}, "functional_adds": True})
    batch = torch.randn(4, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(q, [batch], progress=False)
    assert traced_adds(q) == ("eltwise_add",)
    assert float(q.fc1.input_quant.observer.high.max()) == float(batch.abs().max())


def test_untraceable_modules_give_one_short_warning_line():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x if x.sum() > 0 else x

    model = nn.Sequential(Untraceable(), Untraceable(), Res())
    with pytest.warns(UserWarning) as record:
        quantize_model(model, INT8_WA)
    messages = [str(w.message) for w in record if "could not trace" in str(w.message)]
    assert messages == ["quantize_model: torch.fx could not trace 2 module(s) (Untraceable); adds in their own forward stay float (their layers are quantized)"]


# ---- K1 ---------------------------------------------------------------------------------------


def test_summary_prints_the_table_once(capsys):
    q = quantize_model(nn.Sequential(nn.Linear(8, 8)), {"weights": {"format": "int8"}})
    result = summary(q)
    printed = capsys.readouterr().out
    assert printed.count("model parameters:") == 1
    assert "\n" not in repr(result) and "1 quantized layers" in repr(result)
    print(summary(q, verbose=False))
    assert capsys.readouterr().out.count("model parameters:") == 1


def test_summary_of_a_model_without_parameters_shows_no_nan_ratio():
    text = str(summary(nn.Sequential(nn.ReLU()), verbose=False))
    assert "nan" not in text and text.endswith("0 B -> 0 B packed (no parameters)")


# ---- K4 ---------------------------------------------------------------------------------------


def test_a_skip_entry_matching_several_names_by_substring_warns():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    with pytest.warns(UserWarning, match=r"skip_layers entry '1' .* skips 3 modules: '1', '10', '11'"):
        q = quantize_model(model, {"weights": {"format": "int8"}, "skip_layers": ["1"]})
    assert [type(q[i]) is nn.Linear for i in (1, 10, 11)] == [True] * 3  # AMCT's rule still holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_model(model, {"weights": {"format": "int8"}, "skip_layers": [r"re:(^|\.)1$"]})
    assert type(q[1]) is nn.Linear and type(q[10]) is qlayers.QuantLinear


def test_a_skip_entry_naming_a_subtree_does_not_warn():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_model(model, {"weights": {"format": "int8"}, "skip_layers": ["0"]})
    assert type(q[0][0]) is nn.Linear and type(q[1]) is qlayers.QuantLinear


def test_the_first_call_in_training_with_autograd_keeps_a_faithful_trace():
    torch.manual_seed(0)
    q = quantize_model(nn.Sequential(nn.Linear(16, 16), Res()), INT8_WA).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(torch.randn(4, 16)).sum().backward()  # Res gets a non-leaf tensor that needs grad
    assert traced_adds(q[1]) == ("eltwise_add",)
    assert q[1].fc1.weight.grad is not None


def test_a_child_replaced_after_quantizing_is_used_by_the_traced_forward():
    torch.manual_seed(0)
    q = quantize_model(Res(), INT8_WA)
    x = torch.randn(4, 16)
    calibrate(q, [x], progress=False)
    q.eval()
    q.fc2 = nn.Identity()  # e.g. an adapter wrapping a layer
    with torch.no_grad():
        torch.testing.assert_close(q(x), q.eltwise_add(q.fc1(x), x), rtol=0, atol=0)
