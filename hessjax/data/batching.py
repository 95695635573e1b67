"""Splitting data into microbatches and drawing class-balanced subsets."""

import warnings
from typing import Any, TypeVar

import jax
import numpy as np

PyTree = TypeVar("PyTree")


def microbatches(tree: PyTree, microbatch_size: int) -> PyTree:
    """Reshapes every leaf of ``tree`` from (N, ...) to (m, microbatch_size, ...).

    m = N // microbatch_size. When N is not a multiple of ``microbatch_size``, the last
    N - m * microbatch_size samples are dropped with a warning. Leaves may be numpy or jax
    arrays and keep their type and dtype; the result has the same pytree structure, ready for
    ``jax.lax.scan`` or ``jax.lax.map`` over the leading axis.

    Raises:
      ValueError: microbatch_size < 1, no leaves, a leaf without a leading axis, leaves with
        different leading sizes, N == 0 or N < microbatch_size.
    """
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1, got {microbatch_size}")
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("microbatches got a pytree without array leaves")
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("microbatches needs arrays with a leading batch axis, got a scalar leaf")
    sizes = sorted({np.shape(leaf)[0] for leaf in leaves})
    if len(sizes) > 1:
        raise ValueError(f"leaves have different leading sizes {sizes}; they must all be equal")
    (n,) = sizes
    if n == 0:
        raise ValueError("microbatches got empty data (leading size 0)")
    if n < microbatch_size:
        raise ValueError(f"microbatch_size={microbatch_size} exceeds the number of samples {n}")
    m, dropped = divmod(n, microbatch_size)
    if dropped:
        warnings.warn(
            f"microbatches: dropping the last {dropped} of {n} samples "
            f"({n} is not a multiple of microbatch_size={microbatch_size})",
            stacklevel=2,
        )
    kept = m * microbatch_size

    def split(leaf: Any) -> Any:
        return leaf[:kept].reshape((m, microbatch_size) + tuple(np.shape(leaf)[1:]))

    return jax.tree_util.tree_map(split, tree)


def class_balanced_subset(x: Any, y: Any, per_class: int, seed: int = 0) -> tuple[Any, Any]:
    """Draws ``per_class`` samples of every class present in ``y``, in shuffled order.

    Args:
      x: (N, ...) inputs (numpy or jax array).
      y: (N,) integer labels.
      per_class: samples to keep from each class.
      seed: seed of ``np.random.default_rng``; the subset is deterministic given it.

    Returns:
      (x[idx], y[idx]) with K * per_class rows (K classes), same array types as the inputs.

    Raises:
      ValueError: per_class < 1, x and y differ in length, empty data, or a class has fewer
        than ``per_class`` samples.
    """
    labels = np.asarray(y)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if np.shape(x)[0] != labels.shape[0]:
        raise ValueError(f"x has {np.shape(x)[0]} rows but y has {labels.shape[0]}")
    if labels.size == 0:
        raise ValueError("class_balanced_subset got empty data")
    classes, counts = np.unique(labels, return_counts=True)
    short = {int(c): int(k) for c, k in zip(classes, counts, strict=True) if k < per_class}
    if short:
        raise ValueError(f"per_class={per_class} but these classes have fewer samples: {short}")
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    )
    idx = rng.permutation(idx)
    return x[idx], y[idx]
