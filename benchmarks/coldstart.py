"""Section 0: a new user's first calls, each in a fresh process with an empty inductor cache.

A child process (``python -m benchmarks.coldstart``, with ``TORCHINDUCTOR_CACHE_DIR`` set to a new
temporary directory and the parent's ``QZOO_COMPILE``) times, in order:

- ``import torch``, then ``import quantizers, qlayers``;
- the first ``quantizers.quantize`` of a 1024x1024 float32 weight with ``MXFloat4e2m1Weight``;
- ``qlayers.calibrate`` of a ``QuantLinear(1024, 1024)`` with FP8 weights and a static FP8 input
  quantizer (``Fp8e4m3OCPWeightPerTensorFloat``, ``Fp8e4m3OCPActPerTensorFloat``) on one batch of 64;
- that layer's first eval-mode forward (``torch.no_grad()``, batch 64).

Each figure is seconds (wall clock); the row's ratio is the figure over its target (1.0 s for the
first quantize and the first forward), so ``<= 1`` passes. The process is started ``repeats``
times (at most 5); medians and minima are reported.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List

if TYPE_CHECKING:  # the child process must import torch only when it times it
    from .cases import Case, Context

#: metric -> (row name, target seconds or None for information only)
METRICS = {
    "import_torch_s": ("import torch", None),
    "import_qzoo_s": ("import quantizers, qlayers", None),
    "first_quantize_s": ("first quantize, MXFP4 weight 1024x1024", 1.0),
    "calibrate_s": ("calibrate QuantLinear(1024, 1024), FP8 w + static FP8 in, 1 batch", None),
    "first_forward_s": ("first eval forward of that layer, batch 64", 1.0),
}
MAX_PROCESSES = 5
ROOT = Path(__file__).resolve().parent.parent


def child() -> Dict[str, float]:
    """The timed first calls (runs in the fresh process)."""
    times: Dict[str, float] = {}
    start = time.perf_counter()
    import torch

    times["import_torch_s"] = time.perf_counter() - start
    start = time.perf_counter()
    import qlayers
    import quantizers

    times["import_qzoo_s"] = time.perf_counter() - start
    weight = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    quantizers.quantize(weight, quantizers.MXFloat4e2m1Weight)
    times["first_quantize_s"] = time.perf_counter() - start

    torch.manual_seed(0)
    layer = qlayers.QuantLinear(
        1024, 1024, weight_quant=quantizers.Fp8e4m3OCPWeightPerTensorFloat,
        input_quant=quantizers.Fp8e4m3OCPActPerTensorFloat,
    )
    batches = torch.randn(2, 64, 1024, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    qlayers.calibrate(layer, [batches[0]], progress=False)
    times["calibrate_s"] = time.perf_counter() - start
    layer.eval()
    start = time.perf_counter()
    with torch.no_grad():
        layer(batches[1])
    times["first_forward_s"] = time.perf_counter() - start
    times["compiles_queued"] = quantizers.compile.background_compiles()
    return times


def fresh_process() -> Dict[str, float]:
    """Run :func:`child` in a new Python process with an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="qzoo-coldstart-inductor-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.coldstart"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600,
        )
    if run.returncode != 0:
        raise RuntimeError(f"cold-start process failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _builder(ctx: Context) -> Dict[str, Any]:
    if ctx.device.type != "cpu":
        raise RuntimeError("the cold-start case runs on CPU only")
    return {"qzoo": fresh_process}


def cases() -> List[Case]:
    from .cases import Case

    return [Case(
        section="cold_start", name="fresh process", build=_builder, compares=(), kind="cold", quick=True,
        meta={"metrics": {k: {"name": n, "target_s": t} for k, (n, t) in METRICS.items()}},
    )]


def summarize(runs: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Per metric: median and minimum over the processes, with the samples."""
    return {
        metric: dict(median=statistics.median(r[metric] for r in runs), min=min(r[metric] for r in runs),
                     samples=[r[metric] for r in runs])
        for metric in METRICS
    }


def repeat(measure: Callable[[], Dict[str, float]], repeats: int) -> List[Dict[str, float]]:
    return [measure() for _ in range(max(1, min(repeats, MAX_PROCESSES)))]


if __name__ == "__main__":
    print(json.dumps(child()))
