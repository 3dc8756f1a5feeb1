"""pack() / unpack(): real low-bit storage, byte counts, bit-identical round trips."""
import io

import pytest
import torch

from quantizers.formats import E8M0, HiFloat8, IntFormat, get_format
from quantizers.formats.packing import unpack_fp4, unpack_int4
from quantizers.tensor import (
    FloatQuantTensor, GroupwiseFloatQuantTensor, GroupwiseIntQuantTensor, IntQuantTensor, PackedQuantTensor,
    QuantTensor,
)
from quantizers.tensor.packed import torch_storage_dtype
from test_quant_tensor import (
    CASES, E4M3, E5M2, FP4, assert_same_fields, base_tensor, float_qt, int_groupwise_asym_qt, int_qt, make, mx_qt,
    nvfp4_qt,
)


def round_trip(qt):
    packed = qt.pack()
    restored = packed.unpack()
    assert_same_fields(restored, qt)
    assert_same_fields(QuantTensor.from_packed(packed), qt)
    return packed


@pytest.mark.parametrize("name", CASES)
def test_every_kind_round_trips_bit_identically(name):
    round_trip(make(name))


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"])
def test_torch_float8_dtypes_read_every_code_as_our_format_does(name):
    fmt = get_format(name)
    codes = torch.arange(256, dtype=torch.uint8)
    ours, theirs = fmt.decode(codes), codes.view(torch_storage_dtype(fmt)).float()
    assert torch_storage_dtype(fmt) == getattr(torch, name)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours[~ours.isnan()], theirs[~ours.isnan()])


def test_fp8_e4m3_per_tensor_stores_torch_float8_codes():
    x = base_tensor((16, 32))
    qt = float_qt(x, E4M3, x.abs().amax() / 448)
    packed = round_trip(qt)
    assert packed.codes.dtype == torch.float8_e4m3fn and packed.codes.shape == (16, 32)
    assert torch.equal(packed.codes.float() * qt.scale_, qt.value_)  # torch decodes our codes identically
    assert packed.nbytes == 16 * 32 + 4 and packed.zero_point is None


def test_fp8_e5m2_per_tensor_stores_torch_float8_codes():
    x = base_tensor((16, 32))
    qt = float_qt(x, E5M2, x.abs().amax() / 57344)
    packed = round_trip(qt)
    assert packed.codes.dtype == torch.float8_e5m2 and packed.nbytes == 16 * 32 + 4
    assert torch.equal(packed.codes.float() * qt.scale_, qt.value_)


def test_fp8_e5m2_infinities_and_nans_survive_packing():
    fmt = get_format("float8_e5m2")
    value = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 1.5])
    qt = FloatQuantTensor(value_=value, scale_=torch.tensor(1.0), fmt=fmt)
    restored = qt.pack().unpack()
    assert torch.equal(restored.value_[:2], value[:2]) and torch.isnan(restored.value_[2])
    assert torch.signbit(restored.value_[3]) and restored.value_[4] == 1.5


def test_mxfp4_stores_two_codes_per_byte_and_e8m0_scales():
    x = base_tensor((64, 40))
    qt = mx_qt(x, FP4, group_dim=1)
    packed = round_trip(qt)
    assert packed.layout == "nibble" and packed.codes.dtype == torch.uint8 and packed.codes.numel() == 64 * 64 // 2
    assert packed.scale.dtype == torch.float8_e8m0fnu and packed.scale_codes_format == E8M0()
    assert torch.equal(packed.scale.float(), qt.scale_)  # torch's E8M0 reads our scale bytes
    codes = unpack_fp4(packed.codes).reshape(64, 2, 32)
    assert torch.equal(FP4.decode(codes) * qt.scale_, qt.value_)
    assert packed.nbytes == 64 * 64 // 2 + 64 * 2


def test_mxfp4_4096x4096_takes_half_a_byte_per_element_plus_one_byte_per_32():
    codes = torch.randint(0, 16, (4096, 128, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scale = torch.exp2(torch.randint(-20, 20, (4096, 128, 1), generator=torch.Generator().manual_seed(1)).float())
    qt = GroupwiseFloatQuantTensor(value_=FP4.decode(codes) * scale, scale_=scale, fmt=FP4, group_size=32,
                                   group_dim=1, original_shape=(4096, 4096), scale_format=E8M0())
    packed = qt.pack(check=False)
    assert packed.nbytes == 4096 * 4096 // 2 + 4096 * 4096 // 32
    assert torch.equal(unpack_fp4(packed.codes[:4096]), codes.reshape(-1)[:8192])


def test_mx_all_zero_block_keeps_the_smallest_e8m0_scale():
    x = base_tensor((4, 64))
    x[1, 32:] = 0
    qt = mx_qt(x, FP4, group_dim=1)
    assert qt.scale_[1, 1, 0] == 2.0 ** -127
    packed = round_trip(qt)
    assert packed.scale.view(torch.uint8)[1, 1, 0] == 0


def test_mxfp8_stores_float8_codes_and_e8m0_scales():
    qt = mx_qt(base_tensor((8, 64)), E4M3, group_dim=1)
    packed = round_trip(qt)
    assert packed.codes.dtype == torch.float8_e4m3fn and packed.codes.shape == (8, 2, 32)
    assert packed.scale.dtype == torch.float8_e8m0fnu and packed.nbytes == 8 * 64 + 8 * 2


def test_nvfp4_stores_e4m3_block_scales_and_an_fp32_outer_scale():
    qt = nvfp4_qt(base_tensor((128, 256)))
    packed = round_trip(qt)
    assert packed.layout == "nibble" and packed.scale.dtype == torch.float8_e4m3fn
    assert packed.outer_scale.dtype == torch.float32 and packed.outer_scale.shape == ()
    assert packed.nbytes == 128 * 256 // 2 + 128 * 256 // 16 + 4


def test_int8_per_channel_stores_int8_codes_equal_to_int():
    x = base_tensor((16, 32))
    qt = int_qt(x, IntFormat(8), x.abs().amax(1, keepdim=True) / 127)
    packed = round_trip(qt)
    assert packed.codes.dtype == torch.int8 and torch.equal(packed.codes.to(torch.int32), qt.int())
    assert packed.scale.shape == (16, 1) and packed.nbytes == 16 * 32 + 16 * 4


def test_int4_groupwise_asymmetric_stores_nibbles_scales_and_zero_points():
    x = base_tensor((16, 64))
    qt = int_groupwise_asym_qt(x, IntFormat(4, signed=False), group_dim=1, group_size=32)
    assert qt.zero_point_.shape == (16, 2, 1) and bool((qt.zero_point_ != 0).any())
    packed = round_trip(qt)
    assert packed.layout == "nibble" and torch.equal(packed.zero_point, qt.zero_point_)
    assert torch.equal(unpack_int4(packed.codes).reshape(16, 64), qt.int().to(torch.uint8))
    assert packed.nbytes == 16 * 64 // 2 + 2 * (16 * 2 * 4)


def test_signed_int4_codes_are_twos_complement_nibbles():
    qt = IntQuantTensor(value_=torch.tensor([-8.0, -1.0, 7.0]), scale_=torch.tensor(1.0), fmt=IntFormat(4))
    packed = round_trip(qt)
    assert packed.codes.tolist() == [0xF8, 0x07]


def test_integer_negative_zero_comes_back_as_positive_zero():
    value = torch.tensor([-0.0, -0.5, 0.5])
    qt = IntQuantTensor(value_=value, scale_=torch.tensor(0.5), fmt=IntFormat(8))
    restored = qt.pack().unpack().value_
    assert torch.equal(restored, value) and not torch.signbit(restored[0])


def test_fp6_is_one_code_per_byte_unless_packed():
    fmt = get_format("float6_e2m3fn")
    qt = mx_qt(base_tensor((8, 64)), fmt, group_dim=1)
    assert round_trip(qt).codes.numel() == 8 * 64
    packed = qt.pack(packed_fp6=True)
    assert packed.layout == "six_bit" and packed.codes.numel() == 8 * 64 * 3 // 4
    assert_same_fields(packed.unpack(), qt)


def test_hifloat8_and_int2_use_one_byte_per_code():
    hif8 = float_qt(base_tensor((4, 8)), HiFloat8(), torch.tensor(0.25))
    assert round_trip(hif8).codes.dtype == torch.uint8
    int2 = int_qt(base_tensor((4, 8)), IntFormat(2), torch.tensor(1.0))
    assert round_trip(int2).nbytes == 32 + 4


def test_int16_codes_use_two_bytes():
    x = base_tensor((4, 8))
    qt = int_qt(x, IntFormat(16), x.abs().amax() / 32767)
    packed = round_trip(qt)
    assert packed.codes.dtype == torch.int16 and torch.equal(packed.codes.to(torch.int32), qt.int())


def test_scales_that_do_not_fit_the_scale_format_stay_fp32():
    qt = mx_qt(base_tensor((4, 32)), FP4, group_dim=1)
    qt = qt.replace(scale_=qt.scale_ * 1.5, value_=qt.value_ * 1.5)  # not powers of two any more
    packed = round_trip(qt)
    assert packed.scale_codes_format is None and packed.scale.dtype == torch.float32


def test_bfloat16_tensors_round_trip_in_their_dtype():
    x = base_tensor((8, 32)).to(torch.bfloat16)
    scale = (x.abs().amax() / 448).to(torch.bfloat16)
    qt = FloatQuantTensor(value_=E4M3.quantize(x / scale) * scale, scale_=scale, fmt=E4M3)
    assert round_trip(qt).nbytes == 8 * 32 + 2


def test_pack_refuses_a_value_that_is_not_the_canonical_product():
    x = base_tensor((4, 8))
    qt = float_qt(x, E4M3, torch.tensor(0.01))
    bad = qt.replace(value_=qt.value_ * (1 + 2 ** -20))
    with pytest.raises(ValueError, match="not the canonical e \\* scale"):
        bad.pack()
    assert_same_fields(bad.pack(check=False).unpack(), qt)


def test_packed_quant_tensor_saves_and_loads_with_weights_only():
    packed = nvfp4_qt(base_tensor((4, 32))).pack()
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert isinstance(loaded, PackedQuantTensor) and loaded.nbytes == packed.nbytes
    assert_same_fields(loaded.unpack(), packed.unpack())
    assert "nbytes=" in repr(packed) and "float4_e2m1fn" in repr(packed)


def test_from_packed_checks_the_kind():
    packed = make("int8_per_channel").pack()
    assert isinstance(IntQuantTensor.from_packed(packed), IntQuantTensor)
    with pytest.raises(TypeError, match="holds a IntQuantTensor, not a FloatQuantTensor"):
        FloatQuantTensor.from_packed(packed)
    with pytest.raises(TypeError, match="PackedQuantTensor"):
        QuantTensor.from_packed(make("int8_per_channel"))


def test_groupwise_int_unpacks_to_the_groupwise_class():
    packed = make("mxint8_group_channel_shared").pack()
    assert isinstance(GroupwiseIntQuantTensor.from_packed(packed), GroupwiseIntQuantTensor)
