"""QuantTensor construction, properties, metadata, layout, autograd, copying and torch.compile.

The builders at the top (``CASES``) make one QuantTensor of every kind from known tensors with the
canonical formulas; the ops and pack test files reuse them.
"""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from quantizers.formats import E8M0, FloatFormat, HiFloat8, IntFormat, get_format
from quantizers.tensor import (
    FloatQuantTensor, GroupwiseFloatQuantTensor, GroupwiseIntQuantTensor, IntQuantTensor, QuantTensor,
    from_groups, to_groups,
)

E4M3, E5M2, FP4 = get_format("float8_e4m3fn"), get_format("float8_e5m2"), get_format("float4_e2m1fn")


# ---- builders (canonical formulas) ---------------------------------------------------------------
def float_qt(x, fmt, scale, outer=None, scale_format=None):
    eff = scale if outer is None else scale * outer
    return FloatQuantTensor(value_=fmt.quantize(x / eff) * eff, scale_=scale, fmt=fmt, outer_scale_=outer,
                            scale_format=scale_format)


def int_qt(x, fmt, scale, zero_point=None):
    zp = torch.zeros(()) if zero_point is None else zero_point
    q = torch.round(x / scale + zp).clamp(fmt.min_int, fmt.max_int) + 0.0  # + 0.0: no -0 codes
    return IntQuantTensor(value_=(q - zp) * scale, scale_=scale, zero_point_=zero_point, fmt=fmt)


def _block_amax(g, group_dim, reduce_dims=()):
    return g.abs().amax(dim=(group_dim + 1,) + tuple(reduce_dims), keepdim=True)


def mx_qt(x, fmt, group_dim, group_size=32, emax=None, reduce_dims=()):
    """OCP MX: scale 2^(floor(log2 amax) - emax) as E8M0, elements saturate to +-max."""
    g = to_groups(x, group_dim, group_size)
    amax = _block_amax(g, group_dim, reduce_dims)
    emax = math.floor(math.log2(fmt.max_value)) if emax is None else emax
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - emax, torch.full_like(amax, -127.0))
    scale = torch.exp2(exponent.clamp(-127, 127))
    cls = GroupwiseIntQuantTensor if isinstance(fmt, IntFormat) else GroupwiseFloatQuantTensor
    quantize = (lambda v: torch.round(v).clamp(fmt.min_int, fmt.max_int) + 0.0) if isinstance(fmt, IntFormat) else fmt.quantize
    return cls(value_=quantize(g / scale) * scale, scale_=scale, fmt=fmt, group_size=group_size, group_dim=group_dim,
               original_shape=x.shape, scale_format=E8M0())


def nvfp4_qt(x, group_dim=-1):
    """NVFP4: blocks of 16, E4M3 block scale amax/6 over an fp32 tensor scale amax/(448*6)."""
    group_dim = group_dim % x.dim()
    g = to_groups(x, group_dim, 16)
    outer = x.abs().amax() / (448.0 * 6.0)
    block = E4M3.quantize(_block_amax(g, group_dim) / 6.0 / outer)
    eff = block * outer
    elements = FP4.quantize(torch.where(eff > 0, g / eff, torch.zeros_like(g)))
    return GroupwiseFloatQuantTensor(value_=elements * eff, scale_=block, fmt=FP4, group_size=16, group_dim=group_dim,
                                     original_shape=x.shape, outer_scale_=outer, scale_format=E4M3)


def int_groupwise_asym_qt(x, fmt, group_dim, group_size):
    """Asymmetric uint per group: scale (max - min) / (2^b - 1), integer zero point round(-min / scale)."""
    g = to_groups(x, group_dim, group_size)
    low = g.amin(dim=group_dim + 1, keepdim=True).clamp(max=0)
    high = g.amax(dim=group_dim + 1, keepdim=True).clamp(min=0)
    scale = ((high - low) / fmt.max_int).clamp(min=1e-8)
    zp = torch.round(-low / scale).clamp(fmt.min_int, fmt.max_int)
    q = torch.round(g / scale + zp).clamp(fmt.min_int, fmt.max_int) + 0.0
    return GroupwiseIntQuantTensor(value_=(q - zp) * scale, scale_=scale, zero_point_=zp, fmt=fmt,
                                   group_size=group_size, group_dim=group_dim, original_shape=x.shape)


def base_tensor(shape=(2, 4, 6, 8), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def _per_channel(x):
    return x.abs().amax(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)


CASES = {
    # per tensor
    "int8_per_tensor": lambda x: int_qt(x, IntFormat(8), x.abs().amax() / 127),
    "uint8_asym_per_tensor": lambda x: int_qt(x, IntFormat(8, signed=False), (x.amax() - x.amin()) / 255,
                                              torch.round(-x.amin() / ((x.amax() - x.amin()) / 255))),
    "fp8_e4m3_per_tensor": lambda x: float_qt(x, E4M3, x.abs().amax() / 448),
    "fp8_e5m2_per_tensor": lambda x: float_qt(x, E5M2, x.abs().amax() / 57344),
    "hifloat8_per_tensor": lambda x: float_qt(x, HiFloat8(), torch.tensor(0.125)),
    # per channel (1, C, 1, 1)
    "int8_per_channel": lambda x: int_qt(x, IntFormat(8), _per_channel(x) / 127),
    "fp8_e4m3_per_channel": lambda x: float_qt(x, E4M3, _per_channel(x) / 448),
    # groupwise along the last dim (W=8), scale per (N, C, H, group)
    "mxfp8_group_last": lambda x: mx_qt(x, E4M3, group_dim=3, group_size=4),
    "int4_asym_group_last": lambda x: int_groupwise_asym_qt(x, IntFormat(4, signed=False), group_dim=3, group_size=3),
    "nvfp4_group_last": lambda x: nvfp4_qt(x),
    # groupwise along channels (C=4), scale per (N, group, H, W)
    "mxfp4_group_channel": lambda x: mx_qt(x, FP4, group_dim=1, group_size=2),
    # groupwise along channels, one scale per (N, group) shared over H, W (conv-weight style)
    "mxint8_group_channel_shared": lambda x: mx_qt(x, IntFormat(8, narrow=True), group_dim=1, group_size=3, emax=6,
                                                   reduce_dims=(3, 4)),
}
CATEGORY = {
    "int8_per_tensor": "per_tensor", "uint8_asym_per_tensor": "per_tensor", "fp8_e4m3_per_tensor": "per_tensor",
    "fp8_e5m2_per_tensor": "per_tensor", "hifloat8_per_tensor": "per_tensor",
    "int8_per_channel": "per_channel", "fp8_e4m3_per_channel": "per_channel",
    "mxfp8_group_last": "group_last", "int4_asym_group_last": "group_last", "nvfp4_group_last": "group_last",
    "mxfp4_group_channel": "group_channel", "mxint8_group_channel_shared": "group_channel_shared",
}


def make(name, x=None):
    return CASES[name](base_tensor() if x is None else x)


def assert_valid(qt, exact=True):
    """``qt`` is on its grid: value == element * scale (int: (q - zp) * scale) with exact elements
    (``exact=False``: up to the rounding of the product, for tensors cast to another dtype)."""
    same = torch.equal if exact else (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=0))
    assert isinstance(qt, QuantTensor)
    if isinstance(qt, (IntQuantTensor, GroupwiseIntQuantTensor)):
        q = qt.int()
        assert q.dtype == torch.int32 and q.shape == qt.shape
        assert int(q.min()) >= qt.fmt.min_int and int(q.max()) <= qt.fmt.max_int
        assert same((q.to(qt.dtype) - qt.zero_point) * qt.scale, qt.value)
    else:
        e = qt.minifloat()
        assert e.shape == qt.shape and torch.equal(qt.fmt.quantize(e), e)
        assert same(e * qt.scale, qt.value)


def bits(t):
    return t.detach().contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def assert_same_fields(a, b):
    assert type(a) is type(b) and a.fmt == b.fmt and a.scale_format == b.scale_format
    for name in ("value_", "scale_", "zero_point_"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        assert torch.equal(bits(getattr(a, name)), bits(getattr(b, name))), name
    assert (a.outer_scale_ is None) == (b.outer_scale_ is None)
    if a.outer_scale_ is not None:
        assert torch.equal(bits(a.outer_scale_), bits(b.outer_scale_))
    for name in ("group_size", "group_dim", "original_shape"):
        assert getattr(a, name, None) == getattr(b, name, None)


# ---- construction and properties -----------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_every_kind_is_on_its_grid(name):
    qt = make(name)
    assert_valid(qt)
    assert qt.shape == (2, 4, 6, 8) and qt.value.shape == qt.shape
    assert qt.scale.shape == qt.shape if qt.is_groupwise else torch.broadcast_shapes(qt.scale.shape, qt.shape) == qt.shape


@pytest.mark.parametrize("name", CASES)
def test_quantized_value_is_close_to_the_input(name):
    x = base_tensor()
    qt = make(name, x)
    relative = (qt.value - x).norm() / x.norm()
    assert relative < (0.25 if qt.bit_width <= 4 else 0.1)


def test_groupwise_layout_splits_the_group_axis_in_place():
    qt = mx_qt(torch.randn(64, 40), E4M3, group_dim=1, group_size=32)
    assert qt.value_.shape == (64, 2, 32) and qt.scale_.shape == (64, 2, 1)
    assert qt.value.shape == (64, 40) and qt.scale.shape == (64, 40) and qt.zero_point.shape == (64, 40)
    assert qt.shape == (64, 40) and qt.original_shape == torch.Size([64, 40])
    assert torch.equal(qt.scale[:, 31], qt.scale_[:, 0, 0]) and torch.equal(qt.scale[:, 32], qt.scale_[:, 1, 0])


def test_padding_64x40_group_32_equals_explicit_zero_pad_then_slice():
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    qt = mx_qt(x, E4M3, group_dim=1, group_size=32)
    padded = torch.cat([x, torch.zeros(64, 24)], dim=1).reshape(64, 2, 32)
    assert torch.equal(to_groups(x, 1, 32), padded)
    amax = padded.abs().amax(-1, keepdim=True)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - 8)
    explicit = (E4M3.quantize(padded / scale) * scale).reshape(64, 64)[:, :40]
    assert torch.equal(qt.value, explicit)
    assert torch.equal(qt.value_[:, 1, 8:], torch.zeros(64, 24))
    assert torch.equal(from_groups(padded, 1, (64, 40)), x)


@pytest.mark.parametrize("shape, dim, size", [((5,), 0, 2), ((3, 7, 2), 1, 4), ((3, 7, 2), -1, 2), ((4, 9), 0, 4)])
def test_to_groups_and_from_groups_round_trip(shape, dim, size):
    x = torch.randn(shape)
    grouped = to_groups(x, dim, size)
    d = dim % len(shape)
    assert grouped.shape == shape[:d] + (-(-shape[d] // size), size) + shape[d + 1:]
    assert torch.equal(from_groups(grouped, d, shape), x)


def test_from_groups_rejects_a_mismatched_original_shape():
    with pytest.raises(ValueError, match="padded length"):
        from_groups(torch.zeros(2, 2, 4), 1, (2, 9))


def test_int_returns_int32_codes_in_the_original_shape():
    x = torch.tensor([[0.9, -2.2, 0.24, 100.0]])
    qt = int_qt(x, IntFormat(8), torch.tensor(0.5))
    assert qt.int().dtype == torch.int32 and qt.int().tolist() == [[2, -4, 0, 127]]
    assert qt.value.tolist() == [[1.0, -2.0, 0.0, 63.5]]


def test_int_with_a_fractional_minval_zero_point():
    scale, zp = torch.tensor(0.1), torch.tensor(2.5)  # zero_point = -min / scale with min = -0.25
    q = torch.tensor([0.0, 3.0, 255.0])
    qt = IntQuantTensor(value_=(q - zp) * scale, scale_=scale, zero_point_=zp, fmt=IntFormat(8, signed=False))
    assert qt.int().tolist() == [0, 3, 255]


def test_minifloat_returns_exact_format_values_for_non_power_of_two_scales():
    x = base_tensor((64, 64), seed=3)
    qt = float_qt(x, E4M3, x.abs().amax(1, keepdim=True) / 448)
    e = qt.minifloat()
    assert torch.equal(E4M3.quantize(e), e) and e.abs().max() == 448
    assert torch.equal(qt.dequantize(), qt.value)


def test_nvfp4_scale_is_the_block_scale_times_the_outer_scale():
    qt = nvfp4_qt(base_tensor((4, 32)))
    assert qt.scale_.shape == (4, 2, 1) and qt.outer_scale_.shape == ()
    assert torch.equal(qt.scale, (qt.scale_ * qt.outer_scale_).expand(4, 2, 16).reshape(4, 32))
    assert torch.equal(E4M3.quantize(qt.scale_), qt.scale_)
    assert_valid(qt)


def test_float_kinds_have_no_integer_codes():
    with pytest.raises(TypeError, match="minifloat"):
        make("nvfp4_group_last").int()


def test_zero_scale_gives_zero_elements_instead_of_nan():
    qt = FloatQuantTensor(value_=torch.zeros(2, 3), scale_=torch.tensor([[0.0], [1.0]]), fmt=E4M3)
    assert torch.equal(qt.minifloat(), torch.zeros(2, 3))


def test_metadata_of_integer_kinds():
    qt = make("int8_per_tensor")
    assert (qt.bit_width, qt.signed, qt.is_signed, qt.narrow_range) == (8, True, True, False)
    g = make("int4_asym_group_last")
    assert (g.bit_width, g.signed, g.group_size, g.group_dim) == (4, False, 3, 3)


@pytest.mark.parametrize("fmt, expected", [
    (E4M3, (4, 3, 7, True, None, ("111",))),
    (E5M2, (5, 2, 15, True, ("00",), ("01", "10", "11"))),
    (get_format("float8_e4m3fnuz"), (4, 3, 8, True, None, None)),
    (FP4, (2, 1, 1, True, None, None)),
    (FloatFormat(4, 3, 7, "fn", saturating=False), (4, 3, 7, False, None, ("111",))),
    (HiFloat8(), (None, None, None, True, (0x6F, 0xEF), (0x80,))),
])
def test_float_metadata_follows_brevitas(fmt, expected):
    qt = float_qt(torch.randn(8), fmt, torch.tensor(1.0))
    got = (qt.exponent_bit_width, qt.mantissa_bit_width, qt.exponent_bias, qt.saturating, qt.inf_values, qt.nan_values)
    assert got == expected and qt.bit_width == fmt.bits and qt.signed


def test_tensor_like_properties():
    qt = make("nvfp4_group_last")
    assert qt.shape == qt.size() == torch.Size([2, 4, 6, 8]) and qt.size(1) == 4 and qt.size(-1) == 8
    assert (qt.ndim, qt.dim(), qt.numel(), len(qt)) == (4, 4, 384, 2)
    assert qt.dtype == torch.float32 and qt.device == torch.device("cpu") and not qt.requires_grad


def test_repr_names_kind_shape_format_and_scale_shape():
    text = repr(mx_qt(torch.randn(64, 40), FP4, group_dim=1))
    assert text.startswith("GroupwiseFloatQuantTensor(shape=(64, 40), fmt=float4_e2m1fn, group_size=32, group_dim=1")
    assert "scale_shape=(64, 2, 1)" in text and "value_shape=(64, 2, 32)" in text
    assert repr(make("int8_per_tensor")).startswith("IntQuantTensor(shape=(2, 4, 6, 8), fmt=int8, scale_shape=()")


# ---- validation ----------------------------------------------------------------------------------
def test_quant_tensor_base_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        QuantTensor(value_=torch.zeros(2), scale_=torch.ones(()), fmt=E4M3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(value_=[1.0]), TypeError, "value_ must be a torch.Tensor"),
    (dict(value_=torch.zeros(4, dtype=torch.int32)), TypeError, "value_ must be a floating-point"),
    (dict(scale_=torch.ones(3)), ValueError, "scale_ of shape \\(3,\\) does not broadcast"),
    (dict(zero_point_=torch.zeros(3, 4)), ValueError, "zero_point_ of shape"),
    (dict(outer_scale_=torch.ones(5, 1, 1)), ValueError, "outer_scale_"),
    (dict(fmt=IntFormat(8)), TypeError, "FloatQuantTensor needs fmt of type FloatFormat or HiFloat8"),
    (dict(fmt=E8M0()), TypeError, "needs fmt"),
    (dict(fmt=3), TypeError, "fmt must be a NumberFormat"),
    (dict(fmt="e9m9"), ValueError, "unknown format"),
])
def test_constructor_errors_name_the_argument(kwargs, error, match):
    fields = dict(value_=torch.zeros(2, 4), scale_=torch.ones(2, 1), fmt=E4M3)
    fields.update(kwargs)
    with pytest.raises(error, match=match):
        FloatQuantTensor(**fields)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(value_=torch.zeros(64, 40)), ValueError, "value_ has shape \\(64, 40\\).*stored as \\(64, 2, 32\\)"),
    (dict(group_dim=2), ValueError, "group_dim=2 is out of range"),
    (dict(group_dim=1.0), TypeError, "group_dim must be an int"),
    (dict(group_size=0), ValueError, "group_size must be a positive int"),
    (dict(group_size=32.0), TypeError, "group_size must be an int"),
    (dict(original_shape="64x40"), TypeError, "original_shape"),
    (dict(scale_=torch.ones(64, 3, 1)), ValueError, "scale_ of shape \\(64, 3, 1\\)"),
    (dict(fmt=E4M3), TypeError, "GroupwiseIntQuantTensor needs fmt of type IntFormat"),
])
def test_groupwise_constructor_errors_name_the_argument(kwargs, error, match):
    fields = dict(value_=torch.zeros(64, 2, 32), scale_=torch.ones(64, 2, 1), fmt=IntFormat(4), group_size=32,
                  group_dim=1, original_shape=(64, 40))
    fields.update(kwargs)
    with pytest.raises(error, match=match):
        GroupwiseIntQuantTensor(**fields)


def test_negative_group_dim_is_normalized_and_format_names_are_accepted():
    qt = GroupwiseFloatQuantTensor(value_=torch.zeros(64, 2, 32), scale_=torch.ones(64, 2, 1), fmt="e2m1",
                                   group_size=32, group_dim=-1, original_shape=torch.Size([64, 40]))
    assert qt.group_dim == 1 and qt.fmt == FP4 and qt.zero_point_.shape == ()


# ---- autograd ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fp8_e4m3_per_channel", "nvfp4_group_last", "mxfp4_group_channel"])
def test_value_carries_gradients_to_a_leaf_value_(name):
    qt = make(name)
    leaf = qt.value_.detach().clone().requires_grad_(True)
    qt = qt.replace(value_=leaf)
    assert qt.requires_grad
    qt.value.sum().backward()
    expected = qt.replace(value_=torch.ones_like(leaf))
    assert torch.equal(leaf.grad, to_groups(torch.ones(qt.shape), qt.group_dim, qt.group_size)
                       if qt.is_groupwise else torch.ones_like(leaf))
    assert expected.value.shape == qt.shape


def test_gradients_flow_through_kept_ops_on_groupwise_tensors():
    qt = make("mxfp8_group_last")
    leaf = qt.value_.detach().clone().requires_grad_(True)
    out = F.relu(qt.replace(value_=leaf)).transpose(0, 3)[:, 1:].reshape(8, 36)
    assert isinstance(out, GroupwiseFloatQuantTensor) and out.group_dim == 0
    (out.value * 2).sum().backward()
    expected = torch.where(qt.value > 0, 2.0, 0.0)
    expected[:, 0] = 0
    assert torch.equal(leaf.grad, to_groups(expected, 3, 4))


# ---- copying and serialization -------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_deepcopy_and_torch_save_load_with_weights_only(name):
    qt = make(name)
    copied = copy.deepcopy(qt)
    assert_same_fields(copied, qt) and copied.value_ is not qt.value_
    buffer = io.BytesIO()
    torch.save({"qt": qt, "list": [qt]}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)  # weights_only=True by default
    assert_same_fields(loaded["qt"], qt)
    assert_valid(loaded["list"][0])


def test_deepcopy_and_save_of_a_qat_tensor_with_a_graph():
    x = torch.randn(4, 8, requires_grad=True)
    qt = float_qt(x, E4M3, torch.tensor(0.01))
    assert not qt.value_.is_leaf
    copied = copy.deepcopy(qt)
    assert copied.value_.is_leaf and copied.requires_grad and torch.equal(copied.value_, qt.value_)
    buffer = io.BytesIO()
    torch.save(qt, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer).value_, qt.value_)
    assert copy.copy(qt).value_ is qt.value_


# ---- torch.compile -------------------------------------------------------------------------------
COMPILE_CASES = ["int8_per_channel", "fp8_e4m3_per_tensor", "int4_asym_group_last", "nvfp4_group_last"]


# Dynamo's graph capture is what a plain-class QuantTensor must survive; the aot_eager backend runs
# it without C++ code generation (fast). The inductor test below checks generated code bit for bit.
@pytest.mark.parametrize("name", COMPILE_CASES)
def test_compile_fullgraph_quant_tensor_as_input_intermediate_and_output(name):
    qt = make(name)

    def fn(qt, x):
        inner = qt.replace(value_=qt.value_ * 1.0)  # built inside the graph
        kept = F.max_pool2d(F.relu(inner), 2).transpose(1, 2)  # intermediate QuantTensors
        plain = F.linear(x, qt[0, 0]) + qt.amax()  # input used as a tensor (max: order-free)
        return kept, plain, qt.scale

    x = torch.randn(3, 8)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    kept, plain, scale = compiled(qt, x)
    kept_eager, plain_eager, scale_eager = fn(qt, x)
    assert type(kept) is type(kept_eager)
    if isinstance(kept, QuantTensor):
        assert_same_fields(kept, kept_eager)
    else:
        assert torch.equal(kept, kept_eager)
    assert torch.equal(bits(plain), bits(plain_eager)) and torch.equal(scale, scale_eager)


def test_inductor_compiled_quant_tensors_are_bit_identical_to_eager():
    def fn(qt, x, scale):
        built = FloatQuantTensor(value_=E4M3.quantize(x / scale) * scale, scale_=scale, fmt=E4M3)
        kept = torch.cat([F.relu(qt), built.view(4, 2, 4)[:, 1]], dim=1)  # input and intermediate
        return kept, qt * 2 + built.value.amax()

    x, scale = torch.randn(4, 8), torch.tensor(0.01)
    qt = float_qt(torch.randn(4, 3), E4M3, scale)  # the same scale object: cat keeps the quantization
    torch._dynamo.reset()
    kept, plain = torch.compile(fn, fullgraph=True)(qt, x, scale)
    kept_eager, plain_eager = fn(qt, x, scale)
    assert isinstance(kept, FloatQuantTensor) and kept.shape == (4, 7)
    assert_same_fields(kept, kept_eager)
    assert torch.equal(bits(plain), bits(plain_eager))
