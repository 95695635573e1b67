"""The float32 path users run by default (no jax_enable_x64), composition with an outer
`jit` / `vmap`, and failures that used to pass silently: non-finite products, zero
operators, numpy integer budgets, spurious float64 warnings.

Float32 tolerances: eigenvalues of a well-separated spectrum to 1e-5 relative (a Ritz value's
error is O(eps · ‖A‖) once converged, eps = 1.2e-7, plus the tol = 1e-5 residual squared over
the gap).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.curvature import hessian_operator
from hessjax.linalg import (
    Operator,
    Partition,
    block_eigsh,
    dense_operator,
    eigsh,
    hutchpp,
    lanczos_tridiag,
    power_iteration,
    sketch_eigh,
    slq,
)

N = 40
KEY = jax.random.key(0)
SPECTRUM = np.concatenate([[9.0, 7.0, 5.0, -6.0], np.linspace(-1, 1, N - 4)])


@pytest.fixture(scope="module")
def mat():
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(N, N)))
    a = (q * SPECTRUM) @ q.T
    return (a + a.T) / 2


def test_float32_solvers_match_eigh(mat):
    op = dense_operator(jnp.asarray(mat, jnp.float32))
    w = np.sort(SPECTRUM)[::-1]
    res = eigsh(op, 3, key=KEY, tol=1e-5)
    assert res.eigenvalues.dtype == jnp.float32 and isinstance(res.num_matvecs, int)
    np.testing.assert_allclose(res.eigenvalues, w[:3], rtol=1e-5)
    restarted = eigsh(op, 3, key=KEY, num_steps=10, max_restarts=50, tol=1e-5)
    np.testing.assert_allclose(restarted.eigenvalues, w[:3], rtol=1e-5)
    part = Partition.from_ids((np.arange(N) >= N // 2).astype(int))
    blocks = block_eigsh(op, part, 1, key=KEY, num_steps=N // 2, tol=None)
    for i in range(2):
        idx = np.flatnonzero(part.block_ids == i)
        want = np.linalg.eigvalsh(mat[np.ix_(idx, idx)])[-1]
        np.testing.assert_allclose(blocks.eigenvalues[i, 0], want, rtol=1e-5)


def test_thick_restart_emits_no_float64_warnings(mat):
    """It printed four 'Explicitly requested dtype float64' truncation warnings per call."""
    op = dense_operator(jnp.asarray(mat, jnp.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eigsh(op, 2, key=jax.random.key(5), num_steps=8, max_restarts=40, tol=1e-4)


def test_solvers_compose_with_outer_jit(mat):
    """Inside one outer jit every solver gives what it gives eagerly (same keys)."""
    a = jnp.asarray(mat, jnp.float32)

    def everything(a, key):
        op = dense_operator(a)
        top = eigsh(op, 2, key=key, tol=1e-5)
        sk = sketch_eigh(op, 4, key=key, outer=N, inner=N)
        tr = hutchpp(op, 30, key=key)
        quad = slq(op, num_probes=2, num_steps=20, key=key)
        return top.eigenvalues, sk.eigenvalues, tr.estimate, quad.nodes, top.num_matvecs

    jitted = jax.jit(everything)(a, KEY)
    eager = everything(a, KEY)
    for got, want in zip(jitted[:4], eager[:4], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert jitted[4].dtype == jnp.int32 and int(jitted[4]) == eager[4]
    np.testing.assert_allclose(jitted[0], np.sort(SPECTRUM)[::-1][:2], rtol=1e-5)
    # the sketch with outer = inner = n is exact up to round-off: top-4 by |λ|
    np.testing.assert_allclose(jitted[1], [9.0, 7.0, -6.0, 5.0], rtol=1e-4)


def test_eigsh_under_vmap_over_parameter_sets():
    """A batch of 3 parameter sets θ = c·1 of the loss Σ s_i θ_i⁴ / 12, whose Hessian is
    diag(s c²)."""
    cs = jnp.asarray([1.0, 2.0, 0.5], jnp.float32)
    s = jnp.asarray(np.linspace(1.0, 3.0, 12), jnp.float32)
    data = jnp.ones((4, 1), jnp.float32)

    def loss(p, batch):
        return jnp.sum(s * p["w"] ** 4) / 12 * jnp.mean(batch)

    def top(c):
        op = hessian_operator(loss, {"w": c * jnp.ones(12, jnp.float32)}, data)
        return eigsh(op, 2, key=KEY, tol=1e-5).eigenvalues

    got = jax.vmap(top)(cs)
    want = np.asarray(cs)[:, None] ** 2 * np.asarray([3.0, s[-2]])[None, :]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _nan_past_step(v, a):
    """A tridiagonal path operator whose product is NaN once the vector reaches index 0."""
    w = a @ v
    return jnp.where(jnp.abs(v[0]) > 0.5, jnp.nan, 1.0) * w


def test_nonfinite_product_raises_with_its_index():
    """Lanczos from e_{n-1} on a path graph visits e_{n-2}, e_{n-3}, ...: the 8th product (on
    e_0) is NaN. Today's code returned NaN eigenvalues; now the solvers stop and name it."""
    n = 8
    a = np.diag(np.arange(1.0, n + 1)) + np.diag(np.full(n - 1, 0.5), 1)
    a = jnp.asarray(a + np.triu(a, 1).T, jnp.float32)
    op = Operator(_nan_past_step, (a,), n, np.dtype(np.float32))
    v0 = jnp.zeros(n, jnp.float32).at[-1].set(1.0)
    with pytest.raises(FloatingPointError, match="product 8 returned NaN"):
        eigsh(op, 2, key=KEY, v0=v0, num_steps=n, tol=None)
    with pytest.raises(FloatingPointError, match="product 8"):
        lanczos_tridiag(op, v0, n, key=KEY)
    # under an outer jit it cannot raise: NaN eigenvalues, nothing converged
    res = jax.jit(lambda v0: eigsh(op, 2, key=KEY, v0=v0, num_steps=n, tol=None))(v0)
    assert np.all(np.isnan(res.eigenvalues)) and not np.any(res.converged)


def test_nan_hessian_vector_product_raises():
    """A finite loss with NaN derivatives: ‖θ‖ at θ = 0 (grad = θ/‖θ‖ = 0/0)."""

    def loss(p, batch):
        return jnp.sqrt(jnp.sum(p["w"] ** 2)) * jnp.mean(batch)

    op = hessian_operator(loss, {"w": jnp.zeros(6, jnp.float32)}, jnp.ones((2, 3), jnp.float32))
    with pytest.raises(FloatingPointError, match="product 1 returned NaN"):
        eigsh(op, 1, key=KEY)
    with pytest.raises(FloatingPointError, match="slq"):
        slq(op, num_probes=2, num_steps=3, key=KEY)
    with pytest.raises(FloatingPointError, match="power_iteration"):
        power_iteration(op, 1, key=KEY)


def test_power_iteration_zero_operator_is_exact():
    """It returned NaN with converged=True: on A = 0 every vector is an eigenvector, λ = 0."""
    res = power_iteration(dense_operator(jnp.zeros((6, 6), jnp.float32)), 2, key=KEY)
    np.testing.assert_array_equal(res.eigenvalues, 0.0)
    np.testing.assert_array_equal(res.residuals, 0.0)
    assert np.all(np.isfinite(res.eigenvectors)) and np.all(res.converged)


def test_hutchpp_accepts_numpy_integers(mat):
    """hutchpp(op, np.int64(9)) said 9 is not a multiple of 3."""
    op = dense_operator(jnp.asarray(mat, jnp.float32))
    est = hutchpp(op, np.int64(9), key=KEY)
    assert est.num_matvecs == 9 and isinstance(est.num_matvecs, int)


def test_sketch_of_a_curvature_operator_in_float32():
    """The sketch's float64 core (inside enable_x64) once met the flat ravel of the curvature
    product with int64 slice starts against int32 bounds (a TypeError in lax.clamp)."""

    def loss(p, batch):
        return jnp.mean(jnp.tanh(batch @ p["w"]) ** 2)

    w = jax.random.normal(jax.random.key(1), (6, 4), jnp.float32)
    op = hessian_operator(loss, {"w": w, "b": jnp.zeros(3)}, jnp.ones((1, 8, 6), jnp.float32))
    res = sketch_eigh(op, 3, key=KEY, outer=6, inner=12, error_probes=4)
    assert res.eigenvalues.dtype == jnp.float32 and np.all(np.isfinite(res.eigenvalues))
