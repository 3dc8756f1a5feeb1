"""Hadamard matrices of order ``n = K * 2^m``: the +-1 base ``H_K`` that multiplies a Walsh-Hadamard.

A Hadamard matrix ``H`` of order ``n`` has entries +-1 and ``H @ H.T = n * I``, so ``H / sqrt(n)`` is
orthogonal. Sylvester's construction gives every power of two (``H_2n = [[H, H], [H, -H]]``,
applied by the fast Walsh-Hadamard transform in :mod:`qlayers.transforms.hadamard`); other orders
are ``H_K (x) H_2^m`` (Kronecker product) with ``H_K`` from Paley's constructions over a prime ``q``:

- Paley I, ``q = 3 (mod 4)``: order ``K = q + 1`` (4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, 80, ...);
- Paley II, ``q = 1 (mod 4)``: order ``K = 2(q + 1)`` (12, 28, 36, 60, 76, 108, ...).

Together they cover the sizes of common LLMs: 12 (1536 = 12 * 128, 3072), 20, 28 (896 = 28 * 32,
14336 = 28 * 512), 44 (5632), 76 (4864), 140 (8960). A size whose odd part has no such base (11008 =
172 * 64 needs Paley over GF(7^3), not built here) falls back to ``sqrt(K) * R`` with ``R`` a random
orthogonal ``K x K`` matrix (QR of a seeded Gaussian, signs fixed so it is unique): still an exact
rotation (outputs unchanged), only its outlier spreading over the ``K`` blocks is that of a random
rotation rather than a Hadamard's equal-magnitude mixing.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[i, j] = chi(j - i)``, chi the quadratic character mod the prime q (0 on the diagonal)."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if d in residues else -1 for d in range(1, q)], dtype=torch.float64)
    index = torch.arange(q)
    return chi[(index[None, :] - index[:, None]) % q]


def _paley_1(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 (mod 4): ``H = I + S``, ``S = [[0, 1], [-1, Q]]`` (skew)."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return s + torch.eye(q + 1, dtype=torch.float64)


def _paley_2(q: int) -> torch.Tensor:
    """Order 2(q + 1) for a prime q = 1 (mod 4): conference ``C = [[0, 1], [1, Q]]`` (symmetric),
    ``H = C (x) [[1, -1], [-1, -1]] + I (x) [[1, 1], [1, -1]]``."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def paley_hadamard(k: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order ``k`` (float64) from Paley I or II over a prime, or None."""
    if k % 4:
        return None
    if _is_prime(k - 1) and (k - 1) % 4 == 3:
        return _paley_1(k - 1)
    if _is_prime(k // 2 - 1) and (k // 2 - 1) % 4 == 1:
        return _paley_2(k // 2 - 1)
    return None


MAX_BASE = 256
"""Largest dense Paley base used: the online transform costs ``K`` multiply-adds per element."""


def split_order(n: int) -> Tuple[int, int]:
    """``n = k * 2^m`` with the smallest ``k`` that has a base: ``k = 1`` (pure Walsh-Hadamard), a
    Paley order up to :data:`MAX_BASE`, or else the odd part of ``n`` (random orthogonal fallback).
    Returns ``(k, 2^m)``."""
    if n < 1:
        raise ValueError(f"Hadamard order n={n}: must be a positive integer")
    odd = n
    while odd % 2 == 0:
        odd //= 2
    k = odd
    while n % k == 0 and k <= MAX_BASE:
        if k == 1 or paley_hadamard(k) is not None:
            return k, n // k
        k *= 2
    return odd, n // odd


@lru_cache(maxsize=None)
def _base(k: int, seed: int) -> Tuple[torch.Tensor, bool]:
    if k == 1:
        return torch.ones(1, 1, dtype=torch.float64), True
    h = paley_hadamard(k)
    if h is not None:
        return h, True
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :] * k ** 0.5).contiguous(), False


def base_matrix(k: int, seed: int = 0) -> Tuple[torch.Tensor, bool]:
    """``(H_K, is_hadamard)``: the float64 ``K x K`` base with ``H_K @ H_K.T = K * I``; a +-1 Paley
    matrix (``is_hadamard=True``) or the seeded random-orthogonal fallback scaled by ``sqrt(K)``."""
    h, exact = _base(k, seed)
    return h.clone(), exact
