"""Single-pass sketched eigendecomposition of a symmetric operator, with an a-posteriori
error estimate (in the spirit of Tropp, Yurtsever, Udell and Cevher 2019 and of Fernandez et
al., TMLR 2025).

With random test matrices Ω (n, k_o) and Φ (n, k_i), k_i >= k_o, every product with A is taken
in one pass over the operator (independent, batched products):

  outer sketch  Y = A Ω        (n, k_o)   -> Q = orth(Y), the approximate range
  core sketch   Z = Φᵀ (A Φ)   (k_i, k_i)
  core          C = (ΦᵀQ)⁺ Z (ΦᵀQ)⁺ᵀ   (k_o, k_o), symmetrised, solved in float64

and Â = Q C Qᵀ. Eigenpairs of C rotate into eigenpairs (Q U, λ) of Â, ranked by |λ|. Memory is
O(n · (k_o + k_i)); no (n, n) array is formed. The error ‖A − Â‖_F / ‖A‖_F is estimated from p
extra Gaussian probes G: E‖M G‖²_F = p ‖M‖²_F for any M.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax.linalg import _checks
from hessjax.linalg.operator import LinearOperatorLike, apply_block

Array = jax.Array
TestMatrix = Literal["gaussian", "rademacher", "srtt"]
_TEST_MATRICES = ("gaussian", "rademacher", "srtt")


class SketchResult(NamedTuple):
    """eigenvalues (k,) ranked by |λ| descending; eigenvectors (n, k) orthonormal columns;
    error_estimate: estimate of ‖A − Â_k‖_F / ‖A‖_F for the returned rank-k approximation
    Â_k = V diag(λ) Vᵀ (nan without probes), error_stderr: its standard error (delta method);
    num_matvecs: products spent (k_o + k_i + probes)."""

    eigenvalues: Array
    eigenvectors: Array
    error_estimate: Array
    error_stderr: Array
    num_matvecs: int


def random_test_matrix(key: Array, n: int, k: int, kind: TestMatrix, dtype=jnp.float32) -> Array:
    """Random (n, k) test matrix: 'gaussian' N(0, 1) entries, 'rademacher' ±1 entries, or
    'srtt' (subsampled randomised trigonometric transform) √n · diag(s) · Fᵀ[:, rows] with
    random signs s, the orthonormal DCT-II matrix F and k distinct random rows of it: its
    columns are orthogonal, with unit-variance entries like the others."""
    if kind not in _TEST_MATRICES:
        raise ValueError(f"test matrix must be one of {_TEST_MATRICES}, got {kind!r}")
    if kind == "gaussian":
        return jax.random.normal(key, (n, k), dtype)
    if kind == "rademacher":
        return jax.random.rademacher(key, (n, k), dtype)
    sign_key, row_key = jax.random.split(key)
    signs = jax.random.rademacher(sign_key, (n, 1), dtype)
    rows = jax.random.choice(row_key, n, (k,), replace=False)
    j = jnp.arange(n)[:, None]
    scale = jnp.where(rows == 0, 1.0, np.sqrt(2.0))  # orthonormal DCT-II row norms · √n
    return (signs * scale * jnp.cos(jnp.pi * rows * (2 * j + 1) / (2 * n))).astype(dtype)


@functools.partial(jax.jit, static_argnames=("k",))
def _core(y: Array, phi: Array, z: Array, k: int):
    """Eigenpairs of Â = Q C Qᵀ from the sketches, in float64; top k by |λ|."""
    dtype = y.dtype
    with jax.enable_x64(True):
        y, phi, z = y.astype(jnp.float64), phi.astype(jnp.float64), z.astype(jnp.float64)
        q, _ = jnp.linalg.qr(y)
        pq = jnp.linalg.pinv(phi.T @ q)  # (k_o, k_i)
        core = pq @ ((z + z.T) / 2) @ pq.T
        lam, u = jnp.linalg.eigh((core + core.T) / 2)
        order = jnp.argsort(-jnp.abs(lam))[:k]
        return lam[order].astype(dtype), (q @ u[:, order]).astype(dtype)


def sketch_eigh(
    op: LinearOperatorLike,
    k: int,
    *,
    key: Array,
    outer: int | None = None,
    inner: int | None = None,
    test_matrix: TestMatrix = "gaussian",
    error_probes: int = 0,
    block_size: int | None = None,
) -> SketchResult:
    """k eigenpairs of largest |λ| of a symmetric operator from one pass of batched products.

    Args:
      op: operator on flat (n,) vectors.
      k: eigenpairs returned, 1 <= k <= outer.
      key: PRNG key for the test matrices and the error probes.
      outer: outer sketch size k_o (default 2k); inner: core sketch size k_i >= k_o (default
        2 k_o). Accuracy grows with both; cost is k_o + k_i products.
      test_matrix: 'gaussian', 'rademacher' or 'srtt' (for Ω and Φ).
      error_probes: p extra Gaussian probes for the error estimate (0: no estimate; 10-30 give
        a few percent relative precision).
      block_size: products taken this many columns at a time (default all at once); memory
        of a block is block_size tangents.
    """
    n = op.size
    _checks.check_dtype(op.dtype)
    _checks.check_key(key)
    _checks.check_positive(k, "k")
    _checks.check_block_size(block_size)
    outer = 2 * k if outer is None else outer
    inner = 2 * outer if inner is None else inner
    _checks.check_positive(outer, "outer")
    _checks.check_positive(inner, "inner")
    if not k <= outer <= inner <= n:
        raise ValueError(f"need k <= outer <= inner <= n, got {k}, {outer}, {inner}, n = {n}")
    if not isinstance(error_probes, int | np.integer) or error_probes < 0 or error_probes == 1:
        raise ValueError(f"error_probes must be 0 or an integer >= 2, got {error_probes!r}")
    omega_key, phi_key, probe_key = jax.random.split(key, 3)
    omega = random_test_matrix(omega_key, n, outer, test_matrix, op.dtype)
    phi = random_test_matrix(phi_key, n, inner, test_matrix, op.dtype)
    products = apply_block(op, jnp.concatenate([omega, phi], axis=1), block_size)
    y, a_phi = products[:, :outer], products[:, outer:]
    z = phi.T @ a_phi
    eigenvalues, eigenvectors = _core(y, phi, z, k)
    spent = outer + inner
    error = stderr = jnp.asarray(jnp.nan, op.dtype)
    if error_probes:
        g = jax.random.normal(probe_key, (n, error_probes), op.dtype)
        ag = apply_block(op, g, block_size)
        spent += error_probes
        error, stderr = _relative_error(ag, g, eigenvalues, eigenvectors)
    return SketchResult(eigenvalues, eigenvectors, error, stderr, spent)


@jax.jit
def _relative_error(ag: Array, g: Array, lam: Array, vecs: Array) -> tuple[Array, Array]:
    """‖A − Â‖_F / ‖A‖_F from probes: per-probe squared norms of (A − Â) g and A g, ratio of
    means, standard error by the delta method."""
    residual = ag - vecs @ (lam[:, None] * (vecs.T @ g))
    e = jnp.sum(residual**2, axis=0)
    a = jnp.sum(ag**2, axis=0)
    p = e.shape[0]
    ratio = jnp.mean(e) / jnp.mean(a)
    cov = jnp.cov(jnp.stack([e, a]))
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (p * jnp.mean(a) ** 2)
    rel = jnp.sqrt(ratio)
    return rel, jnp.sqrt(jnp.maximum(var, 0)) / (2 * jnp.maximum(rel, 1e-30))


def magnitude_errors(approx, reference) -> np.ndarray:
    """Relative errors (m,) of |λ| rank by rank, ||approx_i| − |ref_i|| / |ref_i|, for two
    (m,) eigenvalue lists ranked by |λ| (as `sketch_eigh` and `eigsh(which="LM")` return them).
    Signs are left to eigenspace overlaps: a pair +a, −b with a ≈ b swaps places at random
    (also at the m-th place, where the two top-m sets then differ) and would show a spurious
    error near 2."""
    a = np.abs(np.asarray(approx, np.float64))
    r = np.abs(np.asarray(reference, np.float64))
    return np.abs(a - r) / r
