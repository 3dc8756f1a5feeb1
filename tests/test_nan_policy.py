"""The NaN/Inf policy of ``quantizers.scaling`` for every scaling kind (reliability N1, P3;
peer-exactness N3): a NaN or Inf element costs only itself (OCP MX / NVFP4: only its block) and
stays visible, and calibration that meets one warns.

Oracles: for the element-wise kinds, the same tensor with the special value replaced by 0 (the
policy says statistics read NaN/Inf as 0, and every range holds 0) plus float32 numpy formulas of
the scale; for MX the standalone ``mx_reference`` (NaN block -> NaN scale); hand-computed values.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from mx_reference import assert_same_bits, mx_quantize
from quantizers.formats import IntFormat
from quantizers.scaling import rules
from quantizers.scaling.granularity import Granularity

F32 = np.float32
SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def _inputs(seed: int, shape=(6, 32)):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal(shape) * np.exp2(rng.integers(-3, 4, shape))).astype(F32))


# ---- element-wise kinds: only the special element changes -----------------------------------------

ELEMENTWISE = {
    "float per-tensor": (qz.Fp8e4m3OCPWeightPerTensorFloat, {}),
    "float per-channel": (qz.Fp8e4m3OCPWeightPerChannelFloat, {}),
    "float per-token": (qz.Fp8e4m3OCPActPerTokenFloat, {}),
    "float per-group": (qz.Fp8e4m3OCPWeightPerTensorFloat, {"granularity": "group", "group_size": 8}),
    "float tile": (qz.Fp8e4m3OCPWeightPerTensorFloat, {"granularity": "tile", "tile_shape": (2, 8)}),
    "float e5m2 per-channel": (qz.Fp8e5m2OCPWeightPerChannelFloat, {}),
    "hifloat8 per-tensor": (qz.HiFloat8WeightPerTensorFloat, {}),
    "power of two": (qz.Int8WeightPerTensorFixedPoint, {}),
    "int symmetric per-tensor": (qz.Int8WeightPerTensorFloat, {}),
    "int symmetric per-channel": (qz.Int8WeightPerChannelFloat, {}),
    "int per-token": (qz.Int8ActPerTokenFloat, {}),
    "int4 per-group": (qz.Int4WeightPerGroupFloat, {"group_size": 8}),
    "int asymmetric": (qz.Int8WeightPerTensorFloat, {"symmetric": False}),
    "int minval": (qz.Int8WeightPerTensorFloat, {"symmetric": False, "zero_point_formulation": "minval"}),
    "int percentile": (qz.Int8ActPerTensorFloat, {}),
    "uint percentile": (qz.Uint8ActPerTensorFloat, {}),
    "int mse per-tensor": (qz.Int8WeightPerTensorFloatMSE, {}),
    "int mse per-channel": (qz.Int8WeightPerChannelFloatMSE, {}),
    "none (unit scale)": (qz.Fp8e4m3Weight, {}),
}


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("kind", ELEMENTWISE)
def test_one_nan_or_inf_changes_only_its_own_element(kind, special):
    quantizer, overrides = ELEMENTWISE[kind]
    x = _inputs(1)
    where = (2, 13)
    if kind == "uint percentile":
        x = x.abs()
    zeroed, bad = x.clone(), x.clone()
    zeroed[where], bad[where] = 0.0, SPECIALS[special]
    clean, got = qz.quantize(zeroed, quantizer, **overrides), qz.quantize(bad, quantizer, **overrides)
    assert torch.equal(got.scale_, clean.scale_) and torch.isfinite(got.scale_).all()
    assert torch.equal(got.zero_point_, clean.zero_point_)
    others = torch.ones_like(x, dtype=torch.bool)
    others[where] = False
    assert torch.equal(got.value[others], clean.value[others])
    value = got.value[where]
    if special == "nan":
        assert torch.isnan(value)
        return
    # ±Inf saturates (every format here saturates by default) to the grid's end.
    assert torch.isfinite(value)
    sign = 1 if special == "+inf" else -1
    if isinstance(got.fmt, IntFormat):
        assert got.int()[where] == (got.fmt.max_int if sign > 0 else got.fmt.min_int)
    else:
        assert got.minifloat()[where] == sign * got.fmt.max_value


@pytest.mark.parametrize("quantizer, levels", [
    (qz.Int8WeightPerTensorFloat, 127.0), (qz.Int8WeightPerTensorFloatMSE, None),
])
def test_one_nan_weight_keeps_every_other_element_as_the_float32_formula(quantizer, levels):
    # reliability N1: one NaN turned the scale into 1 and the error of every other element to 0.21.
    w = _inputs(2, (16, 16)).numpy() * F32(0.05)
    bad = w.copy()
    bad[3, 5] = np.nan
    qt = qz.quantize(torch.from_numpy(bad), quantizer)
    amax = np.max(np.abs(np.where(np.isnan(bad), F32(0), bad)))
    if levels is not None:
        s = F32(amax) / F32(levels)
        assert qt.scale_.item() == s
        expected = (np.clip(np.rint(bad / s), -127, 127) * s).astype(F32)
        assert_same_bits(qt.value.numpy(), expected, "per-tensor int8 with one NaN")
    else:  # the MSE search clips somewhere in [0.3, 1] x amax
        assert 0.3 * amax / 127 <= qt.scale_.item() <= amax / 127 * 1.0001
    others = ~np.isnan(bad)
    assert np.isnan(qt.value.numpy()[3, 5])
    assert np.abs(qt.value.numpy()[others] - w[others]).max() <= qt.scale_.item() / 2 * 1.0001


def test_per_channel_float_scale_of_a_nan_row_is_the_finite_amax_over_max():
    x = torch.tensor([[1.0, float("nan"), -224.0, 3.0], [float("inf"), 0.5, -0.25, 1.0]])
    qt = qz.quantize(x, qz.Fp8e4m3OCPWeightPerChannelFloat)
    assert qt.scale_.reshape(-1).tolist() == [224.0 / 448, float(np.float32(1.0) / np.float32(448))]
    assert qt.value[1, 0].item() == 1.0  # +Inf saturates to 448 * (1/448)


def test_an_all_nan_channel_gets_scale_one_and_stays_nan():
    x = torch.tensor([[float("nan")] * 4, [1.0, -2.0, 0.5, 4.0]])
    qt = qz.quantize(x, qz.Int8WeightPerChannelFloat)
    assert qt.scale_.reshape(-1).tolist() == [1.0, np.float32(4.0) / np.float32(127)]
    assert torch.isnan(qt.value[0]).all() and torch.isfinite(qt.value[1]).all()


def test_granularity_reductions_read_nan_and_inf_as_zero():
    x = torch.tensor([[float("nan"), -3.0, 2.0, 1.0], [5.0, float("-inf"), 7.0, float("inf")]])
    g = Granularity("channel", axis=0)
    assert g.amax(x).reshape(-1).tolist() == [3.0, 7.0]
    low, high = g.min_max(x)
    assert low.reshape(-1).tolist() == [-3.0, 0.0] and high.reshape(-1).tolist() == [2.0, 7.0]
    marked = g.amax(x, keep_nonfinite=True).reshape(-1)
    assert math.isnan(marked[0].item()) and marked[1].item() == math.inf


# ---- non-finite statistics are never replaced by scale 1 ----------------------------------------


@pytest.mark.parametrize("stat", [math.nan, math.inf])
def test_a_nonfinite_statistic_gives_a_nonfinite_scale_not_one(stat):
    s = torch.tensor([stat, 0.0, 2.0])
    int8, fp8 = IntFormat(8, narrow=True), qz.get_format("float8_e4m3fn")
    sym, _ = rules.int_symmetric_scale(s, int8)
    asym, _ = rules.int_asymmetric_scale(-s, s, int8)
    minval, _ = rules.int_minval_scale(-s, s, int8)
    flt, _ = rules.float_scale(s, fp8)
    for scale in (sym, asym, minval, flt, rules.power_of_two(flt, "ceil")):
        assert not math.isfinite(scale[0].item()) and math.isnan(scale[0].item()) == math.isnan(stat)
        assert scale[1].item() == 1.0  # an all-zero statistic still gives 1


def test_quantize_with_a_nan_range_gives_a_nan_output_not_scale_one():
    module = qz.zoo.build.build_tensor_quantizer(qz.Int8ActPerTensorFloat, {"channel_axis": 1}, observer=None)
    qt = module.quantize_with(torch.randn(4, 8), torch.tensor(math.nan))
    assert math.isnan(qt.scale_.item()) and torch.isnan(qt.value).all()


# ---- OCP MX: the block holding NaN/Inf gets the NaN scale and packs as 0xFF (P3) ------------------

MX = {
    "float8_e4m3fn": qz.MXFloat8e4m3Weight, "float8_e5m2": qz.MXFloat8e5m2Weight,
    "float6_e2m3fn": qz.MXFloat6e2m3Weight, "float6_e3m2fn": qz.MXFloat6e3m2Weight,
    "float4_e2m1fn": qz.MXFloat4e2m1Weight, "int8": qz.MXInt8Weight,
}


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("element", MX)
def test_mx_block_holding_nan_or_inf_packs_with_the_e8m0_nan_scale(element, special):
    x = _inputs(3, (2, 96)).numpy()
    x[1, 40] = SPECIALS[special]
    qt = qz.quantize(torch.from_numpy(x), MX[element])
    values, shared = mx_quantize(x, element, axis=1)
    assert_same_bits(qt.value.numpy(), values, "MX values")
    packed = qt.pack()
    scale_bytes = packed.scale.view(torch.uint8).reshape(2, 3)
    assert scale_bytes[1, 1].item() == 0xFF
    assert (scale_bytes[torch.arange(6).reshape(2, 3) != 4] != 0xFF).all()
    restored = packed.unpack()
    if element == "int8":  # integer codes have no -0 (packed.py): -0.0 elements come back +0.0
        values = np.where(values == 0, F32(0), values)
    assert_same_bits(restored.value.numpy(), values, "unpacked MX values")
    assert torch.isnan(restored.value[1, 32:64]).all() and torch.isfinite(restored.value[1, 64:]).all()


def test_mx_nan_block_element_codes_are_zero():
    x = torch.ones(1, 32)
    x[0, 3] = math.nan
    packed = qz.quantize(x, qz.MXFloat4e2m1Weight).pack()
    assert packed.codes.view(torch.uint8).tolist() == [0] * 16
    assert packed.scale.view(torch.uint8).reshape(-1).tolist() == [0xFF]


def test_mx_mse_search_keeps_the_nan_block_marked():
    x = _inputs(4, (2, 64))
    x[0, 5] = math.nan
    qt = qz.quantize(x, qz.MXFloat8e4m3WeightMSE)
    assert math.isnan(qt.scale_[0, 0, 0].item()) and torch.isfinite(qt.scale_.reshape(-1)[1:]).all()
    assert qt.pack().scale.view(torch.uint8).reshape(-1)[0].item() == 0xFF


# ---- calibration: ranges stay those of the finite data, and it warns once naming the layer ------


def _n1_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    cfg = {"weights": {"format": "int8", "granularity": "channel"}, "inputs": {"format": "int8"}}
    x = torch.randn(64, 16)
    return model, qlayers.quantize_model(model, cfg), x


def test_one_nan_in_a_calibration_batch_keeps_the_scale_and_warns_naming_the_layer():
    # reliability N1's reproducer: the scale became 1.0 and the relative error 0.267, silently.
    model, q, x = _n1_model()
    bad, zeroed = x.clone(), x.clone()
    bad[3, 5], zeroed[3, 5] = math.nan, 0.0
    with pytest.warns(RuntimeWarning, match=r"NaN/Inf .*0\.input_quant \(1 element\)"):
        qlayers.calibrate(q, [x, bad, x], progress=False)
    _, reference, _ = _n1_model()
    qlayers.calibrate(reference, [x, zeroed, x], progress=False)
    q.eval(), reference.eval()
    with torch.no_grad():
        scale = q[0].input_quant(x).scale_
        assert torch.equal(scale, reference[0].input_quant(x).scale_) and scale.item() != 1.0
        y, ref = q(x), model(x)
    assert torch.isfinite(y).all()
    assert float((y - ref).norm() / ref.norm()) < 0.02  # clean calibration: 0.0099 (0.267 before)


@pytest.mark.parametrize("observer", ["mean", "global_minmax", "ema_minmax", "minmax"])
def test_observers_keep_a_finite_range_after_batches_with_nan_and_inf(observer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    q = qlayers.quantize_model(model, {"inputs": {"format": "int8", "observer": observer}})
    batches = [torch.randn(4, 8) for _ in range(3)]
    batches[1][0, 0], batches[2][1, 1] = math.nan, math.inf
    with pytest.warns(RuntimeWarning, match="2 elements"):
        qlayers.calibrate(q, batches, progress=False)
    assert torch.isfinite(q[0].input_quant.observer.high).all()


def test_clean_calibration_does_not_warn(recwarn):
    _, q, x = _n1_model()
    qlayers.calibrate(q, [x, x], progress=False)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ---- the fused (compiled) kernels follow the same policy, bit for bit ----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("quantizer", [
    qz.Fp8e4m3OCPWeightPerTensorFloat, qz.Int8WeightPerChannelFloat, qz.MXFloat4e2m1Weight, qz.NVFloat4e2m1Weight,
], ids=lambda q: q.__name__)
def test_compiled_kernels_treat_nan_and_inf_like_eager(quantizer, caplog):
    from quantizers import compile as qcompile

    x = _inputs(5, (8, 48))
    x[1, 3], x[4, 40], x[6, 0] = math.nan, math.inf, -math.inf
    module = qz.build_tensor_quantizer(quantizer)
    qcompile.set_compile_enabled(True)
    try:
        with caplog.at_level("WARNING", logger="quantizers.compile"):
            fused = module(x)
    finally:
        qcompile.set_compile_enabled(None)
    assert "failed" not in caplog.text  # fullgraph compilation, no eager fallback
    eager = qz.build_tensor_quantizer(quantizer)(x)
    assert_same_bits(fused.value_, eager.value_.numpy(), "values")
    assert_same_bits(fused.scale_, eager.scale_.numpy(), "scales")
