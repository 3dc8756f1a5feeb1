"""The runtime quantizer's explicit range source (issue 10 section 2): one ``RangeSource`` attribute
instead of flags and a swapped class, ``Observer.reset``, observer names, learned ranges folded into
``TensorQuantizer``; and strict ``load_state_dict`` of quantizer state (reliability L1)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import qlayers as qnn
import quantizers as qz
from qlayers.model import calibrate, freeze_observers, quantize_model, unfreeze_observers
from quantizers.observers import OBSERVER_ALIASES, OBSERVERS


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def static(observer="global_minmax", **overrides):
    return qz.build_tensor_quantizer(qz.Int8ActPerTensorFloat, observer=observer, range_method="max", **overrides)


# ---- the range source ------------------------------------------------------------------------------
def test_range_source_is_a_str_enum_set_from_the_constructor():
    assert issubclass(qz.RangeSource, str) and qz.RangeSource("frozen") is qz.RangeSource.FROZEN
    assert qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat).range_source is qz.RangeSource.TENSOR
    assert static().range_source is qz.RangeSource.OBSERVER
    assert static(float_range=(-1.0, 2.0)).range_source is qz.RangeSource.FIXED
    assert static(float_range=(None, 2.0)).range_source is qz.RangeSource.OBSERVER  # one end from the data
    q = static()
    q.range_source = "frozen"  # strings work
    assert q.range_source is qz.RangeSource.FROZEN and "range_source=frozen" in repr(q)


def test_range_source_rejects_unknown_values_and_sources_without_an_observer():
    with pytest.raises(ValueError, match=r"range_source='calibrating' is unknown; allowed values: 'tensor', 'observer'"):
        static().range_source = "calibrating"
    weight = qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat)
    for source in ("observer", "frozen", "observe_and_quantize"):
        with pytest.raises(ValueError, match=f"range_source='{source}' needs an observer"):
            weight.range_source = source


def test_each_source_by_hand():
    q = static().eval()
    # the scale for amax 2^k is 2^k times the scale for amax 1 (whatever the int8 rule's divisor)
    unit = float(qz.build_tensor_quantizer(qz.Int8ActPerTensorFloat, observer=None)(t([1.0])).scale_)

    def amax_of(qt):
        return float(qt.scale_) / unit

    x, big = t([-2.0, 1.0]), t([-8.0, 4.0])
    q.range_source = "observe"
    assert q(big) is big and float(q.observer.high) == 8.0  # observed, returned unquantized
    q.range_source = "observe_and_quantize"
    assert amax_of(q(x)) == 2.0 and float(q.observer.high) == 8.0  # own range, aggregate kept
    q.range_source = "frozen"
    q.train()
    assert amax_of(q(x)) == 8.0 and float(q.observer.high) == 8.0  # aggregate, no update
    q.range_source = "observer"
    assert amax_of(q(t([16.0]))) == 16.0 and float(q.observer.high) == 16.0  # training follows
    q.eval()
    assert amax_of(q(x)) == 16.0
    q.range_source = "tensor"
    assert amax_of(q(x)) == 2.0
    fixed = static(float_range=(-1.0, 4.0)).train()
    assert amax_of(fixed(x)) == 4.0 and not fixed.observer.is_initialized  # nothing observed


def test_model_tools_never_rewrite_the_quantizer_class():
    layer = qnn.QuantLinear(8, 4, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat)
    calibrate(layer, [torch.randn(4, 8)], progress=False)
    freeze_observers(layer), unfreeze_observers(layer)
    model = quantize_model(nn.Sequential(nn.Linear(8, 4)), {"weights": {"format": "int8", "learned_scale": True},
                                                             "inputs": {"format": "int8", "observer": "global_minmax"}})
    calibrate(model, [torch.randn(4, 8)], progress=False)
    for quantizer in (layer.input_quant, layer.weight_quant, model[0].input_quant, model[0].weight_quant):
        assert type(quantizer) is qz.TensorQuantizer
    assert model[0].weight_quant.range_source is qz.RangeSource.LEARNED
    assert model[0].input_quant.range_source is qz.RangeSource.FROZEN


def test_freeze_and_unfreeze_switch_between_observer_and_frozen():
    layer = qnn.QuantLinear(8, 4, input_quant=qz.Int8ActPerTensorFloat, input_observer="global_minmax")
    freeze_observers(layer)  # nothing calibrated yet: nothing to freeze
    assert layer.input_quant.range_source is qz.RangeSource.OBSERVER
    layer.train()(torch.ones(2, 8))
    freeze_observers(layer)
    assert layer.input_quant.range_source is qz.RangeSource.FROZEN
    unfreeze_observers(layer)
    assert layer.input_quant.range_source is qz.RangeSource.OBSERVER


# ---- observers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["last_batch", "global_minmax", "ema_minmax", "mean"])
def test_observer_reset_forgets_everything(name):
    observer = OBSERVERS[name]()
    fresh = {k: v.clone() for k, v in observer.state_dict().items()}
    for stat in (t([3.0]), t([5.0])):
        observer.update((-stat, stat))
    assert observer.is_initialized
    observer.reset()
    assert not observer.is_initialized
    for key, value in observer.state_dict().items():
        assert torch.equal(value, fresh[key]), key
    observer.update(t(2.0))  # starts afresh: the first batch alone
    assert float(observer.high) == 2.0


def test_observer_names_are_unambiguous_and_old_names_are_aliases():
    assert OBSERVERS["last_batch"] is qz.LastBatchObserver
    assert OBSERVERS["global_minmax"] is qz.GlobalMinMaxObserver  # torch.ao's MinMaxObserver
    for alias, name in OBSERVER_ALIASES.items():
        assert OBSERVERS[alias] is OBSERVERS[name]
    assert OBSERVER_ALIASES == {"minmax": "last_batch", "static": "last_batch"}
    text = qz.observers.__doc__
    assert '"minmax"' in text and "torch.ao" in text and '"last_batch"' in text


@pytest.mark.parametrize("name", ["last_batch", "minmax"])
def test_config_observer_last_batch_and_its_alias(name):
    model = quantize_model(nn.Sequential(nn.Linear(4, 4)), {"inputs": {"format": "int8", "observer": name}})
    assert type(model[0].input_quant.observer) is qz.LastBatchObserver


def test_observer_value_is_a_range_for_asymmetric_rules():
    observer = qz.GlobalMinMaxObserver()
    observer.update(qz.Range(t(-1.0), t(2.0)))
    value = observer.value("minmax")
    assert isinstance(value, qz.Range) and float(value.low) == -1.0 and float(value.high) == 2.0


# ---- learned ranges inside TensorQuantizer --------------------------------------------------------------
def _learned_weight_quantizer():
    return qz.TensorQuantizer(
        qz.IntFormat(4), qz.Granularity("channel", axis=0), qz.scaling.scalers.IntScaler(qz.IntFormat(4), symmetric=True),
        learned_scale=True,
    )


def test_learned_scale_constructor_keyword_starts_from_the_first_tensor_and_learns():
    q = _learned_weight_quantizer().train()
    assert q.range_source is qz.RangeSource.LEARNED and q.learned_range.shape == (0,)
    weight = nn.Parameter(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)))
    out = q(weight)
    amax = weight.detach().abs().amax(dim=1, keepdim=True)
    assert torch.equal(q.learned_range.detach(), amax)
    plain = _learned_weight_quantizer()
    plain.range_source = "tensor"
    assert torch.equal(out.scale_.detach(), plain(weight).scale_)  # the same scales as the weight's own range
    out.value.pow(2).sum().backward()
    assert q.learned_range.grad is not None and q.learned_range.grad.abs().sum() > 0


def test_learned_range_survives_a_state_dict_round_trip():
    q = _learned_weight_quantizer()
    q(torch.randn(3, 5))
    fresh = _learned_weight_quantizer()
    fresh.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(fresh.learned_range, q.learned_range)
    with pytest.raises(RuntimeError, match="size mismatch for learned_range"):
        wrong = _learned_weight_quantizer()
        wrong(torch.randn(4, 5))
        wrong.load_state_dict(q.state_dict())


# ---- L1: strict load_state_dict reports quantizer-state mismatches -------------------------------------------
def _calibrated_source():
    torch.manual_seed(0)
    src = qnn.QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat)
    calibrate(src, [torch.randn(4, 16)], progress=False)
    return src.state_dict()


def test_strict_load_reports_keys_of_a_disabled_quantizer_as_unexpected():
    sd = _calibrated_source()
    dst = qnn.QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=None)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"input_quant.observer"):
        dst.load_state_dict(sd, strict=True)
    result = dst.load_state_dict(sd, strict=False)
    assert sorted(result.unexpected_keys) == sorted(k for k in sd if k.startswith("input_quant."))


def test_strict_load_rejects_per_tensor_statistics_in_a_per_channel_quantizer():
    sd = _calibrated_source()
    pc = qnn.QuantLinear(16, 8, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat,
                         input_granularity="channel")
    with pytest.raises(RuntimeError, match=r"size mismatch for input_quant.observer.high: .*shape \(\) .*channel"):
        pc.load_state_dict(sd, strict=True)


def test_load_checks_statistic_shapes_against_the_granularity():
    per_channel = qz.build_tensor_quantizer(qz.Fp8e4m3OCPActPerChannelFloat2d, range_method="max").train()
    per_channel(torch.ones(2, 3, 4, 4))
    state = per_channel.state_dict()
    assert state["observer.high"].shape == (1, 3, 1, 1)
    fresh = qz.build_tensor_quantizer(qz.Fp8e4m3OCPActPerChannelFloat2d, range_method="max")
    fresh.load_state_dict(state)  # the exact shape is unknown before the first batch: a fitting one loads
    assert fresh.observer.high.shape == (1, 3, 1, 1)
    with pytest.raises(RuntimeError, match=r"size mismatch for observer.high: copying a statistic with shape \(1, 3, 1, 1\)"):
        qz.build_tensor_quantizer(qz.Fp8e4m3OCPActPerTensorFloat).load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"shape \(1, 3, 2, 1\).*longer than 1 only along its axis"):
        qz.build_tensor_quantizer(qz.Fp8e4m3OCPActPerChannelFloat2d).load_state_dict({**state, "observer.high": torch.ones(1, 3, 2, 1)})
    with pytest.raises(RuntimeError, match=r"the shape in current model is \(1, 3, 1, 1\)"):
        fresh.load_state_dict({**state, "observer.high": torch.ones(1, 5, 1, 1)})
    # an asymmetric quantizer needs (min, max): statistics of a symmetric one do not fit
    symmetric = static()
    symmetric.train()(t([1.0, -2.0]))
    asymmetric = qz.build_tensor_quantizer(qz.Uint8ActPerTensorFloat, symmetric=False, observer="global_minmax")
    with pytest.raises(RuntimeError, match="asymmetric quantizer needs"):
        asymmetric.load_state_dict(symmetric.state_dict())
    # an uncalibrated checkpoint always loads
    static().load_state_dict(static().state_dict(), strict=True)
