"""Tests for hessjax.data.text: reading corpora, byte splits, windows and token-batch checks."""

import gzip

import numpy as np
import pytest

from hessjax.data import check_token_batch, default_data_dir, load_text, read_text, windows

# ---------------------------------------------------------------------------------------------
# read_text


def test_read_text_file_and_gz(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\nworld", encoding="utf-8")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("zipped é".encode()))
    assert read_text(tmp_path / "a.txt") == "héllo\nworld"
    assert read_text(str(tmp_path / "b.txt.gz")) == "zipped é"


def test_read_text_folder_sorted_joined_filtered(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.md").write_text("A")
    (tmp_path / "sub" / "c.py").write_text("C")
    (tmp_path / "e.rst.gz").write_bytes(gzip.compress(b"E"))
    (tmp_path / "z.csv").write_text("Z")  # not a TEXT_SUFFIXES file
    assert read_text(tmp_path) == "A\nB\nE\nC"


def test_read_text_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt is not UTF-8"):
        read_text(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "data.csv").write_text("not text")
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path / "none")


def test_read_text_folder_of_empty_files(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path)


# ---------------------------------------------------------------------------------------------
# load_text


def test_load_text_split_files(tmp_path):
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(b"training bytes"))
    (tmp_path / "valid.txt").write_text("valid")
    (tmp_path / "other.txt").write_text("ignored")
    data = load_text(str(tmp_path))
    assert bytes(data.train) == b"training bytes" and bytes(data.valid) == b"valid"
    assert data.train.dtype == data.valid.dtype == np.uint8
    assert data.vocab_size == 256 and data.name == tmp_path.name
    assert bytes(load_text(tmp_path, max_bytes=5).train) == b"train"


def test_load_text_contiguous_split(tmp_path):
    (tmp_path / "corpus.txt").write_text("0123456789" * 10)
    data = load_text(tmp_path, valid_fraction=0.2)
    assert bytes(data.train) == b"0123456789" * 8 and bytes(data.valid) == b"0123456789" * 2
    data = load_text(tmp_path / "corpus.txt", valid_fraction=0.2, max_bytes=7)
    assert bytes(data.train) == b"0123456" and len(data.valid) == 20
    with pytest.raises(ValueError, match="valid_fraction"):
        load_text(tmp_path, valid_fraction=1.0)


def test_load_text_stdlib():
    data = load_text("stdlib")
    assert data.vocab_size == 256 and data.name.startswith("stdlib-python3")
    assert data.train.dtype == data.valid.dtype == np.uint8
    assert len(data.valid) > 0 and len(data.train) > 10 * len(data.valid)  # valid_fraction 0.05


def test_load_text_shared():
    if default_data_dir("python_stdlib") is None:
        pytest.skip("shared corpus ../shared/data/python_stdlib is absent")
    data = load_text("shared")
    assert data.name == "python_stdlib" and data.vocab_size == 256
    assert (len(data.train), len(data.valid)) == (11_050_142, 796_533)
    assert bytes(data.train[:8]) == b"# file: " and bytes(data.valid[:8]) == b"# file: "


# ---------------------------------------------------------------------------------------------
# windows


def test_windows_shapes_shift_and_slices():
    tokens = np.arange(256, dtype=np.uint8)
    inputs, targets = windows(tokens, num=50, context=16, seed=0)
    assert inputs.shape == targets.shape == (50, 16)
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    for x, y in zip(inputs, targets, strict=True):
        start = int(x[0])
        np.testing.assert_array_equal(x, tokens[start : start + 16])
        np.testing.assert_array_equal(y, tokens[start + 1 : start + 17])
    # exactly context + 1 tokens: every window is the whole sequence
    inputs, targets = windows(tokens[:9], num=3, context=8, seed=1)
    np.testing.assert_array_equal(inputs, np.tile(np.arange(8), (3, 1)))
    np.testing.assert_array_equal(targets, np.tile(np.arange(1, 9), (3, 1)))


def test_windows_deterministic_per_seed():
    tokens = np.random.default_rng(0).integers(0, 256, size=1000).astype(np.uint8)
    a, b, c = (windows(tokens, 20, 32, seed=s)[0] for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "tokens, num, context, match",
    [
        (np.zeros(10), 2, 10, "need at least 11 tokens, got 10"),
        (np.zeros(10), -1, 4, "num must be a positive integer"),
        (np.zeros(10), 0, 4, "num must be a positive integer"),
        (np.zeros(10), 2, 0, "context must be a positive integer"),
        (np.zeros((2, 10)), 2, 4, "must be a 1-D array"),
    ],
)
def test_windows_errors(tokens, num, context, match):
    with pytest.raises(ValueError, match=match):
        windows(tokens, num, context, seed=0)


# ---------------------------------------------------------------------------------------------
# check_token_batch

GOOD = np.arange(16, dtype=np.int32).reshape(2, 8)


def test_check_token_batch_accepts_good_batches():
    check_token_batch((GOOD, GOOD + 240), vocab_size=256, context=8)
    check_token_batch((GOOD, (GOOD, np.eye(2, 8))), vocab_size=16)


@pytest.mark.parametrize(
    "batch, context, match",
    [
        ((GOOD, GOOD + 241), None, r"targets hold .* \[0, 256\): min 241, max 256"),
        ((GOOD - 1, GOOD), None, r"inputs hold .* min -1, max 14"),
        ((GOOD.astype(np.float32), GOOD), None, "integer token ids, got dtype float32"),
        ((GOOD, GOOD), 7, "windows of 8 tokens exceed the context 7"),
        ((GOOD, (GOOD, np.zeros((2, 8)))), None, "mask selects no token"),
    ],
)
def test_check_token_batch_errors(batch, context, match):
    with pytest.raises(ValueError, match=match):
        check_token_batch(batch, vocab_size=256, context=context)
