"""NVFP4 (``NVFloat4e2m1Weight`` / ``NVFloat4e2m1Act``) against hand-worked blocks and a float32
reference that follows NVIDIA's two-level recipe step by step:

    tensor_scale = amax_tensor / (448 * 6)                  (fp32; 1 for an all-zero tensor)
    block_scale  = E4M3_RNE((amax_block / 6) / tensor_scale) clamped to [2^-9, 448]
                   (NaN for a block holding NaN/Inf; amax_tensor is over the other blocks)
    q            = E2M1_RNE(clip(x / (block_scale * tensor_scale), -6, 6))
    value        = q * (block_scale * tensor_scale)

Element and scale casts come from ml_dtypes (RNE); every arithmetic step is a float32 numpy op.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import quantizers as qz
from mx_reference import assert_same_bits, from_blocks, to_blocks

E4M3_MIN_SUBNORMAL = 2.0 ** -9
F32 = np.float32


def nvfp4_reference(x: np.ndarray, axis: int):
    """``(values, block_scales, tensor_scale)`` of float32 ``x`` with blocks of 16 along ``axis``."""
    x = np.asarray(x, dtype=F32)
    axis = axis % x.ndim
    blocks = to_blocks(x, axis, 16)
    amax_block = np.max(np.abs(blocks), axis=axis + 1, keepdims=True)  # NaN/Inf propagate
    finite = np.isfinite(amax_block)
    amax_tensor = F32(np.max(np.where(finite, amax_block, F32(0))))
    tensor_scale = amax_tensor / F32(448 * 6)
    if tensor_scale == 0:
        tensor_scale = F32(1)
    wanted = (np.where(finite, amax_block, F32(0)) / F32(6)) / tensor_scale
    block_scale = np.minimum(wanted, F32(448)).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    block_scale = np.where(finite, np.maximum(block_scale, F32(E4M3_MIN_SUBNORMAL)), F32(np.nan))
    effective = block_scale * tensor_scale
    q = np.clip(np.where(finite, blocks / effective, F32(0)), F32(-6), F32(6))
    q = q.astype(ml_dtypes.float4_e2m1fn).astype(F32)
    values = from_blocks(q * effective, axis, x.shape[axis])
    return values, block_scale, tensor_scale


def quantize(x: np.ndarray, quantizer=qz.NVFloat4e2m1Weight):
    return qz.quantize(torch.from_numpy(np.ascontiguousarray(x, dtype=F32)), quantizer)


def test_nvfp4_hand_worked_example():
    x = np.zeros((1, 32), dtype=F32)
    # Block 0 holds the tensor maximum 168:
    #   tensor scale = 168 / (448·6) = 168 / 2688 = 0.0625 = 2^-4
    #   block scale  = (168 / 6) / 0.0625 = 28 / 0.0625 = 448  -> E4M3 448; effective 448·2^-4 = 28
    #   x/28:  168 -> 6;  14 -> 0.5;  7 -> 0.25 tie -> 0;  21 -> 0.75 tie -> 1;  35 -> 1.25 tie -> 1;
    #          49 -> 1.75 tie -> 2;  70 -> 2.5 tie -> 2;  98 -> 3.5 tie -> 4;  140 -> 5 tie -> 4;
    #          -84 -> -3;  42 -> 1.5                                 (E2M1: 0 .5 1 1.5 2 3 4 6)
    x[0, :11] = [168, 14, 7, 21, 35, 49, 70, 98, 140, -84, 42]
    # Block 1, amax 10:
    #   block scale = (10 / 6) / 0.0625 = 26.67 -> E4M3 (step 2 in [16, 32)) 26; effective 26/16 = 1.625
    #   x/1.625: 10 -> 6.15 saturates to 6;  1 -> 0.615 -> 0.5;  3.25 -> 2;  4 -> 2.46 -> 2;
    #            5 -> 3.08 -> 3;  -2.4375 -> -1.5;  0.40625 -> 0.25 tie -> 0;  1.21875 -> 0.75 tie -> 1;
    #            -10 -> -6
    x[0, 16:25] = [10, 1, 3.25, 4, 5, -2.4375, 0.40625, 1.21875, -10]
    qt = quantize(x)
    assert qt.outer_scale_.item() == 0.0625
    assert qt.scale_.reshape(-1).tolist() == [448.0, 26.0]
    q0 = [6, 0.5, 0, 1, 1, 2, 2, 4, 4, -3, 1.5]
    q1 = [6, 0.5, 2, 2, 3, -1.5, 0, 1, -6]
    assert qt.minifloat()[0, :11].tolist() == q0
    assert qt.minifloat()[0, 16:25].tolist() == q1
    assert qt.value[0, :11].tolist() == [q * 28 for q in q0]
    assert qt.value[0, 16:25].tolist() == [q * 1.625 for q in q1]
    assert (qt.value[0, 11:16] == 0).all() and (qt.value[0, 25:] == 0).all()


def test_nvfp4_block_scale_ties_round_to_even_in_e4m3():
    x = np.zeros((1, 48), dtype=F32)
    x[0, 0] = 2688  # tensor scale 1; block scale 448
    x[0, 16] = 162  # 162/6 = 27: tie between 26 (1.101·2^4) and 28 (1.110·2^4) -> 28
    x[0, 32] = 150  # 150/6 = 25: tie between 24 (1.100·2^4) and 26 (1.101·2^4) -> 24
    qt = quantize(x)
    assert qt.outer_scale_.item() == 1.0
    assert qt.scale_.reshape(-1).tolist() == [448.0, 28.0, 24.0]
    assert qt.value[0, [0, 16, 32]].tolist() == [2688.0, 168.0, 144.0]  # 6·448, 6·28, 6·24


def test_nvfp4_subnormal_e4m3_block_scale_is_kept():
    x = np.zeros((1, 48), dtype=F32)
    x[0, 0] = 2688                              # tensor scale = 2688/2688 = 1
    x[0, 16:19] = [0.03, -0.01, 0.0025]         # 0.03/6 = 0.005 = 2.56·2^-9 -> E4M3 subnormal 3·2^-9
    x[0, 32] = 0.001                            # 0.001/6 = 0.085·2^-9 -> 0 in E4M3 -> clamped to 2^-9
    qt = quantize(x)
    scales = qt.scale_.reshape(-1).tolist()
    assert scales == [448.0, 3 * 2.0 ** -9, 2.0 ** -9]
    # x / (3·2^-9): 0.03 -> 5.12 -> 6; -0.01 -> -1.71 -> -1.5; 0.0025 -> 0.43 -> 0.5
    assert qt.minifloat()[0, 16:19].tolist() == [6.0, -1.5, 0.5]
    assert qt.value[0, 16:19].tolist() == [6 * 3 * 2.0 ** -9, -1.5 * 3 * 2.0 ** -9, 0.5 * 3 * 2.0 ** -9]
    # 0.001 / 2^-9 = 0.512 -> 0.5 -> 2^-10
    assert qt.value[0, 32].item() == 2.0 ** -10


def test_nvfp4_all_zero_tensor_has_no_nan():
    qt = quantize(np.zeros((4, 32), dtype=F32))
    assert not torch.isnan(qt.value).any() and (qt.value == 0).all()
    assert torch.isfinite(qt.scale_).all() and (qt.scale_ > 0).all()
    assert qt.outer_scale_.item() == 1.0  # the guard: no 0/0 scale
    assert (qt.scale_ == E4M3_MIN_SUBNORMAL).all()


def test_nvfp4_all_zero_block_inside_a_nonzero_tensor():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 48)).astype(F32)
    x[1, 16:32] = 0
    qt = quantize(x)
    assert qt.scale_[1, 1, 0].item() == E4M3_MIN_SUBNORMAL
    assert (qt.value[1, 16:32] == 0).all()
    assert not torch.isnan(qt.value).any()


@pytest.mark.parametrize("shape", [(16, 80), (8, 40), (3, 7)])
def test_nvfp4_weights_match_the_float32_reference(shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, shape[:1] + (1,)))).astype(F32)
    qt = quantize(x)
    values, block_scale, tensor_scale = nvfp4_reference(x, axis=1)
    assert qt.outer_scale_.item() == tensor_scale
    assert_same_bits(qt.scale_, block_scale, "block scales")
    assert_same_bits(qt.value, values, "values")


def test_nvfp4_activations_block_the_last_axis():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 40)).astype(F32) * 7
    qt = quantize(x, qz.NVFloat4e2m1Act)
    values, block_scale, tensor_scale = nvfp4_reference(x, axis=-1)
    assert qt.scale_.shape == (2, 3, 3, 1)
    assert_same_bits(qt.scale_, block_scale, "block scales")
    assert_same_bits(qt.value, values, "values")


def test_nvfp4_every_e2m1_tie_rounds_to_even():
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    ties = (grid[:-1] + grid[1:]) / 2          # 0.25 0.75 1.25 1.75 2.5 3.5 5
    x = np.zeros((1, 32), dtype=F32)
    x[0, 0] = 2688                             # block 0 scale 448, tensor scale 1
    x[0, 16] = 6                               # block 1: (6/6)/1 = 1 -> block scale 1
    x[0, 17:24] = ties
    x[0, 24:31] = -ties
    qt = quantize(x)
    expected = [0, 1, 1, 2, 2, 4, 4]
    assert qt.scale_.reshape(-1).tolist() == [448.0, 1.0]
    assert qt.value[0, 17:24].tolist() == expected
    assert qt.value[0, 24:31].tolist() == [-v for v in expected]
    assert not math.isnan(qt.value.sum().item())


# ---- NaN and Inf (peer-exactness N3): the block holding one is NaN, the tensor scale ignores it ---------


def test_one_nan_does_not_move_the_tensor_scale_nor_clip_the_clean_block():
    # peer-exactness N3: 1x32 of 1e4 with one NaN in the second block; the first block came out as
    # 2688 (= 448 * 6 against tensor scale 1). Tensor scale 1e4 / 2688, block scale 448, element 6.
    x = np.full((1, 32), 1e4, dtype=F32)
    x[0, 20] = np.nan
    qt = quantize(x)
    assert qt.outer_scale_.item() == F32(1e4) / F32(2688)
    assert qt.value[0, :16].tolist() == [1e4] * 16
    assert qt.scale_.reshape(-1)[0].item() == 448.0 and math.isnan(qt.scale_.reshape(-1)[1].item())
    assert torch.isnan(qt.value[0, 16:]).all()


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_nvfp4_block_holding_nan_or_inf_is_nan_and_packs_with_the_e4m3_nan_scale(special):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 48)) * 3).astype(F32)
    x[1, 20] = special
    x[1, 17] = 50.0  # the NaN block also holds the largest finite value: it does not set the tensor scale
    qt = quantize(x)
    values, block_scale, tensor_scale = nvfp4_reference(x, axis=1)
    clean_blocks = np.concatenate([x[0], x[2], x[1, :16], x[1, 32:]])
    assert qt.outer_scale_.item() == tensor_scale == np.max(np.abs(clean_blocks)) / F32(2688)
    assert_same_bits(qt.scale_, block_scale, "block scales")
    assert_same_bits(qt.value, values, "values")
    packed = qt.pack()
    scale_bytes = packed.scale.view(torch.uint8).reshape(3, 3)
    assert scale_bytes[1, 1].item() == 0x7F  # E4M3 NaN
    assert_same_bits(packed.unpack().value, values, "unpacked values")
