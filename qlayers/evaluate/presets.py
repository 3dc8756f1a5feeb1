"""Named quantization configs for :mod:`qlayers.evaluate`: one name per format, weights and inputs.

Every preset quantizes the weight and the input of each Linear layer in one format (static
per-tensor input ranges for INT8 and the 8-bit floats, so they are calibrated; dynamic per-block
or per-token ranges otherwise); embeddings, ``lm_head`` and the residual adds stay float, the usual
protocol of LLM quantization papers. A config file (``.json``/``.yaml``, see
:func:`qlayers.load_config`) or a dict is used as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import nn

PRESETS: Dict[str, Dict[str, Any]] = {
    "int8": {"weights": {"format": "int8"}, "inputs": {"format": "int8"}},  # W8A8 per-tensor, static
    "int8-dynamic": {"weights": {"format": "int8", "granularity": "channel"},
                     "inputs": {"format": "int8", "granularity": "token"}},
    "fp8": {"weights": {"format": "float8_e4m3fn"}, "inputs": {"format": "float8_e4m3fn"}},
    "hifloat8": {"weights": {"format": "hifloat8"}, "inputs": {"format": "hifloat8"}},
    "mxfp8": {"weights": {"format": "mxfp8"}, "inputs": {"format": "mxfp8"}},
    "mxfp4": {"weights": {"format": "mxfp4"}, "inputs": {"format": "mxfp4"}},
    "nvfp4": {"weights": {"format": "nvfp4"}, "inputs": {"format": "nvfp4"}},
    "int4": {"weights": {"format": "int4", "granularity": "channel"},  # W4A4, per-token inputs
             "inputs": {"format": "int4", "granularity": "token"}},
}
"""Preset name -> the formats of ``weights`` and ``inputs`` (see the module docstring). Any other
format name of :mod:`qlayers.model.spec` (``"mxfp6"``, ``"float8_e5m2"``) works too: weights and
inputs in that format with its default granularity."""
ALIASES = {"w8a8": "int8", "w4a4": "int4", "float8_e4m3fn": "fp8", "fp8_e4m3": "fp8", "hif8": "hifloat8"}
"""Other names users give the presets."""


def resolve_config(config: Union[str, Path, Mapping[str, Any]], model: nn.Module) -> Tuple[str, Any]:
    """``(label, config)`` for :func:`qlayers.quantize_model`: a preset name becomes its dict plus
    ``skip_layers`` (the embeddings and, when ``model`` has one, ``lm_head``) and
    ``functional_adds=False``; a file path or a dict is returned as it is (label: the file stem)."""
    if isinstance(config, Mapping):
        return "config", config
    text = str(config)
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"config file {text!r} does not exist")
        return path.stem, str(path)
    sections = PRESETS.get(ALIASES.get(text, text)) or _format_preset(text)
    if sections is None:
        raise ValueError(f"config {text!r} is neither a preset ({', '.join(PRESETS)}), a format name "
                         "(e.g. 'mxfp6', 'float8_e5m2') nor a .json/.yaml/.yml file")
    skip = ["embed"] + (["lm_head"] if isinstance(getattr(model, "lm_head", None), nn.Module) else [])
    return text, {**sections, "skip_layers": skip, "functional_adds": False}


def _format_preset(name: str) -> Optional[Dict[str, Any]]:
    """Weights and inputs in the format ``name`` (any spec format), or None if it is not one."""
    from ..model.config import validate_config

    sections = {"weights": {"format": name}, "inputs": {"format": name}}
    try:
        validate_config(sections)
    except (ValueError, TypeError):
        return None
    return sections
