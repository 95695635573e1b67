"""MNIST-1D (Greydanus & Kobak, 2020), generated procedurally and offline."""

import random

import numpy as np

from hessjax.data.dataset import Dataset

_NUM_CLASSES = 10


def load_mnist1d(num_samples: int = 5000, seed: int = 0, train_split: float = 0.8) -> Dataset:
    """Generates MNIST-1D with the reference generator (never downloads).

    ``mnist1d`` makes ``num_samples // 10`` examples per class, so N = 10 * (num_samples // 10)
    examples are split into the first ``int(N * train_split)`` for training and the rest for
    testing. The generator reseeds Python's and numpy's global RNGs; both states are restored
    afterwards, so calling this function has no global side effect.

    Returns:
      Dataset with x of shape (n, 40) float32 (standardised over the whole set) and y of shape
      (n,) int32 in [0, 10).
    """
    # Imported here: the mnist1d package imports matplotlib.pyplot (and requests) on import,
    # which `import hessjax` must not.
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < _NUM_CLASSES:
        raise ValueError(f"num_samples must be at least {_NUM_CLASSES}, got {num_samples}")
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"train_split must be in (0, 1), got {train_split}")
    args = get_dataset_args(as_dict=False)
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = train_split

    # make_dataset reseeds the legacy global RNGs; save them to restore them afterwards.
    np_state = np.random.get_state()  # noqa: NPY002
    py_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)

    return Dataset(
        x_train=data["x"].astype(np.float32),
        y_train=data["y"].astype(np.int32),
        x_test=data["x_test"].astype(np.float32),
        y_test=data["y_test"].astype(np.int32),
        num_classes=_NUM_CLASSES,
        name="mnist1d",
    )
