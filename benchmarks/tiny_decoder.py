"""A tiny Llama trained in seconds on the built-in sentences, with outlier channels injected exactly.

A random-weight decoder predicts nearly uniformly, so its perplexity barely moves under
quantization; this one is trained (a few hundred AdamW steps on ``qlayers.evaluate``'s 240
sentences, word-level vocabulary) so that perplexity measures something. It is evaluated on the
text it was trained on: the numbers compare configs, not language models.

:func:`inject_outliers` then gives it the activation outliers real LLMs have, without changing its
function: RMSNorm channel ``c`` times ``alpha`` and the matching input column of the linears after
it divided by ``alpha``; ``up_proj`` row ``r`` times ``alpha`` and ``down_proj`` column ``r``
divided by it (SwiGLU is linear in ``up``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import torch

from qlayers.evaluate import builtin_sentences

_WORD = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary (``<unk>`` = 0): the callable interface
    ``tokenizer(text, add_special_tokens=False)["input_ids"]`` that ``qlayers.evaluate`` uses."""

    def __init__(self, corpus: Sequence[str]) -> None:
        words = sorted({w.lower() for line in corpus for w in _WORD.findall(line)})
        self.vocab: Dict[str, int] = {"<unk>": 0, "\n": 1, **{w: i + 2 for i, w in enumerate(words)}}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> List[int]:
        ids: List[int] = []
        for i, line in enumerate(text.split("\n")):
            ids += ([1] if i else []) + [self.vocab.get(w.lower(), 0) for w in _WORD.findall(line)]
        return ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> Dict[str, List[int]]:
        return {"input_ids": self.encode(text)}


def train_tiny_llama(steps: int = 300, hidden: int = 128, intermediate: int = 384, layers: int = 2,
                     seed: int = 0) -> Tuple[torch.nn.Module, WordTokenizer, str]:
    """``(model, tokenizer, text)``: a LlamaForCausalLM trained on ``text`` (the built-in sentences)."""
    import transformers

    text = "\n".join(builtin_sentences())
    tokenizer = WordTokenizer(builtin_sentences())
    ids = torch.tensor(tokenizer.encode(text))
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    window = 32
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - window, (16,), generator=g)
        batch = torch.stack([ids[s:s + window] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer, text


@torch.no_grad()
def inject_outliers(model: torch.nn.Module, channels: Sequence[int] = (3, 40, 70, 100),
                    mlp_channels: Sequence[int] = (7, 200), alpha: float = 30.0) -> torch.nn.Module:
    """Make ``channels`` of every norm output and ``mlp_channels`` of every ``down_proj`` input
    ``alpha`` times larger, with the inverse in the next weights (the float function is unchanged)."""
    for layer in model.model.layers:
        for norm, readers in ((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                              (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])):
            norm.weight[list(channels)] *= alpha
            for linear in readers:
                linear.weight[:, list(channels)] /= alpha
        layer.mlp.up_proj.weight[list(mlp_channels)] *= alpha
        layer.mlp.down_proj.weight[:, list(mlp_channels)] /= alpha
    return model
