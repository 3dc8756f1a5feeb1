"""Model-level tools: quantize a whole float model from a config, calibrate it, train it with
quantization (QAT) and describe the result.

- :func:`quantize_model` (:mod:`~qlayers.model.convert`), driven by a validated config
  (:mod:`~qlayers.model.config`; declarative tensor specs in :mod:`~qlayers.model.spec`);
- :func:`calibrate`, :func:`calibration_mode` (:mod:`~qlayers.model.calibrate`);
- :func:`quantization_disabled`, :func:`disable_quantization`, :func:`enable_quantization`
  (:mod:`~qlayers.model.qat`); learned ranges through ``learned_scale`` in the config
  (:mod:`~qlayers.model.control`, range source ``LEARNED`` of :class:`~quantizers.TensorQuantizer`);
- :func:`summary` (:mod:`~qlayers.model.summary`);
- :class:`quant_inference_mode` (:mod:`~qlayers.model.inference`), Brevitas's context for fast inference.
"""
from .calibrate import (
    CalibrationReport,
    calibrate,
    calibration_mode,
    finish_calibration,
    freeze_observers,
    range_report,
    start_calibration,
    unfreeze_observers,
)
from .config import QuantConfig, load_config, validate_config
from .convert import quantize_model
from .inference import quant_inference_mode
from .qat import disable_quantization, enable_quantization, quantization_disabled
from .spec import spec_to_quantizer
from .summary import ModelSummary, summary

__all__ = [
    "quantize_model", "QuantConfig", "load_config", "validate_config", "spec_to_quantizer",
    "calibrate", "calibration_mode", "start_calibration", "finish_calibration", "freeze_observers",
    "unfreeze_observers", "range_report", "CalibrationReport",
    "quantization_disabled", "disable_quantization", "enable_quantization",
    "summary", "ModelSummary", "quant_inference_mode",
]
