"""The standard continual-learning metrics of an accuracy matrix R (T, T), R[i, j] the accuracy
on task j after training task i (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):

* ACC = mean_j R[T-1, j], the final average accuracy;
* BWT = mean_{j<T-1} (R[T-1, j] − R[j, j]), backward transfer (negative: forgetting);
* forgetting = mean_{j<T-1} max_{i<T-1} (R[i, j] − R[T-1, j]).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ContinualMetrics(NamedTuple):
    """acc, bwt, forgetting as defined in the module docstring (floats)."""

    acc: float
    bwt: float
    forgetting: float


def check_accuracy_matrix(r, min_tasks: int = 1) -> np.ndarray:
    """R as a float64 (T, T) array, T >= min_tasks, all entries finite; else ValueError."""
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"accuracy matrix must be square (T, T), got shape {r.shape}")
    if r.shape[0] < min_tasks:
        raise ValueError(f"needs at least {min_tasks} tasks, got T = {r.shape[0]}")
    if not np.all(np.isfinite(r)):
        raise ValueError("accuracy matrix has non-finite entries")
    return r


def average_accuracy(r) -> float:
    """ACC = mean_j R[T-1, j]."""
    r = check_accuracy_matrix(r)
    return float(np.mean(r[-1]))


def backward_transfer(r) -> float:
    """BWT = mean_{j<T-1} (R[T-1, j] − R[j, j]); needs T >= 2."""
    r = check_accuracy_matrix(r, min_tasks=2)
    t = r.shape[0]
    return float(np.mean(r[-1, : t - 1] - np.diag(r)[: t - 1]))


def forgetting(r) -> float:
    """mean_{j<T-1} max_{i<T-1} (R[i, j] − R[T-1, j]); needs T >= 2."""
    r = check_accuracy_matrix(r, min_tasks=2)
    t = r.shape[0]
    return float(np.mean(np.max(r[: t - 1, : t - 1], axis=0) - r[-1, : t - 1]))


def continual_metrics(r) -> ContinualMetrics:
    """ACC, BWT and forgetting of one accuracy matrix (T >= 2)."""
    return ContinualMetrics(average_accuracy(r), backward_transfer(r), forgetting(r))
