"""``evaluate``: one model, several quantization configs, one table of float-vs-quantized metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .metrics import embedding_agreement, perplexity, sentence_embeddings, token_windows
from .presets import resolve_config
from .sentences import builtin_sentences

TASKS = ("auto", "perplexity", "embeddings")
ConfigLike = Union[str, Path, Mapping[str, Any]]


@dataclass
class Result:
    """One row: ``label`` (config name, ``+rotation`` when rotated), ``metrics`` and the ``seconds``
    the measurement took (quantization and calibration included)."""

    label: str
    metrics: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def detect_task(model: nn.Module) -> str:
    """``"perplexity"`` for a causal LM (``*ForCausalLM``, ``*LMHeadModel``, ``config.is_decoder``),
    else ``"embeddings"``."""
    name = type(model).__name__
    decoder = name.endswith(("ForCausalLM", "LMHeadModel")) or bool(getattr(getattr(model, "config", None), "is_decoder", False))
    return "perplexity" if decoder else "embeddings"


def _quantize(model: nn.Module, config: Any, calibration: List[Dict[str, torch.Tensor]]) -> nn.Module:
    from ..model import calibrate, quantize_model
    from ..model.calibrate import static_quantizers

    qmodel = quantize_model(model, config).eval()
    if any(True for _ in static_quantizers(qmodel)):
        calibrate(qmodel, calibration, progress=False)
    return qmodel


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    configs: Union[Sequence[ConfigLike], Mapping[str, ConfigLike]] = ("fp8",),
    *,
    task: str = "auto",
    text: Optional[str] = None,
    sentences: Optional[Sequence[str]] = None,
    rotate: Union[bool, str] = False,
    seq_len: int = 128,
    max_windows: Optional[int] = None,
    batch_size: int = 8,
    calibration_batches: int = 4,
    progress: bool = True,
) -> List[Result]:
    """Float and quantized ``model`` side by side, one :class:`Result` per config.

    ``task="perplexity"`` (causal LMs): metrics ``ppl`` (see :func:`.perplexity`) and
    ``ppl_ratio`` (quantized / float) on ``text`` (default: the built-in sentences joined by
    newlines). ``task="embeddings"`` (encoders): ``cosine_mean``, ``cosine_min`` and
    ``nn_agreement`` of the quantized sentence embeddings against the float ones
    (:func:`.embedding_agreement`) on ``sentences`` (default: the 240 built-in ones).
    ``"auto"`` picks by the model class (:func:`detect_task`).

    Each config is a preset name (:data:`qlayers.evaluate.PRESETS`), a ``.json``/``.yaml`` file or
    a config dict; ``configs`` may also map row labels to configs. ``model`` itself is never changed. Configs with static activation ranges are
    calibrated on the first ``calibration_batches`` batches of the evaluation data (a quick
    harness, not a held-out protocol). ``rotate=True`` applies :func:`qlayers.rotate` first (Llama
    and Qwen2 only); ``"both"`` gives rows without and with it. tqdm progress bars unless
    ``progress=False``.
    """
    if task not in TASKS:
        raise ValueError(f"evaluate(task={task!r}): expected one of {TASKS}")
    if rotate not in (False, True, "both"):
        raise ValueError(f"evaluate(rotate={rotate!r}): expected False, True or 'both'")
    task = detect_task(model) if task == "auto" else task
    variants = {False: [False], True: [True], "both": [False, True]}[rotate]
    results: List[Result] = []
    if task == "perplexity":
        windows = token_windows(tokenizer, "\n".join(builtin_sentences()) if text is None else text, seq_len, max_windows)
        calibration = [{"input_ids": b} for b in windows.split(batch_size)[:calibration_batches]]

        def measure(m: nn.Module) -> Dict[str, float]:
            return {"ppl": perplexity(m, windows, batch_size=batch_size, progress=progress)}
    else:
        sentences = builtin_sentences() if sentences is None else list(sentences)
        calibration = [dict(tokenizer(sentences[i:i + batch_size], padding=True, return_tensors="pt"))
                       for i in range(0, min(len(sentences), batch_size * calibration_batches), batch_size)]
        reference: List[torch.Tensor] = []

        def measure(m: nn.Module) -> Dict[str, float]:
            emb = sentence_embeddings(m, tokenizer, sentences, batch_size=batch_size, progress=progress)
            if not reference:
                reference.append(emb)
            return embedding_agreement(reference[0], emb)

    for rotated in variants:
        start = time.perf_counter()
        base = model
        if rotated:
            from ..transforms import rotate as rotate_model
            base = rotate_model(model)
        suffix = " +rotation" if rotated else ""
        results.append(Result("float" + suffix, measure(base), time.perf_counter() - start))
        named = configs.items() if isinstance(configs, Mapping) else [(None, c) for c in configs]
        for name, config in named:
            start = time.perf_counter()
            label, resolved = resolve_config(config, base)
            label = label if name is None else str(name)
            results.append(Result(label + suffix, measure(_quantize(base, resolved, calibration)),
                                  time.perf_counter() - start))
    if task == "perplexity":
        for r in results:
            r.metrics["ppl_ratio"] = r.metrics["ppl"] / results[0].metrics["ppl"]
    return results


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table: one row per result, one column per metric (4 significant digits)."""
    keys = list(results[0].metrics)
    width = max(len(r.label) for r in results) + 2
    lines = ["config".ljust(width) + "".join(k.rjust(14) for k in keys)]
    for r in results:
        lines.append(r.label.ljust(width) + "".join(f"{r.metrics[k]:14.4g}" for k in keys))
    return "\n".join(lines)
