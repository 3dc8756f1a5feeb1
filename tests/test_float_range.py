"""coreai_opt's fixed float_range: fixed ends override the statistics."""
import pytest
import torch

import quantizers as qz


def test_fixed_symmetric_range_gives_the_hand_scale_and_clips_beyond_it():
    x = torch.tensor([-5.0, -1.0, 0.3, 4.0])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, float_range=(-2.0, 2.0))
    assert qt.scale_.item() == pytest.approx(2.0 / 127)
    assert qt.value.tolist()[0] == pytest.approx(-2.0) and qt.value.tolist()[3] == pytest.approx(2.0)


def test_one_fixed_end_takes_the_other_from_the_data():
    x = torch.tensor([-0.5, 0.25, 3.0])
    qt = qz.quantize(x, qz.Int8WeightPerTensorFloat, float_range=(None, 1.0))  # max(|-0.5|, 1.0)
    assert qt.scale_.item() == pytest.approx(1.0 / 127)
    qt = qz.quantize(x, qz.Uint8ActPerTensorFloat, role="weight", symmetric=False, float_range=(-1.0, None))
    assert qt.scale_.item() == pytest.approx((3.0 + 1.0) / 255)


def test_bad_float_range_is_refused_when_built():
    with pytest.raises(qz.QuantizerConfigError, match="float_range"):
        qz.build_tensor_quantizer(qz.Int8WeightPerTensorFloat, float_range=(1.0,))
