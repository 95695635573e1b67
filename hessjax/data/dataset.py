"""The in-memory dataset container shared by every loader."""

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A classification dataset held as numpy arrays.

    Attributes:
      x_train: (N_train, ...) float32 inputs, e.g. (N, 784) for MNIST or (N, 40) for MNIST-1D.
      y_train: (N_train,) int32 labels in [0, num_classes).
      x_test: (N_test, ...) float32 inputs, same trailing shape as x_train.
      y_test: (N_test,) int32 labels in [0, num_classes).
      num_classes: number of classes.
      name: dataset name, e.g. "mnist".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


SCALINGS = ("none", "unit", "global", "standard")
"""Input scalings `rescale_inputs` knows."""


def rescale_inputs(ds: Dataset, how: str) -> Dataset:
    """`ds` with its inputs rescaled by statistics of the training inputs only (the test
    inputs get the same map): "none" leaves them as loaded; "unit" maps the training range
    [min, max] (over all features) onto [0, 1] (MNIST's idx pixels already are [0, 1]);
    "standard" subtracts each feature's training mean and divides by its training standard
    deviation (features constant over the training set are only centred). float32 out."""
    if how not in SCALINGS:
        raise ValueError(f"input scaling must be one of {', '.join(SCALINGS)}, got {how!r}")
    x_train = np.asarray(ds.x_train, np.float64)
    if how == "none":
        return ds
    if how in ("unit", "global"):
        low, high = float(x_train.min()), float(x_train.max())
        if high == low:
            raise ValueError(f"the training inputs are constant ({low}): cannot rescale them")
        shift, scale = (low, high - low) if how == "unit" else (x_train.mean(), x_train.std())
    else:
        shift, scale = x_train.mean(axis=0), x_train.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)

    def apply(x):
        return ((np.asarray(x, np.float64) - shift) / scale).astype(np.float32)

    return ds._replace(x_train=apply(ds.x_train), x_test=apply(ds.x_test))
