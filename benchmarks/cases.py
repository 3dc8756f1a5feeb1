"""What a benchmark case is: contenders to run side by side and the comparisons to report.

A :class:`Case` builds its contenders lazily (``build(ctx)`` -> ``{label: callable}``) so that
``--only`` skips the set-up of everything else. The contender labelled ``candidate`` (qzoo) is
compared with each :class:`Compare`'s baseline; the ratio is always ``candidate / baseline`` (time
or bytes), and a target is the largest ratio that passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

BREVITAS = "brevitas"


@dataclass(frozen=True)
class Context:
    """What every case builder gets: the device, the ``--quick`` flag and whether Brevitas runs."""

    device: torch.device
    quick: bool
    brevitas: bool


@dataclass(frozen=True)
class Compare:
    """Report ``candidate / baseline``; ``target`` is the largest passing ratio (None: informational)."""

    baseline: str
    target: Optional[float] = None


@dataclass
class Case:
    """One benchmark: ``build(ctx)`` returns ``{label: zero-argument callable}`` (time cases) or
    ``{label: MemoryProbe}`` (memory cases); a label starting with ``brevitas`` is a Brevitas
    contender, skipped under ``--no-brevitas``."""

    section: str
    name: str
    build: Callable[[Context], Dict[str, Any]]
    compares: Tuple[Compare, ...]
    kind: str = "time"  # "time" or "memory"
    candidate: str = "qzoo"
    quick: bool = False
    notes: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.section}/{self.name}"


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator, so every case builds the same tensors whatever ran before it."""
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Standard normal tensor of ``shape`` on ``device``, reproducible per ``seed``."""
    return torch.randn(*shape, generator=seeded(seed)).to(device)
