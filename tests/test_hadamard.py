"""Hadamard matrices and the fast (randomized) Hadamard transform behind ``qlayers.rotate``.

Oracles: the definition (entries +-1 and ``H @ H.T = n * I``, checked in exact integer arithmetic),
SciPy's Sylvester matrix ``scipy.linalg.hadamard`` for the fast Walsh-Hadamard transform, and
Kronecker products / dense matmuls written here in float64.
"""
from __future__ import annotations

import math

import pytest
import torch

from qlayers.transforms import HadamardInput, HadamardTransform, fwht
from qlayers.transforms.hadamard_matrices import base_matrix, split_order

scipy_linalg = pytest.importorskip("scipy.linalg")


def sylvester(n: int) -> torch.Tensor:
    return torch.from_numpy(scipy_linalg.hadamard(n)).to(torch.float64)


@pytest.mark.parametrize("k", [4, 8, 12, 20, 24, 28, 36, 44, 60, 76, 140])
def test_paley_bases_are_hadamard_matrices(k):
    h, exact = base_matrix(k)
    assert exact and h.shape == (k, k)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    hi = h.to(torch.int64)
    assert torch.equal(hi @ hi.T, k * torch.eye(k, dtype=torch.int64))


@pytest.mark.parametrize("k", [3, 43])
def test_fallback_base_is_a_seeded_scaled_orthogonal_matrix(k):
    b, exact = base_matrix(k, seed=1)
    assert not exact
    torch.testing.assert_close(b @ b.T, k * torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(b, base_matrix(k, seed=1)[0]) and not torch.equal(b, base_matrix(k, seed=2)[0])


@pytest.mark.parametrize("n, expected", [
    (64, (1, 64)), (96, (12, 8)), (896, (28, 32)), (1536, (12, 128)), (4864, (76, 64)),
    (5632, (44, 128)), (8960, (140, 64)), (14336, (28, 512)), (11008, (43, 256)), (7, (7, 1)),
])
def test_split_order_finds_the_smallest_paley_base_of_llm_sizes(n, expected):
    assert split_order(n) == expected


@pytest.mark.parametrize("n", [1, 2, 4, 16, 128, 1024])
def test_fwht_is_multiplication_by_sylvesters_matrix(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ sylvester(n), rtol=0, atol=1e-12)


def test_fwht_rejects_a_size_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="12 is not a power of two"):
        fwht(torch.zeros(12))


@pytest.mark.parametrize("n", [64, 96, 160, 86])
@pytest.mark.parametrize("random_signs", [False, True])
def test_transform_is_x_times_the_kronecker_rotation(n, random_signs):
    h = HadamardTransform(n, seed=3, random_signs=random_signs)
    k, walsh = split_order(n)
    unsigned = torch.kron(base_matrix(k, seed=3)[0], sylvester(walsh)) / math.sqrt(n)
    signs = torch.diagonal(h.matrix() @ unsigned.T).round()
    q = torch.diag(signs) @ unsigned
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(h(x), x @ q, rtol=0, atol=1e-12)
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(h.inverse(h(x)), x, rtol=0, atol=1e-12)
    assert set(signs.unique().tolist()) == ({-1.0, 1.0} if random_signs else {1.0})
    if k > 1 and n != 86:  # a Hadamard: every entry is +-1/sqrt(n)
        torch.testing.assert_close(q.abs(), torch.full_like(q, n ** -0.5), rtol=0, atol=1e-12)


def test_random_signs_are_seeded():
    a = HadamardTransform(64, seed=5, random_signs=True).matrix()
    assert torch.equal(a, HadamardTransform(64, seed=5, random_signs=True).matrix())
    assert not torch.equal(a, HadamardTransform(64, seed=6, random_signs=True).matrix())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_transform_keeps_the_dtype_and_survives_a_cast_of_the_model(dtype):
    h = HadamardTransform(96, random_signs=True)
    wrapped = HadamardInput(torch.nn.Identity(), h).to(dtype)  # no buffer is rounded by .to()
    x = torch.randn(2, 96).to(dtype)
    y = wrapped(x)
    assert y.dtype == dtype
    exact = x.to(torch.float64) @ h.matrix()
    torch.testing.assert_close(y, exact.to(dtype))


def test_transform_rejects_a_wrong_size():
    with pytest.raises(ValueError, match=r"n=64\): input's last dimension is 32"):
        HadamardTransform(64)(torch.zeros(2, 32))
