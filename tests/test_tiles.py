"""2-D tile granularity (e.g. 128x128 weight blocks): every tile quantized on its own, padding
exact, QuantTensors back in the weight's shape."""
import pytest
import torch

import qlayers
import quantizers as qz
from quantizers.scaling.granularity import Granularity

E4M3 = qz.get_format("float8_e4m3fn")


def _explicit_tiles(w, rows, cols):
    """Reference: slice every tile, scale by its own amax / 448, quantize, put back."""
    out = torch.empty_like(w)
    for i in range(0, w.shape[0], rows):
        for j in range(0, w.shape[1], cols):
            tile = w[i:i + rows, j:j + cols]
            scale = tile.abs().max() / 448
            out[i:i + rows, j:j + cols] = E4M3.quantize(tile / scale) * scale
    return out


def test_every_128x128_tile_gets_its_own_scale_including_partial_edge_tiles():
    torch.manual_seed(0)
    w = torch.randn(300, 260) * torch.logspace(-2, 2, 260)
    qt = qz.quantize(w, qz.Fp8e4m3OCPWeightPerTensorFloat, granularity="tile")
    assert type(qt) is qz.FloatQuantTensor and qt.value.shape == w.shape
    assert torch.equal(qt.value, _explicit_tiles(w, 128, 128))
    assert torch.equal(qt.scale_[0, 0], w[:128, :128].abs().max() / 448)
    assert torch.equal(qt.scale_[299, 259], w[256:, 256:].abs().max() / 448)


def test_tile_shape_override_and_integer_formats():
    torch.manual_seed(1)
    w = torch.randn(64, 96)
    qt = qz.quantize(w, qz.Int8WeightPerTensorFloat, granularity="tile", tile_shape=(32, 48))
    assert type(qt) is qz.IntQuantTensor
    for i, j in ((0, 0), (32, 48), (40, 10)):
        ti, tj = i // 32 * 32, j // 48 * 48
        assert qt.scale_[i, j] == w[ti:ti + 32, tj:tj + 48].abs().max() / 127
    assert qt.int().abs().max() <= 127


def test_tiles_of_a_conv_weight_include_the_kernel_positions():
    w = torch.randn(8, 6, 3, 3)
    g = Granularity("tile", tile_shape=(4, 3))
    assert g.layout(w).shape == (2, 4, 2, 3, 3, 3)
    assert g.amax(w).shape == (2, 1, 2, 1, 1, 1)
    assert g.amax(w)[1, 0, 0, 0, 0, 0] == w[4:8, 0:3].abs().max()
    assert torch.equal(g.from_layout(g.layout(w), w.shape), w)


def test_tile_layers_quantize_their_weight_by_tiles():
    layer = qlayers.QuantLinear(200, 150, weight_quant=qz.Fp8e4m3OCPWeightPerTensorFloat,
                                weight_granularity="tile", weight_tile_shape=(64, 64))
    assert torch.equal(layer.quant_weight().value, _explicit_tiles(layer.weight.detach(), 64, 64))


@pytest.mark.parametrize("shape", ["bad", (128, 0), (1.5, 2), (128,)])
def test_bad_tile_shapes_are_refused_clearly(shape):
    with pytest.raises(ValueError, match="tile_shape"):
        Granularity("tile", tile_shape=shape)


def test_tiles_need_two_dimensions():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        Granularity("tile", tile_shape=(128, 128)).layout(torch.zeros(4))
