"""``qlayers.rotate``: QuaRot-style Hadamard rotations fused into Llama/Qwen2 causal LMs.

Oracles: the float model itself (the rotation must not change its logits), and for the
quantized model the float model's logits (the rotation must shrink the 4-bit error on a model whose
residual stream has outlier channels, as real LLMs do).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qlayers  # noqa: E402
from qlayers.transforms import HadamardInput  # noqa: E402

FAMILIES = {
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig, {"attention_bias": True, "mlp_bias": True}),
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, {}),  # q/k/v biases
    "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig, {}),
    "qwen3": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config, {"head_dim": 24}),  # per-head q/k RMSNorms
}


def build(family: str, *, tied: bool = False, hidden: int = 96, intermediate: int = 160,
          dtype: torch.dtype = torch.float32, seed: int = 0, perturb: bool = True) -> torch.nn.Module:
    """A tiny random model; ``perturb``: with biases, and norms and biases not the init's 1 and 0."""
    cls, config_cls, extra = FAMILIES[family]
    extra = extra if perturb else {}
    torch.manual_seed(seed)
    config = config_cls(vocab_size=128, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        tie_word_embeddings=tied, **extra)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters() if perturb else ():
            if "norm" in name:
                p.uniform_(0.5, 2.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.to(dtype)


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rotated_float_model_computes_the_same_logits(family, tied):
    model = build(family, tied=tied)
    reference = logits(model)
    rotated = qlayers.rotate(model, seed=1)
    assert rel_max(logits(rotated), reference) < 1e-4
    assert torch.equal(logits(model), reference)  # inplace=False: the original is untouched
    layer = rotated.model.layers[0]
    assert type(layer.mlp.down_proj) is HadamardInput and type(layer.mlp.down_proj.module) is torch.nn.Linear
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in
               (layer.input_layernorm, layer.post_attention_layernorm, rotated.model.norm))
    assert rotated.lm_head.weight is not rotated.model.embed_tokens.weight
    assert rotated.config.tie_word_embeddings is False


def outlier_llama(factor: float = 30.0) -> torch.nn.Module:
    """Tiny Llama whose residual stream carries 4 outlier channels (one per 32-wide block)."""
    model = build("llama", hidden=128, intermediate=256, perturb=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, [3, 40, 70, 100]] *= factor
    return model


def channel_absmax(model, module) -> torch.Tensor:
    """Per-channel max |x| of ``module``'s input over a batch."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().abs().amax((0, 1))))
    logits(model)
    handle.remove()
    return seen[0]


def peak_to_mean(x: torch.Tensor) -> float:
    return float(x.max() / x.mean())


@pytest.mark.parametrize("online", [False, True])
def test_rotation_spreads_outlier_channels_of_linear_inputs(online):
    model = outlier_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[[7, 200]] *= 30.0  # outliers at down_proj's input
    before_q = peak_to_mean(channel_absmax(model, model.model.layers[0].self_attn.q_proj))
    before_down = peak_to_mean(channel_absmax(model, model.model.layers[0].mlp.down_proj))
    rotated = qlayers.rotate(model, online_hadamard=online, inplace=True)
    assert rotated is model
    layer = model.model.layers[0]
    down = layer.mlp.down_proj.module if online else layer.mlp.down_proj
    assert (type(layer.mlp.down_proj) is HadamardInput) is online
    after_q = peak_to_mean(channel_absmax(model, layer.self_attn.q_proj))
    after_down = peak_to_mean(channel_absmax(model, down))
    assert before_q > 8 and after_q < 2.5, (before_q, after_q)
    assert before_down > 8 and (after_down < 2.5) is online, (before_down, after_down)


def test_rotated_bfloat16_model_stays_within_bf16_rounding():
    """bf16: the fused weights are rounded once from float64; logits move by a few bf16 steps."""
    model = build("qwen2")
    reference = logits(model)
    rotated = qlayers.rotate(model.to(torch.bfloat16))
    plain = logits(model)  # the same model just cast to bf16: the error any bf16 copy has
    err = rel_max(logits(rotated), reference)
    assert rotated.model.embed_tokens.weight.dtype == torch.bfloat16
    assert err < 2e-2 and err < 4 * rel_max(plain, reference)


def test_same_seed_same_rotation_and_different_seed_different():
    model = build("llama")
    a, b, c = (qlayers.rotate(model, seed=s).model.embed_tokens.weight for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


W4A4 = {
    "int4": {"weights": {"format": "int4", "granularity": "channel"}, "inputs": {"format": "int4", "granularity": "token"}},
    "mxfp4": {"weights": {"format": "mxfp4"}, "inputs": {"format": "mxfp4"}},
}


@pytest.mark.parametrize("fmt, ratio", [("int4", 0.7), ("mxfp4", 0.85)])
def test_rotation_lowers_w4a4_quantization_error_of_a_model_with_outliers(fmt, ratio):
    model = outlier_llama()
    reference = logits(model)
    config = {**W4A4[fmt], "skip_layers": ["embed_tokens"], "functional_adds": False}

    def error(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qlayers.quantize_model(m, config).eval()
        out = logits(q)
        return float((out - reference).norm() / reference.norm()), q

    plain, _ = error(model)
    rotated, q = error(qlayers.rotate(model))
    assert type(q.model.layers[0].mlp.down_proj.module) is qlayers.QuantLinear
    assert rotated < ratio * plain, (fmt, plain, rotated)


def bare_and_other_models():
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=32, n_embd=32, n_layer=1, n_head=2))
    return {"LlamaModel": transformers.LlamaModel(config), "GPT2LMHeadModel": gpt2}


@pytest.mark.parametrize("name", ["LlamaModel", "GPT2LMHeadModel"])
def test_unsupported_architecture_raises_naming_the_class_and_what_is_supported(name):
    model = bare_and_other_models()[name]
    with pytest.raises(ValueError, match=rf"rotate: {name} is not supported .*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        qlayers.rotate(model, inplace=True)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_foreign_module_deep_inside_raises_before_any_weight_changes():
    model = build("llama")
    model.model.layers[1].mlp.down_proj = torch.nn.Sequential(model.model.layers[1].mlp.down_proj)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"expected Linear at 'model.layers.1.mlp.down_proj', found Sequential"):
        qlayers.rotate(model, inplace=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantized_or_already_rotated_models_raise():
    model = build("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = qlayers.quantize_model(model, {"weights": {"format": "int8"}, "targets": ["Linear", "Embedding"]})
    with pytest.raises(ValueError, match="is quantized .*QuantEmbedding at 'model.embed_tokens'.*rotate the float model once"):
        qlayers.rotate(quantized)
    rotated = qlayers.rotate(model)
    with pytest.raises(ValueError, match="already rotated .*HadamardInput at 'model.layers.0.mlp.down_proj'"):
        qlayers.rotate(copy.deepcopy(rotated), inplace=True)
    with pytest.raises(TypeError, match="rotate expects an nn.Module, got dict"):
        qlayers.rotate({})


def test_gptq_after_rotation_lowers_the_weight_error_further():
    """Rotate, quantize W4 weights (INT4 per channel), then GPTQ on calibration batches: the
    layer-by-layer runner reaches ``down_proj`` inside its ``HadamardInput`` (rotated inputs)."""
    ptq = pytest.importorskip("qlayers.ptq")
    if not hasattr(ptq, "gptq"):
        pytest.skip("qlayers.ptq.gptq is not on this branch")
    model = outlier_llama()
    reference = logits(model)
    config = {"weights": {"format": "int4", "granularity": "channel"}, "skip_layers": ["embed_tokens", "lm_head"],
              "functional_adds": False}
    calibration = [{"input_ids": torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(s))} for s in range(4)]

    def error(q):
        return float((logits(q) - reference).norm() / reference.norm())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = qlayers.quantize_model(model, config).eval()
        rotated = qlayers.quantize_model(qlayers.rotate(model), config).eval()
        rtn = error(rotated)
        report = ptq.apply(rotated, calibration, algorithms=["gptq"], progress=False)
    assert "model.layers.0.mlp.down_proj.module" in str(report)
    assert error(rotated) < 0.8 * rtn and error(rotated) < error(plain), (error(plain), rtn, error(rotated))
