"""The "with rotation" column of the transformer tables (issue 13): 4-bit decoder perplexity without and with ``qlayers.rotate``.

    python -m benchmarks.rotation_table          # ~2-3 min on a quiet 2-core machine (training the tiny Llama)
    python -m benchmarks.rotation_table --quick  # 100 training steps
    python -m benchmarks.rotation_table --json out.json

Rotation applies to pre-norm RMSNorm decoders (Llama, Qwen2), not to BERT/MiniLM: BERT's
LayerNorms subtract the mean and sit after the residual add (post-LN), and no rotation of the
residual stream commutes with them. So the rotation column is measured on the tiny Llama of
:mod:`benchmarks.tiny_decoder` (trained on the built-in sentences, then given activation outlier
channels by an exact rescaling), one row per :data:`qlayers.evaluate.PRESETS` format (weights and
Linear inputs; embeddings, lm_head and residual adds float): perplexity / float perplexity on its
training text, without and with rotation. The MiniLM cosine per format is the attention helper's
table in the same benchmark family; :func:`rotation_rows` is what it calls for this column.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from typing import Dict, List, Sequence

import torch

FORMATS = ("int8", "fp8", "hifloat8", "mxfp8", "mxfp4", "nvfp4", "int4")


def rotation_rows(formats: Sequence[str] = FORMATS, steps: int = 300) -> Dict[str, Dict[str, float]]:
    """``{label: metrics}`` from :func:`qlayers.evaluate.evaluate` with ``rotate="both"`` on the tiny Llama."""
    from qlayers.evaluate import evaluate

    from .tiny_decoder import inject_outliers, train_tiny_llama

    model, tokenizer, text = train_tiny_llama(steps=steps)
    inject_outliers(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # calibration notes of the static presets
        results = evaluate(model, tokenizer, list(formats), text=text, rotate="both", seq_len=64)
    return {r.label: r.metrics for r in results}


def table(rows: Dict[str, Dict[str, float]], formats: Sequence[str] = FORMATS) -> str:
    """Markdown: one row per format, perplexity ratio to float without and with rotation."""
    lines = ["| format (W + A) | tiny Llama ppl / float | with rotation |", "| --- | --- | --- |",
             f"| float (ppl {rows['float']['ppl']:.4g}) | 1 | {rows['float +rotation']['ppl_ratio']:.4g} |"]
    lines += [f"| {f} | {rows[f]['ppl_ratio']:.3f} | {rows[f + ' +rotation']['ppl_ratio']:.3f} |" for f in formats]
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rotation_table", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 training steps instead of 300")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = rotation_rows(steps=100 if args.quick else 300)
    print(table(rows))
    print(f"timing: {time.perf_counter() - start:.1f} s, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
