"""W8A8 PTQ on real weights: the pretrained all-MiniLM-L6-v2, every encoder Linear with INT8 weights
and static per-tensor INT8 inputs, by round-to-nearest (RTN), SmoothQuant and AWQ.

Same sentences, metrics and table as :mod:`benchmarks.ptq_minilm` (mean cosine of the mean-pooled
sentence embeddings to FP32, nearest-neighbour agreement). Each method quantizes a fresh copy,
runs its algorithm on the calibration sentences, then calibrates the input ranges on them
(``qlayers.calibrate``); ``seconds`` is the algorithm's time alone. Residual adds and embeddings
stay float. Run ``python -m benchmarks.ptq_w8a8_minilm`` (``--quick``: first encoder layer, 32
sentences).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

import qlayers
from qlayers import ptq

from .hf_transformers import embed
from .ptq_minilm import batches, load_minilm, quality, sentences, table

FORMATS = {  # label: (weights, inputs)
    "W8A8 INT8 (W per-channel, A per-tensor)": ({"format": "int8", "granularity": "channel"}, {"format": "int8"}),
    "W8A8 INT8 per-tensor": ({"format": "int8"}, {"format": "int8"}),
}

METHODS: Dict[str, Optional[Callable]] = {
    "RTN": None,
    "SmoothQuant a=0.5": lambda model, data: ptq.smoothquant(model, data, alpha=0.5, progress=False),
    "SmoothQuant a=0.8": lambda model, data: ptq.smoothquant(model, data, alpha=0.8, progress=False),
    "AWQ (grids_num 20)": lambda model, data: ptq.awq(model, data, grids_num=20, progress=False),
}


def encoder_config(label: str, layers: Optional[Sequence[str]]) -> dict:
    weights, inputs = FORMATS[label]
    section = {"weights": weights, "inputs": inputs}
    return {"weights": None, "inputs": None, "functional_adds": False, "layers": {p: section for p in layers or ["encoder.*"]}}


def run(labels: Sequence[str], n_eval: int = 256, n_calibration: int = 128, layers: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per (format, method): quality metrics and the algorithm's wall seconds."""
    tokenizer, model = load_minilm()
    evaluation = batches(tokenizer, sentences(n_eval, seed=1))
    calibration = batches(tokenizer, sentences(n_calibration, seed=2))
    reference = embed(model, evaluation)
    rows = []
    for label in labels:
        for method, algorithm in METHODS.items():
            quantized = qlayers.quantize_model(model, encoder_config(label, layers))
            start = time.perf_counter()
            if algorithm is not None:
                algorithm(quantized, calibration)
            seconds = time.perf_counter() - start
            qlayers.calibrate(quantized, calibration, progress=False)
            rows.append(dict(format=label, method=method, seconds=seconds, **quality(reference, embed(quantized, evaluation))))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first encoder layer, 32 sentences, one format")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--sentences", type=int, default=256)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        rows = run(list(FORMATS)[:1], n_eval=32, n_calibration=16, layers=["encoder.layer.0.*"])
    else:
        rows = run(args.formats, n_eval=args.sentences)
    print(table(rows))


if __name__ == "__main__":
    main()
