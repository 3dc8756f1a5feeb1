"""The eval-mode weight cache is never stale (reliability report C1-C4, R1, and the scenarios it
found correctly handled), still serves unchanged weights, and its checksum sees every write.

The oracle of every scenario is the layer's output with the weight quantized afresh: the same layer
with ``cache_quant_weight = False`` (or ``qz.quantize`` of the weight and ``F.linear``)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize, prune

import quantizers as qz
from qlayers import QuantConv2d, QuantConvTranspose2d, QuantEmbedding, QuantLinear
from qlayers.weight_cache import CHECK_VALUES, weight_checksum


def uncached(layer: nn.Module, *inputs) -> torch.Tensor:
    """The oracle: ``layer``'s output with its weight quantized afresh."""
    twin = copy.deepcopy(layer)
    twin.cache_quant_weight = False
    with torch.no_grad():
        return twin(*inputs)


def counting(layer: nn.Module) -> list:
    """A list that grows by one whenever ``layer.weight_quant`` runs."""
    calls = []
    layer.weight_quant.register_forward_hook(lambda *_: calls.append(1))
    return calls


def linear(**kwargs) -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear(128, 64, weight_quant=qz.Int8WeightPerChannelFloat, **kwargs).eval()


X = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))


# ---- the cache is still a cache ---------------------------------------------------------------------
@pytest.mark.parametrize("check", CHECK_VALUES)
def test_unchanged_weight_is_quantized_once(check):
    layer = linear()
    layer.cache_checks_values = check
    calls = counting(layer)
    with torch.no_grad():
        first = layer(X)
        for _ in range(3):
            assert torch.equal(layer(X), first)
    assert len(calls) == 1
    assert torch.equal(first, uncached(layer, X))


def test_removed_sample_fingerprint_is_rejected_with_the_allowed_values():
    layer = linear()
    layer.cache_checks_values = "sample"
    with torch.no_grad(), pytest.raises(ValueError, match="'sample'.*checksum, full, none"):
        layer(X)


# ---- every modification scenario of the report -------------------------------------------------------
def _fused_adam_masked(layer):
    """C2: Adam(fused=True) does not bump the version counter; the mask avoids any fixed sample."""
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5, fused=True)
    mask = torch.zeros_like(layer.weight)
    mask[:, 1::2] = 1
    with torch.enable_grad():
        for _ in range(3):
            optimizer.zero_grad()
            layer(X).pow(2).sum().backward()
            layer.weight.grad *= mask
            layer.bias.grad.zero_()
            optimizer.step()


def _optimizer(cls, **kwargs):
    def step(layer):
        optimizer = cls(layer.parameters(), lr=0.5, **kwargs)
        with torch.enable_grad():
            optimizer.zero_grad()
            layer(X).pow(2).sum().backward()
            optimizer.step()
    return step


def _in_inference_mode(layer):
    with torch.inference_mode():
        layer.weight.add_(1.0)


def _without_grad_requirement(layer):
    layer.weight.requires_grad_(False)
    layer.weight[3, 4] += 10.0


def _numpy_view(layer):
    layer.weight.detach().numpy()[7, 9] += 10.0


def _setattr(name, value):
    return lambda layer: setattr(layer.weight_quant, name, value)


SCENARIOS = {
    # writes torch does not see: stale before (C2, C3 and the documented single-element cases)
    "fused_adam_masked": _fused_adam_masked,
    "fused_sgd": _optimizer(torch.optim.SGD, fused=True),
    "fused_adamw": _optimizer(torch.optim.AdamW, fused=True),
    "data_single_element": lambda l: l.weight.data[5, 7].add_(10.0),
    "data_columns_off_any_stride": lambda l: l.weight.data[:, 1:64].zero_(),
    "data_copy_differing_in_one_element": lambda l: l.weight.data.copy_(torch.where(
        torch.arange(l.weight.numel()).view_as(l.weight) == 1234, torch.tensor(9.0), l.weight.detach())),
    "data_view_flat_element": lambda l: l.weight.data.view(-1).__setitem__(1001, 10.0),
    "data_index_put_": lambda l: l.weight.data.index_put_((torch.tensor([3, 40]), torch.tensor([5, 77])), torch.tensor([9.0, -9.0])),
    "numpy_view_element": _numpy_view,
    "data_sign_flip_of_two_elements": lambda l: l.weight.data[2, 4:6].neg_(),
    "data_swap_two_elements": lambda l: l.weight.data.__setitem__((2, [4, 9]), l.weight.data[2, [9, 4]]),
    "data_swap_two_rows": lambda l: l.weight.data.__setitem__([0, 1], l.weight.data[[1, 0]]),
    "data_doubled": lambda l: l.weight.data.mul_(2.0),
    "mse_ratios_data_fill_": lambda l: l.weight_quant.mse_ratios.data.fill_(0.5),
    # writes torch sees (already handled before; must stay so)
    "no_grad_element_write": lambda l: l.weight.__setitem__((63, 127), 10.0),
    "write_through_view": lambda l: l.weight.view(-1)[17].add_(10.0),
    "write_through_detach": lambda l: l.weight.detach()[9, 3].add_(10.0),
    "sgd_step": _optimizer(torch.optim.SGD),
    "adam_step": _optimizer(torch.optim.Adam),
    "adam_foreach_step": _optimizer(torch.optim.Adam, foreach=True),
    "sgd_foreach_step": _optimizer(torch.optim.SGD, foreach=True),
    "load_state_dict": lambda l: l.load_state_dict({"weight": torch.randn(64, 128), "bias": l.bias.detach()}),
    "nn_init": lambda l: nn.init.normal_(l.weight),
    "new_parameter": lambda l: setattr(l, "weight", nn.Parameter(torch.randn(64, 128))),
    "data_assignment": lambda l: setattr(l.weight, "data", torch.randn(64, 128)),
    "inference_mode_write": _in_inference_mode,
    "requires_grad_false_write": _without_grad_requirement,
    "prune_mask": lambda l: prune.l1_unstructured(l, "weight", amount=0.3),
    "rounding": _setattr("rounding", "floor"),
    "fmt": _setattr("fmt", qz.IntFormat(bits=4, narrow=True)),
    "range_method": _setattr("range_method", "percentile"),
    "float_range": _setattr("float_range", (-0.01, 0.01)),
    "mse_ratios_replaced": lambda l: setattr(l.weight_quant, "mse_ratios", torch.tensor([0.5])),
    "quantizer_replaced": lambda l: setattr(l, "weight_quant", qz.build_tensor_quantizer(
        qz.Int8WeightPerChannelFloat, {"channel_axis": 0, "group_dim": 1}, bit_width=3)),
}


def scenario_layer(name: str) -> QuantLinear:
    layer = linear()
    if name.startswith("mse_ratios"):
        layer.weight_quant.range_method = "mse"
    layer.weight_quant.percentile = 90.0  # used once a scenario switches range_method to "percentile"
    return layer


@pytest.mark.parametrize("check", ["checksum", "full"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_eval_cache_is_never_stale(name, check):
    layer = scenario_layer(name)
    layer.cache_checks_values = check
    with torch.no_grad():
        before = layer(X)
        SCENARIOS[name](layer)
        after = layer(X)
    expected = uncached(layer, X)
    assert not torch.equal(expected, before), "the scenario must change the output"
    assert torch.equal(after, expected)


TRACKED = [n for n in SCENARIOS if n.startswith(("fused", "no_grad", "write_through", "sgd", "adam", "load", "nn_init",
                                                 "new_", "data_assignment", "inference", "requires", "prune", "rounding",
                                                 "fmt", "range", "float_range", "mse_ratios_replaced", "quantizer"))]


@pytest.mark.parametrize("name", TRACKED)
def test_version_keyed_cache_sees_every_write_torch_tracks(name):
    """``cache_checks_values = "none"`` reads no values but still follows identity, version counters,
    the quantizer and optimizer steps (fused ones too, through the optimizer step hook)."""
    layer = scenario_layer(name)
    layer.cache_checks_values = "none"
    with torch.no_grad():
        before = layer(X)
        SCENARIOS[name](layer)
        after = layer(X)
    assert not torch.equal(after, before)
    assert torch.equal(after, uncached(layer, X))


@pytest.mark.parametrize("make, x", [
    (lambda: QuantConv2d(16, 64, 3, weight_quant=qz.Int8WeightPerChannelFloat), torch.randn(2, 16, 6, 6)),
    (lambda: QuantConvTranspose2d(16, 64, 3, weight_quant=qz.Int8WeightPerChannelFloat), torch.randn(2, 16, 6, 6)),
    (lambda: QuantEmbedding(500, 16, weight_quant=qz.Int8WeightPerChannelFloat), torch.tensor([[1, 5, 7], [7, 2, 0]])),
], ids=["conv2d", "convtranspose2d", "embedding"])
def test_single_element_data_write_is_seen_by_every_layer_kind(make, x):
    torch.manual_seed(0)
    layer = make().eval()
    with torch.no_grad():
        before = layer(x)
        layer.weight.data.view(-1)[7 * 16 + 3] += 10.0  # embedding row 7 is looked up
        after = layer(x)
    expected = uncached(layer, x)
    assert not torch.equal(expected, before) and torch.equal(after, expected)


@pytest.mark.slow
def test_column_block_write_on_a_large_weight_is_seen():
    """C3: a 2048x2048 weight was sampled only in columns 0 and 1024."""
    torch.manual_seed(0)
    layer = QuantLinear(2048, 2048, weight_quant=qz.Int8WeightPerChannelFloat).eval()
    x = torch.randn(2, 2048)
    with torch.no_grad():
        before = layer(x)
        layer.weight.data[:, 1:1024] = 0.0
        after = layer(x)
        layer.clear_weight_cache()
        assert torch.equal(after, layer(x)) and not torch.equal(after, before)


def fresh(layer: QuantLinear) -> torch.Tensor:
    """The weight quantized from scratch with the layer's default quantizer."""
    return qz.quantize(layer.weight.detach(), qz.Int8WeightPerTensorFloat).value


def test_eval_cache_follows_train_and_eval():
    torch.manual_seed(0)
    layer = QuantLinear(16, 8).eval()
    with torch.no_grad():
        first = layer.quant_weight()
        layer.train()
        layer.weight.add_(1)
        assert torch.equal(layer.quant_weight().value, fresh(layer))
        layer.eval()
        second = layer.quant_weight()
    assert not torch.equal(second.value, first.value) and torch.equal(second.value, fresh(layer))


def test_eval_cache_follows_a_replaced_or_modified_weight_quantizer():
    torch.manual_seed(0)
    layer = QuantLinear(16, 8).eval()
    with torch.no_grad():
        int8 = layer.quant_weight()
        layer.weight_quant = qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat, bit_width=4)
        int4 = layer.quant_weight()
        assert int4.int().abs().max() == 7
        layer.weight_quant.fmt = qz.IntFormat(bits=3, narrow=True)
        assert layer.quant_weight().int().abs().max() <= 3
        layer.weight_quant.rounding = "floor"
        floor = layer.quant_weight()
        # the oracle: an independent copy of the modified quantizer, applied afresh
        assert torch.equal(floor.value, copy.deepcopy(layer.weight_quant)(layer.weight).value)
        assert floor.fmt.bits == 3 and not torch.equal(floor.value, int4.value)
    assert not torch.equal(int8.value, int4.value)


def test_eval_cache_follows_dtype_and_device_moves():
    torch.manual_seed(0)
    layer = QuantLinear(16, 8).eval()
    with torch.no_grad():
        layer.quant_weight()
        layer.double()
        qw = layer.quant_weight()
    assert qw.dtype == torch.float64 and torch.equal(qw.value, fresh(layer))


def test_eval_without_no_grad_recomputes_so_gradients_reach_the_weight():
    layer = linear()
    for _ in range(2):
        layer.zero_grad()
        layer(X).sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_eval_cache_made_in_inference_mode_is_not_served_outside_it():
    layer = linear()
    calls = counting(layer)
    with torch.inference_mode():
        inside = layer(X)
        assert torch.equal(layer(X), inside) and len(calls) == 1
    with torch.no_grad():
        outside = layer.quant_weight()
    assert len(calls) == 2 and not outside.value.is_inference()
    x = X.clone().requires_grad_(True)
    layer.weight.requires_grad_(False)
    layer(x).sum().backward()  # an inference tensor here could not be saved for backward
    assert x.grad is not None


def test_eval_cache_can_be_switched_off():
    layer = linear()
    layer.cache_quant_weight = False
    calls = counting(layer)
    with torch.no_grad():
        layer(X)
        layer(X)
    assert len(calls) == 2


# ---- temporaries: functional_call and parametrizations (C1) ------------------------------------------
def test_functional_call_with_temporary_weights_is_never_stale():
    layer = linear()
    weight, bias = layer.weight.detach().clone(), layer.bias.detach()
    with torch.no_grad():
        for t in range(30):
            w = weight.clone()
            w[t, 2 * t + 1] += 10.0
            y = functional_call(layer, {"weight": w}, (X,))
            expected = F.linear(X, qz.quantize(w, qz.Int8WeightPerChannelFloat).value, bias)
            del w  # the next temporary may reuse this one's address and storage
            assert torch.equal(y, expected), t
        assert torch.equal(layer(X), F.linear(X, qz.quantize(weight, qz.Int8WeightPerChannelFloat).value, bias))


class _Scale(nn.Module):
    def forward(self, w):
        return w * 1.0


def test_parametrized_weight_is_never_stale():
    """The report's loop: the weight is recomputed on every access, so each forward quantizes a new
    temporary that may take the previous one's address and storage."""
    layer = linear()
    parametrize.register_parametrization(layer, "weight", _Scale())
    original = layer.parametrizations.weight.original
    stale = 0
    with torch.no_grad():
        for t in range(50):
            layer(X)
            original[t % 64, 2 * (t % 64) + 1] += 10.0  # a no_grad write to the parameter itself
            y = layer(X)
            layer.clear_weight_cache()
            stale += not torch.equal(y, layer(X))
        expected = F.linear(X, qz.quantize(original, qz.Int8WeightPerChannelFloat).value, layer.bias)
        assert torch.equal(layer(X), expected)
    assert stale == 0


# ---- quant_weight() hands out the caller's own object (C4) -------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda qw: qw.value.mul_(0), lambda qw: qw.value_.mul_(0), lambda qw: qw.scale_.mul_(0),
    lambda qw: qw.value.data.mul_(0),
], ids=["value", "value_", "scale_", "value.data"])
def test_in_place_work_on_quant_weight_does_not_reach_later_forwards(edit):
    layer = linear()
    with torch.no_grad():
        y0 = layer(X)
        qw = layer.quant_weight()
        edit(qw)
        again = layer.quant_weight()
        assert torch.equal(layer(X), y0)
    assert torch.equal(again.value, qz.quantize(layer.weight.detach(), qz.Int8WeightPerChannelFloat).value)


def test_quant_weight_is_a_copy_in_eval_and_fresh_in_training():
    layer = linear()
    with torch.no_grad():
        a, b = layer.quant_weight(), layer.quant_weight()
        assert a is not b and a.value.data_ptr() != b.value.data_ptr() and torch.equal(a.value, b.value)
        layer.train()
        c = layer.quant_weight()
    assert torch.equal(c.value, a.value)


# ---- stochastic rounding in eval (R1) ----------------------------------------------------------------
def stochastic_layer(seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    return QuantLinear(128, 64, weight_quant=qz.Int8WeightPerChannelFloat, weight_rounding="stochastic").eval()


def test_stochastic_eval_weight_depends_only_on_the_layer_state():
    a, b = stochastic_layer(), stochastic_layer()
    with torch.no_grad():
        torch.manual_seed(1)
        ya = a(X)
        torch.manual_seed(2)  # the global generator plays no part
        yb = b(X)
        assert torch.equal(ya, yb)
        for invalidate in (lambda l: l.clear_weight_cache(), lambda l: l.train().eval(), lambda l: l.to(torch.float32)):
            invalidate(a)
            assert torch.equal(a(X), ya)
        a.eval_rounding_seed = 7  # another seed is another draw
        assert not torch.equal(a(X), ya)


def test_stochastic_eval_weight_is_a_stochastic_rounding_of_the_weight():
    """Oracle: every element is one of its two neighbouring grid points ``floor`` and ``ceil``."""
    layer = stochastic_layer()
    w = layer.weight.detach()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    with torch.no_grad():
        value = layer.quant_weight().value
    lower, upper = torch.floor(w / scale) * scale, torch.ceil(w / scale) * scale
    assert bool(((value == lower) | (value == upper)).all())
    assert 0.3 < float((value == upper).float().mean()) < 0.7  # both directions occur


def test_quantize_takes_a_generator_for_stochastic_rounding():
    x = torch.randn(32, 64)
    draws = [qz.quantize(x, qz.Int8WeightPerTensorFloat, rounding="stochastic",
                         generator=torch.Generator().manual_seed(5)).value for _ in range(2)]
    other = qz.quantize(x, qz.Int8WeightPerTensorFloat, rounding="stochastic", generator=torch.Generator().manual_seed(6)).value
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], other)


# ---- the checksum itself ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(64, 128), (7, 33), (3,), (1024, 8)])
def test_checksum_changes_with_any_single_element_and_only_with_the_bytes(dtype, shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=dtype)
    base = weight_checksum(w)
    assert weight_checksum(w.clone()) == base
    assert weight_checksum(w.t().contiguous().t() if w.ndim == 2 else w.clone()) == base  # layout is not content
    bits = w.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]).view(-1)
    for i in torch.randint(0, w.numel(), (20,)).tolist():
        for bit in (0, 7, bits.element_size() * 8 - 1):  # lowest mantissa bit ... sign bit
            changed = bits.clone()
            changed[i] ^= torch.tensor(1, dtype=bits.dtype) << bit
            assert weight_checksum(changed.view(dtype).view(shape)) != base, (i, bit)


def test_checksum_sees_structured_writes_that_cancel_in_plain_sums():
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    base = weight_checksum(w)
    edits = {
        "two_sign_flips": lambda t: t[3, 10:12].neg_(),
        "row_sign_flip": lambda t: t[5].neg_(),
        "doubled": lambda t: t.mul_(2),
        "row_swap": lambda t: t.__setitem__([0, 1], t[[1, 0]]),
        "column_swap": lambda t: t.__setitem__((slice(None), [0, 256]), t[:, [256, 0]]),
        "transpose_of_square_block": lambda t: t[:64, :64].copy_(t[:64, :64].t().clone()),
        "zero_every_other_column": lambda t: t[:, ::2].zero_(),
    }
    seen = set()
    for name, edit in edits.items():
        changed = w.clone()
        edit(changed)
        value = weight_checksum(changed)
        assert value != base and value not in seen, name
        seen.add(value)


def test_checksum_of_non_contiguous_and_empty_weights():
    w = torch.randn(64, 128)
    assert weight_checksum(w.t()) == weight_checksum(w.t().contiguous())
    assert weight_checksum(w[:, ::2]) == weight_checksum(w[:, ::2].contiguous())
    assert weight_checksum(torch.empty(0, 4)) == weight_checksum(torch.empty(0, 4))


@pytest.mark.slow
def test_compiled_checksum_equals_eager(monkeypatch):
    monkeypatch.setenv("QZOO_COMPILE", "1")
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    compiled = weight_checksum(w)
    monkeypatch.setenv("QZOO_COMPILE", "0")
    assert weight_checksum(w) == compiled


@pytest.mark.parametrize("edit", [
    lambda q: q.learned_range.data.mul_(0.5), lambda q: q.learned_range.detach().numpy().__imul__(0.5),
    lambda q: q.learned_range.mul_(0.5),
], ids=["data", "numpy", "no_grad"])
def test_learned_weight_range_writes_are_seen(edit):
    layer = linear(weight_learned_scale=True)
    assert layer.weight_quant.init_learned_range(layer.weight.detach())
    with torch.no_grad():
        before = layer(X)
        edit(layer.weight_quant)
        after = layer(X)
    expected = uncached(layer, X)
    assert not torch.equal(expected, before) and torch.equal(after, expected)


def test_copies_of_a_layer_start_with_an_empty_cache():
    import io
    import pickle
    layer = linear()
    with torch.no_grad():
        y = layer(X)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), torch.load(buffer, weights_only=False)]
    for twin in copies:
        assert twin._weight_cache.value is None
        with torch.no_grad():
            assert torch.equal(twin(X), y)
            twin.weight.data[0, 1] += 10.0
            assert torch.equal(twin(X), uncached(twin, X)) and torch.equal(layer(X), y)


def test_threads_sharing_a_layer_get_the_sequential_result():
    import threading
    layer = linear()
    with torch.no_grad():
        expected = layer(X)
    results, errors = [], []

    def work():
        try:
            with torch.no_grad():
                for _ in range(20):
                    layer.clear_weight_cache()  # races entries being replaced against hits
                    results.append(layer(X))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 60 and all(torch.equal(y, expected) for y in results)
