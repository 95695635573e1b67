"""Synthetic Gaussian-mixture classification data."""

import numpy as np

from hessjax.data.dataset import Dataset


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int32 labels whose class counts differ by at most one, in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def gaussian_mixture(
    num_samples: int = 2048,
    dim: int = 32,
    num_classes: int = 10,
    separation: float = 3.0,
    seed: int = 0,
    train_split: float = 0.8,
) -> Dataset:
    """Isotropic Gaussian mixture with one unit-variance component per class.

    Class means are drawn once, mu_k ~ N(0, separation**2 / dim * I), so that ||mu_k|| is close
    to ``separation`` and two means lie about ``separation * sqrt(2)`` apart; a sample of class
    k is mu_k + N(0, I). ``round(num_samples * train_split)`` samples go to the training split
    and the rest to the test split; within each split the class counts differ by at most one.
    Everything is drawn from ``np.random.default_rng(seed)``, so the result is deterministic.

    Returns:
      Dataset with x of shape (n, dim) float32 and y of shape (n,) int32 in [0, num_classes).
    """
    if dim < 1 or num_classes < 1:
        raise ValueError(f"dim and num_classes must be >= 1, got {dim} and {num_classes}")
    num_train = round(num_samples * train_split)
    if not 0 < num_train < num_samples:
        raise ValueError(
            f"num_samples={num_samples} with train_split={train_split} leaves an empty split"
        )
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=separation / np.sqrt(dim), size=(num_classes, dim))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = _balanced_labels(n, num_classes, rng)
        x = means[y] + rng.standard_normal((n, dim))
        return x.astype(np.float32), y

    x_train, y_train = sample(num_train)
    x_test, y_test = sample(num_samples - num_train)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        name="gaussian_mixture",
    )
