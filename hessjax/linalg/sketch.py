"""Single-pass sketched eigendecomposition of a symmetric operator, with an a-posteriori
error estimate (in the spirit of Tropp, Yurtsever, Udell and Cevher 2019 and of Fernandez et
al., TMLR 2025).

With random test matrices Ω (n, k_o) and Φ (n, k_i), k_i >= k_o, every product with A is taken
in one pass over the operator (independent, batched products):

  outer sketch  Y = A Ω        (n, k_o)   -> Q = orth(Y), the approximate range
  core sketch   Z = Φᵀ (A Φ)   (k_i, k_i)
  core          C = (ΦᵀQ)⁺ Z (ΦᵀQ)⁺ᵀ   (k_o, k_o), symmetrised, solved in float64

and Â = Q C Qᵀ. Eigenpairs of C rotate into eigenpairs (Q U, λ) of Â, ranked by |λ|. The error
‖A − Â‖_F / ‖A‖_F is estimated from p extra Gaussian probes G: E‖M G‖²_F = p ‖M‖²_F for any M.

Memory. Only Y (then Q, which overwrites it) is held at parameter length, in the operator's
dtype: Ω, Φ and the probes are regenerated block by block from their keys (the columns of
`jax.random.normal(key, (n, k))` are drawn directly from threefry's counters, so the matrices
and the results do not depend on the block size), Z and ΦᵀQ are accumulated block by block
and AΦ is never held. Q is orthonormalised in the operator's dtype by CholeskyQR2 with
float64 Gram matrices (an eigendecomposition instead of a Cholesky factor, so a rank-deficient
Y works); float64 is kept for the k_o × k_o and k_i × k_i matrices. In float32 the peak is
about n · (4 k_o + 4 k + 12 · block_size) bytes plus what the operator's products need.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

from hessjax import _checks
from hessjax.linalg.operator import LinearOperatorLike, Operator, constrain

Array = jax.Array
TestMatrix = Literal["gaussian", "rademacher", "srtt"]
_TEST_MATRICES = ("gaussian", "rademacher", "srtt")
DEFAULT_BLOCK_SIZE = 32  # products per vmapped block, and test-matrix columns per generation
_CHUNK_ELEMENTS = 1 << 22  # entries of one (rows, chunk) float64 temporary of the Gram passes


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


# ----------------------------------------------------------------------------- blocks


def _loop(total: int, size: int, body, carry):
    """carry = body(i, start, width, carry) over the blocks [start, start + width) of
    [0, total): total // size full blocks in a `fori_loop` (i and start traced, width static),
    then the remainder block (all static)."""
    full, rem = divmod(total, size)
    if full:
        carry = lax.fori_loop(0, full, lambda i, c: body(i, i * size, size, c), carry)
    if rem:
        carry = body(full, full * size, rem, carry)
    return carry


def _dot(x: Array, y: Array) -> Array:
    """x (a, n), y (b, n) -> x yᵀ (a, b), contracting the long axis of both (no transposes)."""
    return lax.dot_general(x, y, (((1,), (1,)), ((), ())))


class _Generator(NamedTuple):
    """What the columns of an (n, k) test matrix are made from: its key and, for 'srtt', the
    random signs (n,) and the k DCT rows (k,) shared by all blocks."""

    key: Array
    k: int
    signs: Array | None
    rows: Array | None


def _generator(key: Array, n: int, k: int, kind: str, dtype) -> _Generator:
    if kind != "srtt":
        return _Generator(key, k, None, None)
    sign_key, row_key = jax.random.split(key)
    signs = _test_block(_Generator(sign_key, 1, None, None), "rademacher", 0, 1, n, dtype)[0]
    rows = jax.random.choice(row_key, n, (k,), replace=False).astype(jnp.int32)
    return _Generator(key, k, signs, rows)


def _blockwise_stream(key: Array) -> bool:
    """True when the columns of jax.random.normal(key, (n, k)) can be drawn block by block:
    threefry keys with `jax_threefry_partitionable` (the default), whose bits are a function of
    (key, flat index) only."""
    return bool(jax.config.jax_threefry_partitionable) and "threefry" in str(
        jax.random.key_impl(key)
    )


def _bits(key: Array, n: int, k: int, start, width: int, nbits: int) -> Array:
    """The random bits of jax.random.*(key, (n, k)) at columns [start, start + width), as a
    (width, n) array: threefry2x32 of the flat index r k + c split into two 32-bit words,
    made in chunks of rows so that threefry's temporaries stay small."""
    k1, k2 = jax.random.key_data(key)
    udtype = jnp.uint64 if nbits == 64 else jnp.uint32

    def chunk(i, row0, rows, out):
        with jax.enable_x64(True):
            col = (start + jnp.arange(width)).astype(jnp.uint64)[:, None]
            r = (row0 + jnp.arange(rows)).astype(jnp.uint64)[None, :]
            index = r * jnp.uint64(k) + col
            hi, lo = (index >> 32).astype(jnp.uint32), index.astype(jnp.uint32)
            b1, b2 = threefry2x32_p.bind(
                jnp.broadcast_to(k1, hi.shape), jnp.broadcast_to(k2, hi.shape), hi, lo
            )
            bits = (b1.astype(jnp.uint64) << 32) | b2.astype(jnp.uint64) if nbits == 64 else b1 ^ b2
            return lax.dynamic_update_slice_in_dim(out, bits, row0, 1)

    with jax.enable_x64(True):
        out = jnp.zeros((width, n), udtype)
    return _loop(n, _chunk(width, n), chunk, out)


def _uniform(bits: Array, dtype, lo, hi) -> Array:
    """jax.random.uniform's map of random bits to [lo, hi) in dtype."""
    finfo = np.finfo(dtype)
    with jax.enable_x64(True):
        ud = bits.dtype
        one = jnp.asarray(np.array(1.0, dtype).view(ud), ud)
        fb = lax.shift_right_logical(bits, jnp.asarray(finfo.bits - finfo.nmant, ud)) | one
        floats = lax.bitcast_convert_type(fb, dtype) - jnp.asarray(1.0, dtype)
        lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
        return lax.max(lo, floats * (hi - lo) + lo)


def _draw_columns(gen: _Generator, kind: str, start, width: int, n: int, dtype) -> Array:
    """Columns [start, start + width) of jax.random.normal / rademacher(key, (n, k), dtype),
    bit for bit, as a (width, n) array."""
    dtype = np.dtype(dtype)
    if kind == "gaussian":
        lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
        bits = _bits(gen.key, n, gen.k, start, width, 8 * dtype.itemsize)
        u = _uniform(bits, dtype, lo, np.array(1.0, dtype))
        return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(u))
    # bernoulli(0.5) compares a uniform of the default float with 0.5: +1 where the top
    # random bit is 0 (no float64 uniforms formed)
    nbits = 8 * np.dtype(jnp.result_type(float)).itemsize
    top = _bits(gen.key, n, gen.k, start, width, nbits) >> (nbits - 1)
    return (1 - 2 * top.astype(dtype)).astype(dtype)


def _test_block(gen: _Generator, kind: str, start, width: int, n: int, dtype) -> Array:
    """Columns [start, start + width) of the (n, k) test matrix `random_test_matrix` makes, as
    rows of a (width, n) array, without forming the others."""
    if kind != "srtt":
        if _blockwise_stream(gen.key):
            return _draw_columns(gen, kind, start, width, n, dtype)
        # other PRNGs: column j from fold_in(key, j) (a different stream, as random_test_matrix)
        draw = jax.random.normal if kind == "gaussian" else jax.random.rademacher
        keys = jax.vmap(jax.random.fold_in, (None, 0))(gen.key, start + jnp.arange(width))
        return jax.vmap(lambda key: draw(key, (n,), dtype))(keys)
    rows = lax.dynamic_slice_in_dim(gen.rows, start, width)
    with jax.enable_x64(True):  # exact phase r (2j + 1) mod 4n (fused, never materialised)
        m = (rows.astype(jnp.int64)[:, None] * (2 * jnp.arange(n, dtype=jnp.int64) + 1)) % (4 * n)
        angle = m.astype(dtype) * jnp.asarray(np.pi / (2 * n), dtype)
    scale = jnp.where(rows == 0, 1.0, np.sqrt(2.0)).astype(dtype)  # orthonormal DCT-II · √n
    return gen.signs[None, :] * scale[:, None] * jnp.cos(angle)


def random_test_matrix(key: Array, n: int, k: int, kind: TestMatrix, dtype=jnp.float32) -> Array:
    """Random (n, k) test matrix: 'gaussian' N(0, 1) entries, 'rademacher' ±1 entries, or
    'srtt' (subsampled randomised trigonometric transform) √n · diag(s) · Fᵀ[:, rows] with
    random signs s, the orthonormal DCT-II matrix F and k distinct random rows of it: its
    columns are orthogonal, with unit-variance entries like the others.

    'gaussian' and 'rademacher' are `jax.random.normal` / `rademacher(key, (n, k), dtype)`
    (with a non-threefry or non-partitionable PRNG: column j from `fold_in(key, j)`).
    `sketch_eigh` regenerates exactly this matrix block by block, whatever its block size."""
    if kind not in _TEST_MATRICES:
        raise ValueError(f"test matrix must be one of {_TEST_MATRICES}, got {kind!r}")
    key = _typed(key)
    if kind != "srtt" and _blockwise_stream(key):
        draw = jax.random.normal if kind == "gaussian" else jax.random.rademacher
        return draw(key, (n, k), dtype)
    return _test_block(_generator(key, n, k, kind, dtype), kind, 0, k, n, dtype).T


def _typed(key: Array) -> Array:
    """A typed PRNG key (legacy raw uint32 keys are wrapped)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


# ----------------------------------------------------------------------------- range


def _chunk(rows: int, n: int) -> int:
    return max(1, min(n, _CHUNK_ELEMENTS // rows))


def _gram(xt: Array, w: Array | None) -> Array:
    """Σ_c (wᵀ x_c)(wᵀ x_c)ᵀ (r, r) in float64 over column chunks x_c of xt (r, n), with w
    (r, r) float64 or None (the identity). Call inside enable_x64."""
    r, n = xt.shape

    def body(i, start, width, g):
        c = lax.dynamic_slice_in_dim(xt, start, width, axis=1).astype(jnp.float64)
        if w is not None:
            c = w.T @ c
        return g + _dot(c, c)

    return _loop(n, _chunk(r, n), body, jnp.zeros((r, r), jnp.float64))


def _inv_sqrt(g: Array, floor: float) -> Array:
    """W with Wᵀ G W = I on the eigenvectors of G above floor · max eigenvalue (0 elsewhere)."""
    s, v = jnp.linalg.eigh(g)
    keep = s > floor * jnp.max(s)
    return v * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)


def _orthonormalise(yt: Array) -> Array:
    """Rows of Qt = Wᵀ Yt orthonormal with the span of Yt's rows (k_o, n), written over yt
    chunk by chunk: CholeskyQR2 with float64 Gram matrices. Directions of Y below the
    operator dtype's resolution (singular values < ~4 eps σ_max) give zero rows."""
    r, n = yt.shape
    eps = float(np.finfo(yt.dtype).eps)
    floor = max(r * float(np.finfo(np.float64).eps), (4 * eps) ** 2)
    with jax.enable_x64(True):
        w1 = _inv_sqrt(_gram(yt, None), floor)
        w = w1 @ _inv_sqrt(_gram(yt, w1), floor)

        def body(i, start, width, qt):
            c = lax.dynamic_slice_in_dim(qt, start, width, axis=1).astype(jnp.float64)
            return lax.dynamic_update_slice_in_dim(qt, (w.T @ c).astype(qt.dtype), start, 1)

        return _loop(n, _chunk(r, n), body, yt)


# ----------------------------------------------------------------------------- the sketch


@functools.partial(jax.jit, static_argnames=("k", "outer", "inner", "kind", "block_size", "probes"))
def _sketch(op: Operator, key: Array, k: int, outer: int, inner: int, kind: str,
            block_size: int, probes: int):  # fmt: skip
    """The whole sketch in one jit: (eigenvalues (k,), eigenvectors (n, k), error, stderr)."""
    n, dtype = op.size, op.dtype
    products = jax.vmap(op.matvec)  # (width, n) -> (width, n)
    omega_key, phi_key, probe_key = jax.random.split(_typed(key), 3)
    omega = _generator(omega_key, n, outer, kind, dtype)
    phi = _generator(phi_key, n, inner, kind, dtype)

    # outer sketch Yᵀ = (A Ω)ᵀ, block by block, then Q over it
    def rows(x):  # (r, n) arrays split along n as op's vectors are (no-op without a layout)
        return constrain(op, x, axis=-1)

    def outer_block(i, start, width, yt):
        ay = products(rows(_test_block(omega, kind, start, width, n, dtype)))
        return rows(lax.dynamic_update_slice_in_dim(yt, rows(ay), start, 0))

    yt = _loop(outer, block_size, outer_block, rows(jnp.zeros((outer, n), dtype)))
    qt = rows(_orthonormalise(yt))

    # core sketch: block b of Φ gives A Φ_b, its rows of ΦᵀQ and the blocks Z_cb = Φ_cᵀ A Φ_b
    # for c <= b (Φ_c regenerated; Z_bc = Z_cbᵀ as A is symmetric; Z_bb stored halved)
    def core_block(i, start, width, carry):
        with jax.enable_x64(True):
            z, pq = carry
            phi_b = rows(_test_block(phi, kind, start, width, n, dtype))
            a_phi = rows(products(phi_b))
            pq = lax.dynamic_update_slice_in_dim(pq, _dot(phi_b, qt).astype(jnp.float64), start, 0)
            z = lax.dynamic_update_slice(
                z, 0.5 * _dot(phi_b, a_phi).astype(jnp.float64), (start, start)
            )

            def earlier(c, z):
                phi_c = rows(_test_block(phi, kind, c * block_size, block_size, n, dtype))
                zcb = _dot(phi_c, a_phi).astype(jnp.float64)
                return lax.dynamic_update_slice(z, zcb, (c * block_size, start))

            return lax.fori_loop(0, i, earlier, z), pq

    with jax.enable_x64(True):
        init = (jnp.zeros((inner, inner), jnp.float64), jnp.zeros((inner, outer), jnp.float64))
        z, phi_q = _loop(inner, block_size, core_block, init)
        z = z + z.T
        pinv = jnp.linalg.pinv(phi_q)  # (k_o, k_i)
        core = pinv @ z @ pinv.T
        lam, u = jnp.linalg.eigh((core + core.T) / 2)
        order = jnp.argsort(-jnp.abs(lam))[:k]
        lam, u = lam[order].astype(dtype), u[:, order].astype(dtype)
    vt = rows(u.T @ qt)  # (k, n) eigenvectors as rows

    error = stderr = jnp.asarray(jnp.nan, dtype)
    if probes:

        def probe_block(i, start, width, carry):
            e, a = carry
            g = rows(_test_block(_Generator(probe_key, probes, None, None), "gaussian", start,
                                 width, n, dtype))  # fmt: skip
            ag = rows(products(g))
            residual = ag - (_dot(g, vt) * lam) @ vt
            e = lax.dynamic_update_slice_in_dim(e, jnp.sum(residual**2, axis=1), start, 0)
            a = lax.dynamic_update_slice_in_dim(a, jnp.sum(ag**2, axis=1), start, 0)
            return e, a

        init = (jnp.zeros((probes,), dtype), jnp.zeros((probes,), dtype))
        error, stderr = _relative_error(*_loop(probes, block_size, probe_block, init))
    return lam, constrain(op, vt.T), error, stderr


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
      op: operator on flat (n,) vectors (an `Operator`: the sketch runs inside one jit).
      k: eigenpairs returned, 1 <= k <= outer.
      key: PRNG key for the test matrices and the error probes.
      outer: outer sketch size k_o (default 2k); inner: core sketch size k_i >= k_o (default
        2 k_o). Accuracy grows with both; cost is k_o + k_i products.
      test_matrix: 'gaussian', 'rademacher' or 'srtt' (for Ω and Φ).
      error_probes: p extra Gaussian probes for the error estimate (0: no estimate; 10-30 give
        a few percent relative precision).
      block_size: products taken this many columns at a time (default
        min(DEFAULT_BLOCK_SIZE = 32, inner)); memory of a block is block_size tangents. The
        test matrices are generated (and regenerated) in blocks of this size too; the result
        does not depend on it beyond round-off (see `random_test_matrix`).

    Peak memory in float32: about n · (4 k_o + 4 k + 12 block_size) bytes beyond the
    operator's own (a (k_o, n) range basis, the (n, k) result, a few blocks); no (n, k)
    float64 array is formed.
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
    if test_matrix not in _TEST_MATRICES:
        raise ValueError(f"test matrix must be one of {_TEST_MATRICES}, got {test_matrix!r}")
    if not isinstance(op, Operator):
        raise ValueError(f"sketch_eigh needs an in-memory Operator (a pytree), got {type(op)}")
    block_size = min(DEFAULT_BLOCK_SIZE if block_size is None else block_size, inner)
    lam, vecs, error, stderr = _sketch(
        op, key, int(k), int(outer), int(inner), test_matrix, int(block_size), int(error_probes)
    )
    return SketchResult(lam, vecs, error, stderr, outer + inner + error_probes)


def _relative_error(e: Array, a: Array) -> tuple[Array, Array]:
    """‖A − Â‖_F / ‖A‖_F from per-probe squared norms e = ‖(A − Â) g‖² and a = ‖A g‖²: ratio
    of means, standard error by the delta method."""
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
