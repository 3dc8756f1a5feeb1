"""The model quantization config: validated up front, resolved to quantizer classes.

Shape (every key optional)::

    {
        "weights":     <section>,   # weight of the target layers (default: Linear, Conv*, ConvTranspose*, Conv1D)
        "inputs":      <section>,   # input of those layers (and operands of residual adds, see functional_adds)
        "outputs":     <section>,   # output of those layers (and of residual adds)
        "bias":        <section>,   # bias of those layers
        "activations": <section>,   # output of ReLU, Sigmoid, Tanh, Hardtanh modules
        "targets": ["Linear", "Embedding"],   # layer classes to quantize (default: all but Embedding)
        "attention": {"q": <section>, "k": <section>, "v": <section>, "softmax": <section>},
        "skip_layers": ["lm_head", "encoder.0.*"],   # substring or glob of module names
        "layers": {"<glob or regex>": {"weights": <section>, ...}},   # per-layer overrides
        "functional_adds": False,   # True: also quantize `a + b` of two tensors found by torch.fx tracing
        "algorithm": ["gptq", {"gptq": {"act_order": True}}],  # PTQ run by qlayers.ptq.apply(qmodel, data)
    }

Defaults for transformers: ``targets`` is every weight layer class but ``Embedding`` (``Linear``,
``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and Hugging Face's GPT-2 ``Conv1D``), so ``weights``
quantizes the matmuls and leaves embedding tables float (list ``"Embedding"`` in ``targets``, or
name the table in ``layers``, to quantize it); a module matched by a ``layers`` pattern is
quantized even when its class is not a target. ``functional_adds`` is False: ``inputs`` quantizes
the inputs of the target layers only, not the residual stream. ``attention`` quantizes the Q, K, V
and softmax-output operands of the attention matmuls (see :mod:`qlayers.hf_attention`); each key
is optional (``"softmax"`` = the softmax output; ``"scores"`` = its input).

A ``<section>`` is ``None`` (not quantized), a quantizer class or its name in :mod:`quantizers`
(``"Int8WeightPerChannelFloat"``), ``{"quantizer": <class or name>, <attribute>: <value>, ...}``
(attribute overrides, as layers' prefixed kwargs), a declarative spec ``{"format": ..., ...}``
(:mod:`qlayers.model.spec`) or a coreai_opt ``QuantizationSpec`` dict ``{"dtype": ..., ...}``
(:mod:`qlayers.compat.coreai_opt`). Every section resolves to a quantizer class when the config is
validated, so mistakes surface before any layer is touched.

``algorithm`` names PTQ algorithms as :func:`qlayers.ptq.apply` takes them (a name, ``{name:
options}``, or a list or set of those; AMCT writes ``{'gptq'}``); names and option names are
checked with the config, and ``qlayers.ptq.apply(qmodel, data)`` without ``algorithms`` runs them.

Per-layer overrides apply in the order given (later wins). A section in an override that names a
``quantizer``, ``format`` or ``dtype`` replaces the global section; one without them is merged into
the global section's dict (``{"weights": {"group_size": 64}}`` keeps the global format). Patterns
are globs (``"encoder.*.fc1"``) or regular expressions (``"re:encoder\\.\\d+\\.fc1"``, or any
pattern that fully matches as a regex). A pattern that matches no module gives a warning.
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

import quantizers
from quantizers import Quantizer, QuantizerConfigError, build_tensor_quantizer, check_attribute_names

from .errors import bad_type, bad_value, join, unknown_key
from .spec import ROLES, spec_to_quantizer

SECTIONS: Dict[str, str] = {"weights": "weight", "inputs": "input", "outputs": "output", "bias": "bias", "activations": "act"}
"""Config section -> the layer role it quantizes (``<role>_quant``)."""
TOP_KEYS = (*SECTIONS, "targets", "attention", "skip_layers", "layers", "functional_adds", "algorithm")
TARGETS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Conv1D", "Embedding")
"""Layer classes ``targets`` may name (``Conv1D`` is Hugging Face's GPT-2 layer)."""
DEFAULT_TARGETS = tuple(t for t in TARGETS if t != "Embedding")
ATTENTION_KEYS: Dict[str, str] = {"q": "q_scaled", "k": "k_transposed", "v": "v", "softmax": "attn_output_weights", "scores": "softmax_input"}
"""``attention`` key -> the :class:`~qlayers.QuantScaledDotProductAttention` quantizer role it sets."""
_REPLACING_KEYS = ("quantizer", "format", "dtype")

Section = Optional[Type[Quantizer]]


@dataclass(frozen=True)
class LayerRule:
    """Overrides for the modules whose name matches ``pattern``."""

    pattern: str
    sections: Mapping[str, Section]

    def matches(self, name: str) -> bool:
        return name_matches(self.pattern, name)


@dataclass(frozen=True)
class QuantConfig:
    """A validated config: ``sections`` (section -> quantizer class or None), ``skip_layers``,
    per-layer ``rules``, ``functional_adds``, the ``raw`` dict it came from, the layer classes
    it ``targets``, the ``attention`` quantizers (:data:`ATTENTION_KEYS` -> class) and the PTQ
    ``algorithms`` (``(name, options)`` pairs)."""

    sections: Mapping[str, Section]
    skip_layers: Tuple[str, ...] = ()
    rules: Tuple[LayerRule, ...] = ()
    functional_adds: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)
    targets: Tuple[str, ...] = DEFAULT_TARGETS
    attention: Mapping[str, Section] = field(default_factory=dict)

    def is_target(self, name: str, class_name: str) -> bool:
        """Whether a layer of class ``class_name`` at ``name`` is quantized: its class is a target
        or a ``layers`` pattern names it."""
        return class_name in self.targets or any(rule.matches(name) for rule in self.rules)
    algorithms: Tuple[Tuple[str, Mapping[str, Any]], ...] = ()

    def is_skipped(self, name: str) -> bool:
        return any(skip_matches(pattern, name) for pattern in self.skip_layers)

    def for_layer(self, name: str) -> Optional[Dict[str, Section]]:
        """The sections for module ``name`` after overrides; ``None`` if the module is skipped."""
        if self.is_skipped(name):
            return None
        sections = dict(self.sections)
        for rule in self.rules:
            if rule.matches(name):
                sections.update(rule.sections)
        return sections

    @property
    def quantizes_activations(self) -> bool:
        """Whether any layer may get an input or output quantizer (then residual adds are traced)."""
        everything = [self.sections] + [r.sections for r in self.rules]
        return any(s.get(k) is not None for s in everything for k in ("inputs", "outputs"))


# ---- matching ----------------------------------------------------------------------------------
def name_matches(pattern: str, name: str) -> bool:
    """Glob match, ``"re:<regex>"`` full match, or (for a valid regex) a full regex match."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def skip_matches(pattern: str, name: str) -> bool:
    """``skip_layers`` entries match as a substring of the name (AMCT's rule), a glob or ``re:``."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return pattern in name or fnmatch.fnmatchcase(name, pattern)


# ---- validation --------------------------------------------------------------------------------
def validate_config(config: Union[Mapping[str, Any], QuantConfig, str, Path]) -> QuantConfig:
    """Check ``config`` and resolve every section to a quantizer class.

    Raises ``ValueError``/``TypeError`` naming the key path, the value and the allowed values.
    A path (str or ``Path``) is read with :func:`load_config`.
    """
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    if not isinstance(config, Mapping):
        raise bad_type("config", config, "a dict (or a path to a YAML/JSON file)")
    for key in config:
        if key not in TOP_KEYS:
            raise unknown_key("", key, TOP_KEYS)
    sections = {name: resolve_section(config.get(name), SECTIONS[name], name) for name in SECTIONS}
    _check_bias(sections, "bias")
    skip = _string_list(config.get("skip_layers", ()), "skip_layers")
    rules = _rules(config.get("layers", {}), config)
    adds = config.get("functional_adds", False)
    if not isinstance(adds, bool):
        raise bad_type("functional_adds", adds, "True or False")
    targets = _targets(config.get("targets", DEFAULT_TARGETS))
    attention = _attention(config.get("attention"))
    return QuantConfig(sections, tuple(skip), tuple(rules), adds, dict(config), targets, attention,
                       _algorithms(config.get("algorithm")))


def _targets(value: Any) -> Tuple[str, ...]:
    """Class names from ``targets``: a name or class (``"Linear"``, ``nn.Linear``) or a list of them."""
    items = [value] if isinstance(value, (str, type)) else value
    if not isinstance(items, Iterable):
        raise bad_type("targets", value, "a list of layer class names (e.g. ['Linear'])")
    names = []
    for i, item in enumerate(items):
        name = item.__name__ if isinstance(item, type) else item
        if name not in TARGETS:
            raise bad_value(f"targets[{i}]", item, TARGETS)
        names.append(name)
    return tuple(names)


def _attention(value: Any) -> Dict[str, Section]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad_type("attention", value, "a dict {'q': <section>, 'k': ..., 'v': ..., 'softmax': ...}")
    for key in value:
        if key not in ATTENTION_KEYS:
            raise unknown_key("attention", key, ATTENTION_KEYS)
    return {key: resolve_section(value[key], "act", f"attention.{key}") for key in value}


def _algorithms(value: Any) -> Tuple[Tuple[str, Mapping[str, Any]], ...]:
    """The ``algorithm`` section as ``(name, options)`` pairs, names and options checked against
    the PTQ registry (errors name the key ``algorithm``)."""
    if value is None:
        return ()
    from ..ptq import parse_algorithms  # the registry; imported late (qlayers.ptq imports this package)

    try:
        return tuple((algorithm.name, options) for algorithm, options in parse_algorithms(value))
    except (TypeError, ValueError) as error:
        raise type(error)(f"algorithm: {error}") from None


def load_config(path: Union[str, Path]) -> QuantConfig:
    """Read a config from a ``.yaml``/``.yml`` (needs PyYAML) or ``.json`` file and validate it."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"reading {path} needs PyYAML: pip install pyyaml (or use a .json config)") from None
        data = yaml.safe_load(text)
    elif path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        raise bad_value(f"load_config({str(path)!r}) suffix", path.suffix, (".yaml", ".yml", ".json"))
    return validate_config({} if data is None else data)


def resolve_section(value: Any, role: str, path: str) -> Section:
    """The quantizer class of one section (see the module docstring), or None."""
    if value is None:
        return None
    if isinstance(value, (str, type)):
        return _quantizer_form({"quantizer": value}, role, path)
    if hasattr(value, "model_dump"):  # a coreai_opt QuantizationSpec (pydantic) instance
        value = value.model_dump()
    if not isinstance(value, Mapping):
        raise bad_type(path, value, "None, a quantizer class or name, or a dict")
    if "quantizer" in value:
        return _quantizer_form(value, role, path)
    if "format" in value:
        return spec_to_quantizer(value, role, path)
    if "dtype" in value:
        from ..compat.coreai_opt import spec_to_quantizer as coreai_spec_to_quantizer

        return coreai_spec_to_quantizer(value, role, path)
    raise ValueError(
        f"{path} must name what to quantize with: 'quantizer' (a class or its name), 'format' (a "
        f"declarative spec) or 'dtype' (a coreai_opt QuantizationSpec); got keys {sorted(value)}"
    )


def _quantizer_form(value: Mapping[str, Any], role: str, path: str) -> Type[Quantizer]:
    qpath = join(path, "quantizer")
    quantizer = value["quantizer"]
    if isinstance(quantizer, str):
        found = getattr(quantizers, quantizer, None)
        if not (isinstance(found, type) and issubclass(found, Quantizer)):
            raise bad_value(qpath, quantizer, _quantizer_names(role), "give a quantizer class or the name of one in quantizers")
        quantizer = found
    elif not (isinstance(quantizer, type) and issubclass(quantizer, Quantizer)):
        raise bad_type(qpath, quantizer, "a quantizer class (a subclass of quantizers.Quantizer) or its name")
    overrides = {k: v for k, v in value.items() if k != "quantizer"}
    try:
        check_attribute_names(quantizer, overrides)
    except TypeError as error:
        raise TypeError(f"{path}: {error}") from None
    _check_role(quantizer, role, qpath)
    resolved = quantizer.with_overrides(**overrides)
    _trial_build(resolved, path)
    return resolved


def _check_role(quantizer: Type[Quantizer], role: str, path: str) -> None:
    kind = ROLES[role]
    ok = quantizer.role == kind or (kind == "bias" and quantizer.role == "weight")
    if not ok:
        expected = {"weight": "a weight quantizer", "act": "an activation quantizer", "bias": "a bias or weight quantizer"}[kind]
        raise ValueError(f"{path}={quantizer.__name__} has role {quantizer.role!r}, but this section needs {expected} (e.g. {_quantizer_names(role)[0]})")


def _trial_build(quantizer: Type[Quantizer], path: str) -> None:
    """Resolve and build ``quantizer`` as a layer would, so a bad attribute fails at validation
    with its key path (``weights.group_size: ...``)."""
    try:
        build_tensor_quantizer(quantizer)
    except QuantizerConfigError as error:
        raise error.located(join(path, error.attribute) if error.attribute else path) from None


def _quantizer_names(role: str) -> List[str]:
    kind = ROLES[role]
    names = [n for n in quantizers.__all__ if isinstance(getattr(quantizers, n), type) and issubclass(getattr(quantizers, n), Quantizer)]
    return [n for n in names if getattr(quantizers, n).role == kind and n.endswith(("Float", "Bias", "Weight", "Act"))][:12]


def _check_bias(sections: Mapping[str, Section], path: str) -> None:
    bias = sections.get("bias")
    if bias is not None and bias.requires_input_scale and sections.get("inputs") is None:
        raise ValueError(
            f"{path}={bias.__name__} quantizes at scale = input scale x weight scale, but 'inputs' is "
            "not quantized; add an 'inputs' section or give the bias its own scale (e.g. "
            "{'format': 'int8', 'scale': 'float'})"
        )


def _string_list(value: Any, path: str) -> List[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise bad_type(path, value, "a list of strings")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise bad_type(f"{path}[{i}]", item, "a string (module name substring, glob or 're:<regex>')")
        _check_regex(item, f"{path}[{i}]")
    return items


def _check_regex(pattern: str, path: str) -> None:
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as error:
            raise ValueError(f"{path}={pattern!r} is not a valid regular expression: {error}") from None


def _rules(layers: Any, config: Mapping[str, Any]) -> List[LayerRule]:
    if not isinstance(layers, Mapping):
        raise bad_type("layers", layers, "a dict {'<glob or regex>': {'weights': ..., ...}}")
    rules = []
    for pattern, overrides in layers.items():
        path = f"layers[{pattern!r}]"
        if not isinstance(pattern, str):
            raise bad_type("layers key", pattern, "a string (glob or 're:<regex>')")
        _check_regex(pattern, path)
        if not isinstance(overrides, Mapping):
            raise bad_type(path, overrides, f"a dict with keys among {', '.join(SECTIONS)}")
        sections: Dict[str, Section] = {}
        for key, value in overrides.items():
            if key not in SECTIONS:
                raise unknown_key(path, key, SECTIONS)
            sections[key] = resolve_section(_merged(config.get(key), value, join(path, key)), SECTIONS[key], join(path, key))
        if sections.get("bias") is not None:
            inputs = sections["inputs"] if "inputs" in sections else config.get("inputs")
            _check_bias({"bias": sections["bias"], "inputs": inputs}, join(path, "bias"))
        rules.append(LayerRule(pattern, sections))
    return rules


def _merged(base: Any, override: Any, path: str) -> Any:
    """``override`` merged into the global ``base`` section unless it replaces it."""
    if not isinstance(override, Mapping) or hasattr(override, "model_dump") or any(k in override for k in _REPLACING_KEYS):
        return override
    if base is None:
        raise ValueError(
            f"{path}={dict(override)!r} adds attributes to the global section, but there is none; "
            "give a 'format' or 'quantizer' here"
        )
    if isinstance(base, (str, type)):
        base = {"quantizer": base}
    elif hasattr(base, "model_dump"):
        base = base.model_dump()
    return {**base, **override}
