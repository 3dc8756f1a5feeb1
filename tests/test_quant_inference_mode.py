"""``qlayers.quant_inference_mode``: Brevitas's context for fast inference serves each quantized
weight without reading the float weight per forward, gives the default cache's numbers bit for bit,
still sees every write torch records, and on exit reports the writes torch does not record.

The oracle is the layer's output with the weight quantized afresh (``cache_quant_weight = False``)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers import QuantConv2d, QuantLinear, quant_inference_mode
from qlayers import weight_cache
from quantizers import compile as qcompile

X = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))


def uncached(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    twin = copy.deepcopy(layer)
    twin.cache_quant_weight = False
    with torch.no_grad():
        return twin(x)


def counting(layer: nn.Module) -> list:
    calls = []
    layer.weight_quant.register_forward_hook(lambda *_: calls.append(1))
    return calls


def counting_checksums(monkeypatch) -> list:
    calls = []
    real = weight_cache.weight_checksum

    def spy(weight):
        calls.append(1)
        return real(weight)

    monkeypatch.setattr(weight_cache, "weight_checksum", spy)
    return calls


def model(weight_quant=qz.Int8WeightPerChannelFloat, input_quant=None) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        QuantLinear(64, 32, weight_quant=weight_quant, input_quant=input_quant), nn.ReLU(),
        QuantLinear(32, 16, weight_quant=weight_quant, input_quant=input_quant),
    )
    if input_quant is not None and net[0].input_quant.is_static:
        with torch.no_grad(), qlayers.calibration_mode(net):
            net(torch.randn(8, 64))
    return net.eval()


@pytest.mark.parametrize("weight_quant, input_quant", [
    (qz.Int8WeightPerChannelFloat, None),
    (qz.Fp8e4m3OCPWeightPerTensorFloat, qz.Fp8e4m3OCPActPerTensorFloat),
    (qz.MXFloat4e2m1Weight, qz.MXFloat8e4m3Act),
    (qz.NVFloat4e2m1Weight, None),
    (qz.Int4WeightPerGroupFloat, None),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_equal_the_default_cache_bit_for_bit(weight_quant, input_quant, dtype):
    net = model(weight_quant, input_quant).to(dtype)
    x = X.to(dtype)
    with torch.no_grad():
        expected = net(x)
        with quant_inference_mode(net):
            for _ in range(3):
                assert torch.equal(net(x), expected)
        assert torch.equal(net(x), expected)


def test_conv_layers_too():
    torch.manual_seed(0)
    conv = QuantConv2d(3, 8, 3, weight_quant=qz.Int8WeightPerChannelFloat).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = conv(x)
        with quant_inference_mode(conv):
            assert torch.equal(conv(x), expected)


def test_hits_read_no_weight_values_and_exit_reads_each_weight_once(monkeypatch):
    net = model()
    quantized = counting(net[0])
    checksums = counting_checksums(monkeypatch)
    with torch.no_grad(), quant_inference_mode(net):
        for _ in range(5):
            net(X)
        assert len(quantized) == 1
        assert len(checksums) == 2  # one per layer, when its weight was quantized
    assert len(checksums) == 4  # one more per layer, on exit
    with torch.no_grad():
        net(X)  # the verified entries stay cached under the default check
    assert len(quantized) == 1
    assert net[0]._weight_cache._entry.check == "checksum"


def test_entering_keeps_a_valid_entry_and_verifies_it_once(monkeypatch):
    net = model()
    quantized = counting(net[0])
    with torch.no_grad():
        expected = net(X)  # default cache: entries under "checksum"
        checksums = counting_checksums(monkeypatch)
        for _ in range(3):  # e.g. one generate() per request, each in its own context
            with quant_inference_mode(net):
                for _ in range(4):
                    assert torch.equal(net(X), expected)
    assert len(quantized) == 1  # never recomputed
    assert len(checksums) == 3 * 2 * 2  # per context and layer: one check on the first forward, one on exit


def test_entering_recomputes_an_entry_made_stale_before():
    net = model()
    quantized = counting(net[0])
    with torch.no_grad():
        net(X)
        net[0].weight.data[0, 0] += 1.0  # no version bump: only the checksum sees it
        with quant_inference_mode(net):
            out = net(X)
    assert len(quantized) == 2
    assert torch.equal(out, uncached(net, X))


def test_the_layers_own_check_is_kept_after_exit():
    layer = model()[0]
    layer.cache_checks_values = "none"
    with torch.no_grad(), quant_inference_mode(layer):
        layer(X)
    assert layer._weight_cache._entry.check == "none"
    layer.cache_checks_values = "full"
    with torch.no_grad(), quant_inference_mode(layer):
        layer(X)
    assert layer._weight_cache._entry is None  # "full" keeps a copy the mode never took
    assert layer.cache_checks_values == "full" and "_quant_inference_depth" not in vars(layer)


def test_writes_torch_records_are_seen_at_once():
    net = model()
    layer = net[0]
    with torch.no_grad(), quant_inference_mode(net):
        net(X)
        layer.weight.mul_(1.5)  # an in-place op: version counter
        assert torch.equal(net(X), uncached(net, X))
        layer.weight = nn.Parameter(layer.weight.detach() * 0.5)  # a new tensor
        assert torch.equal(net(X), uncached(net, X))


def test_optimizer_steps_are_seen_at_once_and_not_mistaken_for_unrecorded_writes():
    net = model()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)  # fused: no version bump
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quant_inference_mode(net):
            with torch.no_grad():
                net(X)
            for p in net.parameters():
                p.grad = torch.ones_like(p)
            optimizer.step()
            with torch.no_grad():
                assert torch.equal(net(X), uncached(net, X))


def test_a_write_torch_does_not_record_is_reported_on_exit_and_not_served_after():
    net = model()
    with torch.no_grad():
        before = net(X)
        with pytest.warns(RuntimeWarning, match=r"quant_inference_mode: .*'0'.*weight\.data"):
            with quant_inference_mode(net):
                net(X)
                net[0].weight.data[0, 0] += 1.0  # .data: no version bump
                assert torch.equal(net(X), before)  # the documented cost of the mode
        assert torch.equal(net(X), uncached(net, X))
        assert not torch.equal(net(X), before)


def test_a_quantizer_tensor_written_through_data_is_reported_too():
    torch.manual_seed(0)
    layer = QuantLinear(64, 32, weight_quant=qz.Int8WeightPerChannelFloat).eval()
    tensors = [t for t in list(layer.weight_quant.parameters()) + list(layer.weight_quant.buffers()) if t.is_floating_point() and t.numel()]
    tensors += [v for v in vars(layer.weight_quant).values() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not tensors:
        pytest.skip("this quantizer holds no tensor")
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="quant_inference_mode"):
            with quant_inference_mode(layer):
                layer(X)
                tensors[0].data.mul_(2.0)


def test_no_warning_when_nothing_changed_or_torch_saw_every_change():
    net = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), quant_inference_mode(net):
            net(X)
            net[0].weight.add_(0.25)
            net(X)
        with torch.no_grad(), quant_inference_mode(net):
            net(X)
            net[2].weight.add_(0.25)  # after the last forward: never served stale


def test_training_mode_and_frozen_layers_compute_as_outside():
    net = model()
    calls = counting(net[0])
    net.train()
    with quant_inference_mode(net):
        net(X)
        net(X)
    assert len(calls) == 2
    frozen = qlayers.freeze(model())
    with torch.no_grad():
        expected = frozen(X)
        with quant_inference_mode(frozen):
            assert torch.equal(frozen(X), expected)


def test_quant_weight_is_still_the_callers_own_copy():
    layer = model()[0]
    with torch.no_grad(), quant_inference_mode(layer):
        layer(X)
        copy_ = layer.quant_weight()
        copy_.value_.zero_()
        assert torch.equal(layer(X), uncached(layer, X))


@pytest.mark.parametrize("kwargs", [dict(cache_quant_weight=False), dict(enabled=False)])
def test_without_cached_weights_or_disabled_the_per_forward_check_stays(monkeypatch, kwargs):
    layer = model()[0]
    checksums = counting_checksums(monkeypatch)
    with torch.no_grad(), quant_inference_mode(layer, **kwargs):
        layer(X)
        layer(X)
    assert len(checksums) == 2 and "_quant_inference_depth" not in vars(layer)


def test_it_caches_even_where_the_layer_would_not():
    layer = model()[0]
    layer.cache_quant_weight = False
    calls = counting(layer)
    with torch.no_grad(), quant_inference_mode(layer):
        layer(X)
        layer(X)
    assert len(calls) == 1
    with torch.no_grad():
        layer(X)
    assert len(calls) == 2


def test_nested_contexts_restore_the_outer_one():
    net = model()
    with torch.no_grad(), quant_inference_mode(net):
        with quant_inference_mode(net[0]):
            net(X)
        assert net[0]._quant_inference_depth == 1
        net(X)
    assert net[0]._quant_inference_depth == 0 and "_quant_inference_depth" not in vars(net[0])


def test_contexts_left_out_of_order_leave_no_layer_behind():
    net = model()
    first, second = quant_inference_mode(net), quant_inference_mode(net)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert net[0]._quant_inference_depth == 1
    second.__exit__(None, None, None)
    assert "_quant_inference_depth" not in vars(net[0])


def test_one_context_object_cannot_be_entered_twice():
    net = model()
    context = quant_inference_mode(net)
    with context:
        with pytest.raises(RuntimeError, match="already entered"):
            context.__enter__()
    with context:  # reusable once left
        assert net[0]._quant_inference_depth == 1


@pytest.mark.parametrize("order", ["torch_inside", "torch_outside"])
def test_torch_inference_mode_in_either_order_keeps_the_exit_check(order):
    net = model()
    with pytest.warns(RuntimeWarning, match="quant_inference_mode"):
        if order == "torch_inside":
            with quant_inference_mode(net), torch.inference_mode():
                net(X)
                net[0].weight.data[0, 0] += 1.0
                net(X)
        else:
            with torch.inference_mode(), quant_inference_mode(net):
                net(X)
                net[0].weight.data[0, 0] += 1.0
                net(X)


def test_a_stale_window_is_reported_even_when_a_later_forward_requantizes():
    net = model()
    with pytest.warns(RuntimeWarning, match="'0'"):
        with torch.no_grad(), quant_inference_mode(net):
            net(X)
            net[0].weight.data[0, 0] += 1.0  # unrecorded
            net(X)  # stale
            with torch.inference_mode():
                net(X)  # another mode: the layer quantizes afresh (and finds the unrecorded write)
    with torch.no_grad():
        assert torch.equal(net(X), uncached(net, X))


def test_a_copy_made_inside_is_not_in_the_context():
    net = model()
    with torch.no_grad(), quant_inference_mode(net):
        net(X)
        twin = copy.deepcopy(net)
    assert "_quant_inference_depth" not in vars(twin[0]) and twin[0]._quant_inference_depth == 0


def test_an_error_inside_restores_the_layers_without_a_warning():
    net = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError):
            with torch.no_grad(), quant_inference_mode(net):
                net(X)
                net[0].weight.data.zero_()
                raise KeyError("boom")
    assert "_quant_inference_depth" not in vars(net[0]) and net[0]._weight_cache._entry is None


def test_compile_forces_the_on_policy_and_restores_it(monkeypatch):
    monkeypatch.delenv(qcompile.ENV_VAR, raising=False)
    qcompile.set_compile_enabled(False)
    try:
        with quant_inference_mode(model(), compile=True):
            assert qcompile.compile_policy() == "on"
        assert qcompile.compile_setting() is False
    finally:
        qcompile.set_compile_enabled(None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cache_quant_weight=1), "cache_quant_weight must be True or False, got 1"),
    (dict(compile="yes"), "compile must be True or False, got 'yes'"),
    (dict(enabled=None), "enabled must be True or False, got None"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(TypeError, match=message):
        quant_inference_mode(model(), **kwargs)
    with pytest.raises(TypeError, match="expects an nn.Module, got Tensor"):
        quant_inference_mode(torch.zeros(1))


def test_brevitas_twin_gives_the_same_numbers_in_its_own_mode():
    brevitas_nn = pytest.importorskip("brevitas.nn")
    inference = pytest.importorskip("brevitas.export.inference")
    from brevitas.quant import Int8WeightPerChannelFloat

    torch.manual_seed(0)
    ours = QuantLinear(64, 32, weight_quant=qz.Int8WeightPerChannelFloat).eval()
    theirs = brevitas_nn.QuantLinear(64, 32, weight_quant=Int8WeightPerChannelFloat, return_quant_tensor=False).eval()
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
        with inference.quant_inference_mode(theirs, cache_quant_weight=True):
            theirs(X)
            expected = theirs(X)
        with quant_inference_mode(ours):
            ours(X)
            assert torch.equal(ours(X), expected)
