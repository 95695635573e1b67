"""Reader for the idx format of MNIST-style datasets (MNIST, Fashion-MNIST), gzipped or plain."""

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from hessjax.data.dataset import Dataset

_IMAGES_MAGIC = 2051  # header: magic, count, rows, cols (big-endian uint32)
_LABELS_MAGIC = 2049  # header: magic, count
_NDIM = {_IMAGES_MAGIC: 3, _LABELS_MAGIC: 1}

# (images, labels) file stems per split; each is looked up as "<stem>.gz", then "<stem>".
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one idx file; a name ending in ``.gz`` is decompressed with gzip.

    Returns:
      uint8 array of shape (count, rows, cols) for an images file (magic 2051) or (count,) for
      a labels file (magic 2049).

    Raises:
      ValueError: bad gzip stream, unknown magic number, or a header/data size that does not
        match the file length.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err

    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _NDIM:
        raise ValueError(
            f"{path}: bad idx magic number {magic} (expected {_IMAGES_MAGIC} for images "
            f"or {_LABELS_MAGIC} for labels)"
        )
    header_len = 4 * (1 + _NDIM[magic])
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} of {header_len} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=_NDIM[magic], offset=4))
    expected = int(np.prod(shape))
    found = len(raw) - header_len
    if found != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {found} data bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected an images file (magic {_IMAGES_MAGIC})")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a labels file (magic {_LABELS_MAGIC})")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    x = images.reshape(len(images), -1).astype(np.float32)
    x /= 255.0
    return x, labels.astype(np.int32)


def load_idx_dir(
    directory: str | os.PathLike[str], name: str = "mnist", num_classes: int = 10
) -> Dataset:
    """Loads an MNIST-style dataset from the four idx files in ``directory``.

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``, preferred) or plain. Labels must lie
    in [0, num_classes) (10 classes for MNIST and Fashion-MNIST).

    Returns:
      Dataset with x of shape (N, rows * cols) float32 in [0, 1] (e.g. (60000, 784) and
      (10000, 784) for MNIST) and y of shape (N,) int32.

    Raises:
      FileNotFoundError: some of the four files are absent; the message lists them.
      ValueError: a file is malformed, images and labels disagree in count, or a label is
        outside [0, num_classes).
    """
    directory = Path(directory)
    found = {stem: _find(directory, stem) for stems in _SPLIT_STEMS.values() for stem in stems}
    missing = [stem + ".gz" for stem, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"idx files missing from {directory}: {', '.join(missing)} "
            "(the un-gzipped names are accepted too)"
        )
    x_train, y_train = _load_split(*(found[stem] for stem in _SPLIT_STEMS["train"]))
    x_test, y_test = _load_split(*(found[stem] for stem in _SPLIT_STEMS["test"]))
    top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
    if top >= num_classes:
        raise ValueError(f"{directory}: label {top} is outside [0, {num_classes})")
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        name=name,
    )
