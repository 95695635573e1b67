"""Geometry of subspaces: principal angles, overlap, Grassmann distances, and sparse masks.

A subspace is given by an orthonormal basis: a flat (n, k) array, or a pytree whose leaves
carry a leading k axis (as `CurvatureOperator.unravel_vectors` returns), flattened in leaf
order. A mask (a coordinate subspace, e.g. the k largest |θ|) is an index array (k,) into the
flat vector and is never expanded to a dense (n, k) basis.

With principal angles θ_1..θ_k between a k- and a k'-dimensional subspace (k <= k'):
overlap = ‖UᵀV‖²_F / k = Σ cos²θ_i / k = 1 − d_proj² / k.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def as_basis(x: Any) -> Array:
    """(n, k) flat basis from an (n, k) array or a pytree whose leaves are (k, ...)."""
    if isinstance(x, jax.Array | np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"a flat basis must be an (n, k) array, got shape {x.shape}")
        return jnp.asarray(x)
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError("basis pytree has no leaves")
    ks = {np.shape(leaf)[0] for leaf in leaves}
    if len(ks) != 1:
        raise ValueError(f"basis pytree leaves need one leading k axis, got sizes {sorted(ks)}")
    return jnp.concatenate([jnp.reshape(leaf, (leaf.shape[0], -1)) for leaf in leaves], 1).T


def _pair(u: Any, v: Any) -> tuple[Array, Array]:
    u, v = as_basis(u), as_basis(v)
    if u.shape[0] != v.shape[0]:
        raise ValueError(f"bases must be (n, k) arrays with the same n, got {u.shape}, {v.shape}")
    return u, v


def subspace_overlap(u: Any, v: Any) -> Array:
    """overlap = ‖Uᵀ V‖²_F / min(k, k') for orthonormal bases u (n, k) and v (n, k'): 1 when
    one subspace contains the other, 0 for orthogonal ones, k/n on average for random ones."""
    u, v = _pair(u, v)
    return jnp.sum((u.T @ v) ** 2) / min(u.shape[1], v.shape[1])


def overlap_chance(k: int, n: int) -> float:
    """Expected overlap of two independent uniformly random k-dimensional subspaces of R^n."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return k / n


def principal_angles(u: Any, v: Any) -> Array:
    """Principal angles (min(k, k'),) in radians, ascending, between span(u) and span(v)
    (orthonormal bases). Computed from the singular values of UᵀV, so angles below ~1e-4
    (float64: ~1e-8) are resolved only to about sqrt(eps)."""
    u, v = _pair(u, v)
    cos = jnp.linalg.svd(u.T @ v, compute_uv=False)
    return jnp.arccos(jnp.clip(cos, 0.0, 1.0))


class GrassmannDistances(NamedTuple):
    """Distances between two subspaces from their principal angles θ:
    geodesic ‖θ‖₂ (arc length on the Grassmannian), chordal ‖2 sin(θ/2)‖₂ (Frobenius distance
    of optimally rotated bases), projection ‖sin θ‖₂ (= ‖UUᵀ − VVᵀ‖_F / √2 for k = k'),
    fubini_study arccos(Π cos θ_i)."""

    geodesic: Array
    chordal: Array
    projection: Array
    fubini_study: Array


def grassmann_distances(u: Any, v: Any) -> GrassmannDistances:
    theta = principal_angles(u, v)
    return GrassmannDistances(
        geodesic=jnp.linalg.norm(theta),
        chordal=jnp.linalg.norm(2 * jnp.sin(theta / 2)),
        projection=jnp.linalg.norm(jnp.sin(theta)),
        fubini_study=jnp.arccos(jnp.clip(jnp.prod(jnp.cos(theta)), 0.0, 1.0)),
    )


# ----------------------------------------------------------------------------- masks


def _check_mask(idx: Any, n: int | None = None) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"a mask is a non-empty (k,) integer index array, got {idx.shape}")
    if np.unique(idx).size != idx.size:
        raise ValueError("mask indices must be distinct")
    if idx.min() < 0 or (n is not None and idx.max() >= n):
        raise ValueError(f"mask indices must lie in [0, {n})")
    return idx


def top_magnitude_mask(theta: Array, k: int, block_ids: Any = None) -> np.ndarray:
    """Indices (k,) of the k largest |θ_i| of a flat vector (n,), sorted ascending. With
    block_ids (n,), each block b keeps its share round(k · n_b / n) of its own largest
    entries (per-layer masks), adjusted so the total is exactly k."""
    theta = np.abs(np.asarray(theta))
    n = theta.size
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n = {n}, got k={k}")
    if block_ids is None:
        return np.sort(np.argpartition(-theta, k - 1)[:k])
    ids = np.asarray(block_ids)
    if ids.shape != (n,):
        raise ValueError(f"block_ids must have shape ({n},), got {ids.shape}")
    blocks, sizes = np.unique(ids, return_counts=True)
    share = np.floor(k * sizes / n).astype(int)
    rest = k * sizes / n - share  # largest remainders get the leftover entries
    share[np.argsort(-rest)[: k - share.sum()]] += 1
    chosen = []
    for b, s in zip(blocks, share, strict=True):
        members = np.flatnonzero(ids == b)
        if s:
            chosen.append(members[np.argpartition(-theta[members], s - 1)[:s]])
    return np.sort(np.concatenate(chosen))


def random_mask(key: Array, n: int, k: int) -> np.ndarray:
    """k distinct indices (k,) drawn uniformly from range(n), sorted ascending."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n = {n}, got k={k}")
    return np.sort(np.asarray(jax.random.choice(key, n, (k,), replace=False)))


def mask_overlap(idx: Any, v: Any) -> Array:
    """Overlap of the coordinate subspace of mask idx (k,) with the orthonormal basis v (n, k'):
    ‖V[idx]‖²_F / min(k, k'), without forming the dense mask basis."""
    v = as_basis(v)
    idx = _check_mask(idx, v.shape[0])
    return jnp.sum(v[idx] ** 2) / min(idx.size, v.shape[1])


def masks_overlap(idx_a: Any, idx_b: Any) -> float:
    """Overlap of two masks: |A ∩ B| / min(|A|, |B|)."""
    a, b = _check_mask(idx_a), _check_mask(idx_b)
    return np.intersect1d(a, b).size / min(a.size, b.size)


def masks_iou(idx_a: Any, idx_b: Any) -> float:
    """Intersection over union |A ∩ B| / |A ∪ B| of two masks (= ov / (2 − ov) for |A| = |B|)."""
    a, b = _check_mask(idx_a), _check_mask(idx_b)
    return np.intersect1d(a, b).size / np.union1d(a, b).size


def overlap_to_iou(overlap: Any) -> Any:
    """IoU of two equal-size masks from their overlap: IoU = ov / (2 − ov)."""
    return overlap / (2 - overlap)
