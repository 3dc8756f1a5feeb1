"""Other libraries' config dialects on qzoo layers, each translated to a qzoo config:

- :mod:`qlayers.compat.amct`: Huawei AMCT ``quantize(model, config)``;
- :mod:`qlayers.compat.mqbench`: sophgo-mq / MQBench ``prepare_by_platform(model, ...)``;
- :mod:`qlayers.compat.coreai_opt`: Apple coreai_opt ``QuantizationSpec`` dicts
  (``spec_to_quantizer(spec)``; also accepted directly as a config section).
"""
from . import amct, coreai_opt, mqbench

__all__ = ["amct", "coreai_opt", "mqbench"]
