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

import warnings

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
    options = ort.SessionOptions()  # the graph as written: ORT's Q/DQ rewrites round their own way
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
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


# ---- activations -----------------------------------------------------------------------------------

#: Activation quantizers standard ONNX cannot reproduce exactly: element formats with no
#: QuantizeLinear type in onnxruntime (FP4, FP6, HiFloat8, FP8 without special codes).
UNSUPPORTED_ACTS = {
    "MXFloat6e2m3Act": "float6_e2m3fn", "MXFloat6e3m2Act": "float6_e3m2fn", "MXFloat4e2m1Act": "float4_e2m1fn",
    "NVFloat4e2m1Act": "float4_e2m1fn", "Fp8e4m3Act": "e4m3(bias=7", "Fp8e5m2Act": "e5m2(bias=15",
    "HiFloat8ActPerTensorFloat": "hifloat8",
}
SUPPORTED_ACTS = [q for q in ACT_QUANTIZERS if q.__name__ not in UNSUPPORTED_ACTS]
ACT_SHAPE = (2, 6, 3, 40)  # (N, C, H, W): per-channel 2-d along C, per-token and MX blocks (32 + 8) along W


def test_unsupported_act_list_names_predefined_quantizers():
    assert set(UNSUPPORTED_ACTS) <= {q.__name__ for q in ACT_QUANTIZERS}


@pytest.fixture(scope="module")
def act_export():
    torch.manual_seed(1)
    model = Fanout([qlayers.QuantIdentity(act_quant=q) for q in SUPPORTED_ACTS]).eval()
    qlayers.calibrate(model, [torch.randn(ACT_SHAPE) * 3 for _ in range(2)])
    x = torch.randn(ACT_SHAPE) * 3
    return model, export_onnx(model, (x,), None)


def test_every_exportable_act_quantizer_quantizes_bit_exactly_in_onnxruntime(act_export):
    model, proto = act_export
    x2 = torch.randn(ACT_SHAPE) * 4  # beyond the calibrated range too: saturation
    x2[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    x2[0, 0, 1] = 0.0  # an all-zero MX block: scale 2^-127
    x2[0, 1, 0, :32] *= 2.0 ** torch.arange(-16, 16)  # MX blocks whose maximum is a power of two: floor(log2) exactly
    x2[0, 1, 1, :32] = 2.0 ** torch.arange(-20, 12).float() * (1 - 2.0 ** -24)  # ... and one ulp below
    x2[0, 1, 2, :32] = 2.0 ** torch.arange(-20, 12).float()
    got = list(_run(proto, (x2,)).values())
    for output, expected, quantizer in zip(got, model(x2), SUPPORTED_ACTS):
        _assert_bits_equal(output, expected, quantizer.__name__, signed_zero=False)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_ACTS))
def test_inexpressible_act_quantizers_raise_naming_layer_format_and_target(name, tmp_path):
    quantizer = getattr(quantizers, name)
    model = nn.Sequential(nn.Linear(8, 8), qlayers.QuantIdentity(act_quant=quantizer)).eval()
    if quantizer.observer is not None:
        qlayers.calibrate(model, [torch.randn(4, 8)])
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"layer '1' \(QuantIdentity\) act_quant") as error:
        export_onnx(model, (torch.randn(4, 8),), path)
    assert UNSUPPORTED_ACTS[name].split()[-1] in str(error.value) and "supported" in str(error.value)
    assert not path.exists()


# ---- every layer kind ------------------------------------------------------------------------------


class Zoo(nn.Module):
    """One of each exportable layer, with per-tensor, per-channel and blocked weights, quantized
    inputs, quantized biases and merge layers."""

    def __init__(self):
        super().__init__()
        Q = quantizers
        act = dict(input_quant=Q.Int8ActPerTensorFloat)
        self.conv1 = qlayers.QuantConv1d(8, 6, 3, weight_quant=Q.Int8WeightPerChannelFloat, bias_quant=Q.Int32Bias, **act)
        self.conv1b = qlayers.QuantConv1d(8, 6, 3, weight_quant=Q.MXFloat8e4m3Weight)
        self.conv2 = qlayers.QuantConv2d(8, 6, 3, groups=2, padding=1, padding_mode="reflect",
                                         weight_quant=Q.Int4WeightPerGroupFloat, weight_group_size=2)
        self.conv3 = qlayers.QuantConv3d(4, 4, 2, weight_quant=Q.NVFloat4e2m1Weight, input_quant=Q.Fp8e4m3OCPActPerTensorFloat)
        self.convt1 = qlayers.QuantConvTranspose1d(8, 4, 3, stride=2, weight_quant=Q.Int8WeightPerChannelFloat,
                                                   bias_quant=Q.Int8Bias, **act)
        self.convt2 = qlayers.QuantConvTranspose2d(8, 4, 3, stride=2, output_padding=1, weight_quant=Q.MXFloat4e2m1Weight)
        self.convt3 = qlayers.QuantConvTranspose3d(4, 2, 2, weight_quant=Q.Fp8e5m2OCPWeightPerChannelFloat)
        self.embedding = qlayers.QuantEmbedding(30, 12, weight_quant=Q.MXFloat6e2m3Weight)
        self.linear = qlayers.QuantLinear(12, 5, weight_quant=Q.Uint4WeightPerGroupFloat, weight_group_size=4,
                                          input_quant=Q.Int8ActPerTokenFloat)
        self.relu = qlayers.QuantReLU()
        self.sigmoid = qlayers.QuantSigmoid()
        self.tanh = qlayers.QuantTanh()
        self.hardtanh = qlayers.QuantHardTanh(act_quant=Q.Fp8e4m3OCPActPerTensorFloat)
        self.add = qlayers.QuantEltwiseAdd()
        self.cat = qlayers.QuantCat(input_quant=Q.Uint8ActPerTensorFloat)

    def forward(self, x1, x2, x3, idx):
        rows = self.embedding(idx)
        return (
            self.conv1(x1) + self.conv1b(x1), self.conv2(x2), self.conv3(x3), self.convt1(x1), self.convt2(x2), self.convt3(x3),
            rows, self.linear(rows), self.relu(x1), self.sigmoid(x1), self.tanh(x1), self.hardtanh(x1),
            self.add(x1, x1 * 0.5), self.cat([x2.relu(), x2.abs()], dim=1),
        )


def _zoo_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 8, 10, generator=generator), torch.randn(2, 8, 6, 6, generator=generator),
            torch.randn(1, 4, 4, 4, 4, generator=generator), torch.randint(0, 30, (2, 5), generator=generator))


@pytest.fixture(scope="module")
def zoo_export():
    torch.manual_seed(2)
    model = Zoo().eval()
    qlayers.calibrate(model, [_zoo_inputs(s) for s in (10, 11)], forward=lambda m, batch: m(*batch))
    return model, export_onnx(model, _zoo_inputs(0), None)


def test_every_layer_kind_exports_with_exact_weights_biases_and_activations(zoo_export):
    model, proto = zoo_export
    inputs = _zoo_inputs(1)
    weights = [f"{name}.weight" for name in ("conv1", "conv1b", "conv2", "conv3", "convt1", "convt2", "convt3", "embedding", "linear")]
    got = _run(proto, inputs, weights + ["conv1.bias", "convt1.bias"])
    for name in weights:
        layer = model.get_submodule(name.split(".")[0])
        integer = isinstance(layer.quant_weight().fmt, quantizers.formats.IntFormat)
        _assert_bits_equal(got[name], layer.quant_weight().value, name, signed_zero=not integer)
    for name, x in (("conv1", inputs[0]), ("convt1", inputs[0])):
        layer = model.get_submodule(name)
        _assert_bits_equal(got[f"{name}.bias"], layer.quant_bias(layer.input_quant(x)).value, f"{name}.bias", signed_zero=False)
    outputs = [got[o.name] for o in proto.graph.output]
    expected = model(*inputs)
    exact = {6, 8, 9, 10, 11, 12, 13}  # embedding rows, activations, add, cat: no reassociated sums
    for i, (output, reference) in enumerate(zip(outputs, expected)):
        if i in exact:
            _assert_bits_equal(output, reference, f"output {i}", signed_zero=False)
        else:
            scale = reference.abs().max().item()
            assert np.allclose(output, reference.detach().numpy(), rtol=0, atol=1e-5 * scale), f"output {i}"


# ---- target="spec" -----------------------------------------------------------------------------------

SPEC_QUANTIZERS = [
    quantizers.MXFloat4e2m1Weight, quantizers.MXFloat6e2m3Weight, quantizers.MXFloat6e3m2Weight,
    quantizers.MXFloat8e5m2Weight, quantizers.NVFloat4e2m1Weight, quantizers.MXInt8Weight,
    quantizers.Int2WeightPerGroupFloat, quantizers.HiFloat8WeightPerTensorFloat,
]


@pytest.mark.slow
def test_spec_target_stores_fp4_fp6_and_e8m0_and_the_reference_evaluator_gives_qzoo_weights():
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(3)
    model = Fanout([qlayers.QuantLinear(IN_FEATURES, OUT_FEATURES, weight_quant=q) for q in SPEC_QUANTIZERS]).eval()
    x = torch.randn(3, IN_FEATURES)
    proto = export_onnx(model, (x,), None, target="spec")  # onnx.checker.check_model(full_check=True) inside
    T = onnx.TensorProto
    types = {init.name: init.data_type for init in proto.graph.initializer}
    assert [types[f"layers.{i}.weight.codes"] for i in range(4)] == [T.FLOAT4E2M1, T.FLOAT6E2M3, T.FLOAT6E3M2, T.FLOAT8E5M2]
    assert {types[f"layers.{i}.weight.scale"] for i in (0, 1, 2, 3, 5)} == {T.FLOAT8E8M0}
    assert types["layers.4.weight.codes"] == T.FLOAT4E2M1 and types["layers.4.weight.scale"] == T.FLOAT8E4M3FN
    assert {entry.version for entry in proto.opset_import if entry.domain == ""} == {28}  # FP6
    names = [f"layers.{i}.weight" for i in range(len(SPEC_QUANTIZERS))]
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, T.FLOAT, None))
    results = ReferenceEvaluator(proto).run(names, {"x": x.numpy()})
    for got, layer, quantizer in zip(results, model.layers, SPEC_QUANTIZERS):
        integer = isinstance(layer.quant_weight().fmt, quantizers.formats.IntFormat)
        _assert_bits_equal(got, layer.quant_weight().value, quantizer.__name__, signed_zero=not integer)


def test_spec_without_fp6_declares_opset_24_for_e8m0_scales():
    model = nn.Sequential(qlayers.QuantLinear(64, 8, weight_quant=quantizers.MXFloat4e2m1Weight)).eval()
    proto = export_onnx(model, (torch.randn(2, 64),), None, target="spec")
    assert {entry.version for entry in proto.opset_import if entry.domain == ""} == {24}
    assert proto.ir_version == 12


# ---- shapes, errors ----------------------------------------------------------------------------------


def test_dynamic_batch_runs_other_batch_sizes_and_leaves_the_model_as_it_was(tmp_path):
    model = nn.Sequential(
        qlayers.QuantLinear(16, 8, weight_quant=quantizers.Int4WeightPerGroupFloat, weight_group_size=8,
                            input_quant=quantizers.Int8ActPerTokenFloat), nn.GELU(),
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "model.onnx"
    export_onnx(model, (torch.randn(4, 16),), path, dynamic_shapes=({0: "batch"},))
    assert model.training and isinstance(model[0], qlayers.QuantLinear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(9, 16)
    (got,) = _run(onnx.load(str(path)), (x,)).values()
    assert np.allclose(got, model.eval()(x).detach().numpy(), rtol=0, atol=1e-6)


class QuantUnknown(qlayers.QuantIdentity):
    """A quantized layer with no export twin."""


def test_unsupported_layer_raises_naming_it_before_writing(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(QuantUnknown(act_quant=quantizers.Int8ActPerTokenFloat)))
    model[1][0].__class__ = type("QuantMystery", (qlayers.QuantLayer,), {"forward": lambda self, x: x})
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"layer '1.0' \(QuantMystery\) is not supported.*QuantLinear"):
        export_onnx(model, (torch.randn(2, 4),), path)
    assert not path.exists()


def test_uncalibrated_static_quantizer_raises_naming_the_layer(tmp_path):
    model = nn.Sequential(qlayers.QuantLinear(4, 4, input_quant=quantizers.Int8ActPerTensorFloat))
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"layer '0' \(QuantLinear\) input_quant: static quantizer was never calibrated.*calibrate"):
        export_onnx(model, (torch.randn(2, 4),), path)
    assert not path.exists()


def test_calibration_mode_raises_and_bad_target_names_the_choices():
    model = nn.Sequential(qlayers.QuantLinear(4, 4, input_quant=quantizers.Int8ActPerTensorFloat))
    with warnings.catch_warnings(), qlayers.calibration_mode(model):
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match="calibration mode"):
            export_onnx(model, (torch.randn(2, 4),), None)
    with pytest.raises(ValueError, match=r"target='tensorrt' is unknown; allowed values: 'ort', 'spec'"):
        export_onnx(model, (torch.randn(2, 4),), None, target="tensorrt")
