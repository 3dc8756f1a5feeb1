"""``save_packed`` / ``load_packed``: a quantized model as real low-bit safetensors plus a JSON manifest.

A checkpoint directory holds ``model.safetensors`` and ``qzoo_manifest.json``. Each quantized
weight is stored as its :meth:`QuantTensor.pack` storage under ``<layer>.weight.<field>``:

- ``codes``: FP8 elements as ``F8_E4M3`` / ``F8_E5M2`` / ``F8_E4M3FNUZ`` / ``F8_E5M2FNUZ``; FP4
  E2M1 as ``F4`` (two per byte, element ``2i`` in the low nibble; the header shape counts
  elements); INT4/UINT4/E1M2 as ``U8`` nibble pairs (low nibble first); FP6 as ``U8``, four codes
  in three bytes; INT2/INT3/HiFloat8/other formats up to 8 bits as one ``U8`` code per byte;
  ``I8`` for int8; ``I16``/``I32`` words for wider integers;
- ``scale``: ``F8_E8M0`` for MX, ``F8_E4M3`` for NVFP4 block scales, else float as computed;
- ``zero_point`` (when not all zero) and ``outer_scale`` (NVFP4's float32 tensor scale).

Every other entry of the model's ``state_dict`` (biases, norms, embeddings left float, observer and
learned-range state of the activation quantizers) is stored as it is. The manifest records the
format version, the qzoo and torch versions, the ``quantize_model`` config when given, every quantized
layer's class and quantizer attributes (:mod:`qlayers.export.rebuild`), every packed weight's fields
(:mod:`qlayers.export.manifest`), and the size and SHA-256 of the safetensors file.

``load_packed(directory, model)`` rebuilds the quantized model from the float architecture (a
module, deep-copied, or a zero-argument factory) and returns it frozen
(:func:`~qlayers.export.freeze.freeze`): its quantized layers hold the packed weights and its
outputs equal the saved model's bit for bit. Everything is checked (manifest version, file size
and hash, layers, shapes and dtypes) before the model is returned; on any error nothing is returned.
``save_packed`` checks the whole model before it writes anything and writes each file to a
temporary name first. Needs the ``safetensors`` package.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from quantizers.tensor.packed import PackedQuantTensor, check_packed

from ..model.config import validate_config
from .freeze import attach, is_frozen, pack_weight
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TENSOR_FIELDS,
    WEIGHTS_NAME,
    CheckpointError,
    check_version,
    packed_from_json,
    packed_to_json,
    qzoo_version,
)
from .rebuild import layer_records, rebuild

FORMATS = ("qzoo", "compressed-tensors")
ModelOrFactory = Union[nn.Module, Callable[[], nn.Module]]


@dataclass(frozen=True)
class SizeReport:
    """Bytes of a saved checkpoint against the same model with every float tensor in float32.

    ``rows``: ``(layer, weight format, float32 bytes, packed bytes)`` per quantized weight;
    ``file_bytes``: the safetensors file; ``float32_bytes``: what that model's state (the weights
    unquantized) takes in float32, the size of its float32 safetensors file less the header.
    """

    directory: str
    file_bytes: int
    float32_bytes: int
    rows: Tuple[Tuple[str, str, int, int], ...]

    @property
    def ratio(self) -> float:
        """``file_bytes / float32_bytes``."""
        return self.file_bytes / self.float32_bytes if self.float32_bytes else float("nan")

    def __str__(self) -> str:
        lines = [f"{'layer':40} {'format':16} {'float32':>12} {'packed':>12}"]
        lines += [f"{name or '(root)':40} {fmt:16} {f32:>12,} {packed:>12,}" for name, fmt, f32, packed in self.rows]
        lines.append(f"file {self.file_bytes:,} bytes = {self.ratio:.3f}x the float32 model ({self.float32_bytes:,} bytes)")
        return "\n".join(lines)


def save_packed(
    model: nn.Module, directory: Union[str, os.PathLike], *, format: str = "qzoo",
    config: Optional[Mapping[str, Any]] = None,
) -> SizeReport:
    """Write ``model``'s packed checkpoint into ``directory`` (created if needed); returns its sizes.

    Args:
        model: a quantized model (fake-quant or frozen), calibrated where its quantizers are static.
        directory: where ``model.safetensors`` and the manifest (or, for compressed-tensors,
            ``config.json``) go; existing files of those names are replaced.
        format: ``"qzoo"`` (every qzoo format) or ``"compressed-tensors"`` (the layouts vLLM and
            transformers load: :mod:`qlayers.export.compressed_tensors`).
        config: the ``quantize_model`` config the model was made with (a JSON-serialisable dict);
            needed when the model has quantized residual adds, and replayed on load.

    Raises:
        ValueError: naming the layer, for anything that cannot be saved (see
            :mod:`qlayers.export.rebuild`); nothing is written then.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_packed expects an nn.Module, got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"save_packed: format={format!r} is unknown; allowed values: {', '.join(map(repr, FORMATS))}")
    if format == "compressed-tensors":
        from .compressed_tensors import save_compressed_tensors

        return save_compressed_tensors(model, directory)
    safetensors = _safetensors()
    config_json = _config_json(config)
    records = layer_records(model, config is not None)
    packed = _packed_weights(model)
    tensors, tensor_meta = _state_tensors(model, packed)
    data = safetensors.save(tensors)
    manifest = {
        "format": "qzoo-packed", "format_version": FORMAT_VERSION, "qzoo_version": qzoo_version(),
        "torch_version": torch.__version__, "config": config_json, "layers": records,
        "packed": {name: packed_to_json(p) for name, p in packed.items()}, "tensors": tensor_meta,
        "weights_file": {"name": WEIGHTS_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _write(os.path.join(directory, WEIGHTS_NAME), data)
    _write(os.path.join(directory, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    return size_report(model, packed, directory, len(data))


def load_packed(directory: Union[str, os.PathLike], model: ModelOrFactory) -> nn.Module:
    """The quantized model saved in ``directory``, rebuilt on the float architecture ``model``.

    Args:
        directory: a directory written by :func:`save_packed` (``format="qzoo"``).
        model: the float model the quantized one was made from (deep-copied, never changed; its
            weight values do not matter) or a zero-argument callable returning it.

    Returns:
        The quantized model in eval mode, frozen (:func:`~qlayers.freeze`): outputs equal the saved
        model's bit for bit.

    Raises:
        ValueError: a missing, corrupted or truncated file, a manifest from a newer qzoo, an
            architecture whose layers, shapes or dtypes do not match the checkpoint.
    """
    directory = os.fspath(directory)
    manifest = _read_manifest(directory)
    tensors = _read_tensors(directory, manifest)
    float_model = _float_model(model)
    quantized = rebuild(float_model, manifest.get("config"), manifest["layers"])
    packed = _packed_from(manifest, tensors, quantized)
    _load_state(quantized, {k: v for k, v in tensors.items() if not _is_packed_key(k, packed)}, packed)
    for name, p in packed.items():
        attach(quantized.get_submodule(name), p)
    return quantized.eval()


# ---- saving ---------------------------------------------------------------------------------------
def _safetensors():
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("packed checkpoints need the safetensors package: pip install safetensors") from None
    return safetensors.torch


def _config_json(config: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"save_packed: config must be the quantize_model config as a dict, got {type(config).__name__}")
    validate_config(config)
    try:
        return json.loads(json.dumps(config))
    except TypeError as error:
        raise TypeError(
            f"save_packed: config must be JSON-serialisable (name quantizers by their names, e.g. "
            f"'Int8WeightPerChannelFloat', not classes): {error}"
        ) from None


def _packed_weights(model: nn.Module) -> Dict[str, PackedQuantTensor]:
    from ..weight_layer import QuantWeightLayer

    packed = {}
    for name, module in model.named_modules():
        if is_frozen(module):
            packed[name] = module.packed_weight.packed()
        elif isinstance(module, QuantWeightLayer) and module.weight_quant is not None:
            packed[name] = pack_weight(name, module)
    return packed


def _is_packed_key(key: str, packed: Mapping[str, Any]) -> bool:
    for name in packed:
        prefix = f"{name}." if name else ""
        if key in (f"{prefix}weight",) or key.startswith(f"{prefix}packed_weight.") or key.startswith(f"{prefix}weight."):
            return True
    return False


def _state_tensors(model: nn.Module, packed: Mapping[str, PackedQuantTensor]):
    """The tensors to store (state_dict less the float quantized weights, plus the packed fields)
    and their dtype/shape table for the manifest."""
    tensors: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if _is_packed_key(key, packed):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; it cannot be saved")
        tensors[key] = value.detach().cpu().contiguous().clone()
    for name, p in packed.items():
        prefix = f"{name}." if name else ""
        for field in TENSOR_FIELDS:
            value = getattr(p, field)
            if value is None:
                continue
            value = value.detach().cpu().contiguous().clone()
            if field == "codes" and p.layout == "nibble" and p.fmt.name == "float4_e2m1fn" and hasattr(torch, "float4_e2m1fn_x2"):
                value = value.view(torch.float4_e2m1fn_x2)  # safetensors F4
            tensors[f"{prefix}weight.{field}"] = value
    meta = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()}
    return tensors, meta


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def size_report(model: nn.Module, packed: Mapping[str, PackedQuantTensor], directory: str, file_bytes: int) -> SizeReport:
    """The :class:`SizeReport` of ``model`` saved with the ``packed`` weights."""
    def f32(t: torch.Tensor) -> int:
        return t.numel() * (4 if t.is_floating_point() else t.element_size())

    total = sum(f32(v) for k, v in model.state_dict().items() if not _is_packed_key(k, packed))
    rows = []
    for name, p in packed.items():
        elements = 1
        for s in (p.original_shape or p.value_shape):
            elements *= s
        total += 4 * elements
        rows.append((name, p.fmt.name, 4 * elements, p.nbytes))
    return SizeReport(directory, file_bytes, total, tuple(rows))


# ---- loading --------------------------------------------------------------------------------------
def _read_manifest(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        raise CheckpointError(f"{directory!r} has no {MANIFEST_NAME}: not a qzoo packed checkpoint (save_packed writes one)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is corrupted or truncated: {error}") from None
    check_version(manifest, path)
    for key in ("layers", "packed", "tensors", "weights_file"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{path} is corrupted: {key!r} is missing or not an object")
    return manifest


def _read_tensors(directory: str, manifest: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    path = os.path.join(directory, WEIGHTS_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{directory!r} has a manifest but no {WEIGHTS_NAME}") from None
    expected = manifest["weights_file"]
    if len(data) != expected.get("bytes"):
        raise CheckpointError(f"{path} is truncated or corrupted: {len(data)} bytes, the manifest says {expected.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: its SHA-256 differs from the manifest's")
    del data
    tensors = _safetensors().load_file(path)  # (load() of bytes lacks F4 in safetensors 0.8)
    table = manifest["tensors"]
    if set(tensors) != set(table):
        raise CheckpointError(f"{path} holds tensors {sorted(set(tensors) ^ set(table))[:5]} not matching the manifest")
    for key, value in tensors.items():
        if str(value.dtype).removeprefix("torch.") != table[key]["dtype"] or list(value.shape) != table[key]["shape"]:
            raise CheckpointError(f"{path}: tensor {key!r} is {value.dtype} {list(value.shape)}, the manifest says {table[key]}")
    return tensors


def _float_model(model: ModelOrFactory) -> nn.Module:
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if not callable(model):
        raise TypeError(f"load_packed: model must be the float nn.Module or a callable returning it, got {type(model).__name__}")
    built = model()
    if not isinstance(built, nn.Module):
        raise TypeError(f"load_packed: the model factory returned a {type(built).__name__}, not an nn.Module")
    return built


def _packed_from(manifest: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, PackedQuantTensor]:
    packed = {}
    for name, meta in manifest["packed"].items():
        label = name or "(root)"
        prefix = f"{name}." if name else ""
        fields = {f: tensors.get(f"{prefix}weight.{f}") for f in TENSOR_FIELDS}
        if fields["codes"] is None or fields["scale"] is None:
            raise CheckpointError(f"layer {label!r}: the checkpoint lacks its packed weight tensors")
        if fields["codes"].dtype == getattr(torch, "float4_e2m1fn_x2", None):
            fields["codes"] = fields["codes"].view(torch.uint8)
        p = packed_from_json(meta, fields, f"layer {label!r}")
        try:
            check_packed(p)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"layer {label!r}: inconsistent packed weight: {error}") from None
        weight = getattr(model.get_submodule(name), "weight", None)
        shape = tuple(p.original_shape or p.value_shape)
        if weight is None or tuple(weight.shape) != shape:
            raise CheckpointError(
                f"layer {label!r}: shape mismatch: the checkpoint's weight is {list(shape)}, the architecture's "
                f"{None if weight is None else list(weight.shape)}"
            )
        packed[name] = p
    return packed


def _load_state(model: nn.Module, state: Dict[str, torch.Tensor], packed: Mapping[str, Any]) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].dtype != value.dtype:
            raise CheckpointError(
                f"{key!r} was saved as {value.dtype}, the architecture has {own[key].dtype}: build the float model in "
                f"the saved dtype (model.to({value.dtype}))"
            )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint does not fit the architecture (shape mismatch): {error}") from None
    missing = [k for k in result.missing_keys if not _is_packed_key(k, packed)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"the checkpoint does not fit the architecture: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
