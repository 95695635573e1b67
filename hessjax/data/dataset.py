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
