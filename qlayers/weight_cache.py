"""The eval-mode cache of a layer's quantized weight.

Weights rarely change in eval mode, so a layer keeps the QuantTensor of its weight and serves it
again while nothing it depends on changed. The cache must never serve a stale weight, and torch does
not see every write to a tensor:

- writes through ``weight.data`` (``weight.data[:, 1:] = 0``, ``.data.copy_``, ``.data.view(-1)[i]``,
  ``.data.index_put_``), through NumPy views, by fused optimizers (``torch.optim.Adam(...,
  fused=True)`` in torch 2.13) or by C extensions leave the version counter ``_version`` unchanged;
- ``torch.func.functional_call`` and ``torch.nn.utils.parametrize`` pass a new, temporary weight on
  every call, and a new tensor can reuse a freed one's ``id()`` and storage (``data_ptr()``) with a
  version counter that starts again from zero.

So an entry is served again only when all of this holds:

1. **Identity**: ``weight`` is the very tensor object the entry was computed from. The cache holds
   a weak reference to it and compares objects (never ``id()`` or ``data_ptr()`` alone), so a new
   tensor can never pass for a freed one. Its version counter, storage pointer, shape, strides,
   dtype and device are unchanged. A weight that is not the layer's registered parameter (a
   parametrization computes a new tensor on every access) is not cached at all.
2. **Quantizer**: the same module objects (held by the entry), the same attributes (its range
   source too), and the same tensors (parameters, buffers, tensor attributes such as
   ``mse_ratios``) by identity, version and, unless ``check_values="none"``, bit pattern.
3. The same inference mode and the same layer ``extra`` key (the layer's eval rounding seed).
4. **Values**, as ``check_values`` says:

   - ``"checksum"`` (default): a 64-bit hash of every byte of the weight, one fused read of it per
     forward (:func:`weight_checksum`). Each 64-bit word of the weight goes through a bijective mix
     keyed by its position, and the mixed words are summed modulo 2^64: a change confined to one
     64-bit word (one or two float32 elements, up to four bf16/fp16 elements) is always detected,
     and any other change goes unnoticed only if two such sums coincide, which for writes unrelated
     to the hash keys has probability about 2^-64.
   - ``"full"``: a copy of the weight compared bit for bit: exact, at the price of a second copy
     of every weight in memory and a read of both per forward.
   - ``"none"``: items 1-3 and a count of optimizer steps (a global ``torch.optim`` step post-hook,
     registered on first use, so fused optimizers invalidate too). Writes through ``.data``, NumPy
     or C extensions are not seen: call ``layer.clear_weight_cache()`` after them. This saves the
     checksum's read of the weight, which matters for large models whose eval forward is
     memory-bound (a batch-1 matmul reads the weight once, the checksum a second time).

Why a checksum by default: the cache must be correct for every write, and only reading the weight
sees them all (no version counter, hook or allocator event marks a ``.data``, NumPy or C-extension
write, and a NumPy view written and dropped between two forwards leaves no trace but the bytes; a
fused optimizer does not bump ``_version`` either, though its step hook fires). Of the full checks
it is the cheapest: it reads the weight once and keeps 8 bytes, where comparing a copy reads twice
the bytes and doubles the weights' memory, and recomputing the quantization reads the weight,
writes a new weight-sized tensor and costs ten times more here. So a hit costs one read of the
weight, bounded by memory bandwidth, not by the hash: for a 1024x1024 float32 weight on the 2-core
CPU of ``benchmarks/`` the compiled checksum takes 63-74 us against 51-61 us for a compiled plain
``sum`` of the same bytes, and inside the eval forward, where the matmul's read of the quantized
weight evicts the float weight from cache, 0.1-0.4 ms (the forward is 1.3-1.5x ``nn.Linear`` at
batch 64; ``"none"``: 1.0x, a hit of about 12 us). On CUDA every check also synchronises with the
device, as the hit must wait for the checksum. For inference, :class:`qlayers.quant_inference_mode`
moves that read to the exit of the context (check :data:`INFERENCE`; 1.00-1.10x ``nn.Linear``); a
model whose weights only change through torch ops and optimizers can also set
``cache_checks_values = "none"``.

Guarantee, as ``tests/test_weight_cache.py`` checks (the 46 scenarios of the reliability report
and more): with ``"checksum"`` or ``"full"`` an eval forward never uses a quantized weight computed
from other weight bytes, another weight tensor, another quantizer state or another mode (with
``"checksum"``, short of a 64-bit hash collision, which no change confined to one 64-bit word can
cause); with ``"none"`` the same holds for every write torch or an optimizer step makes, and
``clear_weight_cache()`` is needed after the others.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from quantizers import QuantTensor
from quantizers.compile import compiled

CHECK_VALUES = ("checksum", "full", "none")
#: The check inside :class:`qlayers.quant_inference_mode` (``cache_quant_weight=True``): hits are
#: served as with ``"none"``; the entry keeps the weight's checksum, and the bits of the quantizer's
#: tensors, so that leaving the mode can tell whether a write torch does not see happened.
INFERENCE = "inference"
_TRUSTED = ("none", INFERENCE)  # hits served without reading any values


class WeightCache:
    """One cached QuantTensor and what it was computed from; see the module docstring."""

    def __init__(self, check_values: str = "checksum") -> None:
        self.check_values = check_values
        self.clear()

    def clear(self) -> None:
        """Forget the entry."""
        self._entry: Optional[_Entry] = None
        self._missed_write = False  # an INFERENCE entry replaced after a write torch did not record

    @property
    def value(self) -> Optional[QuantTensor]:
        """The cached QuantTensor (None when empty)."""
        entry = self._entry
        return None if entry is None else entry.value

    def __getstate__(self) -> Dict[str, Any]:  # pickled and deep-copied empty: the entry is derived data
        return {"check_values": self.check_values}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["check_values"])

    def get(
        self, weight: torch.Tensor, quantizer: nn.Module, compute: Callable[[], QuantTensor], extra: Any = None,
    ) -> QuantTensor:
        """The cached QuantTensor of ``weight`` under ``quantizer`` if still valid, else
        ``compute()`` (then cached). ``extra`` is any further key of the caller (compared with ``==``).
        The entry is replaced as one object, so threads sharing a layer never see half of one."""
        check = self.check_values
        if check not in CHECK_VALUES and check != INFERENCE:
            raise ValueError(f"cache_checks_values={check!r} is not allowed; allowed values: {', '.join(CHECK_VALUES)}")
        if weight.device.type == "meta":
            return compute()
        entry = self._entry
        try:
            key = _weight_key(weight, extra, check)
            if entry is not None and entry.matches(weight, quantizer, key, check):
                return entry.value
            if check == INFERENCE and entry is not None and entry.check != INFERENCE and entry.matches(
                weight, quantizer, _weight_key(weight, extra, entry.check), entry.check
            ):  # entering quant_inference_mode: an entry still valid under its own check is kept, not recomputed
                snapshot = entry.snapshot if entry.check == "checksum" else weight_checksum(weight)
                self._entry = entry._replace(key=key, check=INFERENCE, snapshot=snapshot)
                return entry.value
            state = _ModuleState(quantizer, with_values=check != "none")  # INFERENCE keeps them for leave_inference
        except RuntimeError:  # an inference tensor outside inference mode has no version counter
            self.clear()
            return compute()
        missed = self._missed_write or (entry is not None and entry.check == INFERENCE and _unrecorded_change(entry, weight, quantizer))
        self.clear()
        self._missed_write = missed  # reported by leave_inference
        value = compute()
        self._entry = _Entry(value, weakref.ref(weight), key, state, check, _snapshot(weight, check))
        return value

    def leave_inference(self, weight: Optional[torch.Tensor], quantizer: Optional[nn.Module], check: Optional[str]) -> bool:
        """End an :data:`INFERENCE` entry (leaving :class:`qlayers.quant_inference_mode`): ``False``
        when an entry served inside the context was computed from other bytes than the weight (or
        the quantizer's tensors) held later although torch recorded no change in between (no
        version bump, no optimizer step), i.e. forwards may have used a stale weight. After a
        recorded change the bytes may differ for either reason, and nothing is reported.

        A verified entry is kept under ``check`` (the layer's own ``cache_checks_values``,
        ``"checksum"`` or ``"none"``; its checksum is the one a ``"checksum"`` entry keeps), so the
        next forward need not recompute; otherwise (``"full"``, ``None``) it is forgotten."""
        entry, missed = self._entry, self._missed_write
        self.clear()
        if entry is None or entry.check != INFERENCE or weight is None or quantizer is None:
            return not missed
        if _unrecorded_change(entry, weight, quantizer):
            return False
        extra = entry.key[-1]
        try:
            unchanged = _weight_key(weight, extra, INFERENCE) == entry.key and entry.quantizer.matches(quantizer)
            if unchanged and check in ("checksum", "none"):
                self._entry = entry._replace(key=_weight_key(weight, extra, check), check=check)
        except RuntimeError:
            pass
        return not missed


def _unrecorded_change(entry: "_Entry", weight: torch.Tensor, quantizer: nn.Module) -> bool:
    """Whether ``weight`` (still the entry's tensor, same storage and layout, same version counter
    and no optimizer step since) or ``quantizer``'s tensors (same versions) hold other bytes than
    the :data:`INFERENCE` entry was computed from: a write torch did not record. One read of the
    weight; called only when an entry is replaced or the context ends."""
    if entry.weight_ref() is not weight:
        return False
    try:
        key = _weight_key(weight, None, INFERENCE)
    except RuntimeError:  # an inference tensor outside inference mode has no version counter
        return False
    # version, storage and layout (key[:6]) and optimizer steps (key[7]); not the mode or extra key
    if key[:6] != entry.key[:6] or key[7] != entry.key[7]:
        return False
    if not entry.quantizer.matches(quantizer, values=False):
        return False
    return weight_checksum(weight) != entry.snapshot or not entry.quantizer.matches(quantizer)


class _Entry(NamedTuple):
    """A cached QuantTensor and what it was computed from."""

    value: QuantTensor
    weight_ref: weakref.ref
    key: Tuple[Any, ...]
    quantizer: "_ModuleState"
    check: str
    snapshot: Any

    def matches(self, weight: torch.Tensor, quantizer: nn.Module, key: Tuple[Any, ...], check: str) -> bool:
        if self.weight_ref() is not weight or check != self.check or key != self.key:
            return False
        return self.quantizer.matches(quantizer, values=check != INFERENCE) and _unchanged(weight, check, self.snapshot)


# ---- the key: identity, version, layout, mode -----------------------------------------------------
_optimizer_steps = 0
_optimizer_hook: Optional[Any] = None


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def optimizer_steps() -> int:
    """Optimizer steps taken since the cache first needed to know (any ``torch.optim`` optimizer,
    fused or not): ``check_values="none"`` (and :data:`INFERENCE`) keys on this count."""
    global _optimizer_hook
    if _optimizer_hook is None:
        _optimizer_hook = register_optimizer_step_post_hook(_count_optimizer_step)
    return _optimizer_steps


def _weight_key(weight: torch.Tensor, extra: Any, check: str) -> Tuple[Any, ...]:
    steps = optimizer_steps() if check in _TRUSTED else None
    return (
        weight._version, weight.data_ptr(), weight.shape, weight.stride(), weight.dtype, weight.device,
        torch.is_inference_mode_enabled(), steps, extra,
    )


# ---- the quantizer's state ------------------------------------------------------------------------
class _ModuleState:
    """A module tree's public attributes and tensors as they were: the modules and tensors are held
    (so their ids stay theirs), tensors are compared by version and, ``with_values``, by bits."""

    def __init__(self, module: nn.Module, with_values: bool) -> None:
        self.modules = list(module.modules())
        self.signature, self.tensors = _signature(self.modules)
        self.bits = [_bits(t).clone() for t in self.tensors] if with_values else None

    def matches(self, module: nn.Module, values: bool = True) -> bool:
        """Whether ``module`` is the same tree in the same state; ``values=False`` skips the bits."""
        modules = list(module.modules())
        if len(modules) != len(self.modules) or any(a is not b for a, b in zip(modules, self.modules)):
            return False
        signature, tensors = _signature(modules)
        try:
            if signature != self.signature:
                return False
        except (RuntimeError, TypeError, ValueError):  # an attribute whose == is not a plain bool
            return False
        if any(a is not b for a, b in zip(tensors, self.tensors)):
            return False
        return not values or self.bits is None or all(_same_bits(t, b) for t, b in zip(tensors, self.bits))


_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}  # hooks, _parameters, _buffers, ...


def _signature(modules: List[nn.Module]) -> Tuple[Tuple[Any, ...], List[torch.Tensor]]:
    """Attributes by value (tensors by version and layout; ``nn.Module``'s own bookkeeping left
    out) and every parameter/buffer by version and layout, plus the tensors themselves in order."""
    parts: List[Any] = []
    tensors: List[torch.Tensor] = []
    for sub in modules:
        items = [(n, v) for n, v in vars(sub).items() if n not in _MODULE_INTERNALS]
        items += [*sub._parameters.items(), *sub._buffers.items()]
        for name, item in items:
            if isinstance(item, torch.Tensor):
                tensors.append(item)
                item = (item._version, item.data_ptr(), item.shape, item.stride(), item.dtype, item.device)
            parts.append((name, item))
        parts.append(None)  # module boundary
    return tuple(parts), tensors


# ---- the values ------------------------------------------------------------------------------------
def _snapshot(weight: torch.Tensor, check: str) -> Any:
    """What ``check`` keeps of the weight's values: nothing, a copy of its bits or its checksum
    (:data:`INFERENCE` too, for :meth:`WeightCache.leave_inference`)."""
    if check == "none":
        return None
    return _bits(weight).clone() if check == "full" else weight_checksum(weight)


def _unchanged(weight: torch.Tensor, check: str, snapshot: Any) -> bool:
    if check in _TRUSTED:
        return True
    return _same_bits(weight, snapshot) if check == "full" else weight_checksum(weight) == snapshot


_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` reinterpreted as integers of its element size (so NaNs and -0.0 compare by bits)."""
    tensor = tensor.detach()
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        if tensor.dtype.is_complex:
            tensor = torch.view_as_real(tensor)
        return tensor.view(_WORD_DTYPES[tensor.element_size()])
    return tensor


def _same_bits(tensor: torch.Tensor, bits: torch.Tensor) -> bool:
    current = _bits(tensor)
    return current.shape == bits.shape and current.dtype == bits.dtype and torch.equal(current, bits)


ROW_WORDS = 512  # the checksum reads the weight as rows of 512 64-bit words (4 KiB)
_MIX_1 = -4658895280553007687  # 0xbf58476d1ce4e5b9, splitmix64's multipliers as signed int64
_MIX_2 = -7723592293110705685  # 0x94d049bb133111eb
_HASH_KEYS: Dict[Tuple[int, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}


def weight_checksum(weight: torch.Tensor) -> int:
    """A 64-bit hash of every byte of ``weight`` (a Python int), from one read of it.

    The bytes are read as 64-bit words ``w[i, j]`` (rows of ``ROW_WORDS`` words, the last row
    zero-padded; a copy only when the size is not a multiple of 4 KiB or the tensor is not
    contiguous) and hashed as ``sum_ij mix(w[i, j] ^ r[i] ^ c[j]) mod 2^64`` with fixed random
    keys ``r``, ``c`` and splitmix64's bijective finaliser
    ``mix(h) = g * M2 where g = f ^ (f >>> 31), f = h * M1``.
    """
    flat = weight.detach().reshape(-1)
    nbytes = flat.numel() * flat.element_size()
    if nbytes == 0:
        return 0
    try:
        words = flat.view(torch.int64).view(-1, ROW_WORDS)
    except RuntimeError:  # size or alignment: copy the bytes into zero-padded rows
        row_bytes = 8 * ROW_WORDS
        padded = torch.zeros(-(-nbytes // row_bytes) * row_bytes, dtype=torch.uint8, device=flat.device)
        padded[:nbytes] = _bits(flat).contiguous().view(torch.uint8)
        words = padded.view(torch.int64).view(-1, ROW_WORDS)
    row_keys, column_keys = _hash_keys(words.shape[0], words.device)
    return int(_checksum_kernel(words, row_keys, column_keys))


def _hash_keys(rows: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    keys = _HASH_KEYS.get((rows, device))
    if keys is None:
        generator = torch.Generator().manual_seed(0x5EED)
        row_keys = torch.randint(-(2**63), 2**63 - 1, (rows, 1), generator=generator, dtype=torch.int64)
        column_keys = torch.randint(-(2**63), 2**63 - 1, (ROW_WORDS,), generator=generator, dtype=torch.int64)
        keys = _HASH_KEYS[(rows, device)] = (row_keys.to(device), column_keys.to(device))
    return keys


def _checksum(words: torch.Tensor, row_keys: torch.Tensor, column_keys: torch.Tensor) -> torch.Tensor:
    h = (words ^ row_keys ^ column_keys) * _MIX_1
    h = h ^ ((h >> 31) & 0x1FFFFFFFF)  # a logical shift: >> of int64 is arithmetic
    return (h * _MIX_2).sum()


_checksum_kernel = compiled(_checksum)
