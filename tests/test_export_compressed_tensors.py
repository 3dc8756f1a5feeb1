"""save_packed(format="compressed-tensors"): decompressed by the real compressed-tensors package
(its registered decompressors, driven by the written config.json), the weights equal qzoo's bit for
bit; the conventions (NVFP4 global scale as the multiplier, FP4 low nibble first, unsigned ints as
signed with a shifted zero point) are checked on the raw tensors; formats the layout cannot express
raise naming the format, the target and the native alternative."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from torch import nn

import qlayers
import quantizers as qz

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationScheme  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

IN = 256


def model_with(weight_quant, dtype=torch.float32, **overrides) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        qlayers.QuantLinear(IN, 64, weight_quant=weight_quant, dtype=dtype, **overrides),
        nn.GELU(),
        qlayers.QuantLinear(64, 32, bias=False, weight_quant=weight_quant, dtype=dtype, **overrides),
        nn.Linear(32, 4, dtype=dtype),
    )
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-3, 1, IN, dtype=dtype))
    return model.eval()


def decompress(directory):
    """Every quantized layer's weight through compressed-tensors' own decompressor."""
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    tensors = load_file(directory / "model.safetensors")
    out = {}
    for group in config["config_groups"].values():
        scheme = QuantizationScheme.model_validate(group)
        compressor = BaseCompressor.get_value_from_registry(group["format"])
        for target in group["targets"]:
            name = re.sub(r"\\(.)", r"\1", target[len("re:^"):-1])
            local = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            out[name] = compressor.decompress(local, scheme)["weight"]
    return config, tensors, out


CASES = {  # weight quantizer (+ overrides), model dtype, compressed-tensors format
    "int8_channel": (qz.Int8WeightPerChannelFloat, {}, torch.float32, "pack-quantized"),
    "int8_tensor": (qz.Int8WeightPerTensorFloat, {}, torch.float32, "pack-quantized"),
    "int4_group": (qz.Int4WeightPerGroupFloat, {"weight_group_size": 32}, torch.float32, "pack-quantized"),
    "uint4_group_zero_point": (qz.Uint4WeightPerGroupFloat, {"weight_group_size": 32}, torch.float32, "pack-quantized"),
    "int2_group": (qz.Int2WeightPerGroupFloat, {"weight_group_size": 16}, torch.float32, "pack-quantized"),
    "fp8_tensor": (qz.Fp8e4m3OCPWeightPerTensorFloat, {}, torch.float32, "float-quantized"),
    "fp8_channel": (qz.Fp8e4m3OCPWeightPerChannelFloat, {}, torch.float32, "float-quantized"),
    "mxfp4": (qz.MXFloat4e2m1Weight, {}, torch.bfloat16, "mxfp4-pack-quantized"),
    "mxfp8": (qz.MXFloat8e4m3Weight, {}, torch.bfloat16, "mxfp8-quantized"),
    "nvfp4": (qz.NVFloat4e2m1Weight, {}, torch.bfloat16, "nvfp4-pack-quantized"),
}


@pytest.mark.parametrize("case", CASES)
def test_real_decompressor_gives_qzoos_weights_bit_for_bit(case, tmp_path):
    quant, overrides, dtype, fmt = CASES[case]
    model = model_with(quant, dtype, **overrides)
    report = qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    config, tensors, weights = decompress(tmp_path)
    assert config["format"] == fmt and config["quant_method"] == "compressed-tensors"
    assert config["ignore"] == ["3"] and set(weights) == {"0", "2"}
    for name, weight in weights.items():
        expected = model.get_submodule(name).quant_weight().value.detach()
        if fmt == "pack-quantized":
            expected = expected + 0.0  # integer codes have no -0: q = -0.0 is stored (and packed) as 0
        assert weight.dtype == expected.dtype and weight.shape == expected.shape
        assert torch.equal(weight.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           expected.view(torch.int16 if dtype != torch.float32 else torch.int32)), name
    assert "3.weight" in tensors and "0.bias" in tensors
    assert ("0.weight" in tensors) == (fmt in ("float-quantized", "mxfp8-quantized"))  # else weight_packed
    assert not any("quant" in k.split(".")[-2] for k in tensors if k.count(".") > 1)
    assert report.ratio < 0.6


def test_mx_weights_of_a_float32_model_decompress_to_the_same_values():
    model = model_with(qz.MXFloat4e2m1Weight)
    import tempfile, pathlib

    with tempfile.TemporaryDirectory() as d:
        qlayers.save_packed(model, d, format="compressed-tensors")
        _, _, weights = decompress(pathlib.Path(d))
    for name, weight in weights.items():  # compressed-tensors decompresses FP4 to bfloat16: exact here
        assert torch.equal(weight.float(), model.get_submodule(name).quant_weight().value)


def test_nvfp4_global_scale_is_stored_as_compressed_tensors_multiplier(tmp_path):
    model = model_with(qz.NVFloat4e2m1Weight)
    qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    tensors = load_file(tmp_path / "model.safetensors")
    qt = model[0].quant_weight()
    amax = model[0].weight.detach().abs().max()
    # compressed-tensors' generate_gparam: global_scale = 448 * 6 / amax, and dequantize divides by it
    assert tensors["0.weight_global_scale"].dtype == torch.float32 and tensors["0.weight_global_scale"].shape == (1,)
    assert torch.allclose(tensors["0.weight_global_scale"], 448 * 6 / amax, rtol=2e-7)
    assert torch.equal(tensors["0.weight_global_scale"], 1 / qt.outer_scale_.reshape(1))
    assert tensors["0.weight_scale"].dtype == torch.float8_e4m3fn


def test_fp4_low_nibble_first(tmp_path):
    layer = nn.Sequential(qlayers.QuantLinear(32, 1, bias=False, weight_quant=qz.MXFloat4e2m1Weight))
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[0.5, 6.0] + [0.0] * 30]))  # codes 1 and 7
    qlayers.save_packed(layer, tmp_path, format="compressed-tensors")
    packed = load_file(tmp_path / "model.safetensors")["0.weight_packed"]
    assert packed.dtype == torch.uint8 and packed[0, 0].item() == 0x71  # element 0 in the low nibble


def test_unsigned_int4_is_stored_signed_with_a_shifted_zero_point(tmp_path):
    model = model_with(qz.Uint4WeightPerGroupFloat, weight_group_size=32)
    qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    args = config["config_groups"]["group_0"]["weights"]
    assert args == {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "dynamic": False, "group_size": 32}
    assert load_file(tmp_path / "model.safetensors")["0.weight_zero_point"].dtype == torch.int32


@pytest.mark.parametrize("quant, name", [
    (qz.HiFloat8WeightPerTensorFloat, "hifloat8"),
    (qz.MXFloat6e2m3Weight, "float6_e2m3fn"),
    (qz.Fp8e5m2OCPWeightPerTensorFloat, "float8_e5m2"),
    (qz.Fp8e4m3FNUZWeightPerChannelFloat, "float8_e4m3fnuz"),
    (qz.MXInt8Weight, "int8"),
])
def test_formats_the_layout_cannot_express_raise_naming_format_target_and_alternative(quant, name, tmp_path):
    with pytest.raises(ValueError, match=rf"layer '0': {name}.*no compressed-tensors layout.*save_packed\(model, directory\)"):
        qlayers.save_packed(model_with(quant), tmp_path / "x", format="compressed-tensors")
    assert not (tmp_path / "x").exists()


def test_conv_and_activation_quantizers_raise_naming_the_layer(tmp_path):
    conv = nn.Sequential(qlayers.QuantConv2d(3, 4, 3, weight_quant=qz.Int8WeightPerChannelFloat))
    with pytest.raises(ValueError, match=r"layer '0': a QuantConv2d weight has no compressed-tensors layout"):
        qlayers.save_packed(conv, tmp_path, format="compressed-tensors")
    act = nn.Sequential(qlayers.QuantLinear(8, 8, input_quant=qz.Int8ActPerTokenFloat))
    with pytest.raises(ValueError, match=r"layer '0': dynamic int8_narrow input activations \(token\) \(compressed-tensors' dynamic integer scale is amax / 127.5\) has no compressed-tensors layout"):
        qlayers.save_packed(act, tmp_path, format="compressed-tensors")
    out = nn.Sequential(qlayers.QuantLinear(8, 8, output_quant=qz.Int8ActPerTensorFloat))
    with pytest.raises(ValueError, match=r"layer '0': a QuantLinear quantizing its output"):
        qlayers.save_packed(out, tmp_path, format="compressed-tensors")
    assert not tmp_path.joinpath("model.safetensors").exists()


def test_hf_config_is_kept_next_to_the_quantization_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = qlayers.quantize_model(transformers.BertModel(config), {"weights": "MXFloat4e2m1Weight", "functional_adds": False})
    qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "bert" and written["hidden_size"] == 32
    assert written["quantization_config"]["format"] == "mxfp4-pack-quantized"
    _, _, weights = decompress(tmp_path)
    for name, weight in weights.items():
        assert torch.equal(weight.float(), model.get_submodule(name).quant_weight().value)


def test_an_input_multiplier_raises_instead_of_being_dropped(tmp_path):
    model = model_with(qz.MXFloat4e2m1Weight)
    model[0].set_input_multiplier(torch.linspace(0.5, 2.0, IN))
    with pytest.raises(ValueError, match=r"layer '0': a QuantLinear with an input_multiplier"):
        qlayers.save_packed(model, tmp_path, format="compressed-tensors")


# ---- input activations: compressed-tensors' own quantization of the input is qzoo's --------------------
INPUT_CASES = {  # weight quantizer, input quantizer (class or spec), static (calibrated)
    "fp8_static_tensor": (qz.Fp8e4m3OCPWeightPerTensorFloat, qz.Fp8e4m3OCPActPerTensorFloat, True),
    "fp8_dynamic_token": (qz.Fp8e4m3OCPWeightPerChannelFloat, qz.Fp8e4m3OCPActPerTokenFloat, False),
    "fp8_dynamic_tensor": (qz.Fp8e4m3OCPWeightPerChannelFloat, {"format": "float8_e4m3fn", "dynamic": True}, False),
    "int8_static": (qz.Int8WeightPerChannelFloat, qz.Int8ActPerTensorFloat, True),
    "uint8_static": (qz.Int8WeightPerChannelFloat, qz.Uint8ActPerTensorFloat, True),
    "int8_static_asymmetric": (qz.Int8WeightPerChannelFloat, {"format": "uint8", "symmetric": False}, True),
}


def input_model(weight_quant, input_quant, static):
    if isinstance(input_quant, dict):
        input_quant = qlayers.model.spec_to_quantizer(input_quant, role="input")
    torch.manual_seed(3)
    layer = qlayers.QuantLinear(IN, 64, weight_quant=weight_quant, input_quant=input_quant)
    model = nn.Sequential(layer, nn.GELU(), nn.Linear(64, 4))
    if static:
        model.train()
        with torch.no_grad():
            for seed in range(3):
                model(torch.randn(2, 5, IN, generator=torch.Generator().manual_seed(seed)) + 0.5)
    return model.eval()


def ct_quantize_input(group, tensors, name, x):
    """compressed-tensors' fake quantization of a layer input (its forward_quantize, without a module)."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    args = QuantizationScheme.model_validate(group).input_activations
    if args.dynamic:
        scale, zero_point = compute_dynamic_scales_and_zp(value=x, args=args, module=nn.Module())
    else:
        scale, zero_point = tensors[f"{name}.input_scale"], tensors.get(f"{name}.input_zero_point")
    return fake_quantize(x=x, scale=scale, zero_point=zero_point, args=args)


@pytest.mark.parametrize("case", INPUT_CASES)
def test_compressed_tensors_quantizes_exported_inputs_as_qzoo_does(case, tmp_path):
    model = input_model(*INPUT_CASES[case])
    qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    config, tensors, weights = decompress(tmp_path)
    (group,) = config["config_groups"].values()
    assert group["input_activations"]["dynamic"] is not INPUT_CASES[case][2]
    assert ("0.input_scale" in tensors) is INPUT_CASES[case][2]
    x = torch.randn(3, 7, IN, generator=torch.Generator().manual_seed(11)) * 2.0 + 0.5  # past the calibrated range too
    x[0, 0, :4] = 0.0
    expected = model[0].input_quant(x).value
    assert torch.equal(ct_quantize_input(group, tensors, "0", x), expected)
    assert torch.equal(weights["0"].float(), model[0].quant_weight().value)


def test_input_scale_of_a_static_fp8_input_is_qzoos_and_the_config_parses(tmp_path):
    from compressed_tensors.quantization import QuantizationConfig

    model = input_model(*INPUT_CASES["fp8_static_tensor"])
    qlayers.save_packed(model, tmp_path, format="compressed-tensors")
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(config)
    assert parsed.config_groups["group_0"].input_activations.strategy == "tensor"
    scale = load_file(tmp_path / "model.safetensors")["0.input_scale"]
    assert scale.shape == (1,) and torch.equal(scale, model[0].input_quant(torch.zeros(1, IN)).scale_.reshape(1))


def test_inputs_compressed_tensors_would_quantize_differently_raise(tmp_path):
    narrow = input_model(qz.Int8WeightPerChannelFloat, {"format": "int8", "narrow": True}, True)
    with pytest.raises(ValueError, match=r"layer '0': static int8_narrow input activations \(tensor\) over \[-127, 127\] \(compressed-tensors clamps to the full range \[-128, 127\]\)"):
        qlayers.save_packed(narrow, tmp_path / "a", format="compressed-tensors")
    mx = input_model(qz.MXFloat8e4m3Weight, qz.MXFloat8e4m3Act, False)
    with pytest.raises(ValueError, match=r"layer '0': dynamic float8_e4m3fn input activations \(group\) has no compressed-tensors layout"):
        qlayers.save_packed(mx, tmp_path / "b", format="compressed-tensors")
    uncalibrated = nn.Sequential(qlayers.QuantLinear(8, 8, weight_quant=qz.Int8WeightPerChannelFloat, input_quant=qz.Int8ActPerTensorFloat)).eval()
    with pytest.raises(ValueError, match=r"layer '0' input_quant: static quantizer was never calibrated"):
        qlayers.save_packed(uncalibrated, tmp_path / "c", format="compressed-tensors")
    assert not any((tmp_path / d).exists() for d in "abc")
