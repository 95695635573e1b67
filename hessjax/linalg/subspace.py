"""Subspaces of flat vectors: orthonormal bases and their algebra, principal angles, overlap,
Grassmann distances, and sparse masks.

A subspace is given by an orthonormal basis: a flat (n, k) array, or a pytree whose leaves
carry a leading k axis (as `CurvatureOperator.unravel_vectors` returns), flattened in leaf
order. A mask (a coordinate subspace, e.g. the k largest |θ|) is an index array (k,) into the
flat vector and is never expanded to a dense (n, k) basis.

* basis algebra: `check_orthonormal`, `extend_basis` (grow a basis by Gram-Schmidt, dropping
  dependent vectors), `pad_columns` / `used_columns` (a fixed-capacity copy padded with zero
  columns keeps array shapes, and so compilations, fixed while the basis grows; `used_rows`
  for a basis stored as rows),
  `project_vector` ((I − BBᵀ) v);
* metrics: `subspace_overlap`, `overlap_curve` (overlap of the top-k prefixes of two ranked
  bases for every k), `principal_angles`, `grassmann_distances`, and their chance levels
  `overlap_chance`, `random_alignment`;
* masks: `top_magnitude_mask`, `random_mask`, `mask_overlap`, `mask_grassmann_distances`,
  `masks_overlap`, `masks_iou`; curves over every k: `mask_overlap_curve` (magnitude mask vs
  eigenspace), `best_mask_overlap_curve` (the best k-sparse mask, `best_mask`: an upper bound),
  `magnitude_mask_iou_curve` (the masks of two parameter vectors).

With principal angles θ_1..θ_k between a k- and a k'-dimensional subspace (k <= k'):
overlap = ‖UᵀV‖²_F / k = Σ cos²θ_i / k = 1 − d_proj² / k.

The metrics are only meaningful for orthonormal bases (‖UᵀV‖²_F of a scaled basis is not an
overlap), so they check orthonormality (`check_orthonormal`, tolerance 10·sqrt(eps) of the
basis dtype: 3.5e-3 in float32, 1.5e-7 in float64) and raise ValueError otherwise, unless
asked to orthonormalise (`orthonormalize=True`). The checks run on concrete arrays only and
are skipped under `jit`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax.linalg.partition import Partition, as_partition

Array = jax.Array

# ----------------------------------------------------------------------------- bases


def default_tol(dtype) -> float:
    """Relative norm below which a Gram-Schmidt remainder counts as dependent: 1e3 · eps
    (1.2e-4 in float32, 2.2e-13 in float64)."""
    return 1e3 * float(jnp.finfo(dtype).eps)


def orthonormality_tol(dtype) -> float:
    """Largest accepted max |BᵀB − I| of an orthonormal basis of this dtype: 10·sqrt(eps)
    (3.5e-3 in float32, 1.5e-7 in float64). Bases from QR, eigh or Lanczos with full
    reorthogonalisation deviate by a small multiple of eps·sqrt(k); a scaled or merely
    independent basis deviates by O(1)."""
    return 10 * math.sqrt(float(np.finfo(dtype).eps))


def orthonormality_error(basis: Any, allow_zero: bool = False) -> float:
    """max |BᵀB − I| of a concrete (n, k) array; with `allow_zero`, all-zero columns
    (padding) count as fine (columns of squared norm <= 0.5 are held to 0 instead of 1;
    exactly zero ones, which change no entry, are left out of the product).

    The Gram matrix of a float64 basis is a float64 product on the host; of any other one a
    jitted product in float32 (a host float64 product took seconds for a (1e5, 400) basis),
    whose round-off, ~sqrt(n)·eps = 2e-5 at n = 1e5 (at most n·eps), stays below the
    float32 `orthonormality_tol` (3.5e-3)."""
    b = np.asarray(basis)
    if b.shape[1] == 0:
        return 0.0
    if allow_zero:
        used = np.flatnonzero(np.any(b != 0, axis=0))
        if used.size == 0:
            return 0.0
        b = b[:, used]
    if b.dtype == np.float64:
        gram = b.T @ b
    else:
        gram = np.asarray(_gram(jnp.asarray(b)), np.float64)
    want = np.eye(b.shape[1])
    if allow_zero:
        want = want * (np.diag(gram) > 0.5)
    return float(np.max(np.abs(gram - want)))


@jax.jit
def _gram(b: Array) -> Array:
    b = b.astype(jnp.float32)
    return jnp.matmul(b.T, b, precision=lax.Precision.HIGHEST)


def check_orthonormal(basis: Any, name: str = "basis", allow_zero: bool = False) -> None:
    """Raise ValueError unless `basis` is a finite floating (n, k) array with orthonormal
    columns (max |BᵀB − I| <= `orthonormality_tol(dtype)`); with `allow_zero`, all-zero
    columns (padding) are also accepted. Skipped for traced arrays."""
    if isinstance(basis, jax.core.Tracer):
        return
    b = np.asarray(basis)
    if b.ndim != 2:
        raise ValueError(f"{name} must be an (n, k) array of column vectors, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {b.dtype}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} has non-finite entries")
    err = orthonormality_error(b, allow_zero)
    tol = orthonormality_tol(b.dtype)
    if err > tol:
        what = "orthonormal (or zero)" if allow_zero else "orthonormal"
        raise ValueError(
            f"{name} columns are not {what}: max |BᵀB − I| = {err:.2e} > {tol:.1e} "
            "(orthonormalise it first, e.g. with extend_basis or orthonormalize=True)"
        )


_CHUNK = 16  # new columns orthogonalised together against the ones kept before them


@jax.jit
def _gram_schmidt(basis: Array, vectors: Array, tol: Array) -> tuple[Array, Array]:
    """Classical Gram-Schmidt, two passes ("twice is enough"), of the columns of `vectors`
    (n, m) in order against the orthonormal `basis` (n, k) and the new columns kept before
    them; a column whose remainder is <= tol · its norm (or zero) is dropped. Returns (rows
    (m', n), count): the kept directions as the first `count` rows, zeros after (m' = m
    rounded up to a multiple of _CHUNK).

    Blocked, with the same remainders as column by column: both passes against `basis` for
    all columns at once, then per chunk of _CHUNK columns both passes against the rows kept
    by earlier chunks, then column by column against the rows kept in its own chunk. The
    products run over (m', n) rows (contiguous in n), which XLA on CPU streams ~5x faster
    than the same products over (n, k) columns."""
    n, m = vectors.shape
    pad = (-m) % _CHUNK
    norm0 = jnp.pad(jnp.linalg.norm(vectors, axis=0), (0, pad))
    w = vectors - basis @ (basis.T @ vectors)
    w = w - basis @ (basis.T @ w)
    w = jnp.pad(w.T, ((0, pad), (0, 0)))  # (m', n) rows
    q = jnp.zeros_like(w)

    def chunk(c, carry):
        q, count = carry
        x = lax.dynamic_slice_in_dim(w, c * _CHUNK, _CHUNK)
        x = x - (x @ q.T) @ q
        x = x - (x @ q.T) @ q
        nrm0 = lax.dynamic_slice_in_dim(norm0, c * _CHUNK, _CHUNK)

        def column(i, carry):
            q, local, count = carry
            v = x[i]
            v = v - (local @ v) @ local
            v = v - (local @ v) @ local
            norm = jnp.linalg.norm(v)
            keep = (norm > tol * nrm0[i]) & (nrm0[i] > 0)
            v = jnp.where(keep, v / jnp.where(keep, norm, 1), 0)
            local = local.at[i].set(v)
            slot = jnp.minimum(count, q.shape[0] - 1)
            q = q.at[slot].set(jnp.where(keep, v, q[slot]))
            return q, local, count + keep.astype(count.dtype)

        local = jnp.zeros((_CHUNK, n), w.dtype)
        q, _, count = lax.fori_loop(0, _CHUNK, column, (q, local, count))
        return q, count

    return lax.fori_loop(0, w.shape[0] // _CHUNK, chunk, (q, jnp.int32(0)))


def extend_basis(basis: Array | None, new_vectors: Array, tol: float | None = None) -> Array:
    """Orthonormal basis of span(basis) + span(new_vectors), keeping `basis` as it is.

    Args:
      basis: (n, k) orthonormal columns, or None (k = 0).
      new_vectors: (n, m) columns to add, in order; they need not be normalised or independent.
      tol: a column whose remainder after orthogonalisation against `basis` and the columns
        kept before it (two Gram-Schmidt passes) has norm <= tol · (its norm) is dependent and
        dropped, as is a zero column. Default `default_tol(dtype)`.

    Returns:
      (n, k + r) array: the columns of `basis`, then the r <= m kept, orthonormalised new
      directions (r is data dependent, so the result is built on the host side).
    """
    new_vectors = jnp.asarray(new_vectors)
    if new_vectors.ndim == 1:
        new_vectors = new_vectors[:, None]
    if new_vectors.ndim != 2:
        raise ValueError(f"new_vectors must be (n, m), got shape {new_vectors.shape}")
    n, m = new_vectors.shape
    if basis is None:
        basis = jnp.zeros((n, 0), new_vectors.dtype)
    basis = jnp.asarray(basis)
    check_orthonormal(basis)
    if basis.shape[0] != n:
        raise ValueError(f"basis has {basis.shape[0]} rows but new_vectors have {n}")
    if not bool(jnp.all(jnp.isfinite(new_vectors))):
        raise ValueError("new_vectors has non-finite entries")
    dtype = jnp.result_type(basis.dtype, new_vectors.dtype)
    tol = default_tol(dtype) if tol is None else float(tol)
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if m == 0:
        return basis.astype(dtype)
    k = basis.shape[1]
    # zero columns change no remainder (and a zero new column is dropped): padding both to a
    # power of two bounds the compilations of _gram_schmidt to a few per n over growing bases
    padded = jnp.pad(basis.astype(dtype), ((0, 0), (0, _bucket(k) - k)))
    vectors = jnp.pad(new_vectors.astype(dtype), ((0, 0), (0, _bucket(m) - m)))
    rows, count = _gram_schmidt(padded, vectors, jnp.asarray(tol, dtype))
    return jnp.concatenate([basis.astype(dtype), rows[: int(count)].T], axis=1)


def _bucket(size: int) -> int:
    """0, or the power of two >= max(size, _CHUNK)."""
    return 0 if size == 0 else max(_CHUNK, 1 << (size - 1).bit_length())


def pad_columns(basis: Array, capacity: int) -> Array:
    """(n, k) -> (n, capacity) with zero columns appended (k <= capacity). Zero columns change
    no projection, so a padded basis can stand in for the basis under a fixed shape."""
    basis = jnp.asarray(basis)
    if basis.ndim != 2:
        raise ValueError(f"basis must be (n, k), got shape {basis.shape}")
    if basis.shape[1] > capacity:
        raise ValueError(f"basis has {basis.shape[1]} columns, more than capacity {capacity}")
    return jnp.pad(basis, ((0, 0), (0, capacity - basis.shape[1])))


def _leading(nonzero: np.ndarray) -> int:
    """1 + the index of the last True of a (k,) mask, 0 for none: the used prefix."""
    where = np.flatnonzero(nonzero)
    return 0 if where.size == 0 else int(where[-1]) + 1


def used_columns(padded: Array) -> Array:
    """The leading non-zero columns of a zero-padded basis (inverse of `pad_columns`)."""
    count = _leading(np.linalg.norm(np.asarray(padded), axis=0) > 0)
    return jnp.asarray(padded)[:, :count]


def used_rows(padded: Array) -> Array:
    """The leading non-zero rows of a basis stored as zero-padded rows (k, n), e.g.
    `ProjectionState.rows`: `used_columns` of its transpose, without transposing it."""
    count = _leading(np.any(np.asarray(padded) != 0, axis=1))
    return jnp.asarray(padded)[:count]


@jax.jit
def project_vector(basis: Array, v: Array) -> Array:
    """(I − B Bᵀ) v for an (n, k) basis with orthonormal (or zero) columns and v (n,).
    Bᵀ v is written v @ B: XLA on CPU materialises `basis.T` (a copy of the whole basis, per
    call) before the product, which made a projected training step ~5x slower."""
    basis = basis.astype(v.dtype)
    return v - basis @ (v @ basis)


# ----------------------------------------------------------------------------- metrics


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


def _orthonormalize(x: Array, name: str) -> Array:
    """Orthonormal basis of span(x) by reduced QR; rank-deficient x (a |R_ii| below
    `default_tol(dtype)` times the largest column norm) raises, as its span has fewer than k
    dimensions."""
    if isinstance(x, jax.core.Tracer):
        return jnp.linalg.qr(x)[0]
    q, r = jnp.linalg.qr(x)
    diag = np.abs(np.diag(np.asarray(r)))
    scale = float(np.max(np.linalg.norm(np.asarray(x), axis=0), initial=0.0))
    if diag.size and (scale == 0 or diag.min() <= default_tol(x.dtype) * scale):
        raise ValueError(f"{name} is rank deficient: its columns span fewer than k dimensions")
    return q


def _pair(u: Any, v: Any, orthonormalize: bool) -> tuple[Array, Array]:
    u, v = as_basis(u), as_basis(v)
    if u.shape[0] != v.shape[0]:
        raise ValueError(f"bases must be (n, k) arrays with the same n, got {u.shape}, {v.shape}")
    if orthonormalize:
        return _orthonormalize(u, "u"), _orthonormalize(v, "v")
    check_orthonormal(u, "u")
    check_orthonormal(v, "v")
    return u, v


def subspace_overlap(u: Any, v: Any, *, orthonormalize: bool = False) -> Array:
    """overlap = ‖Uᵀ V‖²_F / min(k, k') for orthonormal bases u (n, k) and v (n, k'): 1 when
    one subspace contains the other, 0 for orthogonal ones, k/n on average for random ones.
    Non-orthonormal bases raise ValueError, or with `orthonormalize=True` are replaced by
    orthonormal bases of their spans (QR)."""
    u, v = _pair(u, v, orthonormalize)
    return jnp.sum((u.T @ v) ** 2) / min(u.shape[1], v.shape[1])


def overlap_chance(k: int, n: int) -> float:
    """Expected overlap of two independent uniformly random k-dimensional subspaces of R^n."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return k / n


def random_alignment(dim: int) -> float:
    """E|cos| between a fixed and a uniformly random direction of R^dim:
    Γ(dim/2) / (√π Γ((dim+1)/2)) ≈ √(2/(π dim))."""
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def principal_angles(u: Any, v: Any, *, orthonormalize: bool = False) -> Array:
    """Principal angles (min(k, k'),) in radians, ascending, between span(u) and span(v)
    (orthonormal bases; see `subspace_overlap` for the check and `orthonormalize`). Computed
    from the singular values of UᵀV, so angles below ~1e-4 (float64: ~1e-8) are resolved
    only to about sqrt(eps)."""
    u, v = _pair(u, v, orthonormalize)
    return _angles(u.T @ v)


def _angles(cross: Array) -> Array:
    cos = jnp.linalg.svd(cross, compute_uv=False)
    return jnp.arccos(jnp.clip(cos, 0.0, 1.0))


class OverlapCurve(NamedTuple):
    """ks (m,) the subspace dimensions; overlap (m,) ‖UₖᵀVₖ‖²_F / k of the first k columns of
    the two bases, in [0, 1]; chance (m,) k/n, its expectation for independent random
    subspaces of R^n."""

    ks: np.ndarray
    overlap: np.ndarray
    chance: np.ndarray

    def as_dict(self) -> dict[str, list]:
        """JSON-ready {'k': [...], 'overlap': [...], 'chance': [...]}."""
        return {
            "k": [int(k) for k in self.ks],
            "overlap": [float(o) for o in self.overlap],
            "chance": [float(c) for c in self.chance],
        }

    def at(self, k: int) -> float:
        """The overlap at dimension k (which must be one of `ks`)."""
        hits = np.flatnonzero(self.ks == k)
        if hits.size == 0:
            raise ValueError(f"k={k} is not among the measured dimensions {self.ks.tolist()}")
        return float(self.overlap[hits[0]])


def _ranked_basis(vectors: Any, name: str) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] < 1 or v.shape[0] < v.shape[1]:
        raise ValueError(f"{name} must be an (n, K) array with 1 <= K <= n, got {v.shape}")
    check_orthonormal(v, name)
    return v.astype(np.float64)


def _check_ks(ks: Sequence[int] | None, top: int) -> np.ndarray:
    """ks as an (m,) int array, each in [1, top] (None: all of 1 .. top)."""
    ks_arr = np.arange(1, top + 1) if ks is None else np.asarray(ks)
    if (
        ks_arr.ndim != 1
        or ks_arr.size == 0
        or not np.issubdtype(ks_arr.dtype, np.integer)
        or ks_arr.min() < 1
        or ks_arr.max() > top
    ):
        raise ValueError(f"ks must be a non-empty list of integers in [1, {top}], got {ks!r}")
    return ks_arr.astype(np.int64)


def overlap_curve(vectors_a: Any, vectors_b: Any, ks: Sequence[int] | None = None) -> OverlapCurve:
    """Overlap of the top-k subspaces of two ranked bases for each k in `ks`.

    vectors_a (n, Ka), vectors_b (n, Kb): orthonormal columns (checked), ranked (e.g.
    eigenvectors by eigenvalue, largest first), so that the first k columns span the top-k
    subspace. ks: the dimensions, each 1 <= k <= min(Ka, Kb) (default: all of
    1 .. min(Ka, Kb)).

    The overlap is `subspace_overlap` of the first k columns, ‖AₖᵀBₖ‖²_F / k: 1 when the two
    top-k subspaces coincide, k/n in expectation for random ones (`chance`). All prefixes come
    from one (K, K) cross-Gram matrix AᵀB in float64 (prefix sums of its squares), O(n K²) for
    the whole curve instead of one product per k. Where λ_k = λ_{k+1} the top-k eigenspace is
    not unique and neither is its overlap.
    """
    a, b = _ranked_basis(vectors_a, "vectors_a"), _ranked_basis(vectors_b, "vectors_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"the bases live in different spaces: n = {a.shape[0]} vs {b.shape[0]}")
    n, top = a.shape[0], min(a.shape[1], b.shape[1])
    ks_arr = _check_ks(ks, top)
    gram_sq = (a[:, :top].T @ b[:, :top]) ** 2  # (top, top)
    prefix = np.cumsum(np.cumsum(gram_sq, axis=0), axis=1)  # prefix[k-1, k-1] = ‖AₖᵀBₖ‖²_F
    overlap = prefix[ks_arr - 1, ks_arr - 1] / ks_arr
    chance = np.asarray([overlap_chance(int(k), n) for k in ks_arr])
    return OverlapCurve(ks_arr.astype(np.int64), overlap, chance)


class GrassmannDistances(NamedTuple):
    """Distances between two subspaces from their principal angles θ:
    geodesic ‖θ‖₂ (arc length on the Grassmannian), chordal ‖2 sin(θ/2)‖₂ (Frobenius distance
    of optimally rotated bases), projection ‖sin θ‖₂ (= ‖UUᵀ − VVᵀ‖_F / √2 for k = k'),
    fubini_study arccos(Π cos θ_i)."""

    geodesic: Array
    chordal: Array
    projection: Array
    fubini_study: Array


def grassmann_distances(u: Any, v: Any, *, orthonormalize: bool = False) -> GrassmannDistances:
    """Grassmann distances between span(u) and span(v) (orthonormal bases; see
    `subspace_overlap` for the check and `orthonormalize`)."""
    return _distances(principal_angles(u, v, orthonormalize=orthonormalize))


def _distances(theta: Array) -> GrassmannDistances:
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


def _flat_theta(theta: Any, name: str = "theta") -> np.ndarray:
    theta = np.asarray(theta)
    if theta.ndim != 1 or theta.size == 0:
        raise ValueError(
            f"{name} must be a flat (n,) vector (ravel a params tree first, e.g. with "
            f"make_layout(params).ravel), got shape {theta.shape}"
        )
    return theta


def _magnitude_order(theta: np.ndarray) -> np.ndarray:
    """Indices (n,) by |θ_i| descending, ties by index (stable): prefix k is the top-k mask."""
    return np.argsort(-np.abs(theta), kind="stable")


def top_magnitude_mask(theta: Array, k: int, partition: Partition | None = None) -> np.ndarray:
    """Indices (k,) of the k largest |θ_i| of a flat vector (n,), sorted ascending. With a
    `Partition` of the n indices, each block b keeps its share round(k · n_b / n) of its own
    largest entries (per-layer masks), adjusted so the total is exactly k. Ties in |θ| go to
    the lower index (as in `mask_overlap_curve`)."""
    theta = np.abs(_flat_theta(theta))
    n = theta.size
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n = {n}, got k={k}")
    if partition is None:
        return np.sort(_magnitude_order(theta)[:k])
    as_partition(partition).check_size(n)
    ids, sizes = partition.block_ids, partition.sizes
    blocks = np.arange(partition.num_blocks)
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
    ‖V[idx]‖²_F / min(k, k'), without forming the dense mask basis. A non-orthonormal v
    raises ValueError."""
    v = as_basis(v)
    check_orthonormal(v, "v")
    idx = _check_mask(idx, v.shape[0])
    return jnp.sum(v[idx] ** 2) / min(idx.size, v.shape[1])


def mask_principal_angles(idx: Any, v: Any) -> Array:
    """Principal angles between the coordinate subspace of mask idx (k,) and span(v) for an
    orthonormal v (n, k'): since E_idxᵀ V = V[idx], the singular values of V[idx] (k, k')
    are their cosines; no dense (n, k) mask basis is formed."""
    v = as_basis(v)
    check_orthonormal(v, "v")
    idx = _check_mask(idx, v.shape[0])
    return _angles(v[idx])


def mask_grassmann_distances(idx: Any, v: Any) -> GrassmannDistances:
    """`grassmann_distances` between the coordinate subspace of mask idx (k,) and span(v)
    (orthonormal (n, k')), from `mask_principal_angles`."""
    return _distances(mask_principal_angles(idx, v))


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


def mask_overlap_curve(theta: Any, vectors: Any, ks: Sequence[int] | None = None) -> OverlapCurve:
    """Overlap ‖Vₖ[mask_k]‖²_F / k of the top-k |θ| mask with the first k columns Vₖ of a ranked
    orthonormal basis, for every k in `ks` (default all of 1 .. K).

    theta (n,): flat parameters; vectors (n, K): orthonormal columns (checked), ranked (e.g.
    eigenvectors by |λ|, largest first). mask_k is `top_magnitude_mask(theta, k)` (ties in |θ|
    to the lower index). The whole curve comes from one (K, K) array of squared entries of the
    rows of the K largest |θ_i| (2-D prefix sums), O(n log n + K²) instead of one mask per k.
    `chance` is k/n, the expected overlap of a random k-mask with any k-dimensional subspace.
    """
    v = _ranked_basis(vectors, "vectors")
    theta = _flat_theta(theta)
    n, top = v.shape
    if theta.size != n:
        raise ValueError(f"theta has {theta.size} entries but the basis has n = {n} rows")
    ks_arr = _check_ks(ks, top)
    sq = v[_magnitude_order(theta)[:top], :top] ** 2  # (K, K): mask rows in order, columns
    prefix = np.cumsum(np.cumsum(sq, axis=0), axis=1)  # prefix[k-1, k-1] = ‖Vₖ[mask_k]‖²_F
    overlap = prefix[ks_arr - 1, ks_arr - 1] / ks_arr
    return OverlapCurve(ks_arr, overlap, ks_arr / n)


def best_mask(vectors: Any, k: int) -> np.ndarray:
    """The k-sparse mask (k,) (indices, ascending) of largest overlap with span of the first k
    columns of an orthonormal basis vectors (n, K >= k): the k rows of largest ‖Vₖ[i, :]‖²
    (the overlap ‖Vₖ[idx]‖²_F / k is a sum over the chosen rows, so no other mask beats it;
    ties to the lower index)."""
    v = _ranked_basis(vectors, "vectors")
    if not isinstance(k, int | np.integer) or not 1 <= k <= v.shape[1]:
        raise ValueError(f"need an integer 1 <= k <= K = {v.shape[1]}, got k={k!r}")
    rows = np.sum(v[:, :k] ** 2, axis=1)
    return np.sort(np.argsort(-rows, kind="stable")[:k])


def best_mask_overlap_curve(vectors: Any, ks: Sequence[int] | None = None) -> OverlapCurve:
    """The largest overlap any k-sparse mask reaches with the first k columns of a ranked
    orthonormal basis vectors (n, K), for every k in `ks` (default 1 .. K): the sum of the k
    largest row norms ‖Vₖ[i, :]‖² over k (the overlap of `best_mask`), an upper bound for the
    magnitude mask's `mask_overlap_curve`. O(n K) time (running row norms, one partial sort
    per k), O(n) memory beyond the basis; chance k/n as in `mask_overlap_curve`."""
    v = _ranked_basis(vectors, "vectors")
    n, top = v.shape
    ks_arr = _check_ks(ks, top)
    wanted = set(ks_arr.tolist())
    rows = np.zeros(n)
    best = {}
    for k in range(1, int(ks_arr.max()) + 1):
        rows += v[:, k - 1] ** 2
        if k in wanted:
            best[k] = np.sum(np.partition(rows, n - k)[n - k :]) / k
    return OverlapCurve(ks_arr, np.asarray([best[int(k)] for k in ks_arr]), ks_arr / n)


class MaskIoUCurve(NamedTuple):
    """ks (m,); iou (m,) |A_k ∩ B_k| / |A_k ∪ B_k| of the two top-k masks; chance (m,) the IoU
    of two random k-masks at the expected intersection k²/n, (k/n) / (2 − k/n)."""

    ks: np.ndarray
    iou: np.ndarray
    chance: np.ndarray


def magnitude_mask_iou_curve(
    theta_a: Any, theta_b: Any, ks: Sequence[int] | None = None
) -> MaskIoUCurve:
    """IoU of the top-k |θ| masks of two flat vectors (n,) (e.g. consecutive checkpoints), for
    every k in `ks` (default 1 .. n; ties to the lower index as in `top_magnitude_mask`).
    O(n log n) for the whole curve: entry i is in both top-k masks iff the larger of its two
    ranks is below k."""
    a, b = _flat_theta(theta_a, "theta_a"), _flat_theta(theta_b, "theta_b")
    if a.size != b.size:
        raise ValueError(f"theta_a and theta_b differ in length: {a.size} vs {b.size}")
    n = a.size
    ks_arr = _check_ks(ks, n)
    rank_a, rank_b = np.empty(n, np.int64), np.empty(n, np.int64)
    rank_a[_magnitude_order(a)] = np.arange(n)
    rank_b[_magnitude_order(b)] = np.arange(n)
    both = np.cumsum(np.bincount(np.maximum(rank_a, rank_b), minlength=n))  # |A_k ∩ B_k|, k-1
    inter = both[ks_arr - 1]
    return MaskIoUCurve(ks_arr, inter / (2 * ks_arr - inter), overlap_to_iou(ks_arr / n))
