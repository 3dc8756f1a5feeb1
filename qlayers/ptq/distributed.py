"""Sums across ranks: when ``torch.distributed`` is initialised, statistics that PTQ accumulates
over calibration data (Hessians, error sums, counts) are all-reduced, so calibration sharded over
ranks equals calibration on all the data in one process (every rank then computes the same
result). Without an initialised process group these are identities."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks, in place (returned); unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_count(count: float, device: torch.device = torch.device("cpu")) -> float:
    """A Python number summed over all ranks (a count of rows or batches)."""
    if not is_distributed():
        return count
    return float(all_reduce_sum(torch.tensor(float(count), dtype=torch.float64, device=device)))
