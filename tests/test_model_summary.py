"""summary(): formats, granularity, scale range and bytes before/after packing, by hand."""
import pytest
import torch
from torch import nn

from qlayers.model import calibrate, quantization_disabled, quantize_model, summary


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64, bias=False), nn.LayerNorm(64))
    return model, quantize_model(model, {
        "weights": {"format": "int8", "granularity": "channel"},
        "inputs": {"format": "int8", "observer": "global_minmax"},
        "layers": {"2": {"weights": {"format": "mxfp4"}, "inputs": {"format": "mxfp8"}}},
    })


def test_summary_rows_by_hand(capsys):
    model, q = _model()
    calibrate(q, [torch.ones(2, 64) * 2], progress=False)
    result = summary(q)
    printed = capsys.readouterr().out
    first, second = result.layers
    assert (first.name, first.layer, first.weight, first.granularity) == ("0", "QuantLinear", "int8_narrow", "channel, float")
    amax = model[0].weight.detach().abs().amax(1)
    assert first.scale_min == pytest.approx(float(amax.min()) / 127) and first.scale_max == pytest.approx(float(amax.max()) / 127)
    assert first.float_bytes == 64 * 32 * 4 + 32 * 4
    assert first.packed_bytes == 64 * 32 + 32 * 4 + 32 * 4  # int8 codes + fp32 scale per row + fp32 bias
    assert "static 2" in first.activations
    assert (second.weight, second.granularity) == ("float4_e2m1fn", "group(32), e8m0 floor")
    assert second.packed_bytes == 32 * 64 // 2 + 64 * 1  # two FP4 codes per byte + one E8M0 per block
    assert "mxfp8" not in second.activations and "float8_e4m3fn group(32), e8m0 floor dynamic" in second.activations
    layer_norm = 2 * 64 * 4
    assert result.total_float_bytes == first.float_bytes + second.float_bytes + layer_norm
    assert result.total_packed_bytes == first.packed_bytes + second.packed_bytes + layer_norm
    assert "int8_narrow" in printed and "packed" in printed and "model parameters" in printed


def test_summary_of_a_disabled_layer_counts_float_bytes():
    _, q = _model()
    with quantization_disabled(q, layers=["0"]):
        row = summary(q, verbose=False).layers[0]
    assert row.weight == "float" and row.packed_bytes == row.float_bytes
    assert "disabled: weight" in row.activations
