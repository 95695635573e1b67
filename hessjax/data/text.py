"""Byte-level text data for language models, offline.

A corpus is UTF-8 text read from a file (plain or .gz), from a folder of text files, from the
fixed corpus `../shared/data/python_stdlib/` (train/valid splits, see its README), or from the
running interpreter's own standard library (`stdlib_text`: needs no files, but its bytes
depend on the Python version, so reported numbers use the fixed corpus). Tokens are the bytes
(V = 256); windows of T + 1 consecutive tokens give inputs (T,) and next-token targets (T,).
"""

from __future__ import annotations

import gzip
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hessjax.data.loader import default_data_dir

BYTE_VOCAB = 256
"""Vocabulary of byte-level tokens."""
SHARED_CORPUS = "python_stdlib"
TEXT_SUFFIXES = (".txt", ".gz", ".py", ".md", ".rst")


class TextData(NamedTuple):
    """train, valid: (N,) tokens, uint8 bytes (vocab_size 256, `load_text`) or int32 ids
    (`bpe_tokens`); vocab_size; name: where they came from."""

    train: np.ndarray
    valid: np.ndarray
    vocab_size: int
    name: str


def _read_file(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_text(path: str | Path) -> str:
    """UTF-8 text of a file (.gz decompressed) or of every text file under a folder (suffixes
    `TEXT_SUFFIXES`, sorted path order, joined by newlines). Raises ValueError for a missing
    path, a file that is not UTF-8 (naming it) or an empty corpus."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    else:
        raise ValueError(f"text corpus {str(path)!r} does not exist")
    parts = [_read_file(p) for p in files]
    text = "\n".join(parts)
    if not any(parts):
        raise ValueError(f"text corpus {str(path)!r} is empty (no text in {len(files)} files)")
    return text


def stdlib_text(max_bytes: int = 4_000_000) -> str:
    """The first `max_bytes` of the running interpreter's standard-library .py sources (sorted
    paths, tests and site-packages left out): a corpus that needs no files, but whose bytes
    depend on the Python version and build."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in ("test", "tests", "site-packages", "idlelib") for part in rel):
            continue
        try:
            text = p.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    text = "\n".join(parts)[:max_bytes]
    if not text:
        raise ValueError(f"no standard-library sources found under {root}")
    return text


def to_bytes(text: str) -> np.ndarray:
    """UTF-8 bytes of `text` as (N,) uint8 tokens."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def split_tokens(tokens: np.ndarray, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last `valid_fraction` of the tokens is the validation split."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must lie in (0, 1), got {valid_fraction!r}")
    cut = int(round(len(tokens) * (1 - valid_fraction)))
    return tokens[:cut], tokens[cut:]


def load_text(source: str = "stdlib", valid_fraction: float = 0.05, max_bytes: int | None = None
              ) -> TextData:  # fmt: skip
    """Byte tokens of a corpus. source: 'stdlib' (this interpreter's standard library, no
    files; version-dependent), 'shared' (the fixed corpus ../shared/data/python_stdlib/, its
    own train/valid files), or a path: a folder holding train.txt(.gz) and valid.txt(.gz)
    uses them as the splits; any other file or folder is split contiguously (last
    `valid_fraction` for validation). max_bytes: keep at most this many training bytes."""
    if source == "shared":
        found = default_data_dir(SHARED_CORPUS)
        if found is None:
            raise ValueError(f"the fixed corpus ../shared/data/{SHARED_CORPUS}/ is absent")
        source = found
    if source == "stdlib":
        train, valid = split_tokens(to_bytes(stdlib_text()), valid_fraction)
        name = f"stdlib-python{sys.version_info.major}.{sys.version_info.minor}"
    else:
        path = Path(source)
        pair = [_split_file(path, s) for s in ("train", "valid")] if path.is_dir() else []
        if pair and all(pair):
            train, valid = (to_bytes(read_text(p)) for p in pair)
        else:
            train, valid = split_tokens(to_bytes(read_text(path)), valid_fraction)
        name = path.name or str(path)
    if max_bytes is not None:
        train = train[:max_bytes]
    return TextData(train, valid, BYTE_VOCAB, name)


def _split_file(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.txt.gz", f"{split}.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def windows(tokens: np.ndarray, num: int, context: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` windows at seeded random offsets: inputs (num, context) int32 and next-token
    targets (num, context) int32 (the same window shifted by one). Deterministic given seed."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    for name, value in (("num", num), ("context", context)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(tokens) < context + 1:
        raise ValueError(
            f"windows of context {context} need at least {context + 1} tokens, got {len(tokens)}"
        )
    starts = np.random.default_rng(seed).integers(0, len(tokens) - context, size=num)
    idx = starts[:, None] + np.arange(context + 1)[None]
    chunk = tokens[idx].astype(np.int32)
    return chunk[:, :-1], chunk[:, 1:]


def check_token_batch(batch: Sequence, vocab_size: int, context: int | None = None) -> None:
    """Raise ValueError unless batch = (inputs, targets) or (inputs, (targets, mask)) (a tuple)
    holds integer ids in [0, vocab_size) with windows of at most `context` tokens and, with a
    mask, at least one counted token: the checks to run before building an operator."""
    inputs, targets = batch
    ids, mask = targets if isinstance(targets, tuple) else (targets, None)
    for name, x in (("inputs", inputs), ("targets", ids)):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must be integer token ids, got dtype {x.dtype}")
        if x.size and (x.min() < 0 or x.max() >= vocab_size):
            raise ValueError(
                f"{name} hold token ids outside the vocabulary [0, {vocab_size}): "
                f"min {x.min()}, max {x.max()}"
            )
        if context is not None and x.shape[-1] > context:
            raise ValueError(f"{name} windows of {x.shape[-1]} tokens exceed the context {context}")
    if mask is not None and not np.any(np.asarray(mask)):
        raise ValueError("the mask selects no token: every target is padding")
