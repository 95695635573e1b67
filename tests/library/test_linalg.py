"""Tests for hessjax.linalg on synthetic symmetric matrices, checked against numpy.

Every matrix is Q diag(spectrum) Qᵀ with a fixed random orthogonal Q, wrapped by
`dense_operator`. Compilation dominates the run time, so all operators share n = N (plus a tiny
n = 8 one for the error paths, which never compile), eigsh always runs with K wanted pairs and
STEPS Lanczos steps, and the solvers see few distinct static arguments.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.linalg import (
    EigshResult,
    Operator,
    Partition,
    SpectralQuadrature,
    apply_block,
    block_eigsh,
    default_num_steps,
    dense_operator,
    density_on_grid,
    eigsh,
    hutchinson,
    hutchpp,
    krylov,
    lanczos_tridiag,
    power_iteration,
    probes,
    sketch_eigh,
    slq,
    spectral_density,
    to_dense,
    tridiag_eigh,
)

N = 60  # operator size shared by every compiled test
K = 5  # wanted eigenpairs in every eigsh call
STEPS = 40  # Lanczos steps in every eigsh / lanczos_tridiag / slq call
EPS64 = float(np.finfo(np.float64).eps)

# Indefinite, with 5 well-separated eigenvalues at each end (gaps 1, gap >= 3.5 to the bulk),
# distinct magnitudes, so every mode's wanted pairs are well separated.
SEPARATED = np.concatenate(
    [[10.0, 9.0, 8.0, 7.0, 6.0], [-9.5, -8.5, -7.5, -6.5, -5.5], np.linspace(-2, 2, N - 10)]
)
# Equally spaced: STEPS < N Lanczos steps leave the top Ritz pairs visibly unconverged.
HARD = np.linspace(-1.0, 1.0, N)
# Rank 5 < STEPS: the Krylov space becomes invariant after 6 steps.
LOW_RANK = np.concatenate([[5.0, 3.0, -2.0, 1.0, -4.0], np.zeros(N - 5)])
# Top |λ| ratios 0.8, 0.75, 0.75: fast, well-defined power iteration.
POWER = np.concatenate([[10.0, -8.0, 6.0, -4.5], np.linspace(-2, 2, N - 4)])
# Decaying PSD spectrum: Hutch++ should beat Hutchinson at equal products.
DECAYING = 10.0 * 0.7 ** np.arange(N)


pytestmark = pytest.mark.x64  # float64 oracles: the whole module runs in float64


@pytest.fixture(scope="module")
def orthogonal():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((N, N)))
    return q


@pytest.fixture(scope="module")
def make(orthogonal):
    """spectrum -> (A as float64 numpy, Operator)."""

    def build(spectrum, dtype=jnp.float64):
        a = (orthogonal * spectrum) @ orthogonal.T
        a = (a + a.T) / 2
        return a, dense_operator(jnp.asarray(a, dtype))

    return build


@pytest.fixture(scope="module")
def separated(make):
    return make(SEPARATED)


class HostOperator:
    """A non-pytree operator: solvers must drive it from the host, one product per step."""

    def __init__(self, a):
        self.matrix = jnp.asarray(a)
        self.size = a.shape[0]
        self.dtype = np.dtype(self.matrix.dtype)

    def matvec(self, v):
        return self.matrix @ v


def expected_eigenvalues(a, k, which):
    """The k eigenvalues eigsh should return, in the order `EigshResult` documents."""
    w = np.linalg.eigh(a)[0]  # ascending
    if which == "LA":
        return w[::-1][:k]
    if which == "SA":
        return w[:k]
    if which == "LM":
        return w[np.argsort(-np.abs(w), kind="stable")][:k]
    top, bottom = w[::-1][: math.ceil(k / 2)], w[: k // 2]  # "BE"
    return np.sort(np.concatenate([top, bottom]))[::-1]


def true_residuals(a, res):
    x, lam = np.asarray(res.eigenvectors), np.asarray(res.eigenvalues)
    return np.linalg.norm(a @ x - x * lam, axis=0)


def assert_orthonormal_columns(x, atol):
    x = np.asarray(x)
    np.testing.assert_allclose(x.T @ x, np.eye(x.shape[1]), atol=atol)


def assert_residuals_match(a, res, floor):
    """Ritz estimates agree with the true ‖Ax - λx‖: equal to 1 % or both below `floor`.

    With full reorthogonalisation A Q s - θ Q s = β q sₘ holds to rounding, so the estimate is
    the true residual, not just a bound.
    """
    est, true = np.asarray(res.residuals), true_residuals(a, res)
    both_tiny = (est <= floor) & (true <= floor)
    close = np.abs(est - true) <= 1e-2 * true
    assert np.all(both_tiny | close), (est, true)


# ---------------------------------------------------------------------------------------------
# eigsh
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
def test_eigsh_matches_numpy(separated, which):
    a, op = separated
    res = eigsh(op, K, key=jax.random.key(1), which=which, num_steps=STEPS, tol=None)
    assert isinstance(res, EigshResult)
    want = expected_eigenvalues(a, K, which)
    lam = np.asarray(res.eigenvalues)
    assert lam.dtype == np.float64 and lam.shape == (K,)
    np.testing.assert_allclose(lam, want, rtol=1e-8)

    # Sort order documented in EigshResult (already implied by `want`, stated explicitly).
    key = {"LA": -lam, "SA": lam, "LM": -np.abs(lam), "BE": -lam}[which]
    assert np.all(np.diff(key) > 0)
    if which == "BE":  # ceil(k/2) largest and floor(k/2) smallest
        w = np.linalg.eigh(a)[0]
        assert np.sum(lam > (w[-4] + w[-3]) / 2) == 3 and np.sum(lam < (w[1] + w[2]) / 2) == 2

    # Eigenvectors: orthonormal, and aligned with numpy's (all wanted eigenvalues are simple
    # and separated by >= 1, so the Ritz vectors converge along with the values).
    x = np.asarray(res.eigenvectors)
    assert x.shape == (N, K)
    assert_orthonormal_columns(x, 1e-10)
    w, u = np.linalg.eigh(a)
    for i in range(K):
        ref = u[:, np.argmin(np.abs(w - lam[i]))]
        assert abs(ref @ x[:, i]) >= 1 - 1e-6

    assert_residuals_match(a, res, floor=1e-10 * np.abs(w).max())
    assert np.all(np.asarray(res.converged))
    assert int(res.num_matvecs) == STEPS  # tol=None runs every step


def test_eigsh_unconverged_residuals_and_flags(make):
    """On an equally spaced spectrum STEPS < N steps leave real residuals: estimates must track
    the true ones, `converged` must follow its documented rule, and Ritz values interlace."""
    a, op = make(HARD)
    res = eigsh(op, K, key=jax.random.key(2), num_steps=STEPS, tol=None)
    est = np.asarray(res.residuals)
    assert est.max() > 1e-4  # the test is only meaningful with unconverged pairs
    assert_residuals_match(a, res, floor=1e-12)
    lam = np.asarray(res.eigenvalues)
    # Documented: residual <= tol · max|λ|; tol=None means sqrt(eps) for the final flags.
    np.testing.assert_array_equal(
        np.asarray(res.converged), est <= np.sqrt(EPS64) * np.abs(lam).max()
    )
    assert not np.all(np.asarray(res.converged))
    # Cauchy interlacing: the i-th largest Ritz value never exceeds the i-th eigenvalue.
    assert np.all(lam <= HARD[::-1][:K] + 1e-12)
    assert_orthonormal_columns(res.eigenvectors, 1e-10)


def test_eigsh_tol_stops_early(separated):
    a, op = separated
    tol = 1e-8
    res = eigsh(op, K, key=jax.random.key(3), num_steps=STEPS, tol=tol, check_every=5)
    steps = int(res.num_matvecs)
    assert K <= steps < STEPS
    assert steps % 5 == 0  # convergence is checked every check_every steps
    assert np.all(np.asarray(res.converged))
    lam = np.asarray(res.eigenvalues)
    # Residual <= tol·max|λ| = 1e-7; eigenvalue errors are O(residual²/gap), far below 1e-8.
    np.testing.assert_allclose(lam, expected_eigenvalues(a, K, "LA"), rtol=1e-8)
    assert np.all(np.asarray(res.residuals) <= tol * np.abs(lam).max())
    assert np.all(true_residuals(a, res) <= 1.01 * tol * np.abs(lam).max())

    full = eigsh(op, K, key=jax.random.key(3), num_steps=STEPS, tol=None)
    assert int(full.num_matvecs) == STEPS


def test_eigsh_float32(make):
    a, op = make(SEPARATED, jnp.float32)
    res = eigsh(op, K, key=jax.random.key(4), num_steps=STEPS, tol=None)
    assert res.eigenvalues.dtype == jnp.float32
    assert res.eigenvectors.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(res.eigenvalues, np.float64), expected_eigenvalues(a, K, "LA"), rtol=1e-4
    )
    assert_orthonormal_columns(np.asarray(res.eigenvectors, np.float64), 1e-5)


def test_default_num_steps():
    for k, n in [(1, 2), (K, 6), (K, N), (3, 10_000), (40, 10_000)]:
        m = default_num_steps(k, n)
        assert k <= m <= n  # always a valid num_steps
        assert m > k or n == k + 1  # a margin beyond k whenever n allows it


# ---------------------------------------------------------------------------------------------
# Breakdown: invariant Krylov subspaces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_eigsh_low_rank(make, which):
    a, op = make(LOW_RANK)
    scale = np.abs(LOW_RANK).max()
    for tol in (None, 1e-8):
        res = eigsh(op, K, key=jax.random.key(5), which=which, num_steps=STEPS, tol=tol)
        for field in res[:3]:
            assert np.all(np.isfinite(np.asarray(field)))
        np.testing.assert_allclose(
            np.asarray(res.eigenvalues), expected_eigenvalues(a, K, which), atol=1e-10 * scale
        )
        assert np.all(true_residuals(a, res) <= 1e-10 * scale)
        assert np.all(np.asarray(res.residuals) <= 1e-10 * scale)
        assert np.all(np.asarray(res.converged))
        assert_orthonormal_columns(res.eigenvectors, 1e-10)
    if which == "LA":  # the last run used tol: it stopped once the subspace was exhausted
        assert int(res.num_matvecs) < STEPS


def test_eigsh_zero_matrix(make):
    a, op = make(np.zeros(N))
    res = eigsh(op, K, key=jax.random.key(6), num_steps=STEPS, tol=None)
    for field in res[:3]:
        assert np.all(np.isfinite(np.asarray(field)))
    np.testing.assert_array_equal(np.asarray(res.eigenvalues), 0.0)
    np.testing.assert_array_equal(np.asarray(res.residuals), 0.0)
    assert np.all(np.asarray(res.converged))
    assert_orthonormal_columns(res.eigenvectors, 1e-10)  # restarts keep an orthonormal basis


@pytest.mark.parametrize("eigvec_indices", [[0], [20, 30, 40]], ids=["top", "bulk3"])
def test_eigsh_start_in_invariant_subspace(separated, eigvec_indices):
    """v0 in an invariant subspace: Lanczos breaks down and must restart to find the rest."""
    a, op = separated
    u = np.linalg.eigh(a)[1][:, ::-1]  # descending
    v0 = jnp.asarray(u[:, eigvec_indices].sum(axis=1))
    res = eigsh(op, K, key=jax.random.key(7), num_steps=STEPS, tol=None, v0=v0)
    assert np.all(np.isfinite(np.asarray(res.eigenvectors)))
    np.testing.assert_allclose(
        np.asarray(res.eigenvalues), expected_eigenvalues(a, K, "LA"), rtol=1e-8
    )
    assert np.all(true_residuals(a, res) <= 1e-8)
    assert np.all(np.asarray(res.converged))


def test_lanczos_tridiag_low_rank_splits(make):
    a, op = make(LOW_RANK)
    v0 = jax.random.normal(jax.random.key(8), (N,), jnp.float64)
    tri = lanczos_tridiag(op, v0, STEPS, key=jax.random.key(9))
    beta = np.asarray(tri.beta)
    assert np.all(np.isfinite(beta)) and np.all(np.isfinite(np.asarray(tri.alpha)))
    assert np.sum(beta[:-1] == 0) >= 1  # the breakdown after rank + 1 steps is recorded
    q = np.asarray(tri.basis)
    np.testing.assert_allclose(q @ q.T, np.eye(STEPS), atol=1e-12)
    t = np.diag(np.asarray(tri.alpha)) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    np.testing.assert_allclose(q @ a @ q.T, t, atol=1e-11 * np.abs(LOW_RANK).max())


# ---------------------------------------------------------------------------------------------
# lanczos_tridiag / tridiag_eigh
# ---------------------------------------------------------------------------------------------


def test_lanczos_tridiag_decomposition(separated):
    a, op = separated
    v0 = jax.random.normal(jax.random.key(10), (N,), jnp.float64)
    tri = lanczos_tridiag(op, v0, STEPS, key=jax.random.key(11))
    q, alpha, beta = (np.asarray(x) for x in tri)
    assert q.shape == (STEPS, N) and alpha.shape == beta.shape == (STEPS,)
    np.testing.assert_allclose(q[0], np.asarray(v0) / np.linalg.norm(v0), atol=1e-15)
    # The outliers converge within a few steps, after which plain Lanczos would lose
    # orthogonality; full reorthogonalisation keeps it at rounding level.
    np.testing.assert_allclose(q @ q.T, np.eye(STEPS), atol=1e-12)
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    np.testing.assert_allclose(q @ a @ q.T, t, atol=1e-12 * np.abs(SEPARATED).max())
    assert np.all(beta > 0)  # no breakdown on a generic start vector


def test_tridiag_eigh_matches_numpy():
    rng = np.random.default_rng(12)
    m = 12
    alpha, beta = rng.standard_normal(m), rng.standard_normal(m)
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    theta, s = tridiag_eigh(jnp.asarray(alpha), jnp.asarray(beta))
    assert theta.dtype == jnp.float64 and s.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(theta), np.linalg.eigvalsh(t), atol=1e-12)
    s = np.asarray(s)
    np.testing.assert_allclose(t @ s, s * np.asarray(theta), atol=1e-12)
    np.testing.assert_allclose(s.T @ s, np.eye(m), atol=1e-12)
    # beta[-1] (the residual norm) is not part of T.
    theta2, _ = tridiag_eigh(jnp.asarray(alpha), jnp.asarray(beta).at[-1].set(1e3))
    np.testing.assert_allclose(np.asarray(theta2), np.asarray(theta), atol=1e-14)

    theta32, s32 = tridiag_eigh(jnp.asarray(alpha, jnp.float32), jnp.asarray(beta, jnp.float32))
    assert theta32.dtype == jnp.float64 and s32.dtype == jnp.float64
    t32 = t.astype(np.float32).astype(np.float64)  # the float32-rounded T, solved in float64
    np.testing.assert_allclose(np.asarray(theta32), np.linalg.eigvalsh(t32), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Host-driven path and operator helpers
# ---------------------------------------------------------------------------------------------


def test_host_operator_matches_traced(separated):
    a, op = separated
    host = HostOperator(a)
    kwargs = dict(key=jax.random.key(13), num_steps=STEPS, tol=1e-8, check_every=5)
    traced, driven = eigsh(op, K, **kwargs), eigsh(host, K, **kwargs)
    assert int(driven.num_matvecs) == int(traced.num_matvecs) < STEPS
    np.testing.assert_allclose(
        np.asarray(driven.eigenvalues), np.asarray(traced.eigenvalues), rtol=1e-12
    )
    cos = np.abs(np.sum(np.asarray(driven.eigenvectors) * np.asarray(traced.eigenvectors), 0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(driven.converged), np.asarray(traced.converged))
    np.testing.assert_allclose(
        np.asarray(driven.eigenvalues), expected_eigenvalues(a, K, "LA"), rtol=1e-8
    )

    v0 = jax.random.normal(jax.random.key(14), (N,), jnp.float64)
    t_host = lanczos_tridiag(host, v0, STEPS, key=jax.random.key(15))
    t_traced = lanczos_tridiag(op, v0, STEPS, key=jax.random.key(15))
    for x, y in zip(t_host, t_traced, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-10)


def test_operator_helpers(separated):
    a, op = separated
    assert isinstance(op, Operator) and op.shape == (N, N) and op.dtype == np.float64
    np.testing.assert_allclose(np.asarray(to_dense(op)), a, atol=1e-14)
    np.testing.assert_allclose(np.asarray(to_dense(HostOperator(a))), a, atol=1e-14)
    vs = np.random.default_rng(16).standard_normal((N, 7))
    np.testing.assert_allclose(np.asarray(op @ jnp.asarray(vs[:, 0])), a @ vs[:, 0], atol=1e-12)
    np.testing.assert_allclose(np.asarray(op @ jnp.asarray(vs)), a @ vs, atol=1e-12)
    for block_size in (None, 3):  # 3 does not divide 7: the remainder block must be handled
        out = apply_block(op, jnp.asarray(vs), block_size)
        np.testing.assert_allclose(np.asarray(out), a @ vs, atol=1e-12)
    out = apply_block(HostOperator(a), jnp.asarray(vs))
    np.testing.assert_allclose(np.asarray(out), a @ vs, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# power_iteration
# ---------------------------------------------------------------------------------------------


def test_power_iteration_top_k(make):
    a, op = make(POWER)
    tol = 1e-12
    res = power_iteration(op, 3, key=jax.random.key(17), num_steps=500, tol=tol)
    lam = np.asarray(res.eigenvalues)
    # Stopping at relative Rayleigh-quotient change < tol leaves a relative error of about
    # tol · r²/(1 - r²) <= 2 tol for |λ| ratios r <= 0.8: 1e-9 is a generous bound.
    np.testing.assert_allclose(lam, expected_eigenvalues(a, 3, "LM"), rtol=1e-9)
    assert np.all(np.asarray(res.converged))
    w, u = np.linalg.eigh(a)
    x = np.asarray(res.eigenvectors)
    assert x.shape == (N, 3)
    assert_orthonormal_columns(x, 1e-10)
    for i in range(3):
        # eigenvector error ~ sqrt(eigenvalue error / gap) ~ 1e-6, so 1 - |cos| ~ 1e-12
        assert abs(u[:, np.argmin(np.abs(w - lam[i]))] @ x[:, i]) >= 1 - 1e-8
    # residuals of the last iterate: O(sqrt(relative RQ error) · ‖A‖) ~ 1e-5
    assert np.all(np.asarray(res.residuals) <= 1e-3)
    assert 6 < int(res.num_matvecs) < 3 * 500


def test_power_iteration_not_converged(make):
    _, op = make(POWER)
    res = power_iteration(op, 3, key=jax.random.key(17), num_steps=2, tol=1e-12)
    assert not np.any(np.asarray(res.converged))
    assert int(res.num_matvecs) == 3 * 2


# ---------------------------------------------------------------------------------------------
# Trace estimators
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased(separated, probe):
    a, op = separated
    num = 2000
    est = hutchinson(op, num_probes=num, key=jax.random.key(18), probe=probe)
    assert est.num_matvecs == num
    stderr = float(est.stderr)
    assert abs(float(est.estimate) - np.trace(a)) <= 4 * stderr
    # The stderr itself must be right (else the check above is vacuous): the per-probe variance
    # is 2(‖A‖_F² - Σ A_ii²) for Rademacher probes and 2‖A‖_F² for Gaussian ones.
    var = 2 * np.sum(a**2) - (2 * np.sum(np.diag(a) ** 2) if probe == "rademacher" else 0)
    np.testing.assert_allclose(stderr, np.sqrt(var / num), rtol=0.15)


def test_hutchinson_block_size_and_host(separated):
    a, op = separated
    key = jax.random.key(19)
    ref = hutchinson(op, num_probes=30, key=key)
    vs = np.asarray(probes(key, N, 30, jnp.float64))
    np.testing.assert_allclose(float(ref.estimate), np.mean(np.sum(vs * (a @ vs), 0)), rtol=1e-12)
    for other in (
        hutchinson(op, num_probes=30, key=key, block_size=7),
        hutchinson(HostOperator(a), num_probes=30, key=key),
    ):
        np.testing.assert_allclose(float(other.estimate), float(ref.estimate), rtol=1e-12)
        np.testing.assert_allclose(float(other.stderr), float(ref.stderr), rtol=1e-10)


def test_hutchpp_exact_on_low_rank(make):
    a, op = make(LOW_RANK)
    for seed in range(3):
        est = hutchpp(op, 30, key=jax.random.key(seed))  # rank 5 < 30 / 3
        assert est.num_matvecs == 30
        assert abs(float(est.estimate) - np.trace(a)) <= 1e-8 * np.linalg.norm(a)


def test_hutchpp_beats_hutchinson(make):
    a, op = make(DECAYING)
    tr = np.trace(a)
    keys = [jax.random.key(100 + s) for s in range(12)]
    err_pp = np.mean([abs(float(hutchpp(op, 30, key=k).estimate) - tr) for k in keys])
    err_h = np.mean([abs(float(hutchinson(op, num_probes=30, key=k).estimate) - tr) for k in keys])
    # Averaged over 12 keys the ratio is 0.1-0.2 for this spectrum (checked over several key
    # sets); requiring 0.5 leaves a wide margin while still catching a broken estimator.
    assert err_pp < err_h / 2, (err_pp, err_h)


# ---------------------------------------------------------------------------------------------
# SLQ and spectral density
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slq_run(separated):
    a, op = separated
    key = jax.random.key(20)
    quad = slq(op, num_probes=200, num_steps=STEPS, key=key)
    # The probes slq draws (documented: Rademacher, from the first half of split(key)).
    vs = np.asarray(probes(jax.random.split(key)[0], N, 200, jnp.float64))
    return a, op, quad, vs


def test_slq_quadrature_moments(slq_run):
    a, _, quad, vs = slq_run
    nodes, weights = np.asarray(quad.nodes), np.asarray(quad.weights)
    assert nodes.shape == weights.shape == (200, STEPS)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(weights >= 0)
    norms = np.sum(vs * vs, axis=0)
    for p in (1, 2, 3):
        # Gauss quadrature with m steps is exact for degree <= 2m - 1: per probe,
        # Σ_k w_k θ_k^p = vᵀ Aᵖ v / vᵀ v.
        exact = np.sum(vs * (np.linalg.matrix_power(a, p) @ vs), axis=0) / norms
        per_probe = np.sum(weights * nodes**p, axis=1)
        np.testing.assert_allclose(per_probe, exact, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(float(quad.moment(p)), exact.mean(), rtol=1e-10)
    # ... and the estimate of tr(A)/n is within a few standard errors.
    samples = np.sum(weights * nodes, axis=1)
    stderr = samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(float(quad.moment(1)) - np.trace(a) / N) <= 4 * stderr


def test_slq_matches_lanczos_tridiag(slq_run):
    """Per probe, the nodes are the eigenvalues of T and weights the squared first components."""
    a, op, quad, vs = slq_run
    for p in range(3):
        v = jnp.asarray(vs[:, p])
        tri = lanczos_tridiag(op, v, STEPS, key=jax.random.key(21))
        theta, s = tridiag_eigh(tri.alpha, tri.beta)
        theta, w = np.asarray(theta), np.asarray(s)[0] ** 2
        np.testing.assert_allclose(np.sort(np.asarray(quad.nodes[p])), theta, atol=1e-10)
        for power in (1, 2):
            exact = vs[:, p] @ np.linalg.matrix_power(a, power) @ vs[:, p] / (vs[:, p] @ vs[:, p])
            np.testing.assert_allclose(np.sum(w * theta**power), exact, rtol=1e-10)


def test_density_integrates_and_moments(slq_run):
    _, _, quad, _ = slq_run
    grid, density = (np.asarray(x) for x in density_on_grid(quad))
    assert grid.shape == density.shape == (1000,)
    assert np.all(density >= 0)
    assert grid[0] < float(quad.nodes.min()) and grid[-1] > float(quad.nodes.max())
    # Grid step ~0.1 σ with 5σ margins: trapezoid error and lost tail mass are << 1e-3.
    assert abs(np.trapezoid(density, grid) - 1) <= 1e-3
    sigma = 1e-2 * float(quad.nodes.max() - quad.nodes.min())  # documented σ
    scale = np.abs(SEPARATED).max()
    m1 = np.trapezoid(grid * density, grid)
    m2 = np.trapezoid(grid**2 * density, grid)
    # Gaussian smoothing keeps the mean and adds σ² to the second moment.
    assert abs(m1 - float(quad.moment(1))) <= 1e-3 * scale
    assert abs(m2 - (float(quad.moment(2)) + sigma**2)) <= 1e-3 * scale**2

    # An explicit grid and σ: same normalisation.
    wide = jnp.linspace(-15.0, 15.0, 3001)
    dens = np.asarray(spectral_density(quad, wide, 0.5))
    assert abs(np.trapezoid(dens, np.asarray(wide)) - 1) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------------

SMALL = dense_operator(jnp.eye(8, dtype=jnp.float32))
KEY = jax.random.key(0)
QUAD = SpectralQuadrature(jnp.zeros((2, 3)), jnp.full((2, 3), 1 / 3))

VALUE_ERRORS = {
    "k<1": (lambda: eigsh(SMALL, 0, key=KEY), "1 <= k < n"),
    "k>=n": (lambda: eigsh(SMALL, 8, key=KEY), "1 <= k < n"),
    "k float": (lambda: eigsh(SMALL, 2.0, key=KEY), "k must be an integer"),
    "steps<k": (lambda: eigsh(SMALL, 3, key=KEY, num_steps=2), r"num_steps \(2\) must be >= k"),
    "steps>n": (lambda: eigsh(SMALL, 3, key=KEY, num_steps=9), "cannot exceed"),
    "steps float": (lambda: eigsh(SMALL, 3, key=KEY, num_steps=5.0), "must be an integer"),
    "which": (lambda: eigsh(SMALL, 2, key=KEY, which="XX"), "which must be one of"),
    "tol=0": (lambda: eigsh(SMALL, 2, key=KEY, tol=0.0), r"tol must be a number in \(0, 1\)"),
    "tol<0": (lambda: eigsh(SMALL, 2, key=KEY, tol=-1e-3), r"tol must be a number in \(0, 1\)"),
    "tol=10": (lambda: eigsh(SMALL, 2, key=KEY, tol=10), r"tol must be a number in \(0, 1\)"),
    "tol nan": (lambda: eigsh(SMALL, 2, key=KEY, tol=float("nan")), "tol must be a number"),
    "v0 zero": (lambda: eigsh(SMALL, 2, key=KEY, v0=jnp.zeros(8, jnp.float32)), "v0 is the zero"),
    "v0 nan": (
        lambda: eigsh(SMALL, 2, key=KEY, v0=jnp.full(8, jnp.nan, jnp.float32)),
        "non-finite",
    ),
    "tridiag v0 zero": (
        lambda: lanczos_tridiag(SMALL, jnp.zeros(8, jnp.float32), 4, key=KEY),
        "zero",
    ),
    "power tol nan": (lambda: power_iteration(SMALL, 2, key=KEY, tol=float("nan")), "tol must"),
    "power tol 2": (lambda: power_iteration(SMALL, 2, key=KEY, tol=2.0), "tol must"),
    "block tol 10": (
        lambda: block_eigsh(SMALL, Partition.from_ids(np.arange(8) % 2), 1, key=KEY, tol=10),
        "tol must",
    ),
    "sketch block 0": (lambda: sketch_eigh(SMALL, 2, key=KEY, block_size=0), "block_size"),
    "sketch block -1": (lambda: sketch_eigh(SMALL, 2, key=KEY, block_size=-1), "block_size"),
    "hutchpp block 0": (lambda: hutchpp(SMALL, 6, key=KEY, block_size=0), "block_size"),
    "bfloat16": (
        lambda: eigsh(dense_operator(jnp.eye(8, dtype=jnp.bfloat16)), 2, key=KEY),
        "bfloat16 is not supported",
    ),
    "float16 slq": (
        lambda: slq(
            dense_operator(jnp.eye(8, dtype=jnp.float16)), num_probes=2, num_steps=4, key=KEY
        ),
        "float16 is not supported",
    ),
    "check_every": (lambda: eigsh(SMALL, 2, key=KEY, check_every=0), "check_every"),
    "key int": (lambda: eigsh(SMALL, 2, key=0), "PRNG key"),
    "key shape": (lambda: eigsh(SMALL, 2, key=jnp.zeros(3, jnp.uint32)), "PRNG key"),
    "key float": (lambda: eigsh(SMALL, 2, key=jnp.zeros(2)), "PRNG key"),
    "v0 shape": (lambda: eigsh(SMALL, 2, key=KEY, v0=jnp.ones(9)), r"v0 must have shape \(8,\)"),
    "v0 dtype": (
        lambda: eigsh(SMALL, 2, key=KEY, v0=np.ones(8, np.float64)),
        "v0 has dtype float64",
    ),
    "tridiag steps": (lambda: lanczos_tridiag(SMALL, jnp.ones(8), 9, key=KEY), "cannot exceed"),
    "tridiag steps 0": (lambda: lanczos_tridiag(SMALL, jnp.ones(8), 0, key=KEY), "num_steps"),
    "tridiag v0": (lambda: lanczos_tridiag(SMALL, jnp.ones(7), 4, key=KEY), "v0 must have"),
    "tridiag key": (lambda: lanczos_tridiag(SMALL, jnp.ones(8), 4, key=1), "PRNG key"),
    "power k": (lambda: power_iteration(SMALL, 0, key=KEY), "1 <= k < n"),
    "power iters": (lambda: power_iteration(SMALL, 2, key=KEY, num_steps=0), "num_steps"),
    "power key": (lambda: power_iteration(SMALL, 2, key=None), "PRNG key"),
    "hutch probes": (lambda: hutchinson(SMALL, num_probes=0, key=KEY), "num_probes"),
    "hutch kind": (
        lambda: hutchinson(SMALL, num_probes=4, key=KEY, probe="uniform"),
        "probe must be",
    ),
    "hutch key": (lambda: hutchinson(SMALL, num_probes=4, key="k"), "PRNG key"),
    "hutchpp 10": (lambda: hutchpp(SMALL, 10, key=KEY), "multiple of 3"),
    "hutchpp 0": (lambda: hutchpp(SMALL, 0, key=KEY), "multiple of 3"),
    "hutchpp big": (lambda: hutchpp(SMALL, 24, key=KEY), "smaller than the operator size"),
    "hutchpp key": (lambda: hutchpp(SMALL, 6, key=3), "PRNG key"),
    "slq probes": (lambda: slq(SMALL, num_probes=0, num_steps=4, key=KEY), "num_probes"),
    "slq steps": (lambda: slq(SMALL, num_probes=2, num_steps=9, key=KEY), "cannot exceed"),
    "slq key": (lambda: slq(SMALL, num_probes=2, num_steps=4, key=0), "PRNG key"),
    "sigma=0": (lambda: spectral_density(QUAD, jnp.zeros(4), 0.0), "sigma must be positive"),
    "sigma<0": (lambda: spectral_density(QUAD, jnp.zeros(4), -1.0), "sigma must be positive"),
    "dense 2x3": (lambda: dense_operator(jnp.zeros((2, 3))), "square matrix"),
    "dense 1d": (lambda: dense_operator(jnp.zeros(4)), "square matrix"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS, ids=list(VALUE_ERRORS))
def test_value_errors(case):
    call, message = VALUE_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_power_iteration_needs_operator():
    with pytest.raises(TypeError, match="Operator"):
        power_iteration(HostOperator(np.eye(8)), 2, key=KEY)


def test_a_renamed_argument_names_its_new_name():
    """power_iteration's max_iters is num_steps, as in every other solver, since 2026-12."""
    with pytest.raises(TypeError, match="'max_iters' was renamed 'num_steps'"):
        power_iteration(SMALL, 2, key=KEY, max_iters=10)
    assert power_iteration.__name__ == "power_iteration" and "num_steps" in power_iteration.__doc__


# ---------------------------------------------------------------------------------------------
# Thick restart: many eigenpairs with a small basis
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_eigsh_thick_restart_matches_eigh(make, which):
    """k = 12 of n = 60 with a basis of only 20 vectors: the POWER spectrum (4 outliers, then
    an evenly spaced bulk) needs several restarts; eigenvalues to 1e-8, orthonormal vectors,
    small true residuals."""
    a, op = make(POWER)
    res = eigsh(op, 12, key=jax.random.key(8), which=which, num_steps=20, max_restarts=100,
                tol=1e-10)  # fmt: skip
    assert np.all(np.asarray(res.converged))
    want = np.sort(expected_eigenvalues(a, 12, which))
    np.testing.assert_allclose(np.sort(res.eigenvalues), want, rtol=1e-8)
    assert_orthonormal_columns(res.eigenvectors, 1e-8)
    assert np.all(true_residuals(a, res) <= 1e-8 * np.abs(POWER).max())
    assert int(res.num_matvecs) > 20  # it did restart


def test_eigsh_thick_restart_stops_in_its_first_cycle_when_converged(make):
    """LOW_RANK (rank 5) with a basis of 20: its 2 largest eigenpairs converge within the
    first 7 products, so no restart runs, and they are the plain Lanczos answer."""
    a, op = make(LOW_RANK)
    restarted = eigsh(op, 2, key=jax.random.key(3), num_steps=20, max_restarts=5, tol=1e-8)
    plain = eigsh(op, 2, key=jax.random.key(3), num_steps=20, tol=1e-8)
    assert int(restarted.num_matvecs) == int(plain.num_matvecs) < 10
    np.testing.assert_allclose(restarted.eigenvalues, [5.0, 3.0], rtol=1e-10)
    np.testing.assert_allclose(restarted.eigenvalues, plain.eigenvalues, rtol=1e-12)
    # the first cycle checks convergence every `check_every` products, as plain Lanczos does
    every = [
        eigsh(op, 2, key=jax.random.key(3), num_steps=20, tol=1e-8, check_every=4, **kw)
        for kw in ({"max_restarts": 5}, {})
    ]
    assert int(every[0].num_matvecs) == int(every[1].num_matvecs)
    assert int(every[0].num_matvecs) % 4 == 0 and int(every[0].num_matvecs) > int(plain.num_matvecs)


def test_eigsh_without_reorthogonalisation(separated):
    """reorthogonalize=False: the plain three-term recurrence. At a loose tol with k = 1 it
    gives full reorthogonalisation's answer with the same products; run on after convergence
    its basis loses orthogonality (the ghosts that make full reorthogonalisation the
    default)."""
    a, op = separated
    key = jax.random.key(0)
    full = eigsh(op, 1, key=key, num_steps=STEPS, tol=1e-3)
    plain = eigsh(op, 1, key=key, num_steps=STEPS, tol=1e-3, reorthogonalize=False)
    assert int(plain.num_matvecs) == int(full.num_matvecs) < STEPS
    np.testing.assert_allclose(plain.eigenvalues, full.eigenvalues, rtol=1e-10)
    host = eigsh(HostOperator(a), 1, key=key, num_steps=STEPS, tol=1e-3, reorthogonalize=False)
    assert int(host.num_matvecs) == int(plain.num_matvecs)
    np.testing.assert_allclose(host.eigenvalues, plain.eigenvalues, rtol=1e-10)
    x, theta = np.asarray(plain.eigenvectors[:, 0]), float(plain.eigenvalues[0])
    assert np.linalg.norm(a @ x - theta * x) <= 1e-3 * 10.0 * 1.01  # tol · λ_max, estimate
    assert abs(theta - 10.0) <= 1e-3 * 10.0
    v0 = jax.random.normal(jax.random.key(1), (N,), jnp.float64)
    errors = []
    for reorth in (True, False):
        state = krylov.init(v0, STEPS, key)
        state = jax.jit(lambda s, r=reorth: krylov.run(op, s, STEPS - 1, r))(state)
        q = np.asarray(state.basis[:STEPS])
        errors.append(np.abs(q @ q.T - np.eye(STEPS)).max())
    assert errors[0] < 1e-12 and errors[1] > 1e-3, errors
    with pytest.raises(ValueError, match="reorthogonalize must be True or False"):
        eigsh(op, 1, key=key, reorthogonalize=None)
    with pytest.raises(ValueError, match="needs reorthogonalize=True"):
        eigsh(op, 1, key=key, num_steps=STEPS, max_restarts=2, reorthogonalize=False)


def test_eigsh_thick_restart_errors(separated):
    _, op = separated
    with pytest.raises(ValueError, match="max_restarts needs"):
        eigsh(op, K, key=jax.random.key(0), which="BE", num_steps=STEPS, max_restarts=3)
    with pytest.raises(ValueError, match="max_restarts needs"):
        eigsh(op, K, key=jax.random.key(0), num_steps=STEPS, max_restarts=3, tol=None)
    with pytest.raises(ValueError, match="exceed k"):
        eigsh(op, K, key=jax.random.key(0), num_steps=K, max_restarts=3)


def test_hutchinson_num_probes_is_keyword_only():
    with pytest.raises(
        TypeError, match=r"hutchinson\(\): pass num_probes by keyword \(num_probes=4\)"
    ):
        hutchinson(SMALL, 4, key=KEY)
