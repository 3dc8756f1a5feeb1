"""The eval-mode cache of a layer's quantized weight.

Weights change rarely in eval mode, so a layer keeps the QuantTensor of its weight and serves it
again while nothing it depends on changed. The cache key holds:

- the weight tensor: identity, ``_version`` (bumped by in-place ops such as optimizer steps and
  ``load_state_dict``'s copy), storage pointer, shape, strides, dtype and device;
- the weight quantizer: identity and a signature of its public attributes and buffers (so
  replacing ``layer.weight_quant`` or changing, say, its ``fmt`` or ``rounding`` recomputes);
- whether inference mode is on (inference tensors may not be used outside it).

In-place writes through ``weight.data`` (``layer.weight.data.mul_(2)``) or NumPy views do not bump
the parameter's version counter. The cache therefore also compares a fingerprint of the values:

- ``check_values="sample"`` (default): ``FINGERPRINT_SIZE`` evenly strided elements, a few
  microseconds per forward; it catches whole-tensor writes (scaling, copying, re-initialising) but
  not an edit of single elements off the sample.
- ``"full"``: a copy of the whole weight, compared on every forward (one extra read of the weight
  per forward and one extra copy in memory): never stale, whatever the write.
- ``"none"``: the key alone.

After editing single elements through ``.data``, call ``layer.clear_weight_cache()`` (or write
under ``torch.no_grad()`` to the parameter itself, which bumps its version).

Layers use the cache only in eval mode, outside ``torch.compile`` and when no gradient is needed
for the weight; they clear it on ``train()`` and ``load_state_dict``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from quantizers import QuantTensor


def module_signature(module: nn.Module) -> Tuple[Any, ...]:
    """Identity and state of ``module`` and its submodules: public attributes by value (tensors by
    identity and version) and every parameter/buffer by identity and version."""
    parts = []
    for sub in module.modules():
        parts.append(id(sub))
        for name, item in vars(sub).items():
            if not name.startswith("_"):
                parts.append((name, _tensor_token(item) if isinstance(item, torch.Tensor) else item))
        for name, tensor in (*sub._parameters.items(), *sub._buffers.items()):
            parts.append((name, None if tensor is None else _tensor_token(tensor)))
    return tuple(parts)


def _tensor_token(tensor: torch.Tensor) -> Tuple[Any, ...]:
    return (id(tensor), tensor._version, tensor.data_ptr(), tensor.shape, tensor.dtype, tensor.device)


class WeightCache:
    """One cached QuantTensor and the key it was computed under; see the module docstring."""

    def __init__(self, check_values: str = "sample") -> None:
        self.check_values = check_values
        self.clear()

    def clear(self) -> None:
        self._key: Optional[Tuple[Any, ...]] = None
        self._value: Optional[QuantTensor] = None
        self._snapshot: Optional[torch.Tensor] = None

    def get(self, weight: torch.Tensor, quantizer: nn.Module, compute: Callable[[], QuantTensor]) -> QuantTensor:
        """The cached QuantTensor of ``weight`` if still valid, else ``compute()`` (then cached)."""
        try:
            key = (_tensor_token(weight), weight.stride(), module_signature(quantizer), torch.is_inference_mode_enabled())
        except RuntimeError:  # an inference tensor outside inference mode has no version counter
            return compute()
        if self._value is not None and self._matches(key, weight):
            return self._value
        value = compute()
        self._key, self._value = key, value
        self._snapshot = _fingerprint(weight, self.check_values)
        return value

    def _matches(self, key: Tuple[Any, ...], weight: torch.Tensor) -> bool:
        try:
            same = bool(key == self._key)
        except (RuntimeError, TypeError, ValueError):  # an attribute whose == is not a plain bool
            return False
        if same and self._snapshot is not None:
            same = torch.equal(_fingerprint(weight, self.check_values), self._snapshot)
        return same


FINGERPRINT_SIZE = 4096
CHECK_VALUES = ("sample", "full", "none")


def _fingerprint(weight: torch.Tensor, check_values: str) -> Optional[torch.Tensor]:
    """The values the cache compares (see the module docstring); ``None`` for ``"none"``."""
    if check_values not in CHECK_VALUES:
        raise ValueError(f"check_values={check_values!r} is not allowed; allowed values: {', '.join(CHECK_VALUES)}")
    if check_values == "none":
        return None
    flat = weight.detach().reshape(-1)
    if check_values == "sample" and flat.numel() > FINGERPRINT_SIZE:
        flat = flat[:: flat.numel() // FINGERPRINT_SIZE]
    return flat.clone()
