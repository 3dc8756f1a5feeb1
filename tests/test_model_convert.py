"""quantize_model: module swapping, names and state_dict keys, per-layer rules, fx residual adds."""
import warnings

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz
from qlayers.model import calibrate, quantize_model
from qlayers.model.config import TARGETS
from qlayers.model.functional import traced_adds

W8 = {"format": "int8", "granularity": "channel"}
A8 = {"format": "int8", "observer": "minmax"}


class Block(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class AllLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.c1 = nn.Conv1d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv3d(8, 8, 1)
        self.t1 = nn.ConvTranspose1d(8, 8, 3, padding=1)
        self.t2 = nn.ConvTranspose2d(8, 8, 3, padding=1)
        self.t3 = nn.ConvTranspose3d(8, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2)


def test_swaps_every_supported_layer_and_keeps_names_and_parameters():
    model = AllLayers()
    q = quantize_model(model, {"weights": {"format": "int8"}, "targets": list(TARGETS)})
    expected = {
        "emb": qlayers.QuantEmbedding, "c1": qlayers.QuantConv1d, "c2": qlayers.QuantConv2d, "c3": qlayers.QuantConv3d,
        "t1": qlayers.QuantConvTranspose1d, "t2": qlayers.QuantConvTranspose2d, "t3": qlayers.QuantConvTranspose3d,
        "fc": qlayers.QuantLinear,
    }
    for name, cls in expected.items():
        assert type(getattr(q, name)) is cls
    assert type(q.attn) is nn.MultiheadAttention and type(q.attn.out_proj) is not qlayers.QuantLinear
    assert list(q.state_dict()) == list(model.state_dict())  # weight-only: no new state
    for key, value in model.state_dict().items():
        assert torch.equal(q.state_dict()[key], value)
    assert type(model.fc) is nn.Linear  # inplace=False leaves the original alone


def test_inplace_keeps_the_very_parameter_objects_and_ties():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight  # tied input/output embedding
    params = list(model.parameters())
    q = quantize_model(model, {"weights": {"format": "int8"}, "targets": ["Embedding", "Linear"]}, inplace=True)
    assert q is model
    assert q[1].weight is q[0].weight and list(q.parameters()) == params
    both = {"weights": "Int8WeightPerTensorFloat", "targets": ["Embedding", "Linear"]}
    copied = quantize_model(nn.Sequential(*[m for m in [nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)]]), both)
    with pytest.warns(UserWarning, match="already quantized"):  # model was quantized in place above
        copied_tied = quantize_model(model, both)
    assert copied_tied[1].weight is copied_tied[0].weight and copied_tied[0].weight is not model[0].weight
    assert copied[1].weight is not copied[0].weight


def test_outputs_match_hand_built_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    q = quantize_model(model, {"weights": W8, "inputs": A8}).eval()
    ref = nn.Sequential(
        qlayers.QuantLinear.from_float(model[0], weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat, input_range_method="max", input_observer="minmax"),
        nn.ReLU(),
        qlayers.QuantLinear.from_float(model[2], weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat, input_range_method="max", input_observer="minmax"),
    ).eval()
    x = torch.randn(32, 8)
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref(x), rtol=0, atol=0)  # uncalibrated: batch ranges
    # and by hand for the first layer: input scale amax/128 (full range, Brevitas's rule), weight amax/127 per row
    w = model[0].weight
    sw = w.abs().amax(1, keepdim=True) / 127
    sx = x.abs().max() / 128
    expected = torch.nn.functional.linear(torch.clamp(torch.round(x / sx), -128, 127) * sx, torch.round(w / sw) * sw, model[0].bias)
    with torch.no_grad():
        torch.testing.assert_close(q[0](x), expected, rtol=1e-6, atol=1e-6)


def test_state_dict_adds_only_observer_keys_and_a_float_checkpoint_loads_strictly():
    model = Net()
    q = quantize_model(model, {"weights": W8, "inputs": A8})
    float_keys = set(model.state_dict())
    assert float_keys <= set(q.state_dict())
    assert all(".observer." in k for k in set(q.state_dict()) - float_keys)
    fresh = quantize_model(Net(), {"weights": W8, "inputs": A8})
    fresh.load_state_dict(model.state_dict())  # strict: observers tolerate float checkpoints
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_skip_layers_and_per_layer_rules():
    q = quantize_model(Net(), {
        "weights": W8, "skip_layers": ["head"],
        "layers": {"blocks.*.fc2": {"weights": {"format": "mxfp4"}}, "stem": {"weights": None}},
    })
    assert type(q.head) is nn.Linear and type(q.stem) is nn.Linear
    assert q.blocks[0].fc1.weight_quant.fmt.name == "int8_narrow"
    assert q.blocks[1].fc2.weight_quant.fmt.name == "float4_e2m1fn"
    assert q.blocks[1].fc2.weight_quant.granularity.group_size == 32


def test_activation_section_swaps_activation_modules():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.Hardtanh())
    q = quantize_model(model, {"activations": {"format": "uint8"}})
    assert [type(m).__name__ for m in q] == ["Linear", "QuantReLU", "QuantSigmoid", "QuantTanh", "QuantHardTanh"]
    assert q[1].act_quant.fmt.name == "uint8"


def test_root_layer_itself_is_quantized():
    q = quantize_model(nn.Linear(4, 4), {"weights": "Int8WeightPerTensorFloat"})
    assert type(q) is qlayers.QuantLinear


def test_residual_adds_become_QuantEltwiseAdd_with_the_input_quantizer():
    torch.manual_seed(0)
    model = Net()
    q = quantize_model(model, {"weights": W8, "inputs": A8, "functional_adds": True})
    block = q.blocks[0]
    assert type(block) is Block and traced_adds(block) == ("eltwise_add",)  # same class, traced forward
    assert isinstance(block.eltwise_add, qlayers.QuantEltwiseAdd)
    assert block.eltwise_add.input_quant.fmt.name == "int8" and block.eltwise_add.output_quant is None
    q.eval()
    x = torch.randn(8, 16)
    with torch.no_grad():
        h = block.fc2(block.act(block.fc1(x)))
        # both operands quantized with the one shared quantizer, then added
        expected = block.eltwise_add.input_quant(x).value + block.eltwise_add.input_quant(h).value
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    assert "blocks.0.eltwise_add.input_quant.observer.high" in q.state_dict()


def test_adds_are_left_alone_for_weight_only_configs_and_when_disabled():
    q = quantize_model(Net(), {"weights": W8})
    assert type(q.blocks[0]) is Block
    q = quantize_model(Net(), {"weights": W8, "inputs": A8})  # functional_adds is False by default
    assert type(q.blocks[0]) is Block
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pattern names adds that exist, though none is quantized
        q = quantize_model(Net(), {"weights": W8, "inputs": A8, "functional_adds": True, "layers": {"*.eltwise_add": {"inputs": None}}})
    assert type(q.blocks[0]) is Block


def test_shape_arithmetic_is_not_mistaken_for_a_tensor_add():
    class Shapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            n = x.size(0) + 1
            return self.fc(x).repeat(n, 1) + x.shape[1]

    q = quantize_model(Shapes(), {"inputs": A8, "functional_adds": True})
    assert not traced_adds(q)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x) + x
        return x


def test_untraceable_model_warns_once_and_still_swaps_layers():
    with pytest.warns(UserWarning, match=r"could not trace 1 module\(s\) \(Untraceable\)") as record:
        q = quantize_model(Untraceable(), {"weights": W8, "inputs": A8, "functional_adds": True})
    assert sum("could not trace" in str(w.message) for w in record) == 1
    assert type(q) is Untraceable and type(q.fc) is qlayers.QuantLinear
    q(torch.randn(2, 4))


def test_unmatched_patterns_warn():
    with pytest.warns(UserWarning, match=r"layers\['decoder\.\*'\].*matched no module"):
        quantize_model(Net(), {"weights": W8, "layers": {"decoder.*": {"weights": None}}})


def test_bias_at_accumulator_scale_needs_quantized_inputs_per_layer():
    with pytest.raises(ValueError, match="layer 'stem'.*input is not quantized"):
        quantize_model(Net(), {"weights": W8, "inputs": A8, "bias": {"format": "int32"}, "layers": {"stem": {"inputs": None}}})


def test_quantized_model_runs_with_int32_bias_after_calibration():
    torch.manual_seed(0)
    q = quantize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), {"weights": W8, "inputs": A8, "bias": {"format": "int32"}})
    calibrate(q, [torch.randn(4, 8) for _ in range(2)], progress=False)
    out = q(torch.randn(4, 8))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_config_errors_surface_before_the_model_changes():
    model = Net()
    with pytest.raises(ValueError, match="weights.format"):
        quantize_model(model, {"weights": {"format": "int9"}}, inplace=True)
    assert type(model.stem) is nn.Linear


def test_no_warning_for_a_clean_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(Net(), {"weights": W8, "inputs": A8})


def test_whole_model_pickles_and_deep_copies():
    import copy
    import io

    q = quantize_model(Net(), {"weights": {"format": "int8", "learned_scale": True}, "inputs": A8})
    calibrate(q, [torch.randn(4, 8)], progress=False)
    buffer = io.BytesIO()
    torch.save(q, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 8)
    for other in (loaded, copy.deepcopy(q)):
        other.eval(), q.eval()
        with torch.no_grad():
            assert torch.equal(other(x), q(x))
        assert other.stem.input_quant.range_source == "frozen"
