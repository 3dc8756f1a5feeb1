"""Float vs quantized, measured the way users compare configs: ``python -m qlayers.evaluate``.

- Encoders (BERT, all-MiniLM-L6-v2): sentence-embedding cosine and nearest-neighbour agreement
  with the float model on 240 built-in sentences (or a file, one sentence per line).
- Decoders (Llama, Qwen2, GPT-2 causal LMs): perplexity on a text file (non-overlapping windows).

The same command compares configs, given as preset names (:data:`PRESETS`) or JSON/YAML files::

    python -m qlayers.evaluate --model minilm --config fp8 --config mxfp4 --config my_config.yaml
    python -m qlayers.evaluate --model path/to/llama --text wiki.txt --config int4 --rotate both

or from Python: ``evaluate(model, tokenizer, ["fp8", "mxfp4"])`` returns one :class:`Result` per
row and :func:`format_table` prints them.
"""
from .compare import Result, detect_task, evaluate, format_table
from .metrics import embedding_agreement, perplexity, sentence_embeddings, token_windows
from .presets import PRESETS, resolve_config
from .sentences import builtin_sentences

__all__ = [
    "evaluate", "format_table", "Result", "detect_task", "PRESETS", "resolve_config",
    "perplexity", "token_windows", "sentence_embeddings", "embedding_agreement", "builtin_sentences",
]
