"""Torch ops on every QuantTensor kind: the result type follows the rule in quantizers.tensor.ops and
the values always equal the same op on ``value``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantizers.formats import IntFormat
from quantizers.tensor import GroupwiseFloatQuantTensor, IntQuantTensor, QuantTensor
from test_quant_tensor import CASES, CATEGORY, E4M3, assert_valid, float_qt, make, mx_qt

ALL = {"per_tensor", "per_channel", "group_last", "group_channel", "group_channel_shared"}
FLAT = {"per_tensor", "per_channel"}

# op name -> (function of a QuantTensor or Tensor, categories (or case names) that keep a QuantTensor)
# Base shape (2, 4, 6, 8); per channel: scale (1, 4, 1, 1); group_last: grouped along dim 3 with a
# scale per (N, C, H, group); group_channel: grouped along dim 1, scale per (N, group, H, W);
# group_channel_shared: grouped along dim 1, scale per (N, group) shared over H and W.
OPS = {
    "F.relu": (lambda t: F.relu(t), ALL),
    "torch.relu": (lambda t: torch.relu(t), ALL),
    "method relu": (lambda t: t.relu(), ALL),
    "nn.ReLU": (lambda t: nn.ReLU()(t), ALL),
    "F.relu inplace": (lambda t: F.relu(t, inplace=True) if isinstance(t, QuantTensor) else F.relu(t), ALL),
    "max_pool2d": (lambda t: F.max_pool2d(t, 2), FLAT | {"group_channel_shared"}),
    "nn.MaxPool2d stride 1 padding 1": (lambda t: nn.MaxPool2d(3, stride=1, padding=1)(t), FLAT | {"group_channel_shared"}),
    "max_pool3d unbatched": (lambda t: F.max_pool3d(t, (1, 2, 2)), {"per_tensor"}),
    "max_pool1d on flattened": (lambda t: F.max_pool1d(t.flatten(2), 4), FLAT | {"group_channel_shared"}),
    "dropout eval": (lambda t: F.dropout(t, 0.5, training=False), ALL),
    "nn.Dropout eval": (lambda t: nn.Dropout(0.3).eval()(t), ALL),
    "dropout2d eval": (lambda t: F.dropout2d(t, 0.5, False), ALL),
    "alpha_dropout default": (lambda t: F.alpha_dropout(t, 0.5), ALL),
    "view merging H, W": (lambda t: t.view(2, 4, 48), FLAT | {"group_channel", "group_channel_shared"}),
    "view with -1 and a tuple": (lambda t: t.view((2, -1, 6, 8)), ALL),
    "reshape to 1-d": (lambda t: t.reshape(-1), {"per_tensor"}),
    "torch.reshape splitting W": (lambda t: torch.reshape(t, (2, 4, 6, 2, 4)), FLAT | {"group_channel", "group_channel_shared"}),
    "flatten": (lambda t: t.flatten(), {"per_tensor"}),
    "torch.flatten N and C": (lambda t: torch.flatten(t, 0, 1), {"per_tensor", "group_last"}),
    "nn.Flatten": (lambda t: nn.Flatten()(t), {"per_tensor"}),
    "unflatten": (lambda t: t.unflatten(2, (3, 2)), ALL),
    "transpose": (lambda t: t.transpose(1, 3), ALL),
    "torch.transpose negative dims": (lambda t: torch.transpose(t, -1, 0), ALL),
    "permute": (lambda t: t.permute(0, 2, 3, 1), ALL),
    "torch.permute": (lambda t: torch.permute(t, (3, 2, 1, 0)), ALL),
    "t of a 2-d slice": (lambda t: t[0, 0].t(), FLAT | {"group_last"}),
    ".T of a 2-d slice": (lambda t: t[1, :, 0].T, ALL),
    "unsqueeze": (lambda t: t.unsqueeze(2), ALL),
    "torch.unsqueeze negative": (lambda t: torch.unsqueeze(t, -1), ALL),
    "squeeze after unsqueeze": (lambda t: t.unsqueeze(0).squeeze(), ALL),
    "squeeze dim": (lambda t: t[:1].squeeze(0), ALL),
    "index int": (lambda t: t[1], ALL),
    "index slice on C": (lambda t: t[:, 1:3], FLAT | {"group_last"}),
    "index last position": (lambda t: t[..., 0], FLAT | {"group_channel", "group_channel_shared"}),
    "index None, int, ellipsis, step": (lambda t: t[None, 1, ..., ::2], FLAT | {"group_channel", "group_channel_shared"}),
    "index negative and full slices": (lambda t: t[-1, :, -2:], ALL),
    "index with a tensor": (lambda t: t[torch.tensor([1, 0, 1])], {"per_tensor"}),
    "index with a mask": (lambda t: t[t.value > 0] if isinstance(t, QuantTensor) else t[t > 0], {"per_tensor"}),
    "cat with itself along N": (lambda t: torch.cat([t, t]), ALL),
    "cat with itself along C": (lambda t: torch.cat([t, t], dim=1), FLAT | {"group_last", "group_channel"}),
    "concatenate along W": (lambda t: torch.concatenate((t, t), axis=-1),  # needs W=8 to fill the groups
                            FLAT | {"group_channel", "group_channel_shared", "mxfp8_group_last"}),
    "detach": (lambda t: t.detach(), ALL),
    "torch.detach": (lambda t: torch.detach(t), ALL),
    "clone": (lambda t: t.clone(), ALL),
    "torch.clone": (lambda t: torch.clone(t), ALL),
    "contiguous": (lambda t: t.contiguous(), ALL),
    "to float64": (lambda t: t.to(torch.float64), ALL),
    "double": (lambda t: t.double(), ALL),
    "to cpu device": (lambda t: t.to("cpu"), ALL),
    "cpu": (lambda t: t.cpu(), ALL),
}
DTYPE_CASTS = {"to float64", "double"}  # value == value.to(dtype), but e * scale is now exact in float64
PLAIN_OPS = {
    "add scalar": lambda t: t + 1,
    "radd scalar": lambda t: 1 + t,
    "sub tensor": lambda t: t - torch.ones(8),
    "rsub tensor": lambda t: torch.ones(8) - t,
    "mul self": lambda t: t * t,
    "truediv": lambda t: t / 2,
    "rtruediv": lambda t: 2 / (t.abs() + 1 if not isinstance(t, QuantTensor) else t.abs() + 1),
    "matmul": lambda t: t @ torch.ones(8, 3),
    "rmatmul": lambda t: torch.ones(3, 6) @ t,
    "neg": lambda t: -t,
    "abs": lambda t: abs(t),
    "pow": lambda t: t ** 2,
    "lt": lambda t: t < 0.5,
    "ge": lambda t: t >= 0,
    "eq": lambda t: t == t,
    "torch.add two": lambda t: torch.add(t, t),
    "torch.stack list": lambda t: torch.stack([t, t]),
    "torch.cat with a plain tensor": lambda t: torch.cat([t, t.value if isinstance(t, QuantTensor) else t]),
    "F.linear weight": lambda t: F.linear(torch.ones(3, 8), t[0, 0]),
    "F.conv2d input": lambda t: F.conv2d(t, torch.ones(3, 4, 3, 3)),
    "sum method": lambda t: t.sum(dim=1),
    "torch.sum": lambda t: torch.sum(t),
    "amax method": lambda t: t.amax(dim=(0, 1)),
    "sigmoid": lambda t: torch.sigmoid(t),
    "F.gelu": lambda t: F.gelu(t),
    "dropout training": lambda t: F.dropout(t, 0.0, training=True),
    "to int32": lambda t: t.to(torch.int32),
    "view as dtype": lambda t: t.contiguous().view(torch.int32) if isinstance(t, QuantTensor) else t.contiguous().view(torch.int32),
    "expand": lambda t: t[:1].expand(3, 4, 6, 8),
    "dict of args": lambda t: torch.stack(tensors=[t, t], dim=0),
}


def _compare(result, expected):
    if isinstance(result, tuple):
        for r, e in zip(result, expected):
            _compare(r, e)
        return
    plain = result.value if isinstance(result, QuantTensor) else result
    assert plain.dtype == expected.dtype and plain.shape == expected.shape
    assert torch.equal(plain, expected)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", CASES)
def test_op_keeps_quantization_where_exact_and_matches_the_op_on_value(name, op):
    fn, keeps = OPS[op]
    qt = make(name)
    expected = fn(qt.value.contiguous())  # torch's own view fails on the padded groupwise value
    result = fn(qt)
    kept = CATEGORY[name] in keeps or name in keeps
    assert isinstance(result, QuantTensor) == kept, f"{op} on {name}: got {type(result).__name__}"
    if kept:
        assert type(result) is type(qt) and result.fmt == qt.fmt
        assert_valid(result, exact=op not in DTYPE_CASTS)
    _compare(result, expected)


@pytest.mark.parametrize("op", PLAIN_OPS)
@pytest.mark.parametrize("name", ["int8_per_channel", "fp8_e5m2_per_tensor", "nvfp4_group_last", "mxfp4_group_channel"])
def test_other_ops_return_plain_tensors_computed_on_value(name, op):
    qt = make(name)
    result = PLAIN_OPS[op](qt)
    assert isinstance(result, torch.Tensor)
    expected = PLAIN_OPS[op](qt.value)
    assert torch.equal(result, expected) or torch.allclose(result.float(), expected.float(), equal_nan=True)


def test_dropout_in_eval_returns_the_same_quant_tensor():
    qt = make("mxfp8_group_last")
    assert F.dropout(qt, 0.5, False) is qt and nn.Dropout().eval()(qt) is qt


def test_view_never_fails_on_strides_for_padded_groupwise_tensors():
    qt = make("nvfp4_group_last")  # W = 8 padded to 16: value is a non-contiguous slice
    assert not qt.value.is_contiguous()
    out = qt.view(-1)
    assert isinstance(out, torch.Tensor) and torch.equal(out, qt.value.reshape(-1))


def test_max_pool_with_indices_returns_a_quant_tensor_and_the_indices():
    qt = make("fp8_e4m3_per_channel")
    out, indices = F.max_pool2d(qt, 2, return_indices=True)
    ref, ref_indices = F.max_pool2d(qt.value, 2, return_indices=True)
    assert isinstance(out, QuantTensor) and torch.equal(out.value, ref) and torch.equal(indices, ref_indices)
    out, _ = F.max_pool2d(make("mxfp8_group_last"), 2, return_indices=True)
    assert isinstance(out, torch.Tensor)


def test_max_pool_on_groupwise_with_shared_scales_regroups_the_pooled_tensor():
    qt = make("mxint8_group_channel_shared")  # C = 4 in groups of 3: padded
    out = F.max_pool2d(qt, 2)
    assert out.original_shape == (2, 4, 3, 4) and out.value_.shape == (2, 2, 3, 3, 4)
    assert torch.equal(out.value_[:, 1, 1:], torch.zeros(2, 2, 3, 4))


def test_relu_keeps_integer_zero_point_on_the_grid():
    qt = make("uint8_asym_per_tensor")
    out = F.relu(qt)
    assert torch.equal(out.int()[qt.value <= 0], torch.full_like(out.int()[qt.value <= 0], int(qt.zero_point_)))


def test_cat_of_equal_but_distinct_scales_keeps_quantization_in_eager_mode():
    x = torch.randn(4, 8)
    a = float_qt(x, E4M3, torch.tensor(0.01))
    b = float_qt(-x, E4M3, torch.tensor(0.01))
    out = torch.cat([a, b])
    assert isinstance(out, QuantTensor) and out.scale_.shape == ()
    assert_valid(out)
    different = float_qt(-x, E4M3, torch.tensor(0.02))
    assert isinstance(torch.cat([a, different]), torch.Tensor)
    assert isinstance(torch.cat([a, different.replace(fmt="float8_e5m2", value_=different.value_)]), torch.Tensor)


def test_cat_of_different_per_channel_scales_along_the_channel_axis_concatenates_scales():
    a = float_qt(torch.randn(3, 8), E4M3, torch.rand(3, 1) + 0.1)
    b = float_qt(torch.randn(5, 8), E4M3, torch.rand(5, 1) + 0.1)
    out = torch.cat([a, b], 0)
    assert isinstance(out, QuantTensor) and out.scale_.shape == (8, 1)
    assert_valid(out)
    other_rows = float_qt(torch.randn(3, 4), E4M3, torch.rand(3, 1) + 0.1)
    assert isinstance(torch.cat([a, other_rows], 1), torch.Tensor)  # the row scales differ


def test_cat_along_the_group_dim_needs_full_groups_except_in_the_last_input():
    a = mx_qt(torch.randn(4, 64), E4M3, group_dim=1)
    b = mx_qt(torch.randn(4, 40), E4M3, group_dim=1)
    out = torch.cat([a, b], 1)
    assert isinstance(out, GroupwiseFloatQuantTensor) and out.shape == (4, 104) and out.value_.shape == (4, 4, 32)
    assert_valid(out)
    assert isinstance(torch.cat([b, a], 1), torch.Tensor)


def test_to_half_casts_every_floating_field_and_keeps_integer_zero_points():
    qt = IntQuantTensor(value_=torch.tensor([1.0, -2.0]), scale_=torch.tensor(0.5),
                        zero_point_=torch.tensor(0, dtype=torch.int32), fmt=IntFormat(8))
    out = qt.half()
    assert out.value_.dtype == out.scale_.dtype == torch.float16 and out.zero_point_.dtype == torch.int32
    assert out.dtype == torch.float16


def test_getitem_on_groupwise_maps_the_group_dim():
    qt = make("mxfp4_group_channel")
    out = qt[None, 1, :, 2:5]
    assert out.group_dim == 1 and out.original_shape == (1, 4, 3, 8) and out.value_.shape == (1, 2, 2, 3, 8)
    assert torch.equal(out.value, qt.value[None, 1, :, 2:5])


def test_permute_of_groupwise_moves_the_group_dim():
    qt = mx_qt(torch.randn(64, 40), E4M3, group_dim=1)
    out = qt.t()
    assert out.group_dim == 0 and out.value_.shape == (2, 32, 64) and out.scale_.shape == (2, 1, 64)
    assert torch.equal(out.value, qt.value.t())
    assert_valid(out)


def test_iteration_yields_quant_tensors():
    qt = make("int8_per_channel")
    rows = list(qt)
    assert len(rows) == 2 and all(isinstance(r, IntQuantTensor) for r in rows)
    assert torch.equal(rows[1].value, qt.value[1])


def test_requires_grad_and_detach():
    qt = make("fp8_e4m3_per_tensor").requires_grad_()
    assert qt.requires_grad and not qt.detach().requires_grad and qt.detach().value_.is_leaf
