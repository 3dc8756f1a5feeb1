"""``save_packed(model, directory, format="compressed-tensors")``: the layout vLLM and transformers load.

Writes ``model.safetensors`` and ``config.json`` (the model's own Hugging Face config, if it has
one, plus ``quantization_config``). Each quantized ``QuantLinear`` / ``QuantEmbedding`` weight
becomes the tensors of the compressed-tensors format that expresses it (local names as
compressed-tensors 0.20 reads them):

| qzoo weight | format | tensors |
| --- | --- | --- |
| int2..int8 / uint2..uint8, per tensor, channel or group (along the input dim) | ``pack-quantized`` | ``weight_packed`` int32 (``q + 2^(b-1)`` as one little-endian bit stream, 32 elements in ``b`` words per row), ``weight_scale``, ``weight_shape``, ``weight_zero_point`` (packed the same way along the output dim; asymmetric only) |
| OCP FP8 E4M3 per tensor or channel | ``float-quantized`` | ``weight`` float8_e4m3fn, ``weight_scale`` |
| MXFP4 (E2M1, E8M0 per 32) | ``mxfp4-pack-quantized`` | ``weight_packed`` uint8 (element ``2i`` in the low nibble), ``weight_scale`` uint8 E8M0 exponents |
| NVFP4 (E2M1, E4M3 per 16, float32 tensor scale) | ``nvfp4-pack-quantized`` | ``weight_packed``, ``weight_scale`` float8_e4m3fn, ``weight_global_scale`` |
| MXFP8 E4M3 (E8M0 per 32) | ``mxfp8-quantized`` | ``weight`` float8_e4m3fn, ``weight_scale`` uint8 E8M0 exponents |

Conventions (checked against the real decompressor by ``tests/test_export_compressed_tensors.py``):

- unsigned qzoo integers are stored as compressed-tensors' signed ones: ``q' = q - 2^(b-1)`` and
  ``zp' = zp - 2^(b-1)``, so ``(q' - zp') * s = (q - zp) * s``;
- NVFP4's global scale is stored as compressed-tensors stores it, the *multiplier*
  ``weight_global_scale = 1 / tensor_scale`` (= 448 * 6 / amax); the decompressor divides,
  ``block_scale / global_scale``, where qzoo multiplies ``block_scale * tensor_scale``: the two
  differ by at most one float32 ulp of the scale product (its bfloat16 output, as compressed-tensors
  decompresses FP4, is the same in the tests);
- compressed-tensors decompresses FP4 and MX weights to bfloat16: exactly qzoo's MX values, and
  qzoo's NVFP4 values of a bfloat16 model.

Anything else (HiFloat8, FP6, E1M2, E5M2 and FNUZ FP8, MXINT8, INT3 per row..., convolutions,
activation quantizers, padded groups) raises ``ValueError`` naming the layer, the format, the
target and the alternative, ``save_packed(model, directory)`` (the native qzoo layout); nothing is
written then.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from quantizers.formats import FloatFormat, IntFormat, get_format
from quantizers.formats.packing import pack_fp4
from quantizers.tensor.packed import PackedQuantTensor, element_codes

from ..embedding import QuantEmbedding
from ..linear import QuantLinear
from ..quant_layer import QuantLayer
from .checkpoint import SizeReport, _is_packed_key, _safetensors, _write, size_report
from .freeze import is_frozen, pack_weight
from .manifest import CheckpointError

TARGET = "compressed-tensors"
_E4M3 = get_format("float8_e4m3fn")
_E2M1 = get_format("float4_e2m1fn")


def save_compressed_tensors(model: nn.Module, directory) -> SizeReport:
    """Write ``model`` in the compressed-tensors layout (see the module docstring)."""
    safetensors = _safetensors()
    layers: Dict[str, Tuple[Dict[str, Any], str, Dict[str, torch.Tensor]]] = {}
    packed: Dict[str, PackedQuantTensor] = {}
    skipped = set()
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayer):
            continue
        _check_layer(name, module)
        skipped.update(f"{name}.{role}_quant" if name else f"{role}_quant" for role in module.quant_roles)
        if is_frozen(module) or getattr(module, "weight_quant", None) is not None:
            packed[name] = module.packed_weight.packed() if is_frozen(module) else pack_weight(name, module)
            layers[name] = _convert(name, packed[name])
    tensors: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if any(key.startswith(s + ".") for s in skipped) or _is_packed_key(key, packed):
            continue
        tensors[key] = value.detach().cpu().contiguous().clone()
    for name, (_, _, stored) in layers.items():
        prefix = f"{name}." if name else ""
        tensors.update({prefix + k: v.contiguous() for k, v in stored.items()})
    config = _hf_config(model)
    config["quantization_config"] = _quantization_config(model, layers)
    data = safetensors.save(tensors, metadata={"format": "pt"})
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _write(os.path.join(directory, "model.safetensors"), data)
    _write(os.path.join(directory, "config.json"), json.dumps(config, indent=1, default=str).encode())
    return size_report(model, packed, directory, len(data))


def _unsupported(name: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"layer {name or '(root)'!r}: {what} has no {TARGET} layout ({TARGET} stores pack-quantized INT2-8, "
        "float-quantized FP8 E4M3, MXFP4, NVFP4 and MXFP8 E4M3 weights of Linear/Embedding layers); save it "
        "in the native qzoo layout instead: save_packed(model, directory) (format='qzoo')"
    )


def _check_layer(name: str, module: QuantLayer) -> None:
    active = [r for r in module.quant_roles if r != "weight" and getattr(module, f"{r}_quant", None) is not None]
    if active:
        raise _unsupported(name, f"a {type(module).__name__} quantizing its {', '.join(active)} ({TARGET} export covers weights)")
    if "input_multiplier" in module._buffers:
        raise _unsupported(name, f"a {type(module).__name__} with an input_multiplier (SmoothQuant/AWQ scales; fold them first)")
    if getattr(module, "weight_quant", None) is not None and not isinstance(module, (QuantLinear, QuantEmbedding)):
        raise _unsupported(name, f"a {type(module).__name__} weight")


# ---- one weight ------------------------------------------------------------------------------------
def _convert(name: str, packed: PackedQuantTensor) -> Tuple[Dict[str, Any], str, Dict[str, torch.Tensor]]:
    """``(weights args, format, local tensors)`` of one packed weight."""
    fmt = packed.fmt
    shape = tuple(packed.original_shape or packed.value_shape)
    if len(shape) != 2:
        raise _unsupported(name, f"a {len(shape)}-d weight")
    rows, cols = shape
    strategy, group_size = _strategy(name, packed, rows, cols)
    codes = element_codes(packed)
    scale = packed.scale
    described = f"{fmt.name} ({strategy}{'' if group_size is None else f', group_size={group_size}'})"
    if isinstance(fmt, IntFormat):
        return _int(name, packed, codes.reshape(rows, cols), strategy, group_size, rows)
    if _same(fmt, _E4M3) and packed.scale_codes_format is None and strategy in ("tensor", "channel"):
        args = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy, "dynamic": False}
        weight = codes.reshape(rows, cols).view(torch.float8_e4m3fn)
        return args, "float-quantized", {"weight": weight, "weight_scale": _scale_2d(scale, strategy, rows)}
    mx = packed.scale_codes_format is not None and packed.scale_codes_format.name == "float8_e8m0fnu"
    if mx and group_size == 32 and (_same(fmt, _E2M1) or _same(fmt, _E4M3)):
        scale_codes = scale.view(torch.uint8).reshape(rows, cols // 32)
        args = {"num_bits": fmt.bits, "type": "float", "symmetric": True, "group_size": 32, "strategy": "group",
                "dynamic": False, "scale_dtype": "torch.uint8"}
        if _same(fmt, _E2M1):
            return args, "mxfp4-pack-quantized", {"weight_packed": pack_fp4(codes.reshape(rows, cols)), "weight_scale": scale_codes}
        return args, "mxfp8-quantized", {"weight": codes.reshape(rows, cols).view(torch.float8_e4m3fn), "weight_scale": scale_codes}
    nvfp4 = packed.scale_codes_format is not None and _same(packed.scale_codes_format, _E4M3)
    if nvfp4 and packed.outer_scale is not None and _same(fmt, _E2M1) and group_size == 16:
        args = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
                "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
        global_scale = (1.0 / packed.outer_scale.to(torch.float32)).reshape(1)  # the multiplier 448*6/amax
        return args, "nvfp4-pack-quantized", {
            "weight_packed": pack_fp4(codes.reshape(rows, cols)),
            "weight_scale": scale.view(torch.float8_e4m3fn).reshape(rows, cols // 16),
            "weight_global_scale": global_scale,
        }
    raise _unsupported(name, described)


def _same(fmt, reference: FloatFormat) -> bool:
    """Same minifloat layout and special values (labels aside)."""
    layout = lambda f: (f.exponent_bits, f.mantissa_bits, f.exponent_bias, f.special, f.signed)  # noqa: E731
    return isinstance(fmt, FloatFormat) and layout(fmt) == layout(reference)


def _strategy(name: str, packed: PackedQuantTensor, rows: int, cols: int) -> Tuple[str, Any]:
    if packed.group_size is not None:
        if packed.group_dim not in (1, -1):
            raise _unsupported(name, f"{packed.fmt.name} grouped along dim {packed.group_dim}")
        if cols % packed.group_size:
            raise _unsupported(name, f"{packed.fmt.name} with group_size={packed.group_size} padding {cols} columns")
        return ("tensor_group" if packed.outer_scale is not None else "group"), packed.group_size
    numel = packed.scale.numel()
    if numel == 1:
        return "tensor", None
    if tuple(packed.scale.shape) in ((rows, 1), (rows,)):
        return "channel", None
    raise _unsupported(name, f"{packed.fmt.name} with scales of shape {tuple(packed.scale.shape)}")


def _scale_2d(scale: torch.Tensor, strategy: str, rows: int) -> torch.Tensor:
    return scale.reshape(1) if strategy == "tensor" else scale.reshape(rows, -1)


def _int(name, packed, codes, strategy, group_size, rows):
    fmt: IntFormat = packed.fmt
    bits = fmt.bits
    if bits > 8 or packed.outer_scale is not None or packed.scale_codes_format is not None:
        raise _unsupported(name, f"{fmt.name} with {'E8M0 block scales' if packed.scale_codes_format else 'these scales'}")
    shift = 0 if fmt.signed else 2 ** (bits - 1)
    q = fmt.decode(codes).to(torch.int64) - shift  # compressed-tensors' signed elements
    offset = 2 ** (bits - 1)
    scale = packed.scale.reshape(rows, -1) if strategy != "tensor" else packed.scale.reshape(1)
    stored = {"weight_packed": pack_to_int32(q + offset, bits), "weight_scale": scale,
              "weight_shape": torch.tensor(list(codes.shape))}
    zero_point = packed.zero_point
    symmetric = zero_point is None and fmt.signed
    if not symmetric:
        zp = torch.zeros(()) if zero_point is None else zero_point
        zp = zp.reshape(rows, -1) if strategy != "tensor" else zp.reshape(1)
        zp = zp.expand(rows, scale.shape[-1]) if strategy != "tensor" else zp
        if not bool((zp == zp.round()).all()):
            raise _unsupported(name, f"{fmt.name} with a non-integer zero point (zero_point_formulation='minval')")
        zp = zp.to(torch.int64) - shift
        if strategy == "tensor":
            stored["weight_zero_point"] = zp.to(torch.int8)
        else:
            stored["weight_zero_point"] = pack_to_int32((zp + offset).t().contiguous(), bits).t().contiguous()
    args = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy, "dynamic": False}
    if group_size is not None:
        args["group_size"] = group_size
    return args, "pack-quantized", stored


def pack_to_int32(codes: torch.Tensor, bits: int, chunk: int = 4096) -> torch.Tensor:
    """compressed-tensors' dense packing of ``bits``-bit unsigned ``codes`` (rows, cols) into int32:
    each row is one little-endian bit stream (element ``j`` at bits ``j*bits ...``) padded to a
    multiple of 32 elements, cut into 32-bit words, ``ceil(cols * bits / 32)`` words kept."""
    rows, cols = codes.shape
    words = -(-cols * bits // 32)
    padded = -(-cols // 32) * 32
    out = []
    for start in range(0, max(rows, 1), chunk):
        block = F.pad(codes[start:start + chunk].to(torch.int64), (0, padded - cols))
        stream = (block.unsqueeze(-1) >> torch.arange(bits)) & 1  # (r, padded, bits), bit 0 first
        stream = stream.reshape(block.shape[0], -1, 32)
        word = (stream << torch.arange(32)).sum(-1)
        out.append((word - (word >= 2 ** 31).to(torch.int64) * 2 ** 32).to(torch.int32)[:, :words])
    return torch.cat(out) if out else codes.new_zeros((0, words), dtype=torch.int32)


# ---- config.json --------------------------------------------------------------------------------------
def _hf_config(model: nn.Module) -> Dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return {}


def _quantization_config(model: nn.Module, layers) -> Dict[str, Any]:
    groups: List[Tuple[Dict[str, Any], str, List[str]]] = []
    for name, (args, fmt, _) in layers.items():
        for group_args, group_fmt, targets in groups:
            if group_args == args and group_fmt == fmt:
                targets.append(f"re:^{re.escape(name)}$")
                break
        else:
            groups.append((args, fmt, [f"re:^{re.escape(name)}$"]))
    formats = {fmt for _, fmt, _ in groups}
    ignore = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {"targets": targets, "weights": args, "input_activations": None,
                           "output_activations": None, "format": fmt}
            for i, (args, fmt, targets) in enumerate(groups)
        },
        "ignore": ignore,
    }
