"""Shared helpers for the number-format tests: input sweeps and bit-exact comparison.

Oracles live in the tests themselves (ml_dtypes, torch casts, hand tables); nothing here calls the
code under test.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np
import pytest
import torch

# Tests run with the default compile policy ("auto", quantizers/compile.py): kernels run eager
# until a configuration has cost enough eager time to pay for a compile, which then happens in a
# background thread. Results are bit-identical either way; the compiled paths have their own
# tests (test_formats_compile.py, test_compile_fusion.py, test_compile_policy.py).



def pytest_sessionstart(session):
    """Import torch's compiler stack once, in the main thread, before any test runs.

    A background compile (the "auto" policy) otherwise imports ~1600 modules that create ~280
    loggers while pytest's log capture iterates ``logging.Logger.manager.loggerDict`` at a test's
    setup or teardown: ``RuntimeError: dictionary changed size during iteration``, seen under heavy
    load. A trivial compile imports what qzoo's kernels need (a few seconds, once)."""
    import torch.distributed.tensor.experimental  # noqa: F401 - imported by AOTAutograd's backward

    torch.compile(lambda x: (x * 2).sum(), fullgraph=True)(torch.zeros(8))


# Let `pytest` (not only `python -m pytest`) import the package from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Formats that ml_dtypes implements, by the name both ml_dtypes and qzoo use.
ML_DTYPES_FORMATS = (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3",
    "float8_e3m4", "float8_e4m3b11fnuz", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn",
    "float8_e8m0fnu",
)

#: Formats that torch can cast to natively (float4_e2m1fn_x2 is packed and has no cast).
TORCH_DTYPE_FORMATS = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
    "float8_e8m0fnu": torch.float8_e8m0fnu,
}

ROUND_TO_NEAREST_AND_DIRECTED = ("even", "away", "zero", "floor", "ceil")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of small vectorised sweeps: on a busy machine, OpenMP
    threads waiting for each other make them several times slower than one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def all_bfloat16() -> np.ndarray:
    """Every bfloat16 bit pattern once (±0, subnormals, normals, ±Inf, NaNs), as float32."""
    bits = np.arange(2 ** 16, dtype=np.uint32) << 16
    return bits.view(np.float32)


def all_float16() -> np.ndarray:
    """Every float16 bit pattern once."""
    return np.arange(2 ** 16, dtype=np.uint16).view(np.float16)


def random_float32(low_exponent: int, high_exponent: int, n: int = 1 << 17, seed: int = 0) -> np.ndarray:
    """``n`` finite float32 values with random sign and random 23-bit mantissa.

    Half the values take an exponent field uniform over the whole float32 range (subnormals
    included), half an exponent uniform over ``[low_exponent, high_exponent]`` (clipped to float32),
    so every binade of a small format gets thousands of samples.
    """
    rng = np.random.default_rng(seed)
    sign = rng.integers(0, 2, n, dtype=np.uint32) << 31
    whole_range = rng.integers(0, 255, n, dtype=np.uint32)
    format_range = np.clip(rng.integers(low_exponent, high_exponent + 1, n) + 127, 0, 254).astype(np.uint32)
    field = np.where(np.arange(n) % 2 == 0, whole_range, format_range)
    mantissa = rng.integers(0, 2 ** 23, n, dtype=np.uint32)
    return (sign | (field << 23) | mantissa).view(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return a.view(unsigned)


def assert_same_floats(
    got, expected, inputs=None, mask: Optional[np.ndarray] = None, what: str = ""
) -> None:
    """Assert equal bit patterns (so +0 and -0 differ), any NaN matching any NaN.

    ``mask`` selects the positions compared. On failure the first mismatches are listed with their
    inputs.
    """
    got, expected = _numpy(got), _numpy(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} != {expected.dtype}"
    both_nan = np.isnan(got) & np.isnan(expected)
    bad = ~((_bits(got) == _bits(expected)) | both_nan)
    if mask is not None:
        bad &= mask
    _report(bad, got, expected, inputs, what)


def assert_same_codes(got, expected, inputs=None, what: str = "") -> None:
    got, expected = _numpy(got), _numpy(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    bad = got.astype(np.int64) != expected.astype(np.int64)
    _report(bad, got, expected, inputs, what, hexadecimal=True)


def _report(bad, got, expected, inputs, what, hexadecimal=False) -> None:
    count = int(bad.sum())
    if not count:
        return
    shown = []
    flat_bad = np.flatnonzero(bad)[:8]
    for i in flat_bad:
        g, e = got.reshape(-1)[i], expected.reshape(-1)[i]
        if hexadecimal:
            g, e = hex(int(g)), hex(int(e))
        x = "" if inputs is None else f"x={_numpy(inputs).reshape(-1)[i]!r} "
        shown.append(f"{x}expected {e} got {g}")
    raise AssertionError(f"{what}: {count} mismatches, e.g.\n  " + "\n  ".join(shown))


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            widened = a.view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16
            return widened.view(np.float32)  # exact: bfloat16 is the top half of a float32
        return a.numpy()
    return np.asarray(a)


def round_to_table(
    x: np.ndarray, table: np.ndarray, mode: str, ties_up: Optional[np.ndarray] = None, signed_zero: bool = True
) -> np.ndarray:
    """Reference rounding of finite float64 ``x`` onto a grid, straight from the modes' definitions.

    ``table`` holds the grid's non-negative values, ascending; the grid is ``±table``. Magnitudes
    beyond ``table[-1]`` saturate. ``"even"`` breaks a tie toward the neighbour with the even index
    in ``table`` (its even code when positive codes count up with the value), or upward where
    ``ties_up`` (a function of the lower neighbour's magnitude) says so. ``signed_zero=False``
    turns -0 into +0 (formats with a single zero).
    """
    x = np.asarray(x, dtype=np.float64)
    table = np.asarray(table, dtype=np.float64)
    magnitude, negative = np.minimum(np.abs(x), table[-1]), np.signbit(x)
    index = np.clip(np.searchsorted(table, magnitude, side="right") - 1, 0, table.size - 2)
    lo, hi = table[index], table[index + 1]
    twice, midpoint_twice = 2 * magnitude, lo + hi  # both exact for narrow grids
    if mode in ("even", "away"):
        tie_up = np.full(x.shape, mode == "away")
        if mode == "even":
            tie_up = (index + 1) % 2 == 0
            if ties_up is not None:
                tie_up |= ties_up(lo)
        up = (twice > midpoint_twice) | ((twice == midpoint_twice) & tie_up)
    else:
        up = {"zero": np.zeros(x.shape, bool), "floor": negative, "ceil": ~negative}[mode]
    result = np.where(magnitude == lo, lo, np.where(magnitude == hi, hi, np.where(up, hi, lo)))
    result = np.where(negative, -result, result)
    if not signed_zero:
        result = result + 0.0
    return result
