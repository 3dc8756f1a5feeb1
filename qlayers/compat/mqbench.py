"""sophgo-mq / MQBench's ``prepare_by_platform`` on qzoo layers.

    model = prepare_by_platform(model, prepare_custom_config_dict)          # sophgo-mq docs
    model = prepare_by_platform(model, "BM1690", prepare_custom_config_dict)  # MQBench: platform first
    enable_calibration(model); model(x) ...; enable_quantization(model)     # sophgo_mq.utils.state

returns a quantized copy of ``model``: weights of ``nn.Linear``/``nn.Conv*`` with ``w_*``, inputs
of those layers and residual adds with ``a_*`` (unless ``quantmode`` is ``weight_only``).

``prepare_custom_config_dict``:

- ``quant_dict``: ``chip`` (BM1688, BM1684X, BM1690, MARS3, CV183X, CV182X, CV181X, CV180X,
  CV186X, Academic; it picks the defaults below), ``quantmode`` (``weight_activation`` or
  ``weight_only``), ``strategy`` (e.g. ``CNN``, ``Transformer``).
- ``extra_qconfig_dict``: ``w_observer``/``a_observer`` (``MinMaxObserver``: running min/max over
  batches, i.e. qzoo's ``global_minmax``; ``EMAMinMaxObserver``: ``ema_minmax`` with momentum
  ``1 - ema_ratio`` = 0.1, which averages min and max for asymmetric schemes as MQBench does but
  ``max|x|`` for symmetric ones, where MQBench's ``max(-EMA(min), EMA(max))`` can differ slightly;
  ``MSEObserver``: qzoo's MSE range search, an approximation of MQBench's L2 search). Weights take
  their range from the tensor at every step (MQBench's weight MinMaxObserver keeps a running range
  over QAT steps).
  ``w_fakequantize``/``a_fakequantize``: ``E4M3FakeQuantize``, ``E5M2FakeQuantize`` (FP8, scale
  ``max|x| / fp_max``), ``FixedFakeQuantize`` (integers, fixed scale), ``LearnableFakeQuantize``
  (integers with a learned range, LSQ-style). ``w_qscheme``/``a_qscheme``: ``bit``, ``symmetry``
  (symmetric on ``[-2^(b-1), 2^(b-1)-1]`` with ``scale = max|x| / (2^(b-1) - 0.5)``, or
  ``symmetric_range`` ``[-(2^(b-1)-1), ...]`` with ``max|x| / (2^(b-1)-1)``; asymmetric on
  ``[0, 2^b - 1]``), ``per_channel``, ``pot_scale`` (``2^round(log2 s)``).
  ``w_observer_extra_args``/``a_observer_extra_args``: ``ema_ratio``.
  Other keys (``object_type``, ``module_name``, ``int4_op``, ...) raise ``NotImplementedError``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import nn

from ..model.calibrate import finish_calibration, start_calibration
from ..model.convert import quantize_model
from ..model.errors import bad_type, bad_value, join, unknown_key
from ..model.qat import disable_quantization, enable_quantization as _enable_all

CHIPS = ("BM1688", "BM1684X", "BM1690", "MARS3", "CV183X", "CV182X", "CV181X", "CV180X", "CV186X", "Academic")
NARROW_WEIGHT_CHIPS = ("MARS3", "CV183X", "CV182X", "CV181X", "CV180X", "CV186X")
FP8_WEIGHT_CHIPS = ("BM1688", "Academic")
QUANTMODES = ("weight_activation", "weight_only")
OBSERVERS = {"MinMaxObserver": "global_minmax", "EMAMinMaxObserver": "ema_minmax", "MSEObserver": "mse"}
FAKE_QUANTIZERS = ("E4M3FakeQuantize", "E5M2FakeQuantize", "FixedFakeQuantize", "LearnableFakeQuantize")
KNOWN_FAKE_QUANTIZERS = FAKE_QUANTIZERS + (
    "NNIEFakeQuantize", "DoReFaFakeQuantize", "DSQFakeQuantize", "PACTFakeQuantize", "TqtFakeQuantize",
    "AdaRoundFakeQuantize", "QDropFakeQuantize", "GPTQFakeQuantize", "FP4FakeQuantize", "GPTQFP4FakeQuantize",
    "FP4GROUPFakeQuantize", "FP4GROUPFakeQuantize1", "Fp16FakeQuantize", "BF16FakeQuantize",
)
KNOWN_OBSERVERS = tuple(OBSERVERS) + (
    "MinMaxFloorObserver", "PoTModeObserver", "EMAQuantileObserver", "ClipStdObserver", "LSQObserver",
    "EMAMSEObserver", "KLDObserver",
)
EXTRA_KEYS = (
    "w_observer", "a_observer", "w_fakequantize", "a_fakequantize", "w_qscheme", "a_qscheme",
    "w_fakeq_params", "a_fakeq_params", "w_observer_extra_args", "a_observer_extra_args",
    "object_type", "module_name", "int4_op", "int8_op", "f16_op",
)
QSCHEME_KEYS = ("bit", "symmetry", "per_channel", "pot_scale", "symmetric_range")
TOP_KEYS = ("quant_dict", "extra_qconfig_dict", "extra_quantizer_dict", "preserve_attr", "concrete_args", "extra_fuse_dict")


def prepare_by_platform(
    model: nn.Module,
    platform: Any = None,
    prepare_custom_config_dict: Optional[Mapping[str, Any]] = None,
    custom_tracer: Any = None,
    *,
    input_shape_dict: Any = None,
) -> nn.Module:
    """A quantized copy of ``model`` for ``prepare_custom_config_dict`` (see the module docstring).

    The second argument may be the config itself (as sophgo-mq's docs call it), a chip name (as
    MQBench's ``deploy_backend``) or sophgo-mq's ``input_shape_dict`` (ignored: qzoo needs no
    shapes). ``custom_tracer`` is not supported (qzoo traces each module itself)."""
    if isinstance(platform, Mapping) and prepare_custom_config_dict is None:
        platform, prepare_custom_config_dict = None, platform
    if custom_tracer is not None:
        raise NotImplementedError("custom_tracer is not yet supported by qzoo's prepare_by_platform")
    chip = None if platform is None or isinstance(platform, (list, tuple)) else str(getattr(platform, "name", platform))
    return quantize_model(model, translate(prepare_custom_config_dict or {}, chip))


def enable_calibration(model: nn.Module) -> None:
    """sophgo_mq.utils.state.enable_calibration: observers on, quantization of activations off."""
    if "_qzoo_calibration" in model.__dict__:
        finish_calibration(model)
    start_calibration(model)


def enable_quantization(model: nn.Module) -> None:
    """sophgo_mq.utils.state.enable_quantization: observers off (ranges frozen), quantization on."""
    if "_qzoo_calibration" in model.__dict__:
        finish_calibration(model)
    _enable_all(model)


def disable_all(model: nn.Module) -> None:
    """sophgo_mq.utils.state.disable_all: no observation, no quantization (float model)."""
    if "_qzoo_calibration" in model.__dict__:
        finish_calibration(model)
    disable_quantization(model)


def translate(config: Mapping[str, Any], chip: Optional[str] = None) -> Dict[str, Any]:
    """The qzoo config for a ``prepare_custom_config_dict`` (``chip`` from the platform argument
    fills in when ``quant_dict`` has none)."""
    if not isinstance(config, Mapping):
        raise bad_type("prepare_custom_config_dict", config, "a dict with 'quant_dict'")
    for key in config:
        if key not in TOP_KEYS:
            raise unknown_key("prepare_custom_config_dict", key, TOP_KEYS)
    quant_dict = config.get("quant_dict", {})
    if not isinstance(quant_dict, Mapping):
        raise bad_type("quant_dict", quant_dict, "a dict with 'chip', 'quantmode', 'strategy'")
    chip = quant_dict.get("chip", chip)
    if chip not in CHIPS:
        raise bad_value("quant_dict.chip", chip, CHIPS)
    mode = quant_dict.get("quantmode", "weight_activation")
    if mode not in QUANTMODES:
        raise bad_value("quant_dict.quantmode", mode, QUANTMODES)
    strategy = quant_dict.get("strategy", "CNN")
    if not isinstance(strategy, str):
        raise bad_type("quant_dict.strategy", strategy, "a string such as 'CNN' or 'Transformer'")
    if mode == "weight_only" and strategy == "CNN":
        raise ValueError("quant_dict: quantmode='weight_only' with strategy='CNN' is not a supported combination (as in sophgo-mq)")
    extra = config.get("extra_qconfig_dict", {}) or {}
    if not isinstance(extra, Mapping):
        raise bad_type("extra_qconfig_dict", extra, "a dict")
    for key in extra:
        if key not in EXTRA_KEYS:
            raise unknown_key("extra_qconfig_dict", key, EXTRA_KEYS)
        if key in ("object_type", "module_name", "int4_op", "int8_op", "f16_op") and extra[key]:
            raise NotImplementedError(f"extra_qconfig_dict.{key} is not yet supported by qzoo; use qlayers.quantize_model's 'layers' overrides")
    weights = _tensor(extra, "w", chip, weights=True)
    inputs = _tensor(extra, "a", chip, weights=False) if mode == "weight_activation" else None
    return {"weights": weights, "inputs": inputs}


def _tensor(extra: Mapping[str, Any], prefix: str, chip: str, weights: bool) -> Dict[str, Any]:
    path = "extra_qconfig_dict"
    default_fq = "E4M3FakeQuantize" if weights and chip in FP8_WEIGHT_CHIPS else "LearnableFakeQuantize"
    fake = extra.get(f"{prefix}_fakequantize") or default_fq
    if fake not in KNOWN_FAKE_QUANTIZERS:
        raise bad_value(join(path, f"{prefix}_fakequantize"), fake, KNOWN_FAKE_QUANTIZERS)
    if fake not in FAKE_QUANTIZERS:
        raise NotImplementedError(f"{path}.{prefix}_fakequantize={fake!r} is not yet supported by qzoo; supported: {', '.join(FAKE_QUANTIZERS)}")
    observer = extra.get(f"{prefix}_observer") or ("MinMaxObserver" if weights else "EMAMinMaxObserver")
    if observer not in KNOWN_OBSERVERS:
        raise bad_value(join(path, f"{prefix}_observer"), observer, KNOWN_OBSERVERS)
    if observer not in OBSERVERS:
        raise NotImplementedError(f"{path}.{prefix}_observer={observer!r} is not yet supported by qzoo; supported: {', '.join(OBSERVERS)}")
    qscheme = _qscheme(extra.get(f"{prefix}_qscheme"), join(path, f"{prefix}_qscheme"), chip, weights)
    for key in (f"{prefix}_fakeq_params",):
        if extra.get(key):
            raise NotImplementedError(f"{path}.{key} is not yet supported by qzoo")
    spec: Dict[str, Any] = {}
    if fake in ("E4M3FakeQuantize", "E5M2FakeQuantize"):
        if qscheme["bit"] != 8 or not qscheme["symmetry"]:
            raise ValueError(f"{join(path, prefix + '_qscheme')}: {fake} needs bit=8 and symmetry=True, got {qscheme}")
        spec["format"] = "float8_e4m3fn" if fake == "E4M3FakeQuantize" else "float8_e5m2"
    else:
        bit = qscheme["bit"]
        if qscheme["symmetry"]:
            spec.update(format=f"int{bit}", narrow=bool(qscheme["symmetric_range"]), full_range_divisor="half_range")
        else:
            spec.update(format=f"uint{bit}", symmetric=False)
        if fake == "LearnableFakeQuantize":
            spec["learned_scale"] = True
    spec["granularity"] = "channel" if qscheme["per_channel"] else "tensor"
    if qscheme["pot_scale"]:
        spec["scale"] = "po2_round"
        spec.pop("learned_scale", None)  # a power-of-two scale has no gradient to learn from
    if weights:
        if OBSERVERS[observer] == "mse":
            spec["observer"] = "mse"
    else:
        spec["observer"] = OBSERVERS[observer]
        ema_ratio = dict(extra.get(f"{prefix}_observer_extra_args") or {}).get("ema_ratio")
        if ema_ratio is not None:
            if not isinstance(ema_ratio, (int, float)) or not 0 <= ema_ratio < 1:
                raise bad_type(join(path, f"{prefix}_observer_extra_args.ema_ratio"), ema_ratio, "a number in [0, 1)")
            spec["momentum"] = 1.0 - float(ema_ratio)
    return spec


def _qscheme(value: Any, path: str, chip: str, weights: bool) -> Dict[str, Any]:
    if value is None:  # the chip's default scheme
        return {"bit": 8, "symmetry": True, "per_channel": weights, "pot_scale": False,
                "symmetric_range": weights and chip in NARROW_WEIGHT_CHIPS}
    if not isinstance(value, Mapping):
        raise bad_type(path, value, "a dict with bit, symmetry, per_channel, pot_scale")
    for key, item in value.items():
        if key not in QSCHEME_KEYS:
            raise unknown_key(path, key, QSCHEME_KEYS)
        if key == "bit":
            if isinstance(item, bool) or not isinstance(item, int) or not 2 <= item <= 8:
                raise bad_value(join(path, key), item, range(2, 9))
        elif not isinstance(item, bool):
            raise bad_type(join(path, key), item, "True or False")
    return {"bit": 8, "symmetry": True, "per_channel": False, "pot_scale": False, "symmetric_range": False, **value}
