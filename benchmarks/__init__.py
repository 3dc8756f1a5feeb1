"""qzoo benchmark suite: speed of fake quantization and quantized layers against float and
Brevitas baselines, and peak memory of a QAT step.

Run ``python -m benchmarks.run`` (``--quick`` for a smoke run); see ``benchmarks/README.md``.

- :mod:`benchmarks.timing`: interleaved A/B timing (medians, minima, first-call time, compiles).
- :mod:`benchmarks.memory`: peak live tensor bytes of a step (profiler on CPU, allocator on CUDA).
- :mod:`benchmarks.cases`: what a benchmark case is; :mod:`benchmarks.suite` lists them.
- :mod:`benchmarks.report`: the Markdown table and the JSON file.
- :mod:`benchmarks.diagnose`: profile one case (torch.profiler, cProfile, compile counters).
"""
