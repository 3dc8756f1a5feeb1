"""QuantizedKVCache: a ``transformers`` cache that stores keys and values quantized and packed.

Pass it to ``generate`` (``model.generate(ids, cache=QuantizedKVCache(model.config, "fp8"))``; before
transformers 5.2x the argument is ``past_key_values``) or to a forward call. Each ``update`` quantizes the new keys and values (``(batch, kv_heads, tokens,
head_dim)``, after RoPE) with a dynamic quantizer whose scales are per token or per group of the
head dimension, packs them (:meth:`quantizers.QuantTensor.pack`: FP8 and INT8 one byte, INT4 and
FP4 two per byte, E8M0/E4M3 block scales one byte) and keeps only the packed chunks; attention gets
the whole cache unpacked (bit-identical to fake-quantizing each chunk once). With per-token and
per-group scales that is fake-quantizing each token, so generation equals a float cache with the
same quantizers applied to K and V inside attention, token for token (NVFP4's second-level fp32
scale is per chunk: per ``update`` call).

Formats (``KV_FORMATS``; or any declarative spec / activation quantizer class with ``token`` or
``group`` granularity, since a scale shared across tokens would change as the cache grows):

========== =========================================================== =====================
name       elements and scale                                           bytes per 64 values
========== =========================================================== =====================
fp8        OCP E4M3, one fp32 scale amax / 448 per token and head       64 + 4
int8       [-127, 127], one fp32 scale amax / 127 per token and head    64 + 4
int4       [-7, 7] per group of 32 (fp32 scale amax / 7)                32 + 8
mxfp8      OCP MXFP8: E4M3 per block of 32 with an E8M0 scale           64 + 2
nvfp4      NVFP4: E2M1 per block of 16, E4M3 block scale x fp32 scale   32 + 4 (+ 4 per chunk)
hifloat8   HiFloat8, one power-of-two fp32 scale per token and head     64 + 4
========== =========================================================== =====================

A group size that does not divide the head dimension raises ``ValueError`` with both sizes.

Every ``Cache`` method ``generate()`` (transformers 5.24) calls works as on a ``DynamicCache``:
``reorder_cache`` (beam search, beam sampling), ``crop`` (assisted decoding and prompt lookup roll
back rejected draft tokens; contrastive search), ``batch_select_indices`` and
``batch_repeat_interleave``, ``get_seq_length``, ``get_mask_sizes``, ``reset``. They index the
stored codes and scales together (:func:`take_packed`) and never quantize again, so the result is
bit for bit the dequantized cache indexed as ``DynamicCache`` indexes its float tensors. That is
exact because each stored value is ``decode(code) * scale`` with the scale of its own token or
group (and NVFP4's tensor scale, shared by its whole chunk and kept with it): moving a code with
its scale moves the value. Dequantizing and quantizing the selected rows again would not be in
general: NVFP4's tensor scale would be recomputed from the rows kept and change their codes (and it
would cost a full quantization per step). Bad arguments raise: ``crop`` with a positive value or more tokens than cached
(``ValueError``), batch indices out of range (``IndexError``) or not integers (``TypeError``),
``repeats`` below 1 (``ValueError``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from quantizers import PackedQuantTensor, Quantizer, pack_fp4, pack_fp6, pack_int4
from quantizers.formats import IntFormat
from quantizers.tensor.packed import element_codes

from .model.spec import spec_to_quantizer
from .quant_args import make_quantizer

KV_FORMATS: Dict[str, Dict[str, Any]] = {
    "fp8": {"format": "float8_e4m3fn", "granularity": "token"},
    "int8": {"format": "int8", "granularity": "token"},
    "int4": {"format": "int4", "granularity": "group", "group_size": 32},
    "mxfp8": {"format": "mxfp8"},
    "nvfp4": {"format": "nvfp4"},
    "hifloat8": {"format": "hifloat8", "granularity": "token"},
}
"""KV-cache format name -> the declarative spec of its (dynamic) quantizer."""
_LAYOUT = {"channel_axis": 1, "group_dim": -1}
KVFormat = Union[str, Mapping[str, Any], Type[Quantizer]]


def kv_quantizer(fmt: KVFormat, head_dim: int, argument: str = "format") -> nn.Module:
    """The runtime quantizer of KV-cache format ``fmt`` for keys/values of head dimension ``head_dim``."""
    if isinstance(fmt, str):
        if fmt not in KV_FORMATS:
            raise ValueError(f"QuantizedKVCache: {argument}={fmt!r} is not a KV-cache format; allowed: {', '.join(KV_FORMATS)} (or a spec dict)")
        fmt = KV_FORMATS[fmt]
    cls = spec_to_quantizer(fmt, role="input", path=argument) if isinstance(fmt, Mapping) else fmt
    quantizer = make_quantizer("QuantizedKVCache", "input", cls, {}, _LAYOUT)
    granularity = getattr(quantizer, "granularity", None)
    if granularity is None or granularity.kind not in ("token", "group") or getattr(quantizer, "observer", None) is not None:
        raise ValueError(
            f"QuantizedKVCache: {argument}={fmt!r} must be a dynamic quantizer with 'token' or 'group' granularity "
            f"(scales that do not change as the cache grows); got granularity {getattr(granularity, 'kind', None)!r}"
        )
    if granularity.kind == "group" and head_dim % granularity.group_size:
        raise ValueError(
            f"QuantizedKVCache: {argument}={fmt!r} has group_size={granularity.group_size}, which does not divide "
            f"the head dimension head_dim={head_dim}; use a group size that divides {head_dim}"
        )
    return quantizer


_BATCH, _TOKENS = 0, 2  # axes of a chunk's (batch, kv_heads, tokens, head_dim) value (and grouped value)
_PACKED_WORDS = {"nibble": (2, 1), "six_bit": (4, 3)}  # layout -> (codes, bytes) per whole storage word
_REPACK = {"nibble": (pack_int4, pack_fp4), "six_bit": (pack_fp6, pack_fp6)}


def _index(t: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(axis, index)``; one-byte float codes travel as ``uint8`` (not every device
    indexes every float8 dtype)."""
    if t.element_size() == 1 and t.dtype not in (torch.uint8, torch.int8):
        return t.view(torch.uint8).index_select(axis, index).view(t.dtype)
    return t.index_select(axis, index)


def _take_broadcast(t: Optional[torch.Tensor], shape: torch.Size, dim: int, index: torch.Tensor) -> Optional[torch.Tensor]:
    """Rows ``index`` along ``dim`` of a scale / zero point that broadcasts to a value of ``shape``;
    one that is shared along ``dim`` (size 1 there, or fewer dimensions) is kept as it is."""
    if t is None:
        return None
    axis = dim - (len(shape) - t.dim())
    if axis < 0 or t.shape[axis] != shape[dim]:
        return t
    return _index(t, axis, index)


def take_packed(packed: PackedQuantTensor, dim: int, index: torch.Tensor) -> PackedQuantTensor:
    """The packed tensor of ``packed.unpack()`` indexed by ``index`` (1-d, int64, in range) along
    ``dim`` (an axis before the grouped one), computed on the stored codes and scales.

    Exact: each element's value is ``decode(code) * scale`` of its own code and of the scale of its
    token or group (and a tensor scale shared by the chunk), so moving codes together with their
    scales moves the values bit for bit. Quantizing the dequantized values again would not be the
    same in general: a scale computed from a different set of values (NVFP4's tensor scale after
    beams are dropped) changes the codes.
    """
    shape = packed.value_shape
    codes = packed.codes
    if packed.layout in _PACKED_WORDS:
        per_word, word_bytes = _PACKED_WORDS[packed.layout]
        inner = math.prod(shape[dim + 1:])
        if inner % per_word:  # rows do not end on a storage word: move the element codes, pack again
            integer = isinstance(packed.fmt, IntFormat)
            codes = _REPACK[packed.layout][0 if integer else 1](element_codes(packed).index_select(dim, index).reshape(-1))
        else:
            codes = _index(codes.view(*shape[:dim + 1], inner // per_word * word_bytes), dim, index).reshape(-1)
    else:
        codes = _index(codes, dim, index)
    new_shape = torch.Size((*shape[:dim], index.numel(), *shape[dim + 1:]))
    original = packed.original_shape
    return dataclasses.replace(
        packed, codes=codes, value_shape=new_shape,
        scale=_take_broadcast(packed.scale, shape, dim, index),
        zero_point=_take_broadcast(packed.zero_point, shape, dim, index),
        outer_scale=_take_broadcast(packed.outer_scale, shape, dim, index),
        original_shape=None if original is None else torch.Size((*original[:dim], index.numel(), *original[dim + 1:])),
    )


class QuantizedKVLayer(DynamicLayer):
    """One layer's keys and values, as lists of packed chunks (one per ``update``).

    Every method ``generate()`` calls on a ``DynamicLayer`` does the same here, on the packed
    chunks: ``reorder_cache`` (beam search), ``batch_select_indices``, ``batch_repeat_interleave``
    (select and repeat batch rows), ``crop`` (drop the last tokens: assisted decoding, contrastive
    search), ``get_seq_length`` and ``get_mask_sizes``. They move stored codes together with their
    scales (:func:`take_packed`), never dequantize and quantize again, so the cached values after
    the operation are the cached values before it, indexed: bit for bit what ``DynamicLayer`` gives
    on the dequantized tensors.
    """

    def __init__(self, key_quantizer: nn.Module, value_quantizer: nn.Module) -> None:
        super().__init__()
        self.key_quantizer, self.value_quantizer = key_quantizer, value_quantizer
        self.packed_keys: List[PackedQuantTensor] = []
        self.packed_values: List[PackedQuantTensor] = []
        self.cumulative_length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """Quantize and pack the new states; return every cached key and value, unpacked."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        with torch.no_grad():
            self.packed_keys.append(self.key_quantizer(key_states).pack())
            self.packed_values.append(self.value_quantizer(value_states).pack())
        return self.states()

    def states(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every cached key and value, unpacked: ``(batch, kv_heads, tokens, head_dim)`` each."""
        with torch.no_grad():
            keys = torch.cat([p.unpack().value for p in self.packed_keys], dim=-2)
            values = torch.cat([p.unpack().value for p in self.packed_values], dim=-2)
        return keys, values

    def get_seq_length(self) -> int:
        """Number of cached tokens."""
        return self.cumulative_length

    @property
    def batch_rows(self) -> int:
        """Batch size of the cached states (0 before the first ``update``)."""
        return self.packed_keys[0].value_shape[0] if self.packed_keys else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed keys and values (codes and scales)."""
        return sum(p.nbytes for p in (*self.packed_keys, *self.packed_values))

    def reset(self) -> None:
        """Drop every cached token."""
        super().reset()
        self.packed_keys, self.packed_values, self.cumulative_length = [], [], 0

    def _take(self, dim: int, index: torch.Tensor) -> None:
        self.packed_keys = [take_packed(p, dim, index.to(p.codes.device)) for p in self.packed_keys]
        self.packed_values = [take_packed(p, dim, index.to(p.codes.device)) for p in self.packed_values]

    def _batch_index(self, indices: Any, method: str) -> torch.Tensor:
        """``indices`` (ints, or a bool mask over the batch) as in-range int64 row numbers."""
        rows = self.batch_rows
        index = torch.as_tensor(indices)
        if index.dtype == torch.bool:
            if index.shape != (rows,):
                raise IndexError(f"QuantizedKVCache.{method}: a boolean mask must have shape ({rows},) (the batch size); got {tuple(index.shape)}")
            return index.nonzero().reshape(-1)
        if index.dim() > 1 or index.is_floating_point() or index.is_complex():
            raise TypeError(f"QuantizedKVCache.{method}: indices must be a 1-d integer tensor (or a boolean mask); got {index.dtype} of shape {tuple(index.shape)}")
        index = index.reshape(-1).to(torch.int64)
        bad = (index >= rows) | (index < -rows)
        if bool(bad.any()):
            raise IndexError(f"QuantizedKVCache.{method}: index {int(index[bad][0])} is out of range for the batch size {rows}")
        return index % rows

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep batch rows ``beam_idx`` in that order (beam search), as ``DynamicLayer`` does with ``index_select``."""
        if self.get_seq_length() > 0:
            self._take(_BATCH, self._batch_index(beam_idx, "reorder_cache"))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` (ints or a boolean mask)."""
        if self.get_seq_length() > 0:
            self._take(_BATCH, self._batch_index(indices, "batch_select_indices"))

    def batch_repeat_interleave(self, repeats: Union[int, torch.Tensor]) -> None:
        """Repeat each batch row ``repeats`` times in place (``torch.repeat_interleave`` along the batch)."""
        if self.get_seq_length() == 0:
            return
        if isinstance(repeats, torch.Tensor) and repeats.dim() > 0:
            if repeats.shape != (self.batch_rows,) or repeats.is_floating_point() or bool((repeats < 0).any()):
                raise ValueError(f"QuantizedKVCache.batch_repeat_interleave: repeats must be non-negative integers, one per batch row ({self.batch_rows}); got {repeats}")
        elif isinstance(repeats, bool) or int(repeats) != repeats or int(repeats) < 1:
            raise ValueError(f"QuantizedKVCache.batch_repeat_interleave: repeats must be a positive integer; got {repeats!r}")
        rows = torch.arange(self.batch_rows)
        self._take(_BATCH, rows.repeat_interleave(repeats.cpu() if isinstance(repeats, torch.Tensor) else int(repeats)))

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` cached tokens (``tokens_to_remove <= 0``, as ``DynamicLayer.crop``).

        Whole chunks are dropped and the last kept one sliced: the kept tokens keep their codes and
        scales, so with per-token and per-group scales the cache is then the one those tokens alone
        would have built (NVFP4's tensor scale stays that of the chunk as it was fed).
        """
        if isinstance(tokens_to_remove, bool) or int(tokens_to_remove) != tokens_to_remove:
            raise TypeError(f"QuantizedKVCache.crop: tokens_to_remove must be an int <= 0; got {tokens_to_remove!r}")
        remove = -int(tokens_to_remove)
        if remove < 0:
            raise ValueError(
                f"Calling `crop` with a positive value (`{tokens_to_remove}`) is not supported. "
                "Please use a negative integer to remove that number of tokens from the cache instead."
            )
        if remove == 0 or not self.is_initialized:  # as DynamicLayer: nothing to do
            return
        if remove > self.cumulative_length:
            raise ValueError(
                f"QuantizedKVCache.crop({tokens_to_remove}): cannot remove {remove} tokens, the cache holds "
                f"{self.cumulative_length}; tokens_to_remove must be in [-{self.cumulative_length}, 0]"
            )
        keep = self.cumulative_length - remove
        keys, values, start = [], [], 0
        for k, v in zip(self.packed_keys, self.packed_values):
            tokens = k.value_shape[_TOKENS]
            if start + tokens > keep:
                if keep > start:
                    index = torch.arange(keep - start, device=k.codes.device)
                    keys.append(take_packed(k, _TOKENS, index))
                    values.append(take_packed(v, _TOKENS, index))
                break
            keys.append(k)
            values.append(v)
            start += tokens
        self.packed_keys, self.packed_values, self.cumulative_length = keys, values, keep


class QuantizedKVCache(Cache):
    """A ``transformers`` cache whose keys and values are stored as packed QuantTensors: each
    ``update`` stores ``pack(Q(x))`` (element codes + scales per token or group) and returns
    ``Q(x)`` of every cached token; ``nbytes`` counts the stored bytes.

    ``config`` is the model's config (or the model); ``format`` a name in ``KV_FORMATS``, a
    declarative spec (``{"format": "int4", "granularity": "group", "group_size": 64}``) or a
    dynamic activation quantizer class; ``value_format`` (default: ``format``) the values'.
    ``nbytes`` is the packed storage; ``bytes_per_token()`` the same per token of the batch.
    Beam search, prompt-lookup and assisted decoding reorder and crop the packed chunks exactly, as
    ``DynamicCache`` does its float tensors (see the module docstring).

    Example::

        cache = QuantizedKVCache(model.config, "fp8")
        out = model.generate(ids, cache=cache, max_new_tokens=32, do_sample=False)
        out = model.generate(ids, cache=QuantizedKVCache(model.config, "int4"), num_beams=4, max_new_tokens=32)
        cache.bytes_per_token()     # all layers, keys and values
    """

    def __init__(self, config: Any, format: KVFormat = "fp8", value_format: Optional[KVFormat] = None) -> None:
        config = getattr(config, "config", config)
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        keys = kv_quantizer(format, head_dim, "format")
        values = kv_quantizer(format if value_format is None else value_format, head_dim, "value_format")
        layers = [QuantizedKVLayer(keys, values) for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        self.head_dim = head_dim

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's packed keys and values."""
        return sum(layer.nbytes for layer in self.layers)

    def bytes_per_token(self) -> float:
        """``nbytes`` per cached token of one sequence (all layers, keys and values)."""
        layer = self.layers[0]
        batch = layer.packed_keys[0].value_shape[0] if layer.packed_keys else 1
        tokens = self.get_seq_length() * batch
        return self.nbytes / tokens if tokens else 0.0
