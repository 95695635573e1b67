"""experiments/lm_heads.py end to end on tiny GPTs with no data files: the vocabulary-row ratio
at two vocabularies (bytes and a BPE), its slope, reuse of finished rows, a failing vocabulary
that does not end the run, and config errors before any work."""

import os

import pytest
import tiny

from experiments import common, lm_heads

pytest.importorskip("tokenizers", reason="the `text` extra (tokenizers) is not installed")


def test_outputs_slopes_and_reuse(tmp_path):
    c = tiny.lm_heads(tmp_path)
    results = lm_heads.run(c, str(tmp_path / "run"))
    for name in lm_heads.OUTPUTS + ("row_256.json", "row_512.json"):
        assert os.path.getsize(tmp_path / "run" / name) > 0, name
    assert [r["vocab"] for r in results["rows"]] == [256, 512] and results["failed"] == []
    for row in results["rows"]:
        for which in ("init", "trained"):
            assert row[which]["mean"] > 0 and len(row[which]["per_token"]) == 2
            assert row[which]["num_matvecs"] == 2 * 8  # d products per probed token
    assert results["rows"][1]["bytes_per_token"] > 1  # BPE merges bytes
    assert results["slopes"]["init"]["vocabs"] == [256, 512]
    again = lm_heads.run(c, str(tmp_path / "run"))  # rows reused from row_<V>.json
    assert again["rows"] == results["rows"]


def test_failure_is_recorded_not_fatal(tmp_path, monkeypatch):
    real = lm_heads.one_vocabulary

    def flaky(config, text, vocab):
        if vocab == 512:
            raise MemoryError("boom")
        return real(config, text, vocab)

    monkeypatch.setattr(lm_heads, "one_vocabulary", flaky)
    c = tiny.lm_heads(tmp_path)
    c.train.steps = 0
    results = lm_heads.run(c, str(tmp_path / "run"))
    assert [r["vocab"] for r in results["rows"]] == [256]
    assert results["failed"] == [{"vocab": 512, "error": "MemoryError('boom')"}]
    assert results["slopes"]["init"] is None  # one vocabulary: no slope


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("model.vocabs", (256, 300), "256 \\(bytes\\) or 512"),
        ("model.vocabs", (512,), "at least two distinct sizes"),
        ("hessian.chunk_size", 48, "a divisor of the tokens"),
    ],
)
def test_config_errors(tmp_path, field, value, match):
    c = tiny.lm_heads(tmp_path)
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(common.ConfigError, match=match):
        lm_heads.run(c, str(tmp_path / "run"))
