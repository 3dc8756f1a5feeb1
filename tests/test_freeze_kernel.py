"""The dequantize kernel of frozen layers (quantizers/tensor/packed_dequant.py): its arithmetic
decoders against hand-written code tables, every path it takes (nibble pairs decoded apart, scales
that vary along the last dim, the table decoder, one code per byte, the odd-length fallback) equal
to the fake-quant layer bit for bit, eager and compiled, and one fused kernel per weight shape."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import qlayers
import quantizers as qz
from qlayers.model import spec_to_quantizer
from quantizers import compile as qcompile
from quantizers.formats import IntFormat, get_format
from quantizers.tensor.packed_dequant import _ARITHMETIC, decoder_for

# OCP MX spec table 5 (FP4 E2M1): codes 0-7 positive, 8-15 their negatives (code 8 is -0).
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
INT4 = [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1]  # two's complement nibbles


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _float_value(code: int, e_bits: int, m_bits: int, bias: int) -> float:
    """The value of a float code without Inf/NaN codes, from its fields (float64 formula)."""
    sign = -1.0 if code >> (e_bits + m_bits) & 1 else 1.0
    e, m = code >> m_bits & (2 ** e_bits - 1), code & (2 ** m_bits - 1)
    magnitude = m / 2 ** m_bits * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2 ** m_bits) * 2.0 ** (e - bias)
    return math.copysign(magnitude, sign)


@pytest.mark.parametrize("fmt, decoder, table", [
    (get_format("float4_e2m1fn"), "float", E2M1),
    (get_format("float4_e1m2"), "float", [_float_value(c, 1, 2, 1) for c in range(16)]),
    (get_format("float6_e2m3fn"), "float", [_float_value(c, 2, 3, 1) for c in range(64)]),
    (get_format("float6_e3m2fn"), "float", [_float_value(c, 3, 2, 3) for c in range(64)]),
    (IntFormat(bits=4, signed=True), "int", INT4),
    (IntFormat(bits=4, signed=True, narrow=True), "int", INT4),
    (IntFormat(bits=4, signed=False), "uint", list(range(16))),
    (IntFormat(bits=8, signed=True), "int", list(range(128)) + list(range(-128, 0))),
])
def test_arithmetic_decoders_match_the_hand_tables(fmt, decoder, table):
    assert decoder_for(fmt) == decoder
    got = _ARITHMETIC[decoder](torch.arange(len(table), dtype=torch.int32).to(torch.uint8), fmt)
    assert got.dtype == torch.float32
    assert torch.equal(bits(got), bits(torch.tensor(table, dtype=torch.float32)))  # -0.0 included


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "hifloat8"])
def test_formats_with_special_codes_use_the_code_table(name):
    assert decoder_for(get_format(name)) == "table"


def _spec(fmt, granularity="channel", **extra):
    return spec_to_quantizer(dict({"format": fmt, "granularity": granularity}, **extra), role="weight")


# (weight quantizer, layer overrides, in_features, the PackedWeight path it takes)
PATHS = {
    "int4_channel": (_spec("int4"), {}, 64, "nibbles decoded apart"),
    "int4_scale_along_last_dim": (_spec("int4"), {"weight_channel_axis": 1}, 64, "nibbles decoded apart"),
    "int4_odd_length": (_spec("int4"), {}, 63, "dequantize_fields"),
    "uint4_group_zero_point": (qz.Uint4WeightPerGroupFloat, {"weight_group_size": 16}, 64, "nibbles decoded apart"),
    "e1m2": (_spec("float4_e1m2"), {}, 64, "nibbles decoded apart"),
    "mxfp6_e3m2": (qz.MXFloat6e3m2Weight, {}, 64, "byte triples decoded apart"),
    "mxfp6_odd_groups": (_spec("float6_e2m3fn"), {}, 62, "dequantize_fields"),
    "hifloat8_table": (qz.HiFloat8WeightPerTensorFloat, {}, 64, "one code per byte"),
    "int8_byte": (qz.Int8WeightPerChannelFloat, {}, 64, "one code per byte"),
    "mxfp4": (qz.MXFloat4e2m1Weight, {}, 64, "nibbles decoded apart"),
    "nvfp4": (qz.NVFloat4e2m1Weight, {}, 64, "nibbles decoded apart"),
    "fp8_byte": (qz.Fp8e4m3OCPWeightPerChannelFloat, {}, 64, "one code per byte"),
}


def _layer(case, dtype=torch.float32):
    quant, overrides, in_features, _ = PATHS[case]
    torch.manual_seed(0)
    layer = qlayers.QuantLinear(in_features, 24, weight_quant=quant, dtype=dtype, **overrides).eval()
    with torch.no_grad():  # many binades and small negatives that round to -0 in float formats
        layer.weight.mul_(torch.logspace(-4, 2, in_features, dtype=dtype))
    return layer


def _expected(layer, x):
    """The fake-quant layer's weight value and output, eager."""
    qcompile.set_compile_enabled(False)
    try:
        with torch.no_grad():
            weight, output = layer.quant_weight(), layer(x)
    finally:
        qcompile.set_compile_enabled(None)
    value = weight.value + 0.0 if isinstance(weight.fmt, IntFormat) else weight.value  # integer codes have no -0
    return value, output


def _frozen_equals(layer, x, expected) -> bool:
    with torch.no_grad():
        return torch.equal(bits(layer.quant_weight().value), bits(expected[0])) and torch.equal(bits(layer(x)), bits(expected[1]))


@pytest.mark.parametrize("case", list(PATHS))
def test_every_kernel_path_equals_the_fake_quant_layer_eager(case):
    layer = _layer(case)
    x = torch.randn(5, PATHS[case][2])
    expected = _expected(layer, x)
    qlayers.freeze(layer)
    assert "weight" not in dict(layer.named_parameters())
    assert _frozen_equals(layer, x, expected)
    expected_path = PATHS[case][3]
    packed = layer.packed_weight
    assert (packed._static is None) == (expected_path == "dequantize_fields")
    layouts = {"nibbles decoded apart": "nibble", "byte triples decoded apart": "six_bit", "one code per byte": "byte"}
    if packed._static is not None:
        assert packed._static[2] == layouts[expected_path]


@pytest.mark.parametrize("case, dtype", [("mxfp4", torch.float32), ("nvfp4", torch.bfloat16),
                                         ("uint4_group_zero_point", torch.float32), ("int4_scale_along_last_dim", torch.float32),
                                         ("mxfp6_e3m2", torch.float32)])
def test_compiled_kernel_is_one_fused_kernel_equal_to_the_fake_quant_layer(case, dtype, caplog):
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    layer = _layer(case, dtype)
    x = torch.randn(5, PATHS[case][2], dtype=dtype)
    expected = _expected(layer, x)
    qcompile.set_compile_enabled(False)
    qlayers.freeze(layer)
    qcompile.set_compile_enabled(True)  # compile on first call: the forward below runs the compiled graph
    try:
        with config.patch(fx_graph_cache=False), caplog.at_level(logging.WARNING, logger="quantizers.compile"):
            _, code = run_and_get_code(lambda: layer.quant_weight())
            assert _frozen_equals(layer, x, expected)
    finally:
        qcompile.set_compile_enabled(None)
    assert "failed" not in caplog.text  # compiled, no eager fallback
    # one graph, one generated C++ kernel (codes + scales -> value_), no aten op run apart
    assert len(code) == 1 and code[0].count("async_compile.cpp_pybinding(") == 1
    call = code[0][code[0].index("def call("):]
    assert "aten." not in call and "extern_kernels." not in call


def test_frozen_kernel_configuration_is_shared_by_layers_of_one_format():
    """Under the "auto" policy the layers of a model pay for one compilation together: their
    kernel calls have the same configuration key whatever their shapes (shapes key graphs, not
    configurations)."""
    from quantizers.compile_background import call_key, shape_free

    for quant, overrides in ((qz.MXFloat4e2m1Weight, {}), (qz.Uint4WeightPerGroupFloat, {"weight_group_size": 16})):
        layers = [qlayers.freeze(qlayers.QuantLinear(n, m, weight_quant=quant, **overrides).eval())
                  for n, m in ((64, 32), (128, 64))]
        keys = set()
        for layer in layers:
            p = layer.packed_weight
            scale = p.scale.view(torch.uint8) if p.scale.element_size() == 1 else p.scale
            args = (p.codes.view(p._codes_shape), scale, p.zero_point, p.outer_scale, *p._static)
            keys.add(shape_free(call_key(args, {})))
        assert len(keys) == 1


def test_nan_blocks_come_back_nan():
    """An MX block that held Inf stores the E8M0 NaN scale; the kernel's clamp keeps NaN NaN."""
    layer = qlayers.QuantLinear(64, 4, bias=False, weight_quant=qz.MXFloat4e2m1Weight).eval()
    with torch.no_grad():
        layer.weight[1, 3] = math.inf
    x = torch.randn(2, 64)
    expected = layer.quant_weight().value
    assert torch.isnan(expected[1, :32]).all() and not torch.isnan(expected[1, 32:]).any()
    qlayers.freeze(layer)
    got = layer.quant_weight().value
    assert torch.equal(torch.isnan(got), torch.isnan(expected)) and torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert torch.isnan(F.linear(x, got)[:, 1]).all()
