"""Config validation up front: every section resolves to a quantizer class; errors name the path."""
import json

import pytest

import quantizers as qz
from qlayers.model import QuantConfig, load_config, validate_config
from quantizers import resolve_attributes


def test_sections_accept_class_name_quantizer_form_spec_and_coreai():
    cfg = validate_config({
        "weights": qz.Int8WeightPerChannelFloat,
        "inputs": "Int8ActPerTensorFloat",
        "outputs": {"quantizer": "Int8ActPerTensorFloat", "bit_width": 4},
        "bias": {"format": "int32"},
        "activations": {"dtype": "int8", "qscheme": "symmetric"},
    })
    assert cfg.sections["weights"] is qz.Int8WeightPerChannelFloat
    assert cfg.sections["inputs"] is qz.Int8ActPerTensorFloat
    assert issubclass(cfg.sections["outputs"], qz.Int8ActPerTensorFloat) and cfg.sections["outputs"].bit_width == 4
    assert resolve_attributes(cfg.sections["bias"]) == resolve_attributes(qz.Int32Bias)
    assert cfg.sections["activations"].observer == "ema_minmax"


def test_missing_sections_mean_not_quantized():
    cfg = validate_config({"weights": {"format": "int8"}})
    assert cfg.sections["inputs"] is None and cfg.sections["outputs"] is None
    assert not cfg.quantizes_activations


def test_per_layer_overrides_replace_or_merge_in_order():
    cfg = validate_config({
        "weights": {"format": "int4", "granularity": "group", "group_size": 32},
        "layers": {
            "encoder.*.fc1": {"weights": {"group_size": 64}},        # merged into the global spec
            "re:encoder\\.\\d+\\.fc2": {"weights": {"format": "int8"}},  # replaces it
            "encoder.1.*": {"weights": None},                         # later rules win
        },
    })
    assert cfg.for_layer("encoder.0.fc1")["weights"].group_size == 64
    assert cfg.for_layer("encoder.0.fc1")["weights"].bit_width == 4
    assert cfg.for_layer("encoder.0.fc2")["weights"].granularity == "tensor"
    assert cfg.for_layer("encoder.1.fc1")["weights"] is None
    assert cfg.for_layer("decoder.fc1")["weights"].group_size == 32


def test_skip_layers_match_substrings_and_globs():
    cfg = validate_config({"weights": {"format": "int8"}, "skip_layers": ["lm_head", "blocks.*.attn"]})
    assert cfg.for_layer("model.lm_head") is None
    assert cfg.for_layer("blocks.3.attn") is None
    assert cfg.for_layer("blocks.3.mlp") is not None


def test_load_config_reads_yaml_and_json(tmp_path):
    data = {"weights": {"format": "mxfp4"}, "inputs": {"format": "mxfp8"}, "skip_layers": ["head"]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    yaml = pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    for name in ("c.json", "c.yaml"):
        cfg = load_config(tmp_path / name)
        assert isinstance(cfg, QuantConfig)
        assert resolve_attributes(cfg.sections["weights"]) == resolve_attributes(qz.MXFloat4e2m1Weight)
        assert cfg.skip_layers == ("head",)
    assert validate_config(str(tmp_path / "c.json")).skip_layers == ("head",)


def test_load_config_rejects_unknown_suffix(tmp_path):
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match="suffix"):
        load_config(tmp_path / "c.toml")


@pytest.mark.parametrize(
    "config, error, pieces",
    [
        ({"weight": {"format": "int8"}}, ValueError, ["unknown key 'weight'", "weights", "did you mean 'weights'"]),
        ({"weights": {"format": "int8", "granularity": "chanel"}}, ValueError, ["weights.granularity='chanel'", "allowed values"]),
        ({"inputs": {"quantizer": "Int8ActPerTensorFloa"}}, ValueError, ["inputs.quantizer='Int8ActPerTensorFloa'", "Int8ActPerTensorFloat"]),
        ({"inputs": {"quantizer": "Int8ActPerTensorFloat", "bitwidth": 4}}, TypeError, ["inputs:", "'bitwidth'", "bit_width"]),
        ({"weights": "Int8ActPerTensorFloat"}, ValueError, ["weights.quantizer=Int8ActPerTensorFloat", "role 'act'"]),
        ({"weights": {"quantizer": qz.Int8WeightPerTensorFloat, "bit_width": None}}, ValueError, ["weights.bit_width", "Int8WeightPerTensorFloat"]),
        ({"weights": {"group_size": 32}}, ValueError, ["weights must name what to quantize with"]),
        ({"weights": 8}, TypeError, ["weights must be None, a quantizer class"]),
        ({"weights": {"format": "int8"}, "bias": {"format": "int32"}}, ValueError, ["bias=Int32Bias", "'inputs' is not quantized"]),
        ({"skip_layers": "head"}, TypeError, ["skip_layers must be a list of strings"]),
        ({"layers": {"fc1": {"weight": None}}}, ValueError, ["unknown key \"layers['fc1'].weight\""]),
        ({"layers": {"fc1": {"weights": {"group_size": 64}}}}, ValueError, ["layers['fc1'].weights", "there is none"]),
        ({"layers": {"re:fc(": {"weights": None}}}, ValueError, ["not a valid regular expression"]),
        ({"functional_adds": "yes"}, TypeError, ["functional_adds must be True or False"]),
        ({"weights": {"quantizer": "Int8WeightPerTensorFloat", "learned_scale": 1}}, TypeError, ["weights.learned_scale"]),
        ({"inputs": {"format": "int8", "dynamic": True, "learned_scale": True}}, ValueError, ["inputs.learned_scale=True"]),
    ],
)
def test_config_errors_name_the_path_value_and_allowed_values(config, error, pieces):
    with pytest.raises(error) as info:
        validate_config(config)
    for piece in pieces:
        assert piece in str(info.value), str(info.value)


def test_validate_config_is_idempotent_on_a_quant_config():
    cfg = validate_config({"weights": "Int8WeightPerTensorFloat"})
    assert validate_config(cfg) is cfg
