"""Byte-pair tokenisation of a text corpus for language-model vocabularies (V = 512 to 32,768).

A byte-level BPE tokenizer (HF `tokenizers`: bytes as the base alphabet, so any UTF-8 text
encodes and decodes losslessly) is trained on the training split only, so the validation split
stays unseen by both the tokenizer and the model. Trained tokenizers are cached on disk as JSON,
keyed by a hash of the training text and the vocabulary size:

    text = load_text("shared")                   # bytes, train / valid
    tok = train_bpe(text, 8192)                  # or a cached one
    ids = bpe_tokens(text, 8192)                 # TextData of int32 ids, vocab_size 8192
    x, y = windows(ids.train, num=16, context=128, seed=0)

Needs the `text` extra (`pip install 'hessjax[text]'`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from hessjax.data.text import BYTE_VOCAB, TextData

MIN_VOCAB, MAX_VOCAB = 512, 65_536


def _tokenizers():
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("byte-pair tokenisation needs the `tokenizers` package: "
                          "pip install 'hessjax[text]'") from err  # fmt: skip
    return tokenizers


def default_cache_dir() -> Path:
    """$HESSJAX_CACHE/bpe, else ~/.cache/hessjax/bpe."""
    root = os.environ.get("HESSJAX_CACHE") or Path.home() / ".cache" / "hessjax"
    return Path(root) / "bpe"


def _decode_bytes(tokens: np.ndarray) -> str:
    return np.asarray(tokens, np.uint8).tobytes().decode("utf-8", errors="replace")


class BPETokenizer:
    """A trained byte-level BPE tokenizer: `encode(text) -> (N,) int32`, `decode(ids) -> str`,
    `vocab_size`, and `path`, the JSON file it was loaded from."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tok = _tokenizers().Tokenizer.from_file(str(self.path))
        self.vocab_size = int(self._tok.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        """(N,) int32 ids of `text`."""
        return np.asarray(self._tok.encode(text).ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).ravel()])


def _check_vocab(vocab_size: int) -> None:
    if (
        not isinstance(vocab_size, int)
        or isinstance(vocab_size, bool)
        or not (MIN_VOCAB <= vocab_size <= MAX_VOCAB)
    ):
        raise ValueError(f"vocab_size must be an integer in [{MIN_VOCAB}, {MAX_VOCAB}], got "
                         f"{vocab_size!r}")  # fmt: skip


def train_bpe(text: TextData, vocab_size: int, *, cache_dir: str | Path | None = None
              ) -> BPETokenizer:  # fmt: skip
    """A byte-level BPE tokenizer of `vocab_size` entries trained on `text.train` only (UTF-8
    bytes), loaded from the cache when the same training text and size were trained before,
    else trained and cached (written atomically). ValueError for a vocab_size outside
    [512, 65,536] or one larger than the training text can fill (the corpus has too few
    distinct pairs to merge), naming both sizes."""
    _check_vocab(vocab_size)
    train = np.asarray(text.train)
    if train.dtype != np.uint8 or text.vocab_size != BYTE_VOCAB:
        raise ValueError("train_bpe needs byte-level text (load_text(...)), got tokens of dtype "
                         f"{train.dtype} with vocab_size {text.vocab_size}")  # fmt: skip
    if train.size == 0:
        raise ValueError("the training text is empty")
    digest = hashlib.sha256(train.tobytes()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"bpe-{digest}-{vocab_size}.json"
    if path.is_file():
        return BPETokenizer(path)
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(_lines(_decode_bytes(train)), trainer=trainer)
    learned = tok.get_vocab_size()
    if learned < vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is larger than this training text can fill: "
                         f"BPE learned {learned} entries from {train.size:,} bytes; use a "
                         "larger corpus or a smaller vocabulary")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return BPETokenizer(path)


def _lines(text: str, size: int = 1 << 16):
    """The text in pieces of about `size` characters, cut at newlines (for the trainer)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def bpe_tokens(text: TextData, vocab_size: int, *, cache_dir: str | Path | None = None
               ) -> TextData:  # fmt: skip
    """`text` re-tokenised by `train_bpe(text, vocab_size)`: train and valid as (N,) int32 ids,
    vocab_size the tokenizer's, name '<name>+bpe<V>'. The validation split is encoded with the
    tokenizer trained on the training split alone."""
    tok = train_bpe(text, vocab_size, cache_dir=cache_dir)
    train, valid = (tok.encode(_decode_bytes(t)) for t in (text.train, text.valid))
    return TextData(train, valid, tok.vocab_size, f"{text.name}+bpe{tok.vocab_size}")
