"""Noticing NaN and Inf in the data quantizers see (the "visible" half of the NaN/Inf policy of
:mod:`quantizers.scaling`).

Statistics ignore NaN/Inf, so a range collected from a batch holding one looks normal; calibration
therefore counts them on the way in. :class:`NonFiniteWatch` adds a forward pre-hook to each
watched quantizer that adds ``count_nonfinite(input)`` to a running count. The counts stay on the
tensors' device (no host synchronisation per batch) until :meth:`NonFiniteWatch.close` reads them
once; :func:`nonfinite_message` words the one warning.

Example::

    watch = NonFiniteWatch([("0.input_quant", quantizer)])
    ...                                   # run batches
    counts = watch.close()                # {"0.input_quant": 1} if one NaN came in
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
from torch import nn


def count_nonfinite(x: torch.Tensor) -> torch.Tensor:
    """The number of NaN and ±Inf elements of ``x`` (a 0-d int64 tensor on ``x``'s device)."""
    return (~torch.isfinite(x)).sum()


class NonFiniteWatch:
    """Counts the NaN/±Inf elements entering each of ``quantizers`` (``(name, module)`` pairs)
    until :meth:`close`."""

    def __init__(self, quantizers: Iterable[Tuple[str, nn.Module]]) -> None:
        self._counts: Dict[str, torch.Tensor] = {}
        self._handles = [
            module.register_forward_pre_hook(self._counter(name)) for name, module in quantizers
        ]

    def _counter(self, name: str):
        def hook(module: nn.Module, args) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                count = count_nonfinite(x.detach())
                self._counts[name] = count if name not in self._counts else self._counts[name] + count
        return hook

    def close(self) -> Dict[str, int]:
        """Remove the hooks; ``{name: count}`` for every watched quantizer that met NaN/Inf."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        counts = {name: int(count) for name, count in self._counts.items()}
        return {name: count for name, count in counts.items() if count > 0}


def nonfinite_message(counts: Dict[str, int], what: str = "calibration") -> str:
    """The warning for ``counts`` (from :meth:`NonFiniteWatch.close`)."""
    listed = ", ".join(f"{name} ({count} element{'s' if count != 1 else ''})" for name, count in counts.items())
    return (
        f"{what} met NaN/Inf values at {listed}; ranges ignore them (NaN stays NaN, Inf saturates, "
        "MX/NVFP4 blocks holding them become NaN), but check the data or the layers before these quantizers"
    )
