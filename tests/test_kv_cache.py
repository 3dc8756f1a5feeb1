"""QuantizedKVCache: packed keys and values during generate().

Oracles: FP8 per token by hand (scale amax / 448 in float32, torch's native float8_e4m3fn cast);
the byte counts from the storage formulas (codes + scales per token, written out here); greedy
generation of the same model with a float cache and the FP8 quantizer applied to K and V inside
attention (the fake-quant reference), for greedy, beam search and prompt-lookup (assisted) decoding;
transformers' own ``DynamicLayer`` holding the dequantized states, for every cache operation
``generate()`` calls (reorder, select, repeat, crop, lengths); a cache built from the kept tokens
only, for crop.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qlayers  # noqa: E402
from qlayers.kv_cache import KV_FORMATS, QuantizedKVLayer, kv_quantizer  # noqa: E402
from transformers.cache_utils import DynamicLayer  # noqa: E402

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


def fake_quant_reference(llama, fmt):
    """The model with the KV format's quantizer applied to K and V inside attention, float DynamicCache."""
    return qlayers.quantize_model(llama, {"attention": {"k": KV_FORMATS[fmt], "v": KV_FORMATS[fmt]}})


@pytest.mark.parametrize("fmt", ["fp8", "int4", "mxfp8"])
def test_beam_search_with_a_quantized_cache_matches_the_fake_quant_reference_token_for_token(llama, fmt):
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    beams = dict(
        attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3, num_return_sequences=2,
        do_sample=False, output_scores=True, return_dict_in_generate=True,
    )
    with torch.no_grad():
        reference = fake_quant_reference(llama, fmt).generate(ids, **beams)
        cache = qlayers.QuantizedKVCache(llama.config, fmt)
        got = llama.generate(ids, cache=cache, **beams)
        float_run = llama.generate(ids, **beams)
    assert got.sequences.tolist() == reference.sequences.tolist()
    torch.testing.assert_close(got.sequences_scores, reference.sequences_scores, rtol=1e-5, atol=1e-5)
    assert (got.sequences_scores - float_run.sequences_scores).abs().max() > 1e-4  # not the float cache
    switched = got.beam_indices[:, 1:8] != got.beam_indices[:, :7]
    assert bool(switched.any())  # a beam changed parents: the cache was reordered by non-trivial indices
    assert cache.layers[0].batch_rows == 2 * 3 and cache.get_seq_length() == 6 + 8 - 1


def test_prompt_lookup_decoding_crops_the_fp8_cache_and_matches_the_fake_quant_reference(llama, monkeypatch):
    crops = []
    crop = QuantizedKVLayer.crop
    monkeypatch.setattr(QuantizedKVLayer, "crop", lambda layer, n: (crops.append(n), crop(layer, n))[1])
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    greedy = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        first = llama.generate(prompt, cache=qlayers.QuantizedKVCache(llama.config, "fp8"), **greedy)
        ids = torch.cat([prompt, first.sequences[:, 6:12], prompt], 1)  # repeated n-grams: drafts to verify
        reference = fake_quant_reference(llama, "fp8").generate(ids, prompt_lookup_num_tokens=3, **greedy)
        cache = qlayers.QuantizedKVCache(llama.config, "fp8")
        got = llama.generate(ids, cache=cache, prompt_lookup_num_tokens=3, **greedy)
    assert got.sequences.tolist() == reference.sequences.tolist()
    for mine, ref in zip(got.scores, reference.scores):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    assert min(crops) < 0 and 0 in crops  # drafts were rejected (cropped) and accepted
    assert cache.get_seq_length() == ids.shape[1] + 12 - 1


def test_crop_then_continue_equals_a_cache_fed_only_the_kept_tokens(llama):
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cropped = qlayers.QuantizedKVCache(llama.config, "int4")
        llama(input_ids=ids[:, :9], cache=cropped)
        cropped.crop(-4)
        assert cropped.get_seq_length() == 5 and cropped.get_mask_sizes(7, 0) == (12, 0)
        got = llama(input_ids=ids[:, 5:], cache=cropped).logits
        fresh = qlayers.QuantizedKVCache(llama.config, "int4")
        llama(input_ids=ids[:, :5], cache=fresh)
        expected = llama(input_ids=ids[:, 5:], cache=fresh).logits
    # the projections of 9 and of 5 tokens round a few float32 ulps apart; the layer test below is bitwise
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cropped.is_croppable and cropped.nbytes == fresh.nbytes


def filled_layers(fmt, head_dim=64, chunks=(5, 1, 2), seed=0):
    """A QuantizedKVLayer fed random chunks, and a DynamicLayer fed the same tokens as the quantized
    layer returned them (dequantized)."""
    quantizer = kv_quantizer(fmt, head_dim)
    layer, oracle = QuantizedKVLayer(quantizer, quantizer), DynamicLayer()
    g = torch.Generator().manual_seed(seed)
    for n in chunks:
        k, v = torch.randn(3, 2, n, head_dim, generator=g), torch.randn(3, 2, n, head_dim, generator=g)
        keys, values = layer.update(k, v)
        oracle.update(keys[..., -n:, :], values[..., -n:, :])
    return layer, oracle


ODD_INT4 = {"format": "int4", "granularity": "token"}  # head_dim 15: rows end mid-byte, codes are repacked


@pytest.mark.parametrize("fmt", [*KV_FORMATS, "odd_int4"])
def test_every_generate_cache_operation_equals_dynamic_layer_on_the_dequantized_states(fmt):
    spec, head_dim = (ODD_INT4, 15) if fmt == "odd_int4" else (fmt, 64)
    layer, oracle = filled_layers(spec, head_dim)
    code_dtype = layer.packed_keys[0].codes.dtype
    operations = [
        ("reorder_cache", torch.tensor([2, 2, 0])),            # beam search: arbitrary parents, repeated
        ("batch_repeat_interleave", 2),
        ("batch_select_indices", torch.tensor([True, False, True, True, False, True])),
        ("crop", -3),                                          # cuts inside the first chunk (8 -> 5 tokens)
        ("batch_select_indices", torch.tensor([3, 0, -1])),
        ("batch_repeat_interleave", torch.tensor([1, 0, 2])),
        ("crop", 0),
        ("reorder_cache", torch.tensor([1, 0, 2])),
    ]
    for name, argument in operations:
        getattr(layer, name)(argument)
        getattr(oracle, name)(argument)
        keys, values = layer.states()
        assert torch.equal(keys, oracle.keys) and torch.equal(values, oracle.values), name
        assert layer.get_seq_length() == oracle.get_seq_length()
        assert layer.get_mask_sizes(3) == oracle.get_mask_sizes(3)
    assert all(p.codes.dtype == code_dtype for p in layer.packed_keys)  # still packed, never requantized
    g = torch.Generator().manual_seed(9)
    k, v = torch.randn(3, 2, 2, head_dim, generator=g), torch.randn(3, 2, 2, head_dim, generator=g)
    keys, values = layer.update(k, v)  # continues after the operations
    assert torch.equal(keys[..., :5, :], oracle.keys) and keys.shape[-2] == 7


@pytest.mark.parametrize("fmt", ["fp8", "int4", "mxfp8"])
def test_a_cropped_layer_is_bitwise_the_layer_fed_only_the_kept_tokens(fmt):
    """Per-token and per-group scales: cropping leaves the cache as if the dropped tokens never came."""
    g = torch.Generator().manual_seed(4)
    k, v = torch.randn(2, 2, 9, 64, generator=g), torch.randn(2, 2, 9, 64, generator=g)
    quantizer = kv_quantizer(fmt, 64)
    cropped, fresh = QuantizedKVLayer(quantizer, quantizer), QuantizedKVLayer(quantizer, quantizer)
    cropped.update(k[..., :6, :], v[..., :6, :])
    cropped.update(k[..., 6:7, :], v[..., 6:7, :])
    cropped.crop(-3)  # drops the 1-token chunk and 2 tokens of the first one
    fresh.update(k[..., :4, :], v[..., :4, :])
    got, expected = cropped.update(k[..., 7:, :], v[..., 7:, :]), fresh.update(k[..., 7:, :], v[..., 7:, :])
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert cropped.nbytes == fresh.nbytes and cropped.get_seq_length() == 6
    cropped.crop(-6)  # everything: empty, and it fills again
    assert cropped.get_seq_length() == 0 and cropped.nbytes == 0
    keys, _ = cropped.update(k[..., :2, :], v[..., :2, :])
    assert keys.shape == (2, 2, 2, 64)


def test_cache_operations_with_bad_arguments_raise_clear_errors(llama):
    layer, _ = filled_layers("fp8")
    with pytest.raises(ValueError, match=r"crop.*positive value \(`2`\)"):
        layer.crop(2)
    with pytest.raises(ValueError, match=r"cannot remove 9 tokens, the cache holds 8; tokens_to_remove must be in \[-8, 0\]"):
        layer.crop(-9)
    with pytest.raises(IndexError, match=r"reorder_cache: index 3 is out of range for the batch size 3"):
        layer.reorder_cache(torch.tensor([0, 3, 1]))
    with pytest.raises(TypeError, match=r"reorder_cache: indices must be a 1-d integer tensor.*torch.float32"):
        layer.reorder_cache(torch.tensor([0.0, 1.0]))
    with pytest.raises(IndexError, match=r"batch_select_indices: a boolean mask must have shape \(3,\).*got \(2,\)"):
        layer.batch_select_indices(torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"repeats must be a positive integer; got 0"):
        layer.batch_repeat_interleave(0)
    with pytest.raises(ValueError, match=r"repeats must be non-negative integers, one per batch row \(3\)"):
        layer.batch_repeat_interleave(torch.tensor([1, 2]))
    assert layer.get_seq_length() == 8 and layer.batch_rows == 3  # nothing changed
    cache = qlayers.QuantizedKVCache(llama.config, "fp8")
    cache.crop(-2)  # not filled yet: nothing to do, as DynamicCache
    cache.reorder_cache(torch.tensor([0, 1]))
    assert cache.get_seq_length() == 0
