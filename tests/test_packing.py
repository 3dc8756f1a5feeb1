"""Bit-packing: round trips, hand-computed bytes, torch/ml_dtypes/numpy layout oracles, errors, compile."""
import math

import numpy as np
import pytest
import torch

import quantizers as qz
from quantizers.formats.packing import pack_fp4, pack_fp6, pack_int4, unpack_fp4, unpack_fp6, unpack_int4

try:
    import ml_dtypes
except ImportError:  # a test extra; only the ml_dtypes oracle tests need it
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LENGTHS = [0, 1, 2, 3, 5, 7, 8, 33]
# (pack, unpack, bits per code, codes per group, bytes per group)
LAYOUTS = {
    "fp4": (pack_fp4, unpack_fp4, 4, 2, 1),
    "int4": (pack_int4, unpack_int4, 4, 2, 1),
    "fp6": (pack_fp6, unpack_fp6, 6, 4, 3),
}


def u8(values, device="cpu"):
    return torch.tensor(values, dtype=torch.uint8, device=device)


def random_codes(shape, bits, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 ** bits, shape, generator=generator, dtype=torch.uint8).to(device)


def bitstream_oracle(codes: np.ndarray, bits: int, codes_per_group: int) -> np.ndarray:
    """Little-endian bit stream of each row's codes (padded to whole groups), via numpy.packbits."""
    pad = (-codes.shape[-1]) % codes_per_group
    codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1)
    code_bits = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(code_bits.reshape(*codes.shape[:-1], -1), axis=-1, bitorder="little")


# ---- round trips and sizes ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("length", LENGTHS)
def test_round_trip_restores_codes_for_every_length(kind, length, device):
    pack, unpack, bits, _, _ = LAYOUTS[kind]
    codes = random_codes((length,), bits, seed=length, device=device)
    packed = pack(codes)
    assert packed.dtype == torch.uint8 and packed.device == codes.device
    assert torch.equal(unpack(packed, length), codes)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (4, 1, 8), (2, 0, 3), (3, 0), (1, 1, 1, 33)])
def test_round_trip_packs_along_last_dim_of_any_shape(kind, shape):
    pack, unpack, bits, per_group, per_bytes = LAYOUTS[kind]
    codes = random_codes(shape, bits, seed=len(shape))
    packed = pack(codes)
    assert packed.shape == (*shape[:-1], per_bytes * math.ceil(shape[-1] / per_group))
    assert torch.equal(unpack(packed, shape[-1]), codes)
    for row in np.ndindex(*shape[:-1]):  # each row packs on its own
        assert torch.equal(packed[row], pack(codes[row]))


@pytest.mark.parametrize("kind", LAYOUTS)
def test_round_trip_of_non_contiguous_codes(kind):
    pack, unpack, bits, _, _ = LAYOUTS[kind]
    codes = random_codes((8, 6), bits).t()
    assert not codes.is_contiguous()
    assert torch.equal(unpack(pack(codes), 8), codes)


@pytest.mark.parametrize("length", LENGTHS + [64, 1001])
def test_fp4_packs_n_codes_into_ceil_half_n_bytes(length):
    assert pack_fp4(torch.zeros(length, dtype=torch.uint8)).shape[-1] == math.ceil(length / 2)


@pytest.mark.parametrize("length", LENGTHS + [64, 1001])
def test_fp6_packs_n_codes_into_three_bytes_per_four_codes(length):
    assert pack_fp6(torch.zeros(length, dtype=torch.uint8)).shape[-1] == 3 * math.ceil(length / 4)


def test_unpack_without_length_keeps_the_zero_padding():
    assert unpack_fp4(pack_fp4(u8([5, 6, 7]))).tolist() == [5, 6, 7, 0]
    assert unpack_fp6(pack_fp6(u8([63, 1, 2, 3, 4]))).tolist() == [63, 1, 2, 3, 4, 0, 0, 0]


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float4_e1m2", "int4", "uint4", "float6_e2m3fn", "float6_e3m2fn"])
def test_encode_pack_unpack_decode_equals_quantize(name):
    fmt = qz.get_format(name)
    pack, unpack = (pack_fp6, unpack_fp6) if fmt.bits == 6 else (pack_fp4, unpack_fp4)
    x = torch.randn(3, 11, generator=torch.Generator().manual_seed(1)) * 4
    decoded = fmt.decode(unpack(pack(fmt.encode(x)), 11))
    assert torch.equal(decoded, fmt.quantize(x))


# ---- hand-computed bytes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "codes, expected",
    [
        ([1, 2], [0x21]),
        ([15, 0], [0x0F]),
        ([0, 15], [0xF0]),
        ([3], [0x03]),
        ([1, 2, 3, 4, 5], [0x21, 0x43, 0x05]),
        ([], []),
    ],
)
def test_nibble_bytes_put_even_elements_in_low_nibble(codes, expected):
    assert pack_fp4(u8(codes)).tolist() == expected
    assert pack_int4(u8(codes)).tolist() == expected


@pytest.mark.parametrize(
    "codes, expected",
    [
        ([1, 2, 3, 4], [0x81, 0x30, 0x10]),  # w = 1 | 2<<6 | 3<<12 | 4<<18 = 0x103081
        ([63, 0, 0, 0], [0x3F, 0x00, 0x00]),
        ([0, 63, 0, 0], [0xC0, 0x0F, 0x00]),  # 63<<6 = 0x000FC0
        ([0, 0, 63, 0], [0x00, 0xF0, 0x03]),  # 63<<12 = 0x03F000
        ([0, 0, 0, 63], [0x00, 0x00, 0xFC]),  # 63<<18 = 0xFC0000
        ([63, 63, 63, 63], [0xFF, 0xFF, 0xFF]),
        ([5], [0x05, 0x00, 0x00]),
        ([1, 2, 3, 4, 63], [0x81, 0x30, 0x10, 0x3F, 0x00, 0x00]),
    ],
)
def test_fp6_bytes_are_the_little_endian_24_bit_word(codes, expected):
    assert pack_fp6(u8(codes)).tolist() == expected


def test_fp4_bytes_of_known_values():
    fp4 = qz.get_format("float4_e2m1fn")
    # 0.5 -> 0x1, 1.0 -> 0x2, 6.0 -> 0x7, -0.5 -> 0x9
    assert pack_fp4(fp4.encode(torch.tensor([0.5, 1.0, 6.0, -0.5]))).tolist() == [0x21, 0x97]


def test_int4_bytes_hold_twos_complement_nibbles():
    int4 = qz.get_format("int4")
    # -1 -> 0xF, -8 -> 0x8, 3 -> 0x3, 7 -> 0x7
    assert pack_int4(int4.encode(torch.tensor([-1.0, -8.0, 3.0, 7.0]))).tolist() == [0x8F, 0x73]


# ---- layout oracles ---------------------------------------------------------------------------
def test_fp4_layout_matches_torch_float4_e2m1fn_x2_unpacker_for_every_byte():
    casting = pytest.importorskip("torch.onnx._internal.exporter._type_casting")
    every_byte = torch.arange(256, dtype=torch.uint8)
    torch_codes = casting.unpack_float4x2_as_uint8(every_byte.view(torch.float4_e2m1fn_x2))
    assert unpack_fp4(every_byte).tolist() == torch_codes.tolist()


def test_fp4_packed_view_as_float4_e2m1fn_x2_has_two_codes_per_element():
    packed = pack_fp4(random_codes((3, 10), 4)).view(torch.float4_e2m1fn_x2)
    assert packed.shape == (3, 5) and packed.element_size() == 1


@needs_ml_dtypes
def test_fp4_layout_matches_ml_dtypes_codes_packed_low_nibble_first():
    # Every pair of float4_e2m1fn values: ml_dtypes gives the codes, numpy's little-endian bit
    # stream gives the OCP MX byte; qzoo must produce the same byte from the float values.
    grid = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    pairs = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(256, 2)
    ml_codes = pairs.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    expected = bitstream_oracle(ml_codes, 4, 2)[:, 0]
    assert sorted(expected.tolist()) == list(range(256))
    ours = pack_fp4(qz.get_format("float4_e2m1fn").encode(torch.from_numpy(pairs)))
    assert ours[:, 0].tolist() == expected.tolist()


@needs_ml_dtypes
def test_int4_layout_matches_ml_dtypes_int4_codes():
    values = np.arange(-8, 8, dtype=np.int8)
    pairs = np.stack(np.meshgrid(values, values, indexing="ij"), axis=-1).reshape(256, 2)
    ml_codes = pairs.astype(ml_dtypes.int4).view(np.uint8) & 0xF
    ours = pack_int4(qz.get_format("int4").encode(torch.from_numpy(pairs.astype(np.float32))))
    assert ours[:, 0].tolist() == bitstream_oracle(ml_codes, 4, 2)[:, 0].tolist()


@needs_ml_dtypes
@pytest.mark.parametrize("name", ["float6_e2m3fn", "float6_e3m2fn"])
@pytest.mark.parametrize("length", LENGTHS)
def test_fp6_layout_is_the_little_endian_bit_stream_of_ml_dtypes_codes(name, length):
    grid = np.arange(64, dtype=np.uint8).view(getattr(ml_dtypes, name)).astype(np.float32)
    rng = np.random.default_rng(length)
    values = rng.choice(grid, size=(3, length))
    ml_codes = values.astype(getattr(ml_dtypes, name)).view(np.uint8)
    ours = pack_fp6(qz.get_format(name).encode(torch.from_numpy(values)))
    assert ours.numpy().tolist() == bitstream_oracle(ml_codes, 6, 4).tolist()


@pytest.mark.parametrize("kind", LAYOUTS)
def test_every_packed_byte_pattern_unpacks_and_repacks_unchanged(kind):
    pack, unpack, _, _, per_bytes = LAYOUTS[kind]
    packed = torch.arange(256 * per_bytes, dtype=torch.int64).remainder(256).to(torch.uint8)
    packed = packed.roll(1).reshape(-1, per_bytes) if per_bytes > 1 else packed
    assert torch.equal(pack(unpack(packed)), packed)


# ---- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.int32, torch.float32, torch.bool])
def test_wrong_dtype_raises_type_error_naming_argument_and_dtype(kind, dtype):
    pack, unpack, _, _, per_bytes = LAYOUTS[kind]
    with pytest.raises(TypeError, match=rf"codes has dtype {dtype}"):
        pack(torch.zeros(4, dtype=dtype))
    with pytest.raises(TypeError, match=rf"packed has dtype {dtype}"):
        unpack(torch.zeros(per_bytes, dtype=dtype))


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        pack_fp4([1, 2])
    with pytest.raises(TypeError, match="packed must be a torch.Tensor"):
        unpack_fp6(b"\x00\x00\x00")


@pytest.mark.parametrize("pack, code", [(pack_fp4, 16), (pack_int4, 255), (pack_fp6, 64), (pack_fp6, 200)])
def test_codes_out_of_range_raise_value_error_with_the_max(pack, code):
    with pytest.raises(ValueError, match=rf"maximum of {code}\b"):
        pack(u8([[0, 1, 2], [3, code, 4]]))


def test_six_bit_codes_fit_fp6_but_not_fp4():
    codes = u8([16, 63])
    assert unpack_fp6(pack_fp6(codes), 2).tolist() == [16, 63]
    with pytest.raises(ValueError, match="must lie in \\[0, 15\\]"):
        pack_fp4(codes)


@pytest.mark.parametrize("size", [1, 2, 4, 5, 7])
def test_unpack_fp6_needs_a_multiple_of_three_bytes(size):
    with pytest.raises(ValueError, match=rf"{size} bytes .* multiple of 3"):
        unpack_fp6(torch.zeros(2, size, dtype=torch.uint8))


@pytest.mark.parametrize("kind", LAYOUTS)
def test_zero_dim_input_raises_value_error(kind):
    pack, unpack, _, _, _ = LAYOUTS[kind]
    with pytest.raises(ValueError, match="codes is 0-d"):
        pack(u8(3))
    with pytest.raises(ValueError, match="packed is 0-d"):
        unpack(u8(3))


@pytest.mark.parametrize(
    "unpack, packed_size, bad_length, allowed",
    [
        (unpack_fp4, 2, 5, "3..4"),
        (unpack_fp4, 2, 2, "3..4"),
        (unpack_fp4, 2, -1, "3..4"),
        (unpack_fp6, 6, 9, "5..8"),
        (unpack_fp6, 6, 4, "5..8"),
        (unpack_fp6, 0, 1, "0..0"),
    ],
)
def test_length_inconsistent_with_packed_size_raises(unpack, packed_size, bad_length, allowed):
    with pytest.raises(ValueError, match=rf"length={bad_length} .* allowed lengths: {allowed}"):
        unpack(torch.zeros(packed_size, dtype=torch.uint8), bad_length)


@pytest.mark.parametrize("bad_length", [2.0, True, "3"])
def test_non_int_length_raises_type_error(bad_length):
    with pytest.raises(TypeError, match="length must be an int or None"):
        unpack_fp4(u8([1, 2]), bad_length)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_empty_tensors_pack_and_unpack(kind):
    pack, unpack, _, _, per_bytes = LAYOUTS[kind]
    assert pack(torch.zeros(0, dtype=torch.uint8)).shape == (0,)
    assert pack(torch.zeros(0, 5, dtype=torch.uint8)).shape == (0, per_bytes * math.ceil(5 / LAYOUTS[kind][3]))
    assert unpack(torch.zeros(2, 0, dtype=torch.uint8), 0).shape == (2, 0)


# ---- torch.compile ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_compiled_pack_and_unpack_equal_eager(kind, device, dynamic):
    pack, unpack, bits, _, _ = LAYOUTS[kind]
    torch._dynamo.reset()
    compiled_pack = torch.compile(pack, fullgraph=True, dynamic=dynamic)
    compiled_unpack = torch.compile(unpack, fullgraph=True, dynamic=dynamic)
    for shape in [(7,), (3, 33), (2, 4, 8)]:
        codes = random_codes(shape, bits, seed=shape[-1], device=device)
        packed = compiled_pack(codes)
        assert torch.equal(packed, pack(codes))
        assert torch.equal(compiled_unpack(packed, shape[-1]), unpack(packed, shape[-1]))
        assert torch.equal(compiled_unpack(packed), unpack(packed))
