"""Orthonormal bases of protected subspaces over flat parameter vectors.

A basis is an (n, k) array of orthonormal columns over the flat layout of the parameters
(`hessjax.curvature.make_layout(params)`: all leaves, `jax.tree_util` leaf order, the layout
of `hessian_operator(...)` and of `eigsh` eigenvectors). Bases grow task by task with
`extend_basis`; a fixed-capacity copy padded with zero columns (`pad_columns`) keeps array
shapes, and so compilations, fixed while it grows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


def default_tol(dtype) -> float:
    """Relative norm below which a Gram-Schmidt remainder counts as dependent: 1e3 · eps
    (1.2e-4 in float32, 2.2e-13 in float64)."""
    return 1e3 * float(jnp.finfo(dtype).eps)


def check_orthonormal(basis: Array, name: str = "basis", allow_zero: bool = False) -> None:
    """Raise ValueError unless `basis` is a finite (n, k) array with orthonormal columns
    (‖BᵀB − I‖_max <= 10·sqrt(eps)); with `allow_zero`, all-zero columns (padding) are also
    accepted. Skipped for traced arrays."""
    if isinstance(basis, jax.core.Tracer):
        return
    b = np.asarray(basis)
    if b.ndim != 2:
        raise ValueError(f"{name} must be an (n, k) array of column vectors, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {b.dtype}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} has non-finite entries")
    if b.shape[1] == 0:
        return
    gram = b.T.astype(np.float64) @ b.astype(np.float64)
    want = np.eye(b.shape[1])
    if allow_zero:
        want = want * (np.diag(gram) > 0.5)
    err = float(np.max(np.abs(gram - want)))
    if err > 10 * np.sqrt(np.finfo(b.dtype).eps):
        what = "orthonormal (or zero)" if allow_zero else "orthonormal"
        raise ValueError(f"{name} columns are not {what}: max |BᵀB − I| = {err:.2e}")


@jax.jit
def _gram_schmidt(q: Array, count: Array, vectors: Array, tol: Array) -> tuple[Array, Array]:
    """Append the columns of `vectors` (n, m) to the first `count` columns of `q` (n, K),
    K >= count + m, zeros after `count`: two passes of classical Gram-Schmidt per column against
    all of q (zero columns contribute nothing); a column whose remainder is <= tol · its norm
    is dropped. Returns (q, new count)."""

    def body(j, carry):
        q, count = carry
        x = vectors[:, j]
        norm0 = jnp.linalg.norm(x)
        x = x - q @ (q.T @ x)
        x = x - q @ (q.T @ x)  # "twice is enough"
        norm = jnp.linalg.norm(x)
        keep = (norm > tol * norm0) & (norm0 > 0)
        slot = jnp.minimum(count, q.shape[1] - 1)
        col = jnp.where(keep, x / jnp.where(keep, norm, 1), q[:, slot])
        q = lax.dynamic_update_slice(q, col[:, None], (jnp.zeros_like(slot), slot))
        return q, count + keep.astype(count.dtype)

    return lax.fori_loop(0, vectors.shape[1], body, (q, count))


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
    k = basis.shape[1]
    if m == 0:
        return basis.astype(dtype)
    q = jnp.concatenate([basis.astype(dtype), jnp.zeros((n, m), dtype)], axis=1)
    q, count = _gram_schmidt(q, jnp.int32(k), new_vectors.astype(dtype), jnp.asarray(tol, dtype))
    return q[:, : int(count)]


def pad_columns(basis: Array, capacity: int) -> Array:
    """(n, k) -> (n, capacity) with zero columns appended (k <= capacity). Zero columns change
    no projection, so a padded basis can stand in for the basis under a fixed shape."""
    basis = jnp.asarray(basis)
    if basis.ndim != 2:
        raise ValueError(f"basis must be (n, k), got shape {basis.shape}")
    if basis.shape[1] > capacity:
        raise ValueError(f"basis has {basis.shape[1]} columns, more than capacity {capacity}")
    return jnp.pad(basis, ((0, 0), (0, capacity - basis.shape[1])))


def used_columns(padded: Array) -> Array:
    """The leading non-zero columns of a zero-padded basis (inverse of `pad_columns`)."""
    norms = np.linalg.norm(np.asarray(padded), axis=0)
    nonzero = np.flatnonzero(norms > 0)
    count = 0 if nonzero.size == 0 else int(nonzero[-1]) + 1
    return jnp.asarray(padded)[:, :count]


@jax.jit
def project_vector(basis: Array, v: Array) -> Array:
    """(I − B Bᵀ) v for an (n, k) basis with orthonormal (or zero) columns and v (n,)."""
    basis = basis.astype(v.dtype)
    return v - basis @ (basis.T @ v)
