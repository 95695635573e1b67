"""Geometry of subspaces given by orthonormal bases (flat (n, k) arrays)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def subspace_overlap(u: Array, v: Array) -> Array:
    """overlap = ‖Uᵀ V‖²_F / k for orthonormal bases u (n, k) and v (n, k') with k = min(k, k'):
    1 for equal subspaces, 0 for orthogonal ones, k/n in expectation for random ones (chance)."""
    u, v = jnp.asarray(u), jnp.asarray(v)
    if u.ndim != 2 or v.ndim != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(f"bases must be (n, k) arrays with the same n, got {u.shape}, {v.shape}")
    return jnp.sum((u.T @ v) ** 2) / min(u.shape[1], v.shape[1])


def overlap_chance(k: int, n: int) -> float:
    """Expected overlap of two independent uniformly random k-dimensional subspaces of R^n."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return k / n
