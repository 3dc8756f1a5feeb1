"""The two measurements of :mod:`qlayers.evaluate`: decoder perplexity and encoder embedding agreement.

- :func:`perplexity`: the text is tokenized once and cut into non-overlapping windows of
  ``seq_len`` tokens (the GPTQ/WikiText protocol); ``ppl = exp(sum NLL / number of predicted
  tokens)``, each window predicting its tokens 2..L from the ones before (natural log, nats).
- :func:`sentence_embeddings`: the last hidden states mean-pooled over the attention mask (the
  sentence-transformers recipe of all-MiniLM-L6-v2).
- :func:`embedding_agreement`: per-sentence cosine ``<a, b> / (|a| |b|)`` between float and
  quantized embeddings (mean and min), and the share of sentences whose nearest neighbour (highest
  cosine among the other sentences) is the same under both.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.calibrate import _progress  # the one optional-tqdm wrapper


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_windows(tokenizer: Any, text: str, seq_len: int, max_windows: Optional[int] = None) -> torch.Tensor:
    """``(num_windows, seq_len)`` token ids: ``text`` tokenized once (no special tokens), cut into
    non-overlapping windows; a shorter tail is dropped unless it is the only window."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: a window needs at least 2 tokens (one to predict)")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError(f"the text has {ids.numel()} token(s); perplexity needs at least 2")
    count = max(ids.numel() // seq_len, 1)
    if max_windows is not None:
        count = min(count, max_windows)
    length = min(seq_len, ids.numel())
    return ids[: count * length].reshape(count, length)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 8, progress: bool = True) -> float:
    """``exp(mean NLL)`` of a causal LM over ``windows`` (from :func:`token_windows`), in float64.

    ``model(input_ids=...)`` must return ``.logits`` of shape ``(batch, length, vocab)``.
    """
    total, count = 0.0, 0
    batches = windows.split(batch_size)
    for batch in _progress(batches, len(batches), progress, "perplexity"):
        batch = batch.to(_device(model))
        logits = model(input_ids=batch).logits[:, :-1].to(torch.float64)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return float(torch.exp(torch.tensor(total / count, dtype=torch.float64)))


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 32,
                        max_length: int = 128, progress: bool = True) -> torch.Tensor:
    """``(len(sentences), hidden)`` float32 embeddings: last hidden states mean-pooled over the mask."""
    out: List[torch.Tensor] = []
    starts = range(0, len(sentences), batch_size)
    for start in _progress(starts, len(starts), progress, "embeddings"):
        batch = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        batch = {k: v.to(_device(model)) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state.to(torch.float32)
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out).cpu()


def embedding_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> Dict[str, float]:
    """``cosine_mean``, ``cosine_min`` (per sentence, reference vs candidate) and ``nn_agreement``
    (share of sentences whose nearest other sentence is the same in both), all in [0, 1] or [-1, 1]."""
    if reference.shape != candidate.shape or reference.dim() != 2 or reference.shape[0] < 2:
        raise ValueError(f"embedding_agreement needs two (n >= 2, hidden) tensors of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(candidate.shape)}")
    a, b = reference.to(torch.float64), candidate.to(torch.float64)
    cosine = F.cosine_similarity(a, b, dim=1)

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        similarity = x @ x.T
        similarity.fill_diagonal_(float("-inf"))
        return similarity.argmax(dim=1)

    agree = (neighbours(a) == neighbours(b)).to(torch.float64).mean()
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()), "nn_agreement": float(agree)}
