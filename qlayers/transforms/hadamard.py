"""The (randomized) Hadamard rotation ``x -> x @ Q`` over the last dimension, applied in O(n log n).

``Q = diag(s) (H_K (x) H_2^m) / sqrt(n)`` for ``n = K * 2^m`` (:mod:`.hadamard_matrices` picks
``K``): ``s`` are random signs (the "randomized Hadamard" of QuaRot, seeded) or all ones, ``H_2^m``
the Sylvester Walsh-Hadamard matrix applied by :func:`fwht`, and ``H_K`` a small dense base
(Paley, or a random orthogonal fallback). ``Q`` is orthogonal (``Q @ Q.T = I``), so
``(x @ Q) @ (W @ Q).T = x @ W.T``: that identity is all the rotations of :mod:`.rotation` use.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from torch import nn

from .hadamard_matrices import base_matrix, split_order


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dimension (a power of two):
    ``x @ H`` with Sylvester's ``H`` (``H[i, j] = (-1)^popcount(i & j)``), in ``log2(n)`` butterfly
    stages of whole-tensor adds (no loop over elements)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: last dimension {n} is not a power of two")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class HadamardTransform(nn.Module):
    """``forward(x) = (x * s) @ (H_K (x) H_2^m) / sqrt(n)`` over the last dimension of size ``n``.

    Args:
        n: the size of the rotated dimension (any positive integer; see
            :mod:`qlayers.transforms.hadamard_matrices` for non-powers of two).
        seed: draws the random signs ``s`` when ``random_signs`` (and the fallback base, if any).
        random_signs: the randomized Hadamard ``diag(s) H`` (QuaRot); False: ``s = 1``.

    The computation runs in float32 (float64 for float64 inputs) and returns the input's dtype.
    ``inverse(y)`` undoes it: ``inverse(forward(x)) == x`` up to rounding.
    """

    def __init__(self, n: int, seed: int = 0, random_signs: bool = False) -> None:
        super().__init__()
        self.n = int(n)
        k, self.walsh = split_order(self.n)
        base, self.is_hadamard = base_matrix(k, seed)
        signs = torch.ones(self.n, dtype=torch.float64)
        if random_signs:
            g = torch.Generator().manual_seed(seed)
            signs = torch.randint(0, 2, (self.n,), generator=g).to(torch.float64) * 2 - 1
        # float64 masters, deliberately not buffers: model.to(bfloat16) must not round the rotation
        self._masters = {"base": base / math.sqrt(self.n), "signs": signs}
        self._copies: Dict[Tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def _get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        if key not in self._copies:
            self._copies[key] = self._masters[name].to(like.device, like.dtype)
        return self._copies[key]

    def _mix(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        y = fwht(x.reshape(*x.shape[:-1], base.shape[0], self.walsh))
        if base.shape[0] > 1:
            y = torch.matmul(base.transpose(0, 1), y)  # (x @ kron(B, H))[a, j] = sum_b B[b, a] (x H)[b, j]
        else:
            y = y * base[0, 0]
        return y.reshape(x.shape)

    def _work_dtype(self, x: torch.Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x_work = x.to(self._work_dtype(x))
        y = self._mix(x_work * self._get("signs", x_work), self._get("base", x_work))
        return y.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y @ Q.T``: ``x`` back from ``forward(x)``."""
        self._check(y)
        y_work = y.to(self._work_dtype(y))
        x = self._mix(y_work, self._get("base", y_work).transpose(0, 1))
        return (x * self._get("signs", y_work)).to(y.dtype)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The ``n x n`` matrix ``Q`` (``forward(x) == x @ Q``)."""
        return self.forward(torch.eye(self.n, dtype=torch.float64)).to(dtype)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.n:
            raise ValueError(f"HadamardTransform(n={self.n}): input's last dimension is {x.shape[-1]}, expected {self.n}")

    def extra_repr(self) -> str:
        k = self.n // self.walsh
        base = "Walsh-Hadamard" if k == 1 else (
            f"{'Paley' if self.is_hadamard else 'random orthogonal'} {k} (x) Walsh-Hadamard {self.walsh}")
        return f"n={self.n}, {base}, random_signs={bool((self._masters['signs'] < 0).any())}"


class HadamardInput(nn.Module):
    """``forward(x) = module(hadamard(x))``: an online rotation at a layer's input (QuaRot's online
    Hadamard before ``down_proj``). The layer's weight holds the inverse (``W @ Q``), so the pair
    computes what the layer computed alone; ``module`` stays a plain child, so ``quantize_model``
    converts it and its input quantizer sees the rotated activations."""

    def __init__(self, module: nn.Module, hadamard: HadamardTransform) -> None:
        super().__init__()
        self.hadamard = hadamard
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.hadamard(x))
