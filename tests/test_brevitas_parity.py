"""Numerical parity with Brevitas 0.13.4 for the quantizers that share a name and a meaning, where
Brevitas follows the spec: ``brevitas.nn.QuantLinear(..., weight_quant=B).quant_weight()`` against
``quantizers.quantize(weight, Q)``, values and scales bit for bit.

Inputs avoid Brevitas's documented deviations (notes/mx_scale_rules.md §5): its MX scale uses a
float32 ``log2``, which is off by one just below a power of two, and it floors tiny blocks at 1e-10.
``MXInt8Weight`` is the known exception: Brevitas's grid is one bit finer and clips to [-128, 127];
qzoo follows OCP MXINT8 and the last tests pin both behaviours.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

brevitas = pytest.importorskip("brevitas")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    import brevitas.quant as bq
    import brevitas.quant.float_base as brevitas_float_base
    from brevitas.graph.calibrate import calibration_mode

import qlayers  # noqa: E402
import quantizers as qz  # noqa: E402
from mx_reference import assert_same_bits, mx_quantize  # noqa: E402

SHARED_NAMES = sorted(
    name for name, cls in vars(qz.zoo.predefined).items()
    if isinstance(cls, type) and issubclass(cls, qz.Quantizer) and cls.__module__ == qz.zoo.predefined.__name__
    and hasattr(bq, name)
)
"""Every predefined qzoo quantizer that has a namesake in ``brevitas.quant``."""

OCP_SPEC_NOT_BREVITAS = {"MXInt8Weight", "MXInt8Act"}
"""The documented exception (DESIGN.md): qzoo follows OCP MXINT8; pinned by the last tests below."""

FORMAT_BASES = {  # names without an element format: checked composed with each FP8 format mixin
    "FpOCPWeightPerTensorFloat", "FpOCPWeightPerChannelFloat", "FpOCPActPerTensorFloat",
    "FpOCPActPerChannelFloat2d", "FpFNUZWeightPerTensorFloat", "FpFNUZWeightPerChannelFloat",
    "FpFNUZActPerTensorFloat", "FpFNUZActPerChannelFloat2d",
}


def _role(name: str) -> str:
    return getattr(qz, name).role


WEIGHT_NAMES = [n for n in SHARED_NAMES if _role(n) == "weight" and n not in OCP_SPEC_NOT_BREVITAS | FORMAT_BASES]
STATIC_ACT_NAMES = [n for n in SHARED_NAMES if _role(n) == "act" and getattr(qz, n).observer is not None and n not in FORMAT_BASES]
DYNAMIC_ACT_NAMES = [n for n in SHARED_NAMES if _role(n) == "act" and getattr(qz, n).observer is None and n not in OCP_SPEC_NOT_BREVITAS]
BIAS_NAMES = [n for n in SHARED_NAMES if _role(n) == "bias"]


def test_every_shared_name_has_a_parity_test():
    covered = set(WEIGHT_NAMES) | set(STATIC_ACT_NAMES) | set(DYNAMIC_ACT_NAMES) | set(BIAS_NAMES)
    covered |= FORMAT_BASES | OCP_SPEC_NOT_BREVITAS
    assert set(SHARED_NAMES) == covered
    assert len(SHARED_NAMES) >= 50


def weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """Rows spanning ten decades; no 32-block maximum within 2^-12 (relative) below a power of
    two, where Brevitas's float32 log2 rounds up (a documented deviation)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features)) * np.logspace(-4, 4, out_features)[:, None]
    w = torch.from_numpy(w.astype(np.float32))
    blocks = torch.nn.functional.pad(w, (0, (-in_features) % 32)).reshape(out_features, -1, 32)
    amax = blocks.abs().amax(-1).double()
    fraction = amax / torch.exp2(torch.floor(torch.log2(amax)))
    assert (fraction < 2 - 2 ** -12).all(), "regenerate: a block maximum sits just below a power of two"
    return w


def brevitas_quant_weight(quant, w: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = qnn.QuantLinear(w.shape[1], w.shape[0], bias=False, weight_quant=quant)
        with torch.no_grad():
            layer.weight.copy_(w)
        return layer.quant_weight()


def assert_weight_parity(ours_cls, theirs_cls, w: torch.Tensor, name: str) -> None:
    theirs = brevitas_quant_weight(theirs_cls, w)
    ours = qz.quantize(w, ours_cls)
    expected = theirs.value.detach()
    if "FNUZ" in name:  # FNUZ has a single zero (0x80 is NaN): Brevitas keeps -0.0 there, qzoo +0.0
        assert not torch.signbit(ours.value[ours.value == 0]).any()
        expected = expected + 0.0
    assert_same_bits(ours.value, expected, f"{name} values")
    assert_same_bits(ours.scale.expand_as(ours.value), theirs.scale.detach().expand_as(ours.value), f"{name} scales")
    if name.startswith("Int"):  # Brevitas's float QuantTensors carry exponent/mantissa widths only
        assert ours.bit_width == int(theirs.bit_width)


@pytest.mark.parametrize("in_features", [64, 40])
@pytest.mark.parametrize("name", WEIGHT_NAMES)
def test_weight_quantizers_match_brevitas_bit_for_bit(name, in_features):
    w = weight(16, in_features, seed=in_features)
    if getattr(qz, name).scaling == "none":  # cast without scaling: reach the saturation points
        w = w * 1e3
    assert_weight_parity(getattr(qz, name), getattr(bq, name), w, name)


@pytest.mark.parametrize("name", [n for n in WEIGHT_NAMES if n.startswith("Fp8") and "Weight" in n])
def test_fp8_metadata_matches_brevitas(name):
    w = weight(8, 32, seed=1)
    theirs = brevitas_quant_weight(getattr(bq, name), w)
    ours = qz.quantize(w, getattr(qz, name))
    assert ours.exponent_bit_width == int(theirs.exponent_bit_width)
    assert ours.mantissa_bit_width == int(theirs.mantissa_bit_width)
    assert ours.exponent_bias == int(theirs.exponent_bias)


def _mxint8_block(amax: float) -> torch.Tensor:
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([amax, -amax, amax / 3, 0.5 / 64 * 2 ** np.floor(np.log2(amax))])
    return w


def test_mxint8_brevitas_deviation_is_one_bit_finer_and_clips_the_block_maximum():
    # Brevitas 0.13.4: LSB 2^(floor(log2 amax) - 7) and ints in [-128, 127], so amax 1.99 becomes
    # 127/128 = 0.9921875 and -1.99 becomes -1.0: the block maximum loses half its value.
    theirs = brevitas_quant_weight(bq.MXInt8Weight, _mxint8_block(1.99))
    assert theirs.value[0, :2].tolist() == [0.9921875, -1.0]
    assert theirs.scale[0, 0].item() == 2.0 ** -7


def test_mxint8_qzoo_follows_the_ocp_spec_instead():
    # OCP MXINT8: X = 2^floor(log2 1.99) = 1, elements k/64 with |k| <= 127: 1.99 -> 127/64.
    w = _mxint8_block(1.99)
    ours = qz.quantize(w, qz.MXInt8Weight)
    values, shared = mx_quantize(w.numpy(), "int8", axis=1)
    assert ours.value[0, :2].tolist() == [127 / 64, -127 / 64]
    assert_same_bits(ours.value, values, "MXINT8 values")
    assert ours.scale_.item() == shared.item() / 64 == 2.0 ** -6
    theirs = brevitas_quant_weight(bq.MXInt8Weight, w)
    assert not torch.equal(ours.value, theirs.value)


# ---- activations, biases and the format-less bases -------------------------------------------------


def brevitas_act(quant, batches, x, **kwargs):
    """Brevitas's flow: ``calibration_mode`` over ``batches``, then an eval forward of ``x``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = qnn.QuantIdentity(act_quant=quant, return_quant_tensor=True, **kwargs)
        if batches:
            layer.train()
            with torch.no_grad(), calibration_mode(layer):
                for batch in batches:
                    layer(batch)
        layer.eval()
        with torch.no_grad():
            return layer(x)


def qzoo_act(quant, batches, x):
    layer = qlayers.QuantIdentity(act_quant=quant, return_quant_tensor=True)
    if batches:
        qlayers.calibrate(layer, batches, progress=False)
    layer.eval()
    with torch.no_grad():
        return layer(x)


def activations(seed: int, scale: float = 1.0, shape=(8, 4, 16, 16)) -> torch.Tensor:
    """NCHW (per-channel 2d quantizers need it) with a heavy tail, so percentile != max."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    return x * (1 + 3 * (torch.rand(shape, generator=g) > 0.999))


def assert_act_parity(ours_cls, theirs_cls, batches, x, name, exact=True, **brevitas_kwargs):
    theirs = brevitas_act(theirs_cls, batches, x, **brevitas_kwargs)
    ours = qzoo_act(ours_cls, batches, x)
    their_scale = theirs.scale.detach().expand_as(x)
    if exact:  # the sign of a zero is not compared (Brevitas keeps -0.0 from clamping -0.3 to 0)
        assert_same_bits(ours.value + 0.0, theirs.value.detach() + 0.0, f"{name} values")
        assert_same_bits(ours.scale.expand_as(x), their_scale, f"{name} scales")
    else:  # averaged over batches: Brevitas's running mean differs from sum / n in the last bit
        torch.testing.assert_close(ours.scale.expand_as(x), their_scale, rtol=1e-6, atol=0)
        assert (ours.value == theirs.value).float().mean() > 0.99, name


@pytest.mark.parametrize("name", STATIC_ACT_NAMES)
def test_static_act_quantizers_match_brevitas_bit_for_bit_after_one_calibration_batch(name):
    x = activations(0)
    assert_act_parity(getattr(qz, name), getattr(bq, name), [x], x * 1.5, name)


@pytest.mark.parametrize("name", STATIC_ACT_NAMES)
def test_static_act_quantizers_average_batches_like_brevitas(name):
    batches = [activations(seed, scale=1 + seed) for seed in range(3)]
    assert_act_parity(getattr(qz, name), getattr(bq, name), batches, batches[1], name, exact=False)


@pytest.mark.parametrize("name", DYNAMIC_ACT_NAMES)
def test_dynamic_act_quantizers_match_brevitas_bit_for_bit(name):
    x = activations(1, scale=1e3 if getattr(qz, name).scaling == "none" else 1.0)  # reach saturation
    extra = {"group_dim": -1} if name.startswith("MX") else {}
    assert_act_parity(getattr(qz, name), getattr(bq, name), [], x, name, **extra)


@pytest.mark.parametrize("name", BIAS_NAMES)
def test_bias_quantizers_match_brevitas_bit_for_bit(name):
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 16)
    with torch.no_grad():
        reference.bias.mul_(300.0)  # some biases clip at 8 bits
    x = torch.randn(32, 64)
    kwargs = dict(weight_quant=qz.Int8WeightPerTensorFloat, input_quant=qz.Int8ActPerTensorFloat)
    ours = qlayers.QuantLinear(64, 16, bias_quant=getattr(qz, name), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = qnn.QuantLinear(64, 16, bias=True, bias_quant=getattr(bq, name), weight_quant=bq.Int8WeightPerTensorFloat,
                                 input_quant=bq.Int8ActPerTensorFloat)
    for layer in (ours, theirs):
        layer.load_state_dict(reference.state_dict(), strict=False)
    qlayers.calibrate(ours, [x], progress=False)
    theirs.train()
    with torch.no_grad(), calibration_mode(theirs):
        theirs(x)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert_same_bits(ours(x), theirs(x), f"{name} layer output")


_FORMAT_MIXINS = {"e4m3": ("Fp8e4m3Mixin",), "e5m2": ("Fp8e5m2Mixin",), "e2m3": ("Fp6e2m3Mixin",),
                  "e3m2": ("Fp6e3m2Mixin",), "e2m1": ("Fp4e2m1Mixin",)}


@pytest.mark.parametrize("base, element", [
    (base, element) for base in sorted(FORMAT_BASES) for element in _FORMAT_MIXINS
    if "FNUZ" not in base or element in ("e4m3", "e5m2")  # FNUZ is defined for FP8 only
])
def test_format_bases_composed_with_a_format_mixin_match_brevitas(base, element):
    (mixin,) = _FORMAT_MIXINS[element]
    ours_cls = type(f"{base}_{element}", (getattr(qz, base), getattr(qz, mixin)), {})
    theirs_cls = type(f"{base}_{element}", (getattr(bq, base), getattr(brevitas_float_base, mixin)), {})
    if getattr(qz, base).role == "weight":
        assert_weight_parity(ours_cls, theirs_cls, weight(16, 64, seed=64), base)
    else:
        x = activations(2)
        extra = {"per_channel_broadcastable_shape": (1, x.shape[1], 1, 1)} if "Channel" in base else {}
        assert_act_parity(ours_cls, theirs_cls, [x], x * 1.5, base, **extra)
