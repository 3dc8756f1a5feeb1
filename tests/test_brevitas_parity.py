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

import quantizers as qz  # noqa: E402
from mx_reference import assert_same_bits, mx_quantize  # noqa: E402

SAME_NAME_AND_MEANING = [
    "Int8WeightPerTensorFloat",
    "Int8WeightPerChannelFloat",
    "Fp8e4m3OCPWeightPerTensorFloat",
    "Fp8e4m3OCPWeightPerChannelFloat",
    "Fp8e5m2OCPWeightPerTensorFloat",
    "Fp8e5m2OCPWeightPerChannelFloat",
    "Fp8e4m3FNUZWeightPerTensorFloat",
    "Fp8e4m3FNUZWeightPerChannelFloat",
    "Fp8e5m2FNUZWeightPerTensorFloat",
    "Fp8e5m2FNUZWeightPerChannelFloat",
    "MXFloat8e4m3Weight",
]


@pytest.fixture(autouse=True)
def _eager_kernels(monkeypatch):
    monkeypatch.setenv("QZOO_COMPILE", "0")


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


@pytest.mark.parametrize("in_features", [64, 40])
@pytest.mark.parametrize("name", SAME_NAME_AND_MEANING)
def test_weight_quantizers_match_brevitas_bit_for_bit(name, in_features):
    w = weight(16, in_features, seed=in_features)
    theirs = brevitas_quant_weight(getattr(bq, name), w)
    ours = qz.quantize(w, getattr(qz, name))
    expected = theirs.value.detach()
    if "FNUZ" in name:  # FNUZ has a single zero (0x80 is NaN): Brevitas keeps -0.0 there, qzoo +0.0
        assert not torch.signbit(ours.value[ours.value == 0]).any()
        expected = expected + 0.0
    assert_same_bits(ours.value, expected, f"{name} values")
    assert_same_bits(ours.scale.expand_as(ours.value), theirs.scale.detach().expand_as(ours.value), f"{name} scales")
    if name.startswith("Int"):  # Brevitas's float QuantTensors carry exponent/mantissa widths only
        assert ours.bit_width == int(theirs.bit_width)


@pytest.mark.parametrize("name", [n for n in SAME_NAME_AND_MEANING if n.startswith("Fp8")])
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
