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
Beam search (reordering the cache) and cropping are not supported and raise.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from quantizers import PackedQuantTensor, Quantizer

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


class QuantizedKVLayer(DynamicLayer):
    """One layer's keys and values, as lists of packed chunks (one per ``update``)."""

    is_croppable = False

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
            keys = torch.cat([p.unpack().value for p in self.packed_keys], dim=-2)
            values = torch.cat([p.unpack().value for p in self.packed_values], dim=-2)
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    @property
    def nbytes(self) -> int:
        """Bytes of the packed keys and values (codes and scales)."""
        return sum(p.nbytes for p in (*self.packed_keys, *self.packed_values))

    def reset(self) -> None:
        super().reset()
        self.packed_keys, self.packed_values, self.cumulative_length = [], [], 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("QuantizedKVCache does not reorder its packed states: beam search is not supported; use greedy decoding or sampling")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("QuantizedKVCache does not repeat its packed states across the batch")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("QuantizedKVCache does not select batch rows of its packed states")


class QuantizedKVCache(Cache):
    """A ``transformers`` cache whose keys and values are stored as packed QuantTensors: each
    ``update`` stores ``pack(Q(x))`` (element codes + scales per token or group) and returns
    ``Q(x)`` of every cached token; ``nbytes`` counts the stored bytes.

    ``config`` is the model's config (or the model); ``format`` a name in ``KV_FORMATS``, a
    declarative spec (``{"format": "int4", "granularity": "group", "group_size": 64}``) or a
    dynamic activation quantizer class; ``value_format`` (default: ``format``) the values'.
    ``nbytes`` is the packed storage; ``bytes_per_token()`` the same per token of the batch.

    Example::

        cache = QuantizedKVCache(model.config, "fp8")
        out = model.generate(ids, cache=cache, max_new_tokens=32, do_sample=False)
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
