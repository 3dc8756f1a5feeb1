"""Error messages of the model-level tools: each names the key path, the value given and what is
allowed, so a config mistake reads like ``weights.granularity='chanel' is not allowed; allowed
values: tensor, channel, group, token, block (did you mean 'channel'?)``."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


def _close(value: Any, allowed: Iterable[Any]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def bad_value(path: str, value: Any, allowed: Iterable[Any], hint: str = "") -> ValueError:
    """``ValueError``: ``path=value`` is not one of ``allowed``."""
    allowed = list(allowed)
    text = f"{path}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}{_close(value, allowed)}"
    return ValueError(text + (f". {hint}" if hint else ""))


def bad_type(path: str, value: Any, expected: str) -> TypeError:
    """``TypeError``: ``path`` holds a value of the wrong type."""
    return TypeError(f"{path} must be {expected}, got {type(value).__name__} {value!r}")


def unknown_key(path: str, key: Any, allowed: Iterable[str]) -> ValueError:
    """``ValueError``: ``key`` is not a known key of the mapping at ``path``."""
    allowed = list(allowed)
    where = f"{path}.{key}" if path else str(key)
    return ValueError(f"unknown key {where!r}; allowed keys at {path or 'the top level'}: {', '.join(allowed)}{_close(key, allowed)}")


def join(path: str, key: Any) -> str:
    """``path.key`` (``key`` alone at the top level); non-identifier keys in brackets."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"
