"""The PTQ algorithms by name.

An algorithm is its public function ``fn(model, data, **options) -> PTQReport`` plus a check
``check(model, **options) -> {name: layer}`` that returns the layers it will work on and raises
(``ValueError`` naming the layer and why) when it does not apply, and optionally a
``preflight(model, batch, forward, **options)`` that raises for what only a forward pass can tell
(e.g. a layer whose input no op can absorb a scale into), so :func:`qlayers.ptq.apply` validates
every requested algorithm, and the data against all their layers, before any work. Modules register theirs
with :func:`register`; :func:`parse_algorithms` reads AMCT-style lists (``'gptq'``,
``{'awq': {'grids_num': 20}}``, a set ``{'gptq'}``, or one dict ``{name: options, ...}``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

RUN_OPTIONS = ("forward", "progress")  # passed by apply to every algorithm, not algorithm options


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: ``function(model, data, **options)`` does the work,
    ``check(model, **options)`` returns its layers (``{name: layer}``) or raises if it does not
    apply; ``preflight(model, batch, forward, **options)`` (or None) raises for what needs a
    forward pass to know, changing nothing; ``options`` are the
    keyword options ``function`` accepts (with their defaults)."""

    name: str
    function: Callable[..., Any]
    check: Callable[..., Mapping[str, Any]]
    options: Mapping[str, Any]
    preflight: Optional[Callable[..., None]] = None


_ALGORITHMS: Dict[str, Algorithm] = {}


def register(
    name: str, check: Optional[Callable[..., Mapping[str, Any]]] = None, preflight: Optional[Callable[..., None]] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``function`` (``function(model, data, *, option=default, ...)``) under
    ``name``; ``check(model, **options)`` returns the layers it will work on (``{name: layer}``)
    or raises, before any work (default: no layers to check the data against);
    ``preflight(model, batch, forward, **options)`` raises, changing nothing, for what only a
    forward pass on the first batch can tell (default: none).

    Example::

        @register("rtn_frozen", check=my_check)
        def rtn_frozen(model, data, *, layers=None, forward=None, progress=True): ...
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an algorithm name must be an identifier string, got {name!r}")

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in _ALGORITHMS and _ALGORITHMS[name].function is not function:
            raise ValueError(f"a PTQ algorithm named {name!r} is already registered ({_ALGORITHMS[name].function.__module__})")
        params = inspect.signature(function).parameters.values()
        options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        _ALGORITHMS[name] = Algorithm(name, function, check or _no_check, options, preflight)
        return function

    return decorate


def _no_check(model: Any, **options: Any) -> Dict[str, Any]:
    return {}


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name``; an unknown name raises ``ValueError`` listing the known."""
    if name not in _ALGORITHMS:
        raise ValueError(f"PTQ algorithm {name!r} is unknown; allowed values: {', '.join(algorithm_names()) or '(none registered)'}")
    return _ALGORITHMS[name]


def algorithm_names() -> Tuple[str, ...]:
    """The registered algorithm names, sorted."""
    return tuple(sorted(_ALGORITHMS))


def parse_algorithms(algorithms: Any) -> List[Tuple[Algorithm, Dict[str, Any]]]:
    """``[(algorithm, options), ...]`` from a name, a ``{name: options}`` dict, or a list/tuple/set
    of those (a set is sorted by name: AMCT writes ``{'gptq'}``). Unknown names raise
    ``ValueError``; unknown option names or options that are not a dict raise ``TypeError``."""
    if isinstance(algorithms, (str, Mapping)):
        algorithms = [algorithms]
    elif isinstance(algorithms, (set, frozenset)):
        algorithms = sorted(algorithms, key=str)
    elif not isinstance(algorithms, (list, tuple)):
        raise TypeError(
            f"algorithms must be a name, a {{name: options}} dict or a list of them, got {type(algorithms).__name__}: {algorithms!r}"
        )
    parsed = []
    for item in algorithms:
        entries = item.items() if isinstance(item, Mapping) else [(item, None)]
        for name, options in entries:
            if not isinstance(name, str):
                raise TypeError(f"an algorithm is a name or {{name: options}}, got {name!r}")
            algorithm = get_algorithm(name)
            parsed.append((algorithm, check_options(algorithm, options)))
    return parsed


def check_options(algorithm: Algorithm, options: Any) -> Dict[str, Any]:
    """``options`` as a dict, each name one the algorithm accepts (``TypeError`` otherwise)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options of PTQ algorithm {algorithm.name!r} must be a dict, got {type(options).__name__}: {options!r}")
    allowed = [o for o in algorithm.options if o not in RUN_OPTIONS]
    for key in options:
        if key not in allowed:
            raise TypeError(f"PTQ algorithm {algorithm.name!r} has no option {key!r}; allowed: {', '.join(allowed)}")
    return dict(options)
