"""Observers by hand over sequences of batches, their state dicts, and the static-quantizer modes
of TensorQuantizer (train: update and use the batch; eval: use the aggregate; calibrating: update)."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import quantizers as qz
from quantizers.observers import OBSERVERS


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def feed(observer, stats):
    for stat in stats:
        observer.update(stat)
    return observer


# ---- aggregates by hand ------------------------------------------------------------------------------


def test_observer_names_map_to_their_classes():
    assert OBSERVERS["minmax"] is qz.LastBatchObserver
    assert OBSERVERS["static"] is qz.LastBatchObserver
    assert OBSERVERS["global_minmax"] is qz.GlobalMinMaxObserver
    assert OBSERVERS["ema_minmax"] is qz.EMAMinMaxObserver
    assert OBSERVERS["mean"] is qz.MeanObserver




@pytest.mark.parametrize("cls, expected", [
    (qz.LastBatchObserver, 2.0),
    (qz.GlobalMinMaxObserver, 3.0),
    (qz.MeanObserver, 2.0),
    (qz.EMAMinMaxObserver, 2.72),  # 3; 3 + 0.1·(1 - 3) = 2.8; 2.8 + 0.1·(2 - 2.8)
])
def test_absmax_observers_aggregate_by_hand(cls, expected):
    observer = cls()
    assert not observer.is_initialized
    feed(observer, [t(3.0), t(1.0), t(2.0)])
    assert observer.is_initialized
    assert observer.value("absmax").item() == pytest.approx(expected)


@pytest.mark.parametrize("cls, low, high", [
    # batches (min, max): (-1, 4), (-3, 2), (-2, 5)
    (qz.LastBatchObserver, -2.0, 5.0),
    (qz.GlobalMinMaxObserver, -3.0, 5.0),
    (qz.MeanObserver, -2.0, 11 / 3),
])
def test_minmax_observers_aggregate_by_hand(cls, low, high):
    observer = feed(cls(), [(t(-1.0), t(4.0)), (t(-3.0), t(2.0)), (t(-2.0), t(5.0))])
    got_low, got_high = observer.value("minmax")
    assert got_low.item() == low and got_high.item() == pytest.approx(high, rel=1e-7)


def test_ema_observer_by_hand():
    ema = feed(qz.EMAMinMaxObserver(momentum=0.25), [(t(-8.0), t(8.0)), (t(-16.0), t(16.0)), (t(0.0), t(0.0))])
    # 8 (the first batch initialises); 8 + 0.25·(16 - 8) = 10; 10 + 0.25·(0 - 10) = 7.5
    assert [v.item() for v in ema.value("minmax")] == [-7.5, 7.5]


def test_mean_observer_counts_batches():
    mean = feed(qz.MeanObserver(), [(t(-2.0), t(2.0)), (t(-4.0), t(4.0)), (t(-9.0), t(9.0))])
    assert mean.value("minmax")[1].item() == 5.0 and mean.count.item() == 3


def test_observers_work_elementwise_per_channel():
    glob = feed(qz.GlobalMinMaxObserver(), [(t([[0.0], [-1.0]]), t([[1.0], [5.0]])), (t([[-2.0], [0.0]]), t([[3.0], [2.0]]))])
    low, high = glob.value("minmax")
    assert low.tolist() == [[-2.0], [-1.0]] and high.tolist() == [[3.0], [5.0]]


@pytest.mark.parametrize("momentum", [0.0, -0.1, 1.5])
def test_ema_momentum_outside_zero_one_is_rejected(momentum):
    with pytest.raises(ValueError, match="momentum"):
        qz.EMAMinMaxObserver(momentum)


# ---- state dicts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [qz.LastBatchObserver, qz.GlobalMinMaxObserver, qz.EMAMinMaxObserver, qz.MeanObserver])
def test_state_dict_round_trip_takes_the_first_batch_shapes(cls):
    source = feed(cls(), [(t([[-1.0], [-2.0], [0.0]]), t([[1.0], [4.0], [2.0]]))] * 2)
    target = cls()
    assert target.high.shape == (0,)
    target.load_state_dict(source.state_dict())
    assert target.is_initialized
    assert target.low.shape == target.high.shape == (3, 1)
    assert torch.equal(target.low, source.low) and torch.equal(target.high, source.high)


def test_mean_observer_continues_its_mean_after_loading():
    source = feed(qz.MeanObserver(), [(t(-2.0), t(2.0)), (t(-4.0), t(4.0))])
    target = qz.MeanObserver()
    target.load_state_dict(source.state_dict())
    target.update((t(-9.0), t(9.0)))
    assert target.value("minmax")[1].item() == 5.0  # (2 + 4 + 9) / 3


class _Layer(nn.Module):
    def __init__(self, quantizer):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.input_quant = qz.build_tensor_quantizer(quantizer)


def test_state_dict_without_observer_keys_leaves_it_uncalibrated(caplog):
    float_model = nn.Module()
    float_model.linear = nn.Linear(4, 4)
    layer = _Layer(qz.Int8ActPerTensorFloat)
    layer.load_state_dict(float_model.state_dict(), strict=True)  # no missing-key error
    assert torch.equal(layer.linear.weight, float_model.linear.weight)
    assert not layer.input_quant.observer.is_initialized
    layer.eval()
    with caplog.at_level(logging.WARNING):
        qt = layer.input_quant(t([1.0, -128.0]))
    assert qt.scale_.item() == 1.0  # falls back to the batch's own range
    assert "never calibrated" in caplog.text
    message = next(r.getMessage() for r in caplog.records if "never calibrated" in r.getMessage())
    assert "\n" not in message  # one line naming the quantizer, not its module repr (real-model friction 10)


def test_quantizer_state_dict_round_trip_restores_the_eval_scale():
    source = static().train()
    source(torch.randn(2, 3, 4, 4) * 10)
    target = static()
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(source(x).scale_, target(x).scale_)
    assert torch.equal(source(x).zero_point_, target(x).zero_point_)


# ---- TensorQuantizer static behaviour --------------------------------------------------------------------
# An asymmetric uint8 quantizer (min/max statistics): for min = 0, s = max / 255 and z = 0.


def static(observer="global_minmax", **overrides):
    return qz.build_tensor_quantizer(
        qz.Uint8ActPerTensorFloat, symmetric=False, observer=observer, range_method="max", **overrides
    )


def test_train_mode_updates_the_observer_and_uses_the_batch():
    q = static().train()
    assert q(t([255 * 4.0, 0.0])).scale_.item() == 4.0
    assert q(t([255 * 2.0, 0.0])).scale_.item() == 2.0   # the batch's own range, not the aggregate
    assert q.observer.high.item() == 255 * 4.0


def test_eval_mode_uses_the_observer_and_does_not_update_it():
    q = static().train()
    q(t([255 * 4.0, 0.0]))
    q.eval()
    assert q(t([255 * 0.5, 0.0])).scale_.item() == 4.0
    assert q(t([255 * 8.0, 0.0])).value[0].item() == 255 * 4.0   # saturates at the calibrated range
    assert q.observer.high.item() == 255 * 4.0


def test_calibrating_in_eval_mode_updates_the_observer():
    q = static().eval()
    q.range_source = "observe_and_quantize"
    q(t([255 * 2.0, 0.0]))
    q(t([255 * 8.0, 0.0]))
    assert q.observer.high.item() == 255 * 8.0
    q.range_source = "frozen"
    assert q(t([1.0, 0.0])).scale_.item() == 8.0


def test_ema_quantizer_uses_the_momentum_override():
    q = static("ema_minmax", momentum=0.5).train()
    for amax in (8.0, 4.0, 2.0):
        q(t([255 * amax, 0.0]))
    q.eval()
    assert q(t([1.0, 0.0])).scale_.item() == 4.0  # 8, 6, 4


def test_default_static_activation_averages_the_percentile_of_each_batch():
    q = qz.build_tensor_quantizer(qz.Int8ActPerTensorFloat).train()  # mean of 99.999th percentiles
    for amax in (2.0, 4.0, 9.0):
        q(t([-128 * amax, 0.5, 1.0]))  # n = 3: the percentile is the maximum; scale amax / 128
    q.eval()
    assert q(t([1.0])).scale_.item() == 5.0


def test_per_channel_static_observer_follows_the_first_batch_shape():
    q = qz.build_tensor_quantizer(qz.Fp8e4m3OCPActPerChannelFloat2d, range_method="max").train()
    x = torch.ones(2, 3, 4, 4) * t([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1) * 448
    q(x)
    assert q.observer.high.shape == (1, 3, 1, 1)
    q.eval()
    assert q(torch.zeros(1, 3, 2, 2)).scale_.reshape(-1).tolist() == [1.0, 2.0, 4.0]
