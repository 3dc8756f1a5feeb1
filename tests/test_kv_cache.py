"""QuantizedKVCache: packed keys and values during generate().

Oracles: FP8 per token by hand (scale amax / 448 in float32, torch's native float8_e4m3fn cast);
the byte counts from the storage formulas (codes + scales per token, written out here); greedy
generation of the same model with a float cache and the FP8 quantizer applied to K and V inside
attention (the fake-quant reference).
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qlayers  # noqa: E402
from qlayers.kv_cache import KV_FORMATS, QuantizedKVLayer, kv_quantizer  # noqa: E402

FP8_TOKEN = {"format": "float8_e4m3fn", "granularity": "token"}
HEAD_DIM, KV_HEADS, LAYERS = 64, 1, 2


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True) / 448
    return (x / s).to(torch.float8_e4m3fn).to(torch.float32) * s


def test_a_layer_stores_fp8_codes_and_returns_the_hand_quantized_states():
    quantizer = kv_quantizer("fp8", 16)
    layer = QuantizedKVLayer(quantizer, quantizer)
    g = torch.Generator().manual_seed(0)
    chunks = [(torch.randn(2, 3, n, 16, generator=g), torch.randn(2, 3, n, 16, generator=g)) for n in (5, 1, 1)]
    for k, v in chunks:
        keys, values = layer.update(k, v)
    torch.testing.assert_close(keys, fp8_per_token(torch.cat([k for k, _ in chunks], -2)), rtol=0, atol=0)
    torch.testing.assert_close(values, fp8_per_token(torch.cat([v for _, v in chunks], -2)), rtol=0, atol=0)
    assert layer.get_seq_length() == 7 and layer.packed_keys[0].codes.dtype == torch.float8_e4m3fn
    assert layer.nbytes == 2 * 2 * 3 * 7 * (16 + 4)  # K and V: one byte per element + an fp32 scale per token


def test_greedy_generation_with_an_fp8_cache_matches_the_fake_quant_reference_token_for_token(llama):
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(1))
    reference_model = qlayers.quantize_model(llama, {"attention": {"k": FP8_TOKEN, "v": FP8_TOKEN}})
    greedy = dict(max_new_tokens=10, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        reference = reference_model.generate(ids, **greedy)
        cache = qlayers.QuantizedKVCache(llama.config, "fp8")
        got = llama.generate(ids, cache=cache, **greedy)
        float_run = llama.generate(ids, **greedy)
    assert got.sequences.tolist() == reference.sequences.tolist()
    for mine, ref in zip(got.scores, reference.scores):
        # the reference computes attention with qzoo's kernel, the cache run with torch's SDPA: an ulp apart
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    assert (got.scores[-1] - float_run.scores[-1]).abs().max() > 1e-4  # and the FP8 cache is not the float one
    assert cache.get_seq_length() == 6 + 10 - 1


# bytes per token, all layers, keys and values: codes + scales of KV_HEADS x HEAD_DIM values
EXPECTED_BYTES = {
    "fp8": HEAD_DIM + 4,                    # 1 byte each + fp32 scale per token
    "int8": HEAD_DIM + 4,
    "int4": HEAD_DIM // 2 + 4 * HEAD_DIM // 32,   # two per byte + fp32 scale per group of 32
    "mxfp8": HEAD_DIM + HEAD_DIM // 32,          # + E8M0 byte per block of 32
    "hifloat8": HEAD_DIM + 4,
}


@pytest.mark.parametrize("fmt", list(KV_FORMATS))
def test_cache_memory_per_token_shrinks_by_format(llama, fmt):
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(2))
    cache = qlayers.QuantizedKVCache(llama, fmt)
    with torch.no_grad():
        llama(input_ids=ids, cache=cache)
    per_token = cache.bytes_per_token()
    if fmt == "nvfp4":  # two per byte + E4M3 per 16 + one fp32 tensor scale per chunk (8 tokens here)
        expected = HEAD_DIM // 2 + HEAD_DIM // 16 + 4 / 8
    else:
        expected = EXPECTED_BYTES[fmt]
    assert per_token == pytest.approx(2 * LAYERS * KV_HEADS * expected)
    assert per_token < 2 * LAYERS * KV_HEADS * HEAD_DIM * 4 / 3.5  # float32 cache: 4 bytes per value


def test_a_group_size_that_does_not_divide_the_head_dimension_raises_with_the_sizes(llama):
    with pytest.raises(ValueError, match=r"group_size=48, which does not divide the head dimension head_dim=64"):
        qlayers.QuantizedKVCache(llama.config, {"format": "int4", "granularity": "group", "group_size": 48})
    config = transformers.LlamaConfig(hidden_size=48, num_attention_heads=2, num_hidden_layers=1)  # head_dim 24
    with pytest.raises(ValueError, match=r"group_size=32, which does not divide the head dimension head_dim=24"):
        qlayers.QuantizedKVCache(config, "mxfp8")
    with pytest.raises(ValueError, match=r"format='fp4' is not a KV-cache format; allowed: fp8, int8"):
        qlayers.QuantizedKVCache(config, "fp4")
    with pytest.raises(ValueError, match=r"'token' or 'group' granularity"):
        qlayers.QuantizedKVCache(llama.config, {"format": "int8"})  # per-tensor static: changes as the cache grows
