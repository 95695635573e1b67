"""Byte-pair tokenisation (`hessjax.data.bpe`): trained on the training split only, lossless on
unseen text, cached on disk by corpus and size, and clear errors for vocabularies the corpus
cannot fill or sizes out of range. Uses the running interpreter's standard library (no files)
and, when present, the fixed corpus."""

import os

import numpy as np
import pytest

from hessjax import data

pytest.importorskip("tokenizers", reason="the `text` extra (tokenizers) is not installed")


@pytest.fixture(scope="module")
def small_text():
    return data.load_text("stdlib", max_bytes=300_000)


def test_train_encode_decode_and_cache(small_text, tmp_path):
    tok = data.train_bpe(small_text, 1024, cache_dir=tmp_path)
    assert tok.vocab_size == 1024 and tok.path.parent == tmp_path
    unseen = data.read_text(data.__file__)  # text that is not in the training bytes
    ids = tok.encode(unseen)
    assert ids.dtype == np.int32 and 0 <= ids.min() and ids.max() < 1024
    assert tok.decode(ids) == unseen  # byte-level: lossless, any UTF-8
    assert tok.decode(tok.encode("λ = 2/η ≈ 38/η")) == "λ = 2/η ≈ 38/η"
    assert len(ids) < 0.75 * len(unseen.encode())  # merges learned: fewer tokens than bytes
    mtime = os.path.getmtime(tok.path)
    again = data.train_bpe(small_text, 1024, cache_dir=tmp_path)  # from the cache
    assert again.path == tok.path and os.path.getmtime(again.path) == mtime
    np.testing.assert_array_equal(again.encode(unseen), ids)
    other = data.train_bpe(small_text, 512, cache_dir=tmp_path)
    assert other.path != tok.path and len(list(tmp_path.glob("bpe-*.json"))) == 2


def test_bpe_tokens_splits_and_windows(small_text, tmp_path):
    ids = data.bpe_tokens(small_text, 512, cache_dir=tmp_path)
    assert ids.vocab_size == 512 and ids.name.endswith("+bpe512")
    assert ids.train.dtype == np.int32 and ids.valid.size > 0
    tok = data.train_bpe(small_text, 512, cache_dir=tmp_path)
    valid_text = small_text.valid.tobytes().decode("utf-8", errors="replace")
    assert tok.decode(ids.valid) == valid_text
    x, y = data.windows(ids.train, 4, 16, seed=0)
    data.check_token_batch((x, y), ids.vocab_size, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_bad_input(small_text, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer in \[512, 65536\]"):
        data.train_bpe(small_text, 256, cache_dir=tmp_path)
    tiny = data.TextData(small_text.train[:2000], small_text.valid, 256, "tiny")
    with pytest.raises(ValueError, match="vocab_size 8192 is larger than this training text"):
        data.train_bpe(tiny, 8192, cache_dir=tmp_path)
    ids = data.bpe_tokens(small_text, 512, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs byte-level text"):
        data.train_bpe(ids, 1024, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="training text is empty"):
        data.train_bpe(data.TextData(small_text.train[:0], small_text.valid, 256, "e"), 512,
                       cache_dir=tmp_path)  # fmt: skip


def test_shared_corpus_large_vocabulary(tmp_path):
    """V = 32,768 on the fixed corpus: the validation split encodes with the tokenizer trained on
    the training split only and decodes back to its text."""
    if data.default_data_dir("python_stdlib") is None:
        pytest.skip("shared corpus ../shared/data/python_stdlib is absent")
    text = data.load_text("shared")
    tok = data.train_bpe(text, 32768, cache_dir=tmp_path)
    assert tok.vocab_size == 32768
    valid = text.valid.tobytes().decode("utf-8")[:20_000]
    ids = tok.encode(valid)
    assert tok.decode(ids) == valid and len(ids) < len(valid) / 3
