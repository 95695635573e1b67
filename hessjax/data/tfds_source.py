"""Loading image-classification datasets through TFDS random-access data sources."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from hessjax.data.dataset import Dataset

_MAX_REASON_CHARS = 300


def _load_error(name: str, data_dir: str | None, err: Exception) -> RuntimeError:
    reason = " ".join(f"{type(err).__name__}: {err}".split())
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[:_MAX_REASON_CHARS] + " ..."
    where = data_dir or "the default TFDS data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    return RuntimeError(
        f"Could not load {name!r} with tensorflow_datasets from {where}: {reason}\n"
        f"Either set --config.data.dir to a folder holding the four idx files of {name} "
        "(train-images-idx3-ubyte.gz, ...), or prepare the dataset once in ArrayRecord format "
        f"with `tfds build {name} --file_format=array_record` (needs internet)."
    )


def _to_arrays(source: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Reads every example of a data source: (n, prod(image shape)) float32, (n,) int32."""
    n = len(source)
    x = np.empty((n, int(np.prod(source[0]["image"].shape)) if n else 0), dtype=np.float32)
    y = np.empty(n, dtype=np.int32)
    for i, example in enumerate(source):
        x[i] = np.asarray(example["image"]).reshape(-1)
        y[i] = example["label"]
    x /= 255.0
    return x, y


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Loads the 'train' and 'test' splits of a TFDS image dataset without downloading.

    Uses ``tfds.data_source`` (ArrayRecord random access, TensorFlow not needed), so the dataset
    must already be prepared in ArrayRecord format under ``data_dir`` (default: TFDS's own,
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Features 'image' (uint8) and 'label' are
    read.

    Returns:
      Dataset with x of shape (N, prod(image shape)) float32 in [0, 1] (e.g. (N, 784) for
      MNIST) and y of shape (N,) int32.

    Raises:
      RuntimeError: tensorflow_datasets (the ``tfds`` extra) is not installed, or the data are
        not available.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise RuntimeError(
            f"Loading {name!r} through TFDS needs tensorflow_datasets, an optional dependency: "
            "pip install 'hessjax[tfds]', or set --config.data.dir to a folder holding the four "
            f"idx files of {name} (train-images-idx3-ubyte.gz, ...)."
        ) from err
    try:
        train, test = tfds.data_source(
            name, split=["train", "test"], data_dir=data_dir, download=False
        )
    except Exception as err:  # tfds signals missing data with many exception types
        raise _load_error(name, data_dir, err) from err
    x_train, y_train = _to_arrays(train)
    x_test, y_test = _to_arrays(test)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(train.dataset_info.features["label"].num_classes),
        name=name,
    )
