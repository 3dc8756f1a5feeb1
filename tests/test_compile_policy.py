"""The compile policy (quantizers/compile.py): compiling in any thread without writing
``torch._dynamo.config`` (reliability T1), falling back to eager only on compiler errors, the
"auto" policy (eager first, compiled in the background once it pays), and the weight path's
shape-specialised kernels.

Most cases compile small functions with Dynamo's ``"eager"`` backend: the policy is about when and
where Dynamo compiles, which inductor's C++ builds would only make slow to test. Bit equality of
inductor's kernels with eager ones is pinned in test_compile_fusion.py and test_formats_compile.py.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import torch

from conftest import assert_same_floats

import qlayers as qnn
import quantizers as qz
from quantizers import compile as qcompile
from quantizers import tensor_quantizer


class Config:
    """A quantizer-like configuration object: Dynamo specialises on the name of the rounding
    function, so each name is one graph."""

    def __init__(self, rounding: str, step: float = 0.5) -> None:
        self.rounding, self.step = rounding, step


def round_to_step(x, config):
    return getattr(torch, config.rounding)(x / config.step) * config.step


def qzoo_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "quantizers.compile"]


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def fresh(fn):
    """A copy of ``fn`` with its own code object, so Dynamo's cache entries of other tests (kept
    per code object) cannot serve it."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def in_thread(fn):
    """Run ``fn()`` in a new thread and return its result (re-raising its exception)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def dynamo_eager(monkeypatch):
    monkeypatch.setattr(qcompile, "_BACKEND", "eager")


@pytest.fixture
def policy(monkeypatch):
    """Set the policy for one test: ``policy("on" | "auto" | "off")``."""
    monkeypatch.delenv(qcompile.ENV_VAR, raising=False)

    def set_policy(name):
        qcompile.set_compile_enabled({"on": True, "off": False, "auto": None}[name])

    yield set_policy
    qcompile.set_compile_enabled(None)


@pytest.fixture
def pays_at_once(monkeypatch):
    """"auto" compiles a configuration on its first call (no eager time needed)."""
    monkeypatch.setattr(qcompile, "PAYOFF_SECONDS", 0.0)
    monkeypatch.setattr(qcompile, "PAYOFF_CALLS", 1)


ROUNDINGS = ("round", "floor", "ceil", "trunc", "fix", "sign", "neg", "abs", "sin", "cos")
CONFIGS = [Config(name) for name in ROUNDINGS]  # 10: more than Dynamo's default limit of 8


# ---- T1: any thread, no global config ------------------------------------------------------------
def test_reliability_T1_compiles_every_configuration_in_a_worker_thread(dynamo_eager, policy, caplog):
    """One configuration compiled in the main thread, then 10 more from a worker thread (whose
    Dynamo config is its own, limit 8): every one compiles; nothing falls back to eager."""
    policy("on")
    kernel = qcompile.compiled(fresh(round_to_step))
    limits = (torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit)
    x = torch.randn(64)
    kernel(x, Config("exp"))
    before = graphs()
    with caplog.at_level(logging.WARNING, logger="quantizers.compile"):
        results = in_thread(lambda: [kernel(x, config) for config in CONFIGS])
    assert graphs() - before == len(CONFIGS)
    assert not kernel.kernel.broken and not qzoo_messages(caplog)
    for config, got in zip(CONFIGS, results):
        assert torch.equal(got, round_to_step(x, config))
    assert (torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit) == limits
    assert in_thread(lambda: torch._dynamo.config.recompile_limit) == limits[0]


def test_reliability_T1_auto_policy_serves_compiled_graphs_to_a_worker_thread(dynamo_eager, policy, pays_at_once):
    policy("auto")
    kernel = qcompile.compiled(fresh(round_to_step))
    x = torch.randn(64)
    in_thread(lambda: [kernel(x, config) for config in CONFIGS])  # eager; each queues a compile
    assert qcompile.wait_for_compiles(timeout=120)
    states = kernel.kernel._states
    assert len(states) == len(CONFIGS) and all(s is qcompile._State.READY for s in states.values())
    before = graphs()
    results = in_thread(lambda: [kernel(x, config) for config in CONFIGS])  # compiled, no compiles
    assert graphs() == before
    for config, got in zip(CONFIGS, results):
        assert torch.equal(got, round_to_step(x, config))


@pytest.mark.slow
def test_activation_quantizers_compile_in_a_worker_thread_after_main_thread_use(dynamo_eager, policy, monkeypatch, caplog):
    """The T1 reproducer with real quantizers: one call in the main thread, then ten activation
    configurations from a worker thread, compiled, equal to eager."""
    policy("on")
    kernel = qcompile.compiled(fresh(tensor_quantizer._quantize_from_own_range))
    monkeypatch.setattr(tensor_quantizer, "_fused_dynamic_shape", kernel)
    quantizers = [
        qz.build_tensor_quantizer(qz.MXFloat8e4m3Act, rounding=rounding, saturating=saturating)
        for rounding in ("even", "away", "zero", "floor", "ceil") for saturating in (True, False)
    ]
    x = torch.randn(4, 64) * 100
    quantizers[0](x)
    before = graphs()
    with caplog.at_level(logging.WARNING, logger="quantizers.compile"):
        got = in_thread(lambda: [q(x).value_ for q in quantizers])
    assert graphs() > before and not kernel.kernel.broken and not qzoo_messages(caplog)
    policy("off")
    for q, value in zip(quantizers, got):
        assert_same_floats(value, q(x).value_, what=q.extra_repr())  # overflow NaNs included


# ---- errors ----------------------------------------------------------------------------------------
def test_the_kernels_own_error_is_raised_and_compilation_stays_on(policy):
    policy("on")
    kernel = qcompile.compiled(fresh(lambda t: t.reshape(7)))
    with pytest.raises(RuntimeError, match="shape"):
        kernel(torch.ones(3))
    assert not kernel.kernel.broken


def test_a_non_compiler_error_from_compiled_code_is_raised(monkeypatch, policy):
    def compile_raising_value_error(fn, **kwargs):
        def run(*args, **kw):
            raise ValueError("bad argument")
        return run

    monkeypatch.setattr(torch, "compile", compile_raising_value_error)
    policy("on")
    eager_calls = []
    kernel = qcompile.compiled(lambda t: eager_calls.append(1) or t)
    with pytest.raises(ValueError, match="bad argument"):
        kernel(torch.ones(3))
    assert not eager_calls and not kernel.kernel.broken


@pytest.mark.parametrize("inner, whole_kernel", [
    (RuntimeError("lowering broke"), False),  # one configuration's failure: that one runs eager
    ("no C++ compiler", True),  # the environment's: every configuration would fail
], ids=["configuration", "environment"])
def test_background_compiler_failure_falls_back_with_one_message(monkeypatch, policy, pays_at_once, caplog, inner, whole_kernel):
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    inner = InvalidCxxCompiler() if inner == "no C++ compiler" else inner

    def compile_failing(fn, **kwargs):
        def run(*args, **kw):
            raise BackendCompilerFailed(lambda: None, inner, None)
        return run

    monkeypatch.setattr(torch, "compile", compile_failing)
    policy("auto")
    kernel = qcompile.compiled(lambda t: t + 1)
    with caplog.at_level(logging.WARNING, logger="quantizers.compile"):
        for n in range(3):
            assert torch.equal(kernel(torch.zeros(n + 1)), torch.ones(n + 1))
            qcompile.wait_for_compiles(timeout=60)
    assert kernel.kernel.broken is whole_kernel
    expected_states = 1 if whole_kernel else 3
    assert list(kernel.kernel._states.values()) == [qcompile._State.FAILED] * expected_states
    assert len([m for m in qzoo_messages(caplog) if type(inner).__name__ in m]) == 1


def test_unknown_environment_value_names_the_allowed_ones(monkeypatch):
    monkeypatch.setenv(qcompile.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="QZOO_COMPILE='sometimes'.*'auto'"):
        qcompile.compile_policy()
    monkeypatch.setenv(qcompile.ENV_VAR, "auto")
    assert qcompile.compile_policy() == "auto" and qcompile.compile_enabled()


# ---- the auto policy ---------------------------------------------------------------------------------
def test_auto_runs_eager_until_a_configuration_pays(dynamo_eager, policy, monkeypatch):
    policy("auto")
    monkeypatch.setattr(qcompile, "PAYOFF_SECONDS", 3600.0)
    kernel = qcompile.compiled(fresh(round_to_step))
    submitted, before = qcompile.background_compiles(), graphs()
    x, config = torch.randn(32), Config("round")
    for _ in range(5):
        assert torch.equal(kernel(x, config), round_to_step(x, config))
    assert qcompile.background_compiles() == submitted and graphs() == before and not kernel.kernel._states


def test_auto_compiles_in_the_background_and_then_serves_compiled_graphs(dynamo_eager, policy, monkeypatch):
    policy("auto")
    monkeypatch.setattr(qcompile, "PAYOFF_SECONDS", 0.0)  # PAYOFF_CALLS (2) calls still needed
    kernel = qcompile.compiled(fresh(round_to_step))
    x, config = torch.randn(32), Config("floor")
    submitted = qcompile.background_compiles()
    kernel(x, config)
    assert qcompile.background_compiles() == submitted  # one call is no loop
    kernel(x, config)
    assert qcompile.background_compiles() == submitted + 1
    assert qcompile.wait_for_compiles(timeout=120)
    before = graphs()
    assert torch.equal(kernel(x, config), round_to_step(x, config))  # served compiled
    assert graphs() == before and list(kernel.kernel._states.values()) == [qcompile._State.READY]
    with torch.no_grad():  # another mode is another configuration, with its own payoff
        kernel(x, config)
        kernel(x, config)
    assert qcompile.wait_for_compiles(timeout=120)
    assert list(kernel.kernel._states.values()) == [qcompile._State.READY] * 2


def test_the_compile_thread_exits_when_idle_and_restarts_for_the_next_job(dynamo_eager, policy, pays_at_once):
    """An idle thread that ran compiled kernels keeps an OpenMP team alive, which throttles the
    caller's kernels (see BackgroundCompiler): the worker must not outlive its queue."""
    policy("auto")
    kernel = qcompile.compiled(fresh(round_to_step))
    for name in ("floor", "ceil"):
        submitted = qcompile.background_compiles()
        kernel(torch.randn(16), Config(name))
        assert qcompile.background_compiles() == submitted + 1
        assert qcompile.wait_for_compiles(timeout=120)
        deadline = time.monotonic() + 30
        while any(t.name == "qzoo-compile" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(t.name == "qzoo-compile" for t in threading.enumerate())
    assert list(kernel.kernel._states.values()) == [qcompile._State.READY] * 2


def test_auto_never_compiles_in_the_calling_thread(dynamo_eager, policy, pays_at_once):
    """A configuration marked ready whose guards fail (a new shape) runs eager in the caller."""
    policy("auto")
    kernel = qcompile.compiled(fresh(round_to_step), dynamic=False)
    config = Config("ceil")
    kernel(torch.randn(8), config)
    qcompile.wait_for_compiles(timeout=120)
    before = graphs()
    x = torch.randn(9)
    assert torch.equal(kernel.kernel._run_cached(x, config), round_to_step(x, config))
    assert graphs() == before


def test_nested_kernels_are_not_counted_while_the_outer_one_runs_eager(dynamo_eager, policy, pays_at_once):
    policy("auto")
    inner = qcompile.compiled(lambda t: t * 2)
    outer = qcompile.compiled(lambda t: inner(t) + 1)
    outer(torch.ones(2))
    qcompile.wait_for_compiles(timeout=120)
    assert not inner.kernel._states and len(outer.kernel._states) == 1


@pytest.mark.slow
def test_a_process_exiting_during_a_background_compile_exits_cleanly(tmp_path):
    """The exit waits for the compile in flight: a thread stopped inside the compiler while the
    interpreter finalizes aborted the process (``terminate called without an active exception``)."""
    script = textwrap.dedent("""
        import torch, quantizers as qz, quantizers.compile as qc
        qc.PAYOFF_SECONDS, qc.PAYOFF_CALLS = 0.0, 1
        qz.quantize(torch.randn(256, 256), qz.MXFloat4e2m1Weight)
        assert qc.background_compiles() >= 1
        print("done")
    """)
    env = {**__import__("os").environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(
        __import__("pathlib").Path(__file__).resolve().parents[1])}
    env.pop(qcompile.ENV_VAR, None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "done" and "qzoo" not in run.stderr


# ---- weights say so ------------------------------------------------------------------------------------
def test_weights_use_shape_specialised_kernels_and_activations_dynamic_ones(monkeypatch):
    calls = []
    for name in ("_fused_static_shape", "_fused_dynamic_shape"):
        real = getattr(tensor_quantizer, name)
        monkeypatch.setattr(tensor_quantizer, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    layer = qnn.QuantLinear(16, 8, weight_quant=qz.MXFloat4e2m1Weight, input_quant=qz.MXFloat8e4m3Act)
    layer(torch.randn(2, 16))
    assert calls == ["_fused_dynamic_shape", "_fused_static_shape"]  # input, then weight
    calls.clear()
    qz.quantize(layer.weight, qz.MXFloat4e2m1Weight)  # the caller did not say: dynamic
    assert calls == ["_fused_dynamic_shape"]


def test_meta_tensors_and_tensor_subclasses_run_eager_without_compiling(policy, pays_at_once):
    policy("auto")
    kernel = qcompile.compiled(lambda t: t * 2)
    submitted = qcompile.background_compiles()
    assert kernel(torch.empty(4, device="meta")).device.type == "meta"
    assert qcompile.background_compiles() == submitted and not kernel.kernel._states


def test_auto_compiles_the_backward_in_the_background_too(monkeypatch, policy, pays_at_once):
    """AOTAutograd compiles a backward graph on the first backward: for a QAT step that must happen
    in the background thread too, not in the training loop."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    compiled_in = []

    def counting(name):
        def compiler(graph, example_inputs):
            compiled_in.append((name, threading.current_thread().name))
            return make_boxed_func(graph.forward)
        return compiler

    monkeypatch.setattr(qcompile, "_BACKEND", aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward")))
    policy("auto")
    kernel = qcompile.compiled(fresh(round_to_step))
    weight, config = torch.nn.Parameter(torch.randn(16)), Config("sin")
    kernel(weight, config).sum().backward()  # eager; queues the compile
    assert qcompile.wait_for_compiles(timeout=120)
    assert sorted(name for name, _ in compiled_in) == ["backward", "forward"]
    assert {thread for _, thread in compiled_in} == {"qzoo-compile"}
    weight.grad = None
    kernel(weight, config).sum().backward()  # compiled forward and backward, nothing compiled here
    assert len(compiled_in) == 2
    assert torch.equal(weight.grad, torch.cos(weight.detach() / 0.5))


def test_eager_code_ignores_another_threads_compile():
    """torch.compiler.is_compiling() is process-wide in torch 2.13: while another thread (the
    background compiler) compiles, eager code here must still run its checks (a NaN has no code
    in E4M3's sibling without NaN), fill learned ranges and use its caches."""
    started, release = threading.Event(), threading.Event()

    def compile_elsewhere():
        with torch.compiler._compile_session_context():  # what Dynamo holds while compiling
            started.set()
            release.wait(30)

    thread = threading.Thread(target=compile_elsewhere)
    thread.start()
    try:
        started.wait(30)
        assert torch.compiler.is_compiling() and not qcompile.is_tracing()
        with pytest.raises(ValueError, match="cannot encode NaN"):
            qz.get_format("float4_e2m1fn").encode(torch.tensor([float("nan")]))
        quantizer = qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat)
        quantizer.range_source = "learned"  # starts from the first weight's own range
        quantizer(torch.randn(4, 8))
        assert quantizer.learned_range.numel() > 0
    finally:
        release.set()
        thread.join()


def test_is_tracing_is_true_inside_a_compiled_graph():
    def branch(x):
        return x + 1 if qcompile.is_tracing() else x - 1

    assert torch.equal(torch.compile(branch, fullgraph=True, backend="eager")(torch.zeros(1)), torch.ones(1))
    assert torch.equal(branch(torch.zeros(1)), -torch.ones(1))


def test_import_and_first_calls_do_not_load_the_compiler():
    """Cold start: importing qzoo and the first quantize / layer forward stay eager and never import
    torch._dynamo (two seconds on the CI machine before any compile)."""
    script = textwrap.dedent("""
        import sys, torch
        import quantizers as qz, qlayers as qnn
        assert "torch._dynamo" not in sys.modules, "import"
        qz.quantize(torch.randn(64, 64), qz.MXFloat4e2m1Weight)
        layer = qnn.QuantLinear(64, 64, input_quant=qz.Fp8e4m3OCPActPerTensorFloat)
        qnn.calibrate(layer, [torch.randn(4, 64)], progress=False)
        with torch.no_grad():
            layer.eval()(torch.randn(4, 64))
        assert "torch._dynamo" not in sys.modules, "first calls"
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])}
    env.pop(qcompile.ENV_VAR, None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_library_code_asks_is_tracing_not_the_process_wide_flag():
    """``torch.compiler.is_compiling()`` is true in every thread while any thread compiles (the
    background compiler included); library code asks ``quantizers.compile.is_tracing()``."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(root)) for package in ("quantizers", "qlayers") for path in (root / package).rglob("*.py")
        if path.name != "compile.py" and "torch.compiler.is_compiling()" in path.read_text()
    ]
    assert not offenders, f"use quantizers.compile.is_tracing() instead of torch.compiler.is_compiling() in {offenders}"
