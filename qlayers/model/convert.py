"""``quantize_model``: swap a float model's layers for quantized twins as a config says.

Each layer whose class the config ``targets`` (default: ``nn.Linear``, ``nn.Conv1d/2d/3d``,
``nn.ConvTranspose1d/2d/3d`` and Hugging Face's GPT-2 ``Conv1D``; ``nn.Embedding`` only when listed
or named by a ``layers`` pattern) becomes its qlayers twin through ``from_float`` (same
configuration, same ``nn.Parameter`` objects, so weights, tied weights, names and ``state_dict``
keys stay); ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh`` and ``nn.Hardtanh`` become quantized
activations when the config has an ``activations`` section. With ``"functional_adds": True``,
residual adds in ``forward`` (``a + b`` of two tensors) get a :class:`~qlayers.QuantEltwiseAdd`
through torch.fx where inputs or outputs are quantized (see :mod:`qlayers.model.functional`). An
``attention`` section quantizes the attention matmuls of Hugging Face models
(:mod:`qlayers.hf_attention`).

A model that is already quantized is re-quantized per the new config, exactly: every layer this
module would have created (``QuantLinear`` ... ``QuantHardTanh``, hand-built ones included) goes
back to its float twin with the very same ``nn.Parameter`` objects, traced residual adds are
undone, and the float model is then quantized as usual (observers start empty: calibrate again).
Other QuantLayers (``QuantIdentity``, ``QuantEltwiseAdd`` built by hand) are kept as they are.
"""
from __future__ import annotations

import copy
import fnmatch
import re
import warnings
from typing import Any, Dict, List, Mapping, Optional, Set, Type, Union

from torch import nn

from ..activation import QuantHardTanh, QuantReLU, QuantSigmoid, QuantTanh
from ..conv import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
)
from ..embedding import QuantEmbedding
from ..hf_attention import quantize_attention, remove_attention_quantization
from ..hf_conv1d import QuantConv1D, conv1d_class
from ..linear import QuantLinear
from ..quant_layer import QuantLayer
from .config import ATTENTION_KEYS, QuantConfig, Section, skip_matches, validate_config
from .control import init_learned_weight_range
from .functional import quantize_functional_adds, traced_adds, untrace

WEIGHT_LAYERS: Dict[Type[nn.Module], Type[QuantLayer]] = {
    nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
    nn.ConvTranspose1d: QuantConvTranspose1d, nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.ConvTranspose3d: QuantConvTranspose3d, nn.Embedding: QuantEmbedding,
}
"""Float layer type (exact) -> quantized twin; its weight, bias, input, output follow the config."""
ACTIVATION_LAYERS: Dict[Type[nn.Module], Type[QuantLayer]] = {
    nn.ReLU: QuantReLU, nn.Sigmoid: QuantSigmoid, nn.Tanh: QuantTanh, nn.Hardtanh: QuantHardTanh,
}
"""Float activation type (exact) -> quantized twin, swapped when the config has ``activations``."""


def quantize_model(model: nn.Module, config: Union[Mapping[str, Any], QuantConfig, str], *, inplace: bool = False) -> nn.Module:
    """The quantized version of ``model`` (a deep copy unless ``inplace=True``).

    ``config`` is a dict, a :class:`~qlayers.model.config.QuantConfig` or a path to a YAML/JSON
    file (see :mod:`qlayers.model.config`); it is validated before anything changes.

    Example::

        qmodel = qlayers.quantize_model(model, {
            "weights": {"format": "int8", "granularity": "channel"},
            "inputs": {"format": "int8"},
            "skip_layers": ["lm_head"],
            "layers": {"encoder.*.fc2": {"weights": {"format": "int4", "granularity": "group", "group_size": 32}}},
        })

    The defaults suit transformers: ``weights``/``inputs`` quantize the target layers (every
    Linear/Conv, not embeddings), residual adds stay float, and
    ``"attention": {"q": ..., "k": ..., "v": ..., "softmax": ...}`` quantizes the attention
    matmuls' operands of Hugging Face models. Static activation quantizers then need
    :func:`~qlayers.calibrate` (or QAT). Layers are matched by exact type, so subclasses of ``nn.Linear`` with their own forward stay float;
    ``nn.MultiheadAttention`` (which reads its projections' weights directly) is left as it is.
    A module whose forward has residual adds keeps its class and attributes and gains
    ``eltwise_*`` submodules and a traced forward, checked against its own on the first call (see
    :mod:`qlayers.model.functional`). With ``inplace=True`` the returned object is ``model``
    itself; a bare layer (``nn.Linear``) cannot change class in place and raises ``ValueError``.
    An already quantized model is re-quantized (see the module docstring).
    """
    cfg = validate_config(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model expects an nn.Module, got {type(model).__name__}")
    if inplace and (type(model) in WEIGHT_LAYERS or type(model) in ACTIVATION_LAYERS or type(model) in _TWINS):
        raise ValueError(
            f"quantize_model(..., inplace=True) cannot convert a bare {type(model).__name__} in place (its class "
            "changes); use the returned layer: qlayer = quantize_model(layer, config)"
        )
    if not inplace:
        model = copy.deepcopy(model)
    if _dequantize(model):
        warnings.warn(
            f"quantize_model: {type(model).__name__} was already quantized; its quantized layers were rebuilt "
            "from their float weights for the new config (calibrate again)", UserWarning, stacklevel=2,
        )
    model = _float_twin(model) if type(model) in _TWINS else model
    twin = _quantized_twin(model, "", cfg)
    if twin is not None:
        return _remember_algorithms(twin, cfg)
    names = [name for name, _ in model.named_modules() if name]
    if cfg.attention:
        roles = {ATTENTION_KEYS[key]: section for key, section in cfg.attention.items()}
        quantize_attention(model, roles, skip=cfg.is_skipped)
    _swap_children(model, "", cfg)
    adds: Set[str] = set()
    if cfg.functional_adds and cfg.quantizes_activations:
        quantize_functional_adds(model, cfg, adds)
    _warn_unmatched(model, cfg, names, adds)
    return _remember_algorithms(model, cfg)


PTQ_ALGORITHMS_ATTRIBUTE = "qzoo_ptq_algorithms"


def _remember_algorithms(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Keep the config's ``algorithm`` section on the model for :func:`qlayers.ptq.apply`."""
    if cfg.algorithms:
        setattr(model, PTQ_ALGORITHMS_ATTRIBUTE, [{name: dict(options)} for name, options in cfg.algorithms])
    return model


_TWINS: Dict[Type[QuantLayer], Optional[Type[nn.Module]]] = {
    twin: float_type for float_type, twin in (*WEIGHT_LAYERS.items(), *ACTIVATION_LAYERS.items())
}
_TWINS[QuantConv1D] = None  # transformers' Conv1D, imported only when met (conv1d_class)
"""Quantized twin type -> float type: the layers ``quantize_model`` creates (and re-quantizes)."""


def _dequantize(model: nn.Module) -> bool:
    """Undo a previous quantize_model in ``model``'s submodules; whether anything was undone."""
    undone = remove_attention_quantization(model)
    for module in list(model.modules()):
        if traced_adds(module):
            untrace(module)
            undone = True
        for name, child in list(module.named_children()):
            if type(child) in _TWINS:
                setattr(module, name, _float_twin(child))
                undone = True
    return undone


def _float_twin(layer: nn.Module) -> nn.Module:
    """The float layer ``layer`` quantizes, holding the very same Parameter objects."""
    kwargs = dict(type(layer).float_config(layer))
    if type(layer) is QuantConv1D:
        module = conv1d_class()(layer.nf, layer.nx)
        for pname, param in layer.named_parameters(recurse=False):
            setattr(module, pname, param)
        return module.train(layer.training)
    if "device" in kwargs:
        kwargs["device"] = "meta"  # parameters are replaced below: allocate nothing
    module = _TWINS[type(layer)](**kwargs)
    for pname, param in layer.named_parameters(recurse=False):
        setattr(module, pname, param)
    return module.train(layer.training)


def _swap_children(parent: nn.Module, prefix: str, cfg: QuantConfig) -> None:
    for name, child in list(parent.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, QuantLayer) or isinstance(child, nn.MultiheadAttention) or cfg.is_skipped(full):
            continue
        twin = _quantized_twin(child, full, cfg)
        if twin is not None:
            setattr(parent, name, twin)
        else:
            _swap_children(child, full, cfg)


def _quantized_twin(module: nn.Module, name: str, cfg: QuantConfig) -> Optional[QuantLayer]:
    cls = WEIGHT_LAYERS.get(type(module)) or ACTIVATION_LAYERS.get(type(module))
    if cls is None and conv1d_class() is not None and type(module) is conv1d_class():
        cls = QuantConv1D
    if cls is None or (cls not in ACTIVATION_LAYERS.values() and not cfg.is_target(name, type(module).__name__)):
        return None
    roles = _roles(module, name, cfg)
    if not roles or all(section is None for section in roles.values()):
        return None
    twin = cls.from_float(module, **{f"{role}_quant": section for role, section in roles.items()})
    for pname, param in module.named_parameters(recurse=False):  # keep the very Parameter objects
        setattr(twin, pname, param)
    init_learned_weight_range(twin)
    return twin


def _roles(module: nn.Module, name: str, cfg: QuantConfig) -> Optional[Dict[str, Section]]:
    sections = cfg.for_layer(name)
    if sections is None:
        return None
    if type(module) in ACTIVATION_LAYERS:
        return {"act": sections["activations"]}
    if isinstance(module, nn.Embedding):
        return {"weight": sections["weights"]}
    roles = {
        "weight": sections["weights"], "input": sections["inputs"], "output": sections["outputs"],
        "bias": sections["bias"] if module.bias is not None else None,
    }
    bias = roles["bias"]
    if bias is not None and bias.requires_input_scale and roles["input"] is None:
        raise ValueError(
            f"layer {name!r}: bias={bias.__name__} uses scale = input scale x weight scale, but its "
            "input is not quantized (inputs is None for this layer); quantize its inputs or give the "
            "bias its own scale"
        )
    return roles


def _warn_unmatched(model: nn.Module, cfg: QuantConfig, module_names: List[str], extra_names: Set[str]) -> None:
    names = module_names + sorted(extra_names)
    unmatched: List[str] = [f"layers[{r.pattern!r}]" for r in cfg.rules if not any(r.matches(n) for n in names)]
    unmatched += [f"skip_layers entry {p!r}" for p in cfg.skip_layers if not any(skip_matches(p, n) for n in names)]
    if unmatched:
        warnings.warn(
            f"quantize_model: {', '.join(unmatched)} matched no module of {type(model).__name__}; "
            "check the names with [n for n, _ in model.named_modules()]", UserWarning, stacklevel=3,
        )
    for pattern in cfg.skip_layers:
        skipped = _topmost(n for n in module_names if skip_matches(pattern, n))
        partial = [n for n in skipped if _inside_a_name(pattern, n)]
        if partial and len(skipped) > 1:
            warnings.warn(
                f"quantize_model: skip_layers entry {pattern!r} matches as a substring (AMCT's rule) and skips "
                f"{len(skipped)} modules: {', '.join(map(repr, skipped[:6]))}{' ...' if len(skipped) > 6 else ''}, "
                f"including {partial[0]!r}, where it is only part of a name; for exact names use "
                f"'re:(^|\\.){re.escape(pattern)}$'", UserWarning, stacklevel=3,
            )


def _topmost(names) -> List[str]:
    """The names none of whose ancestors is in ``names`` (a skipped module skips its subtree)."""
    chosen: List[str] = []
    for name in sorted(names):
        if not any(name.startswith(parent + ".") for parent in chosen):
            chosen.append(name)
    return chosen


def _inside_a_name(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches ``name`` only as a substring that cuts a dotted component
    (``"1"`` in ``"10"``, ``"layer.1"`` in ``"layer.11"``), not as whole components or a glob."""
    if pattern.startswith("re:") or fnmatch.fnmatchcase(name, pattern):
        return False
    starts = [i for i in range(len(name)) if name.startswith(pattern, i)]
    return bool(starts) and not any(
        (i == 0 or name[i - 1] == "." or pattern.startswith(".")) and
        (i + len(pattern) == len(name) or name[i + len(pattern)] == "." or pattern.endswith("."))
        for i in starts
    )
