"""Huawei AMCT's ``quantize(model, config)`` on qzoo layers.

AMCT's flow: ``quantize(model, cfg)`` turns the model into a calibration model in place; running
``batch_num`` batches through it computes the quantization parameters; then the model quantizes.
Here ``quantize`` swaps the model's ``nn.Linear``/``nn.Conv*`` layers in place (and returns the
model too); with activation quantization it starts calibration, which ends by itself after
``batch_num`` forward calls of the model (or at :func:`convert`). Weight-only configs without a
PTQ algorithm need no calibration.

Config (AMCT's keys)::

    {'batch_num': 1,
     'quant_cfg': {'weights': {'type': 'int8', 'symmetric': True, 'strategy': 'tensor'},
                   'inputs':  {'type': 'int8', 'symmetric': True, 'strategy': 'tensor'}},
     'algorithm': {'minmax'},
     'skip_layers': ['lm_head']}

- ``type``: weights ``hifloat8``, ``float8_e4m3fn``, ``mxfp4_e2m1``, ``mxfp8_e4m3fn``,
  ``float4_e2m1``, ``float4_e1m2``, ``int4``, ``int8``; inputs ``hifloat8``, ``float8_e4m3fn``,
  ``mxfp8_e4m3fn``, ``int8``.
- ``symmetric``: integer symmetric quantization is ``scale = max|x| / (2^(b-1) - 1)`` on
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` (as qzoo's ``Int8WeightPerTensorFloat``); asymmetric uses
  ``(max - min) / (2^b - 1)`` and an integer offset.
- ``strategy``: weights ``tensor``/``channel``/``group`` (``group_size``: a multiple of 32);
  inputs ``tensor`` (static, min/max over the calibration batches) or ``token`` (dynamic).
  MX types are per block of 32 (``group``, their default and only strategy; dynamic for inputs).
- ``algorithm``: ``minmax`` (the default: round to nearest with min/max ranges) and the PTQ
  algorithms registered in :mod:`qlayers.ptq` (``gptq``, ``awq`` with ``grids_num``,
  ``smoothquant`` with ``smooth_strength``, ``ofmr``), as ``{'gptq'}``, ``'gptq'``,
  ``['minmax', 'gptq']`` or ``{'awq': {'grids_num': 20}}``. They run on the ``batch_num`` batches
  the model is called with after ``quantize`` (recorded as they pass, after activation
  calibration), when the last of them has run or at :func:`convert`: SmoothQuant and AWQ first
  (they change the layers' inputs, so the activation ranges are calibrated again on the same
  batches), then the others in the order given. An AMCT algorithm qzoo has
  not registered raises ``NotImplementedError``. HiFloat8 uses qzoo's HiF8 default, a power-of-two
  scale of least squared error (the weight-side analogue of OFMR's power-of-two search).
- ``skip_layers``: layers whose name contains one of the strings stay float.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from .. import ptq
from ..model.calibrate import calibrate, finish_calibration, start_calibration
from ..model.convert import quantize_model
from ..model.errors import bad_type, bad_value, join, unknown_key

TOP_KEYS = ("batch_num", "quant_cfg", "algorithm", "skip_layers")
TENSOR_KEYS = ("type", "symmetric", "strategy", "group_size")
WEIGHT_TYPES = {
    "hifloat8": {"format": "hifloat8"}, "float8_e4m3fn": {"format": "float8_e4m3fn"},
    "mxfp4_e2m1": {"format": "mxfp4"}, "mxfp8_e4m3fn": {"format": "mxfp8"},
    "float4_e2m1": {"format": "float4_e2m1fn"}, "float4_e1m2": {"format": "float4_e1m2"},
    "int4": {"format": "int4"}, "int8": {"format": "int8"},
}
INPUT_TYPES = {
    "hifloat8": {"format": "hifloat8"}, "float8_e4m3fn": {"format": "float8_e4m3fn"},
    "mxfp8_e4m3fn": {"format": "mxfp8"}, "int8": {"format": "int8"},
}
WEIGHT_STRATEGIES = ("tensor", "channel", "group")
INPUT_STRATEGIES = ("tensor", "token")
ALGORITHMS = ("minmax", "gptq", "awq", "smoothquant", "ofmr")
RESCALING = ("smoothquant", "awq")  # change layer inputs: run first, then calibrate again
_HOOKS = "_qzoo_amct_calibration_hooks"
_STATE = "_qzoo_amct_calibration_state"


def quantize(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """Quantize ``model`` in place as AMCT's ``quantize(model, config)`` does; returns ``model``.

    With ``inputs`` in ``quant_cfg`` the model calibrates its activation ranges over the next
    ``batch_num`` forward calls, then quantizes them (call :func:`convert` to stop earlier)."""
    qzoo_config, batch_num = translate(config)
    model = quantize_model(model, qzoo_config, inplace=True)
    if qzoo_config.get("inputs") is not None or qzoo_config.get("algorithm"):
        _calibrate_for(model, batch_num, qzoo_config.get("inputs") is not None, qzoo_config.get("algorithm", []))
    return model


def convert(model: nn.Module) -> nn.Module:
    """End calibration now (if it is still running): activation ranges freeze and quantize, then
    the PTQ algorithms run on the batches recorded so far."""
    hooks = model.__dict__.pop(_HOOKS, None)
    if hooks is None:
        return model
    for hook in hooks:
        hook.remove()
    state = model.__dict__.pop(_STATE)
    if state["activations"]:
        finish_calibration(model)
    rescaling = [a for a in state["algorithms"] if _name(a) in RESCALING]
    others = [a for a in state["algorithms"] if _name(a) not in RESCALING]
    if rescaling:
        ptq.apply(model, state["batches"], rescaling, forward=_replay, progress=False)
        if state["activations"]:  # the layers' inputs changed: their ranges afresh
            calibrate(model, state["batches"], forward=_replay, reset=True, progress=False)
    if others:
        ptq.apply(model, state["batches"], others, forward=_replay, progress=False)
    return model


def _name(algorithm: Any) -> str:
    return algorithm if isinstance(algorithm, str) else next(iter(algorithm))


def translate(config: Mapping[str, Any]) -> "tuple[Dict[str, Any], int]":
    """``(qzoo config, batch_num)`` for an AMCT config (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise bad_type("config", config, "a dict with 'quant_cfg'")
    for key in config:
        if key not in TOP_KEYS:
            raise unknown_key("", key, TOP_KEYS)
    batch_num = config.get("batch_num", 1)
    if isinstance(batch_num, bool) or not isinstance(batch_num, int) or batch_num < 1:
        raise bad_type("batch_num", batch_num, "a positive int (uint32)")
    algorithms = _algorithms(config.get("algorithm", "minmax"))
    quant_cfg = config.get("quant_cfg")
    if not isinstance(quant_cfg, Mapping):
        raise bad_type("quant_cfg", quant_cfg, "a dict with 'weights' and optionally 'inputs'")
    for key in quant_cfg:
        if key not in ("weights", "inputs"):
            raise unknown_key("quant_cfg", key, ("weights", "inputs"))
    out: Dict[str, Any] = {"weights": None, "inputs": None}
    if quant_cfg.get("weights") is not None:
        out["weights"] = _tensor(quant_cfg["weights"], "quant_cfg.weights", WEIGHT_TYPES, WEIGHT_STRATEGIES, weights=True)
    if quant_cfg.get("inputs") is not None:
        out["inputs"] = _tensor(quant_cfg["inputs"], "quant_cfg.inputs", INPUT_TYPES, INPUT_STRATEGIES, weights=False)
    skip = config.get("skip_layers", [])
    if isinstance(skip, str) or not isinstance(skip, (list, tuple, set)) or not all(isinstance(s, str) for s in skip):
        raise bad_type("skip_layers", skip, "a list of layer-name substrings")
    out["skip_layers"] = list(skip)
    if algorithms:
        out["algorithm"] = algorithms
    return out, batch_num


def _algorithms(algorithm: Any) -> List[Any]:
    """The PTQ algorithms of AMCT's ``algorithm`` entry as :func:`qlayers.ptq.apply` takes them
    (``minmax``, plain rounding, is dropped)."""
    # AMCT writes {'minmax'} (a set), 'minmax', ['minmax'] or {'awq': {'grids_num': 20}}
    if isinstance(algorithm, str) or isinstance(algorithm, Mapping):
        items = [algorithm]
    elif isinstance(algorithm, (set, frozenset)):
        items = sorted(algorithm, key=str)
    elif isinstance(algorithm, (list, tuple)):
        items = list(algorithm)
    else:
        items = []
    entries = [(n, o) for item in items for n, o in (item.items() if isinstance(item, Mapping) else [(item, None)])]
    if not entries:
        raise bad_type("algorithm", algorithm, "an algorithm name, a set/list of names or a dict {name: options}")
    out = []
    for name, options in entries:
        if name not in ALGORITHMS:
            raise bad_value("algorithm", name, ALGORITHMS)
        if name == "minmax":
            continue
        if name not in ptq.algorithm_names():
            raise NotImplementedError(
                f"AMCT algorithm {name!r} is not yet supported by qzoo; supported: minmax, {', '.join(ptq.algorithm_names())}"
            )
        out.append(name if options is None else {name: options})
    return out


def _tensor(cfg: Any, path: str, types: Mapping[str, Dict[str, Any]], strategies, weights: bool) -> Dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise bad_type(path, cfg, "a dict with 'type'")
    for key in cfg:
        if key not in TENSOR_KEYS or (key == "group_size" and not weights):
            raise unknown_key(path, key, TENSOR_KEYS if weights else TENSOR_KEYS[:3])
    kind = cfg.get("type")
    if kind not in types:
        raise bad_value(join(path, "type"), kind, types)
    spec = dict(types[kind])
    symmetric = cfg.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise bad_type(join(path, "symmetric"), symmetric, "True or False")
    block = spec["format"] in ("mxfp4", "mxfp8")
    strategy = cfg.get("strategy", "group" if block else "tensor")
    if block and strategy != "group":
        raise bad_value(join(path, "strategy"), strategy, ("group",), f"{kind} is quantized per block of 32")
    if strategy not in strategies and not block:
        raise bad_value(join(path, "strategy"), strategy, strategies)
    if not symmetric:
        if not spec["format"].startswith("int"):
            raise bad_value(join(path, "symmetric"), symmetric, (True,), f"{kind} supports symmetric quantization only")
        spec["symmetric"] = False
    elif spec["format"].startswith("int"):
        spec["narrow"] = True  # max|x| / (2^(b-1) - 1)
    if not block:
        spec["granularity"] = strategy
        if strategy == "group":
            spec["group_size"] = _group_size(cfg.get("group_size"), join(path, "group_size"))
    if "group_size" in cfg and strategy != "group":
        raise ValueError(f"{join(path, 'group_size')} applies only with strategy 'group', got strategy={strategy!r}")
    if not weights and strategy == "tensor" and not block:
        spec["observer"] = "mse" if spec["format"] == "hifloat8" else "global_minmax"
    return spec


def _group_size(value: Optional[Any], path: str) -> int:
    if value is None:
        raise ValueError(f"{path} is needed with strategy 'group' (a multiple of 32, e.g. 128)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 32 or value % 32:
        raise bad_value(path, value, ("32", "64", "96", "128", "..."), "group_size must be a multiple of 32 in [32, K-1]")
    return value


def _calibrate_for(model: nn.Module, batch_num: int, activations: bool, algorithms: List[Any]) -> None:
    """Calibrate activations and/or record batches for the PTQ algorithms over the next
    ``batch_num`` forward calls of ``model``, then :func:`convert`."""
    if activations:
        start_calibration(model)
    state: Dict[str, Any] = {"activations": activations, "algorithms": algorithms, "batches": [], "calls": 0}

    def record(module, args, kwargs):
        if algorithms:
            state["batches"].append((args, kwargs))

    def count(module, args, output):
        state["calls"] += 1
        if state["calls"] >= batch_num:
            convert(module)

    model.__dict__[_STATE] = state
    model.__dict__[_HOOKS] = [model.register_forward_pre_hook(record, with_kwargs=True), model.register_forward_hook(count)]


def _replay(model: nn.Module, batch: Any) -> Any:
    args, kwargs = batch
    return model(*args, **kwargs)
