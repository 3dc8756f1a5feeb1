"""Argument checks shared by the QuantTensor constructors, and pickling of autograd tensors."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from ..formats import NumberFormat, get_format


def as_format(fmt: Union[NumberFormat, str], argument: str) -> NumberFormat:
    if isinstance(fmt, NumberFormat):
        return fmt
    if isinstance(fmt, (str, torch.dtype)):
        return get_format(fmt)
    raise TypeError(f"{argument} must be a NumberFormat or a format name, got {type(fmt).__name__}")


def check_tensor(argument: str, x: Any, floating: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.dtype.is_floating_point:
        raise TypeError(f"{argument} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{argument} must be a real tensor, got dtype {x.dtype}")


def check_broadcastable(argument: str, x: Optional[torch.Tensor], shape: torch.Size) -> None:
    if x is None:
        return
    ok = x.dim() <= len(shape) and all(
        size in (1, target) for size, target in zip(reversed(x.shape), reversed(shape))
    )
    if not ok:
        raise ValueError(
            f"{argument} of shape {tuple(x.shape)} does not broadcast to value_ of shape {tuple(shape)}; "
            f"each of its dims must be 1 or equal value_'s (right-aligned), e.g. "
            f"{tuple(1 for _ in shape)} per tensor"
        )


def storable(item: Any) -> Any:
    if isinstance(item, torch.Tensor) and not item.is_leaf:
        return item.detach().requires_grad_(item.requires_grad)
    return item
