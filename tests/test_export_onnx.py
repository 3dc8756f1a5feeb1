"""export_onnx: every predefined quantizer exported, run in onnxruntime (CPU) and compared with qzoo.

Oracles: the dequantized weights onnxruntime computes from the stored codes must equal qzoo's
``quant_weight().value`` bit for bit; quantized activations (QuantizeLinear -> DequantizeLinear)
equal qzoo's fake-quantized activations bit for bit; layer outputs equal the fake-quant model up to
the order of float32 additions in the runtime's kernels: ``|y_ort - y_qzoo| <= 2 K eps (|x| |W|^T
+ |b|)`` with K the reduction length and eps = 2^-23 (the textbook bound for a reassociated dot
product, gamma_K). The "spec" target is checked with onnx.checker (inside export_onnx) and evaluated
with onnx's reference evaluator.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qlayers
import quantizers
from quantizers.zoo.catalog import predefined_quantizers

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from qlayers.export import ExportError, export_onnx  # noqa: E402

IN_FEATURES, OUT_FEATURES = 40, 24  # 40: a partial last block for MX (32), NVFP4 (16) and groups of 128


def _buildable(quantizer, **kwargs):
    try:
        qlayers.QuantIdentity(act_quant=quantizer) if quantizer.role == "act" else qlayers.QuantLinear(4, 4, weight_quant=quantizer)
    except Exception:
        return False
    return True


WEIGHT_QUANTIZERS = [q for q in predefined_quantizers() if q.role == "weight" and _buildable(q)]
ACT_QUANTIZERS = [q for q in predefined_quantizers() if q.role == "act" and _buildable(q)]
BIAS_QUANTIZERS = [q for q in predefined_quantizers() if q.role == "bias"]


class Fanout(nn.Module):
    """Every layer applied to the same input; one output per layer."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return tuple(layer(x) for layer in self.layers)


def _run(model_proto, inputs, extra_outputs=()):
    """onnxruntime CPU outputs of ``model_proto`` (plus the named intermediate values)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    for name in extra_outputs:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _assert_bits_equal(got: np.ndarray, expected: torch.Tensor, what: str, signed_zero: bool = True) -> None:
    """Same float32 bits (NaN equals NaN). Integer codes have no -0, so integer formats compare
    ``-0.0`` (qzoo's ``round(-0.3) * s``) equal to ``+0.0`` (``signed_zero=False``)."""
    expected = expected.detach().numpy()
    assert got.shape == expected.shape, what
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    if not signed_zero:
        same |= (got == 0) & (expected == 0)
    assert same.all(), f"{what}: {int((~same).sum())} values differ, e.g. {got[~same][:4]} vs {expected[~same][:4]}"


def _assert_reassociation_close(got: np.ndarray, expected: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias) -> None:
    k = weight.shape[1]
    bound = (x.abs() @ weight.abs().T)
    if bias is not None:
        bound = bound + bias.abs()
    bound = 2 * k * 2.0 ** -23 * bound + 1e-30
    assert (np.abs(got - expected.detach().numpy()) <= bound.detach().numpy()).all()


@pytest.fixture(scope="module")
def weight_export(tmp_path_factory):
    torch.manual_seed(0)
    layers = [qlayers.QuantLinear(IN_FEATURES, OUT_FEATURES, weight_quant=q) for q in WEIGHT_QUANTIZERS]
    model = Fanout(layers).eval()
    x = torch.randn(3, IN_FEATURES)
    path = tmp_path_factory.mktemp("onnx") / "weights.onnx"
    proto = export_onnx(model, (x,), path)
    return model, x, proto, path


@pytest.mark.parametrize("target", ["ort"])
def test_every_predefined_weight_quantizer_dequantizes_bit_exactly_in_onnxruntime(weight_export, target):
    model, x, proto, path = weight_export
    x2 = torch.randn(3, IN_FEATURES)
    names = [f"layers.{i}.weight" for i in range(len(model.layers))]
    got = _run(onnx.load(str(path)), (x2,), names)
    outputs = model(x2)
    for i, (layer, quantizer) in enumerate(zip(model.layers, WEIGHT_QUANTIZERS)):
        weight = layer.quant_weight().value
        integer = isinstance(layer.quant_weight().fmt, quantizers.formats.IntFormat)
        _assert_bits_equal(got[names[i]], weight, quantizer.__name__, signed_zero=not integer)
        output = got[proto.graph.output[i].name]
        _assert_reassociation_close(output, outputs[i], x2, weight, layer.bias)


def test_weights_are_stored_as_low_bit_codes(weight_export):
    _, _, proto, _ = weight_export
    types = {init.name: init.data_type for init in proto.graph.initializer}
    T = onnx.TensorProto
    index = {q.__name__: i for i, q in enumerate(WEIGHT_QUANTIZERS)}
    expected = {
        "Int8WeightPerChannelFloat": T.INT8, "Int4WeightPerGroupFloat": T.INT4, "Uint4WeightPerGroupFloat": T.UINT4,
        "Int2WeightPerGroupFloat": T.INT2, "Fp8e4m3OCPWeightPerTensorFloat": T.FLOAT8E4M3FN,
        "Fp8e5m2FNUZWeightPerChannelFloat": T.FLOAT8E5M2FNUZ, "MXFloat4e2m1Weight": T.FLOAT8E4M3FN,
        "MXFloat6e3m2Weight": T.FLOAT8E4M3FN, "MXInt8Weight": T.INT8, "NVFloat4e2m1Weight": T.FLOAT8E4M3FN,
        "HiFloat8WeightPerTensorFloat": T.UINT8, "Fp8e4m3Weight": T.UINT8,
    }
    for name, data_type in expected.items():
        assert types[f"layers.{index[name]}.weight.codes"] == data_type, name
    assert types[f"layers.{index['NVFloat4e2m1Weight']}.weight.scale"] == T.FLOAT8E4M3FN
    assert not any(init.name.endswith(".weight") for init in proto.graph.initializer)  # no float weight
    assert {entry.version for entry in proto.opset_import if entry.domain == ""} == {25}  # INT2 needs opset 25
    lookups = [node for node in proto.graph.node if node.op_type == "Gather"]
    assert {node.name for node in lookups} >= {f"layers.{index['HiFloat8WeightPerTensorFloat']}.weight.value_table_lookup"}
    assert all("value-table" in node.doc_string for node in lookups)
