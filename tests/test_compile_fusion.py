"""The fused (torch.compile) quantization paths equal the eager ones bit for bit, and a compiler
failure falls back to eager with one log message."""
import logging

import pytest
import torch

import quantizers as qz
from quantizers import compile as qcompile

FUSED_QUANTIZERS = [
    qz.Fp8e4m3OCPWeightPerTensorFloat, qz.MXFloat4e2m1Weight, qz.NVFloat4e2m1Weight,
    qz.Int4WeightPerGroupFloat, qz.Uint4WeightPerGroupFloat, qz.HiFloat8WeightPerTensorFloat,
]


@pytest.fixture
def compile_on():
    qcompile.set_compile_enabled(True)
    yield
    qcompile.set_compile_enabled(None)


def _quantize(x, quantizer, **overrides):
    return qz.build_tensor_quantizer(quantizer, **overrides)(x)


@pytest.mark.parametrize("quantizer", FUSED_QUANTIZERS, ids=lambda q: q.__name__)
def test_fused_quantizer_is_bit_identical_to_eager(compile_on, quantizer):
    torch.manual_seed(0)
    x = torch.randn(24, 80) * torch.logspace(-3, 3, 80)  # many binades, a dim that doesn't divide 32
    fused = _quantize(x, quantizer)
    qcompile.set_compile_enabled(False)
    eager = _quantize(x, quantizer)
    assert torch.equal(fused.value_, eager.value_)
    assert torch.equal(fused.scale_, eager.scale_)


@pytest.mark.parametrize("rounding", ["even", "away", "zero", "floor", "ceil"])
def test_fused_rounding_modes_are_bit_identical_to_eager(compile_on, rounding):
    torch.manual_seed(1)
    x = torch.randn(8, 64) * 10
    fused = _quantize(x, qz.MXFloat8e4m3Weight, rounding=rounding)
    qcompile.set_compile_enabled(False)
    assert torch.equal(fused.value_, _quantize(x, qz.MXFloat8e4m3Weight, rounding=rounding).value_)


def test_switch_and_environment_variable_turn_compilation_off(monkeypatch):
    monkeypatch.setenv(qcompile.ENV_VAR, "0")
    assert not qcompile.compile_enabled()
    monkeypatch.setenv(qcompile.ENV_VAR, "1")
    assert qcompile.compile_enabled()
    qcompile.set_compile_enabled(False)
    try:
        assert not qcompile.compile_enabled()
    finally:
        qcompile.set_compile_enabled(None)
    with pytest.raises(TypeError, match="enabled"):
        qcompile.set_compile_enabled("yes")


def test_compiler_failure_falls_back_to_eager_with_one_message(monkeypatch, caplog):
    from torch._inductor.exc import InvalidCxxCompiler

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise InvalidCxxCompiler()  # what inductor raises without a C++ compiler
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    calls = []
    kernel = qcompile.compiled(lambda t: calls.append(1) or t * 2)
    qcompile.set_compile_enabled(True)
    try:
        with caplog.at_level(logging.WARNING, logger="quantizers.compile"):
            assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
            assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
    finally:
        qcompile.set_compile_enabled(None)
    messages = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(messages) == 1 and "No working C++ compiler" in messages[0].getMessage()
    assert len(calls) == 2  # both calls ran the eager function


def test_an_error_of_the_kernel_itself_is_raised_not_swallowed(monkeypatch):
    qcompile.set_compile_enabled(True)
    try:
        kernel = qcompile.compiled(lambda t: t.reshape(7))
        with pytest.raises(RuntimeError):
            kernel(torch.ones(3))
    finally:
        qcompile.set_compile_enabled(None)

