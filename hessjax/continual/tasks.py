"""Task sequences for continual learning: permuted and split tasks of any `Dataset`
(`task_sequence` builds the one a config describes, e.g. from MNIST's idx files), and the same
built from MNIST-1D (generated offline, so tests and default runs need no files).

* Permuted: task t applies a fixed pixel (feature) permutation to every input; task 0 is the
  identity; labels stay the 10 classes (domain-incremental, one shared head).
* Split: task t keeps two digits, (0, 1), (2, 3), ... With `remap=True` (default) their labels
  become 0 and 1 (a shared 2-way head, domain-incremental); with `remap=False` the original
  10-way labels are kept (class-incremental with a single 10-way head, much harder).

Every task carries a validation split carved from its training samples: a seeded random
`valid_fraction` (default 0.1, GPM's `pc_valid`) of the task's training pool, drawn
independently per task before `train_size` subsamples the rest. Hyperparameters are chosen
on it, never on the test split.

Inputs are flattened to (N, d) float32; labels are int32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from hessjax.data import Dataset, load_mnist1d

VALID_FRACTION = 0.1
"""Default share of each task's training pool held out for validation (GPM's `pc_valid`)."""


class Task(NamedTuple):
    """One task: x_train (N, d) float32, y_train (N,) int32, x_test (M, d), y_test (M,),
    x_valid (V, d), y_valid (V,) (carved from the training pool, disjoint from x_train)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of 'train', 'valid' or 'test'."""
        if which not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")


SPLITS = ("train", "valid", "test")
"""The splits every `Task` carries (`task.split(name)`)."""


class TaskSequence(NamedTuple):
    """tasks in training order; num_classes of the shared output head; name of the benchmark."""

    tasks: tuple[Task, ...]
    num_classes: int
    name: str

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


def _check_size(size: int | None, available: int, what: str) -> int:
    if size is None or size == 0:
        return available
    if not 0 < size <= available:
        raise ValueError(f"{what} must be in [1, {available}] (or None/0 for all), got {size}")
    return int(size)


def _subsample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return np.arange(n) if size == n else np.sort(rng.choice(n, size=size, replace=False))


def check_valid_fraction(fraction: float) -> float:
    """fraction as a float in (0, 1), else ValueError."""
    if not isinstance(fraction, int | float) or not 0 < float(fraction) < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {fraction!r}")
    return float(fraction)


def _carve(
    rng: np.random.Generator, pool: np.ndarray, fraction: float, train_size: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices from `pool`: a random `fraction` of it (at least 1) for
    validation, then `train_size` of the rest (None: all of it) for training."""
    n_valid = max(1, int(round(fraction * pool.size)))
    if n_valid >= pool.size:
        raise ValueError(
            f"valid_fraction {fraction} of {what}'s {pool.size} training samples leaves none "
            "for training"
        )
    order = rng.permutation(pool.size)
    valid, rest = np.sort(pool[order[:n_valid]]), np.sort(pool[order[n_valid:]])
    n_train = _check_size(train_size, rest.size, f"train_size of {what}")
    return rest[_subsample(rng, rest.size, n_train)], valid


def permutations(num_tasks: int, dim: int, seed: int = 0) -> np.ndarray:
    """(num_tasks, dim) int: row 0 the identity, the others independent uniform random
    permutations (numpy default_rng(seed))."""
    if num_tasks < 1 or dim < 1:
        raise ValueError(f"need num_tasks >= 1 and dim >= 1, got {num_tasks}, {dim}")
    rng = np.random.default_rng(seed)
    rows = [np.arange(dim)] + [rng.permutation(dim) for _ in range(num_tasks - 1)]
    return np.stack(rows)


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


def permuted_tasks(
    ds: Dataset,
    num_tasks: int,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    valid_fraction: float = VALID_FRACTION,
) -> TaskSequence:
    """Permuted tasks from one dataset: task t uses inputs x[:, perm_t] (`permutations(num_tasks,
    d, seed)`, task 0 unpermuted) and the original labels. Per task, independently (seeded by
    `seed`): a random `valid_fraction` of the training samples for validation, train_size of
    the rest for training and test_size of the test samples (None: all)."""
    x_train, x_test = _flat(ds.x_train), _flat(ds.x_test)
    fraction = check_valid_fraction(valid_fraction)
    n_test = _check_size(test_size, len(x_test), "test_size")
    perms = permutations(num_tasks, x_train.shape[1], seed)
    rng = np.random.default_rng([seed, 1])
    y_train, y_test = np.asarray(ds.y_train, np.int32), np.asarray(ds.y_test, np.int32)
    tasks = []
    for t, perm in enumerate(perms):
        i, v = _carve(rng, np.arange(len(x_train)), fraction, train_size, f"task {t}")
        j = _subsample(rng, len(x_test), n_test)
        tasks.append(
            Task(
                f"perm{t}",
                x_train[i][:, perm],
                y_train[i],
                x_test[j][:, perm],
                y_test[j],
                x_train[v][:, perm],
                y_train[v],
            )  # fmt: skip
        )
    return TaskSequence(tuple(tasks), ds.num_classes, f"permuted_{ds.name}")


def default_pairs(num_classes: int = 10) -> tuple[tuple[int, int], ...]:
    """((0, 1), (2, 3), ...) over num_classes (even) classes."""
    if num_classes < 2 or num_classes % 2:
        raise ValueError(f"num_classes must be even and >= 2, got {num_classes}")
    return tuple((c, c + 1) for c in range(0, num_classes, 2))


def split_tasks(
    ds: Dataset,
    pairs: Sequence[Sequence[int]] | None = None,
    remap: bool = True,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    valid_fraction: float = VALID_FRACTION,
) -> TaskSequence:
    """Split tasks: task t keeps the samples whose label is in pairs[t] (default
    `default_pairs`); with `remap` the label `pairs[t][i]` becomes i (num_classes = the largest
    group size), else labels stay as they are (num_classes = ds.num_classes). Per task: a
    random `valid_fraction` of its training samples for validation, train_size of the rest
    for training, test_size of its test samples (None: all)."""
    pairs = default_pairs(ds.num_classes) if pairs is None else tuple(tuple(p) for p in pairs)
    flat = [c for p in pairs for c in p]
    if len(set(flat)) != len(flat) or not all(0 <= c < ds.num_classes for c in flat):
        raise ValueError(f"pairs must be disjoint classes in [0, {ds.num_classes}), got {pairs}")
    fraction = check_valid_fraction(valid_fraction)
    rng = np.random.default_rng([seed, 2])
    x_train, x_test = _flat(ds.x_train), _flat(ds.x_test)
    table = np.arange(ds.num_classes, dtype=np.int32)
    tasks = []
    for group in pairs:
        if remap:
            table = np.full(ds.num_classes, -1, np.int32)
            table[list(group)] = np.arange(len(group), dtype=np.int32)
        pools = [np.flatnonzero(np.isin(y, group)) for y in (ds.y_train, ds.y_test)]
        if pools[0].size == 0 or pools[1].size == 0:
            raise ValueError(f"no samples of classes {group}")
        i, v = _carve(rng, pools[0], fraction, train_size, f"classes {group}")
        n_test = _check_size(test_size, pools[1].size, "test_size")
        j = pools[1][_subsample(rng, pools[1].size, n_test)]
        name = "split" + "_".join(map(str, group))
        train, test, valid = (
            (x[idx], table[np.asarray(y[idx], np.int32)])
            for x, y, idx in ((x_train, ds.y_train, i), (x_test, ds.y_test, j),
                              (x_train, ds.y_train, v))
        )  # fmt: skip
        tasks.append(Task(name, *train, *test, *valid))
    num_classes = max(len(p) for p in pairs) if remap else ds.num_classes
    return TaskSequence(tuple(tasks), num_classes, f"split_{ds.name}")


def permuted_mnist1d(
    num_tasks: int = 5,
    seed: int = 0,
    num_samples: int = 5000,
    data_seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> TaskSequence:
    """Permuted MNIST-1D (40 features), generated offline (`load_mnist1d(num_samples,
    data_seed)`); see `permuted_tasks`."""
    ds = load_mnist1d(num_samples=num_samples, seed=data_seed)
    return permuted_tasks(ds, num_tasks, seed, train_size, test_size)


def split_mnist1d(
    pairs: Sequence[Sequence[int]] | None = None,
    remap: bool = True,
    seed: int = 0,
    num_samples: int = 5000,
    data_seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> TaskSequence:
    """Split MNIST-1D, generated offline; see `split_tasks`."""
    ds = load_mnist1d(num_samples=num_samples, seed=data_seed)
    return split_tasks(ds, pairs, remap, seed, train_size, test_size)


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def task_sequence(dataset: Dataset, tasks_config: Any, seed: int = 0) -> TaskSequence:
    """Build the sequence a config describes from a loaded dataset. tasks_config fields:
    kind ('permuted' | 'split'), num_tasks (permuted), pairs (split; empty: default pairs),
    remap (split), train_size, test_size (per task; 0: all), valid_fraction (default
    VALID_FRACTION)."""
    kind = _get(tasks_config, "kind", "permuted")
    sizes = {
        "train_size": _get(tasks_config, "train_size") or None,
        "test_size": _get(tasks_config, "test_size") or None,
        "valid_fraction": _get(tasks_config, "valid_fraction", VALID_FRACTION),
    }
    if kind == "permuted":
        num_tasks = int(_get(tasks_config, "num_tasks", 5))
        return permuted_tasks(dataset, num_tasks, seed, **sizes)
    if kind == "split":
        pairs = _get(tasks_config, "pairs") or None
        remap = bool(_get(tasks_config, "remap", True))
        return split_tasks(dataset, pairs, remap, seed, **sizes)
    raise ValueError(f"tasks.kind must be 'permuted' or 'split', got {kind!r}")
