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

Input activations (``input_quant`` of a ``QuantLinear``) become the group's ``input_activations``
where compressed-tensors computes exactly what qzoo computes (checked with its own ``forward_quantize``):

| qzoo input quantizer | ``input_activations`` | tensors |
| --- | --- | --- |
| OCP FP8 E4M3, static per tensor (calibrated, learned or fixed range) | ``float``, 8 bits, ``tensor``, ``dynamic: false`` | ``input_scale`` (one float32) |
| OCP FP8 E4M3, dynamic per tensor or per token, scale ``amax / 448`` | ``float``, 8 bits, ``tensor`` / ``token``, ``dynamic: true`` | none |
| INT2..INT8 / UINT2..UINT8 over the full integer range, static per tensor | ``int``, ``tensor``, ``dynamic: false`` | ``input_scale``; ``input_zero_point`` (int8, shifted as for weights) when asymmetric or unsigned |

Dynamic integer activations are refused: compressed-tensors' symmetric rule is ``amax / 127.5``
(half the integer range), not qzoo's ``amax / 127``.

Anything else (HiFloat8, FP6, E1M2, E5M2 and FNUZ FP8, MXINT8, INT3 per row..., convolutions,
other activation quantizers (outputs, biases, per-channel or MX inputs), padded groups) raises
``ValueError`` naming the layer, the format, the target and the alternative,
``save_packed(model, directory)`` (the native qzoo layout); nothing is written then.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import TensorQuantizer
from quantizers.formats import FloatFormat, IntFormat, get_format
from quantizers.formats.packing import pack_fp4
from quantizers.scaling.scalers import FloatScaler, IntScaler
from quantizers.tensor.packed import PackedQuantTensor, element_codes

from ..embedding import QuantEmbedding
from ..linear import QuantLinear
from ..quant_layer import QuantLayer
from .checkpoint import SizeReport, _is_packed_key, _safetensors, _write, size_report
from .freeze import is_frozen, pack_weight
from .manifest import CheckpointError
from .onnx_acts import is_dynamic, static_scales
from .onnx_types import ExportError

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
            args, fmt, stored = _convert(name, packed[name])
            input_args, input_tensors = _input_activations(name, module)
            layers[name] = (args, fmt, {**stored, **input_tensors}, input_args)
    tensors: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if any(key.startswith(s + ".") for s in skipped) or _is_packed_key(key, packed):
            continue
        tensors[key] = value.detach().cpu().contiguous().clone()
    for name, (_, _, stored, _) in layers.items():
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
        "float-quantized FP8 E4M3, MXFP4, NVFP4 and MXFP8 E4M3 weights of Linear/Embedding layers, and "
        "static per-tensor FP8 E4M3/INT2-8 or dynamic per-tensor/per-token FP8 E4M3 inputs); save it "
        "in the native qzoo layout instead: save_packed(model, directory) (format='qzoo')"
    )


def _check_layer(name: str, module: QuantLayer) -> None:
    active = [r for r in module.quant_roles if r not in ("weight", "input") and getattr(module, f"{r}_quant", None) is not None]
    if active:
        raise _unsupported(name, f"a {type(module).__name__} quantizing its {', '.join(active)} ({TARGET} export covers weights and inputs)")
    if getattr(module, "input_quant", None) is not None and getattr(module, "weight_quant", None) is None and not is_frozen(module):
        raise _unsupported(name, f"a {type(module).__name__} quantizing its input but not its weight")
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


# ---- input activations ----------------------------------------------------------------------------
def _input_activations(name: str, module: QuantLayer) -> Tuple[Optional[Dict[str, Any]], Dict[str, torch.Tensor]]:
    """``(input_activations args or None, local tensors)`` of a layer's input quantizer (see the
    module docstring); anything compressed-tensors would compute differently raises."""
    quantizer = getattr(module, "input_quant", None)
    if quantizer is None:
        return None, {}
    fmt = getattr(quantizer, "fmt", None)
    where = f"layer {name or '(root)'!r} input_quant"
    if not isinstance(quantizer, TensorQuantizer) or quantizer.rounding not in (None, "even") or not fmt._saturates(quantizer.saturating):
        raise _unsupported(name, f"input activations of {getattr(fmt, 'name', type(quantizer).__name__)} (other than round-to-nearest-even, saturating)")
    kind = quantizer.granularity.kind
    described = f"{fmt.name} input activations ({kind})"
    try:
        dynamic = is_dynamic(quantizer, where)
    except ExportError as error:
        raise CheckpointError(str(error)) from None
    fp8 = _same(fmt, _E4M3)
    if dynamic:
        plain = isinstance(quantizer.scaler, FloatScaler) and quantizer.scaler.power_of_two is None
        if not (fp8 and plain and kind in ("tensor", "token") and quantizer.range_method == "max" and quantizer.float_range is None):
            why = " (compressed-tensors' dynamic integer scale is amax / 127.5)" if isinstance(fmt, IntFormat) else ""
            raise _unsupported(name, f"dynamic {described}{why}")
        return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": kind, "dynamic": True}, {}
    if kind != "tensor":
        raise _unsupported(name, f"static {described}")
    scales = static_scales(quantizer, torch.zeros(1))
    if scales.offset is not None or not bool(torch.isfinite(scales.scale).all()):
        raise _unsupported(name, f"{described} with the MINVAL formulation or a non-finite scale")
    scale = scales.scale.detach().float().reshape(1)
    if fp8:
        return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "dynamic": False}, {"input_scale": scale}
    if not isinstance(fmt, IntFormat) or fmt.bits > 8 or not isinstance(quantizer.scaler, IntScaler):
        raise _unsupported(name, f"static {described}")
    bits = fmt.bits
    full = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.signed else (0, 2 ** bits - 1)
    if (fmt.min_int, fmt.max_int) != full:
        raise _unsupported(name, f"static {described} over [{fmt.min_int}, {fmt.max_int}] (compressed-tensors clamps to the full range {list(full)})")
    shift = 0 if fmt.signed else 2 ** (bits - 1)
    zero_point = torch.zeros(()) if scales.zero_point is None else scales.zero_point.detach().float().reshape(())
    if not bool(zero_point == zero_point.round()):
        raise _unsupported(name, f"{described} with a non-integer zero point")
    args = {"num_bits": bits, "type": "int", "symmetric": fmt.signed and scales.zero_point is None, "strategy": "tensor", "dynamic": False}
    stored = {"input_scale": scale}
    if not args["symmetric"]:
        stored["input_zero_point"] = (zero_point.to(torch.int64) - shift).to(torch.int8).reshape(1)
    return args, stored


# ---- config.json --------------------------------------------------------------------------------------
def _hf_config(model: nn.Module) -> Dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return {}


def _quantization_config(model: nn.Module, layers) -> Dict[str, Any]:
    groups: List[Tuple[Dict[str, Any], str, Any, List[str]]] = []
    for name, (args, fmt, _, input_args) in layers.items():
        for group_args, group_fmt, group_input, targets in groups:
            if (group_args, group_fmt, group_input) == (args, fmt, input_args):
                targets.append(f"re:^{re.escape(name)}$")
                break
        else:
            groups.append((args, fmt, input_args, [f"re:^{re.escape(name)}$"]))
    formats = {fmt for _, fmt, _, _ in groups}
    ignore = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {"targets": targets, "weights": args, "input_activations": input_args,
                           "output_activations": None, "format": fmt}
            for i, (args, fmt, input_args, targets) in enumerate(groups)
        },
        "ignore": ignore,
    }
