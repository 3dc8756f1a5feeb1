"""The Hessian of a layer's output error in its weight: ``H = sum_rows x x^T`` over the rows its
weight multiplies (GPTQ's ``2 X X^T`` up to a factor that dampening and the solution ignore).

A Linear's rows are its inputs flattened to ``(-1, in_features)``; a Conv1d/Conv2d's are the
receptive fields ``F.unfold`` extracts after the layer's own padding, ordered
``(in_channel, *kernel)`` like ``weight.flatten(1)``. Accumulated in float64 and summed over
ranks when ``torch.distributed`` is initialised.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum


def weight_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``x`` contributes to the product with ``layer.weight.flatten(1)``: shape
    ``(n, weight.flatten(1).shape[1])`` (Linear, Conv1d, Conv2d with ``groups=1``)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        spatial = len(layer.kernel_size)
        if x.ndim == spatial + 1:  # unbatched
            x = x.unsqueeze(0)
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        kernel, dilation, stride = layer.kernel_size, layer.dilation, layer.stride
        if spatial == 1:  # as a 2-D convolution of height 1
            x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
        columns = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C * prod(kernel), L)
        return columns.transpose(1, 2).reshape(-1, columns.shape[1])
    raise TypeError(f"weight_rows supports Linear, Conv1d and Conv2d layers, got {type(layer).__name__}")


def hessian(layer: nn.Module, inputs: Iterable[torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """``(H, rows)``: ``H = sum x x^T`` (float64) over the rows of every input, and how many rows,
    both summed over ranks. ``x`` is what the weight multiplies: the input times the layer's
    input multiplier (SmoothQuant/AWQ), if it has one."""
    columns = layer.weight[0].numel()
    total = torch.zeros(columns, columns, dtype=torch.float64, device=layer.weight.device)
    count = torch.zeros((), dtype=torch.float64, device=layer.weight.device)
    for x in inputs:
        rows = weight_rows(layer, layer.multiply_input(x.detach())).to(torch.float64)
        total.addmm_(rows.T, rows)
        count += rows.shape[0]
    all_reduce_sum(total)
    all_reduce_sum(count)
    return total, int(count)
