"""Tests for hessjax.analysis.trajectory (recorder, PCA, drift mode, quadratic-model fit) and
hessjax.analysis.weights (weight-SVD directions, their overlap with Hessian eigenvectors, weight
alignment), against closed forms on a quadratic loss with known Hessian A (float64 gradient
descent), against dense float64 oracles (jax.hessian + numpy.linalg.eigh) on a small MLP, and a
tiny run of experiments/weights.py. The closed-form and oracle tests run in float64 (the `x64`
marker; their module fixtures are built inside `enable_x64`), the binary in JAX's default
float32."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from _x64 import enable_x64

from hessjax.analysis import trajectory as tr
from hessjax.analysis import weights as wt
from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    hessian_operator,
    make_layout,
    partition_by_layer,
)
from hessjax.linalg import eigsh, random_alignment
from hessjax.models import MLP, ConvNet

# ----------------------------------------------------------------------------- quadratic

ETA = 0.1
# ρ = 1 − ηλ = -0.9, -0.5, 0.2, 0.5, 0.8, 0.9, 0.95, 0.98: two directions flip sign every step
LAMBDAS = np.array([19.0, 15.0, 8.0, 5.0, 2.0, 1.0, 0.5, 0.2])
C0 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3, 5.0])  # initial coordinates c_i(0)
N = LAMBDAS.size
STEPS = 60


def _basis():
    return np.linalg.qr(np.random.default_rng(0).normal(size=(N, N)))[0]  # columns e_i


Q = _basis()
A = Q @ np.diag(LAMBDAS) @ Q.T
THETA_STAR = np.random.default_rng(1).normal(size=N)


def _tree(flat):
    """Params tree {'b': (2,), 'w': (2, 3)} whose flat leaf order is b then w."""
    flat = jnp.asarray(flat)
    return {"b": flat[:2], "w": flat[2:].reshape(2, 3)}


def quadratic_loss(params):
    flat = jnp.concatenate([params["b"], params["w"].ravel()])
    d = flat - THETA_STAR
    return 0.5 * d @ (jnp.asarray(A) @ d)


def _gd_scan(params, capacity, every):
    """Plain GD at ETA in a lax.scan, recorded with the pure recorder."""

    def step(carry, t):
        p, s = carry
        update = jax.tree_util.tree_map(lambda g: -ETA * g, jax.grad(quadratic_loss)(p))
        return (optax.apply_updates(p, update), tr.record(s, t, p, update)), None

    state = tr.init_recorder(params, capacity, every)
    (_, state), _ = jax.lax.scan(step, (params, state), jnp.arange(STEPS))
    return state


def _optax_scan(params, capacity, every):
    """The same GD as optax.sgd chained with the recording transformation."""
    opt = optax.chain(optax.sgd(ETA), tr.recording(capacity, every))

    def step(carry, _):
        p, o = carry
        updates, o = opt.update(jax.grad(quadratic_loss)(p), o, p)
        return (optax.apply_updates(p, updates), o), None

    (_, opt_state), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=STEPS)
    return opt_state


@pytest.fixture(scope="module")
def quadratic():
    """θ(0) = θ* + Σ c_i(0) e_i; the closed-form trajectory θ(t) = θ* + Σ c_i(0) ρ_i^t e_i
    for t = 0..STEPS, and the recorded runs (every step, full capacity)."""
    t = np.arange(STEPS + 1)
    rho = 1 - ETA * LAMBDAS
    exact = THETA_STAR + (C0 * rho ** t[:, None]) @ Q.T  # (STEPS + 1, N)
    with enable_x64():
        params = _tree(exact[0])
        pure = jax.jit(_gd_scan, static_argnums=(1, 2))(params, STEPS, 1)
        opt = jax.jit(_optax_scan, static_argnums=(1, 2))(params, STEPS, 1)
        return exact, params, tr.read_snapshots(pure), opt


# ----------------------------------------------------------------------------- recorder


@pytest.mark.x64
def test_recorder_snapshots_are_the_trajectory(quadratic):
    exact, _, traj, _ = quadratic
    np.testing.assert_array_equal(traj.steps, np.arange(STEPS))
    # params snapshot t is θ_t (before the step); update t is θ_{t+1} − θ_t
    np.testing.assert_allclose(traj.params, exact[:-1], atol=1e-12)
    np.testing.assert_allclose(traj.updates, exact[1:] - exact[:-1], atol=1e-12)


@pytest.mark.x64
def test_pure_and_optax_recorders_agree(quadratic):
    _, _, traj, opt_state = quadratic
    from_opt = tr.read_snapshots(opt_state)  # finds the RecorderState inside the chain state
    np.testing.assert_array_equal(from_opt.steps, traj.steps)
    np.testing.assert_array_equal(from_opt.params, traj.params)
    np.testing.assert_array_equal(from_opt.updates, traj.updates)


@pytest.mark.x64
def test_ring_buffer_keeps_the_last_snapshots(quadratic):
    _, params, full, _ = quadratic
    every, capacity = 3, 7
    pure = tr.read_snapshots(_gd_scan(params, capacity, every))
    opt = tr.read_snapshots(_optax_scan(params, capacity, every))
    want = np.arange(0, STEPS, every)[-capacity:]  # the last 7 of 20 snapshots, in order
    for got in (pure, opt):
        np.testing.assert_array_equal(got.steps, want)
        np.testing.assert_array_equal(got.params, full.params[want])
        np.testing.assert_array_equal(got.updates, full.updates[want])
    # fewer snapshots than capacity: only the filled slots come back
    short = tr.read_snapshots(_gd_scan(params, 100, 7))
    np.testing.assert_array_equal(short.steps, np.arange(0, STEPS, 7))


@pytest.mark.x64
def test_recorder_vmaps_over_runs(quadratic):
    exact, params, _, _ = quadratic
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), params)
    states = jax.vmap(lambda p: _gd_scan(p, 5, 4))(batch)
    for i in range(2):
        one = tr.read_snapshots(jax.tree_util.tree_map(lambda x, i=i: x[i], states))
        alone = tr.read_snapshots(
            _gd_scan(jax.tree_util.tree_map(lambda x, i=i: x[i], batch), 5, 4)
        )
        np.testing.assert_array_equal(one.steps, alone.steps)
        np.testing.assert_allclose(one.params, alone.params, atol=1e-12)  # batched round-off
    np.testing.assert_allclose(
        tr.read_snapshots(jax.tree_util.tree_map(lambda x: x[0], states)).params[-1],
        exact[56],
        atol=1e-12,
    )


@pytest.mark.x64
def test_recorder_checks_inputs(quadratic):
    _, params, _, _ = quadratic
    with pytest.raises(ValueError, match="capacity"):
        tr.init_recorder(params, 0)
    with pytest.raises(ValueError, match="every"):
        tr.recording(4, every=0)
    with pytest.raises(ValueError, match="one floating dtype"):
        tr.init_recorder({"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.int32)}, 4)
    state = tr.init_recorder(params, 4)
    with pytest.raises(ValueError, match="entries"):
        tr.record(state, 0, {"b": jnp.zeros(3)}, params)
    opt = tr.recording(4)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, opt.init(params))
    with pytest.raises(ValueError, match="exactly one RecorderState"):
        tr.read_snapshots(optax.sgd(0.1).init(params))


# ----------------------------------------------------------------------------- decay fit


@pytest.mark.x64
def test_quadratic_fit_recovers_the_eigenvalues(quadratic):
    """c_i(t) = c_i(0) ρ_i^t exactly, so the log-linear fit is exact wherever the series stays
    above round-off: from positions with θ*, from updates, and from weight increments."""
    _, _, traj, _ = quadratic
    kw = {"rel_floor": 1e-9}
    fits = [
        tr.quadratic_model_fit(
            traj.params, traj.steps, Q, LAMBDAS, ETA, reference=THETA_STAR, **kw
        ),
        tr.quadratic_model_fit(traj.updates, traj.steps, Q, LAMBDAS, ETA, **kw),
        tr.quadratic_model_fit(traj.params, traj.steps, Q, LAMBDAS, ETA, differences=True, **kw),
    ]
    for fit in fits:
        np.testing.assert_allclose(fit.fitted, LAMBDAS, rtol=1e-8)
        assert np.all(fit.relative_error < 1e-8)
        np.testing.assert_allclose(fit.decay.ratio, 1 - ETA * LAMBDAS, rtol=1e-8)
        # sign flips seen for ηλ > 1 (ρ < 0) and only there
        assert fit.decay.sign_known.all()
        np.testing.assert_array_equal(fit.decay.flip_fraction, (LAMBDAS * ETA > 1).astype(float))
        np.testing.assert_allclose(fit.decay.r2, 1.0, atol=1e-12)
    # amplitudes: |c_i(0)| from positions, η λ_i |c_i(0)| from updates
    np.testing.assert_allclose(np.exp(fits[0].decay.log_amplitude), C0, rtol=1e-7)
    np.testing.assert_allclose(np.exp(fits[1].decay.log_amplitude), ETA * LAMBDAS * C0, rtol=1e-7)
    # fast directions drop below the floor early and are fitted on fewer points
    assert fits[0].decay.num_points[2] < 15 and fits[0].decay.num_points[-1] == STEPS


@pytest.mark.x64
def test_trajectory_fit_recovers_the_closed_form(quadratic):
    """GD on the quadratic, recorded every 3 steps by the optax recorder as in training: the
    fit on the weight snapshots alone gives ρ_i = 1 − ηλ_i, <θ*, e_i>, c_i(0) and
    c_i(t) = c_i(0)(1 − ηλ_i)^t (the closed form), the signs of ρ < 0 included."""
    exact, params, _, _ = quadratic
    with enable_x64():
        opt = jax.jit(_optax_scan, static_argnums=(1, 2))(params, STEPS // 3, 3)
    traj = tr.read_snapshots(opt)
    np.testing.assert_array_equal(traj.steps, np.arange(0, STEPS, 3))
    np.testing.assert_allclose(traj.params, exact[:STEPS:3], rtol=0, atol=1e-12)
    fit = tr.trajectory_quadratic_fit(traj.params, traj.steps, Q, LAMBDAS, ETA)
    rho = 1 - ETA * LAMBDAS
    np.testing.assert_allclose(fit.predicted_ratio, rho, rtol=1e-15)
    np.testing.assert_allclose(fit.snapshot_ratio, rho**3, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fit.ratio, rho, rtol=1e-8)
    np.testing.assert_allclose(fit.fitted, LAMBDAS, rtol=1e-8)
    np.testing.assert_allclose(fit.minimum, Q.T @ THETA_STAR, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fit.amplitude, C0, rtol=1e-7)
    closed = C0 * rho ** traj.steps[:, None]
    np.testing.assert_allclose(fit.coefficients, closed, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-9)
    # an even spacing hides the sign of ρ < 0 (ρ² > 0): taken positive
    even = tr.trajectory_quadratic_fit(traj.params[::2], traj.steps[::2], Q, LAMBDAS, ETA)
    np.testing.assert_allclose(even.ratio, np.abs(rho), rtol=1e-7)
    np.testing.assert_allclose(even.minimum, Q.T @ THETA_STAR, rtol=0, atol=1e-9)
    # a steady drift along e_1 is no decay toward a minimum: ρ = 1, and θ* is left undefined
    drift = traj.params[:1] + 1e-3 * traj.steps[:, None] * Q[:, 0]
    line = tr.trajectory_quadratic_fit(drift, traj.steps, Q[:, :1], LAMBDAS[:1], ETA)
    assert line.ratio[0] == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(line.minimum[0]) and np.isnan(line.coefficients).all()
    with pytest.raises(ValueError, match="equally spaced"):
        tr.trajectory_quadratic_fit(traj.params[[0, 1, 3]], traj.steps[[0, 1, 3]], Q, LAMBDAS,
                                    ETA)  # fmt: skip


def test_trajectory_fit_of_an_autoregressive_process():
    """SGD's form of the model: c(t + 1) = ρ c(t) + noise around θ*: the one-step regression
    recovers ρ and θ* to within their sampling error (20,000 steps: se(ρ) ≈ 0.004, se(θ*)
    ≈ 0.035)."""
    rng = np.random.default_rng(0)
    rho, star, steps = 0.8, 3.0, 20000
    c = np.zeros(steps)
    for t in range(1, steps):
        c[t] = rho * c[t - 1] + rng.normal()
    fit = tr.trajectory_quadratic_fit((star + c)[:, None], np.arange(steps), np.ones((1, 1)),
                                      np.array([(1 - rho) / ETA]), ETA)  # fmt: skip
    assert fit.ratio[0] == pytest.approx(rho, abs=0.015)
    assert fit.minimum[0] == pytest.approx(star, abs=0.1)
    assert 0.5 < fit.r2[0] < 0.75  # ρ² = 0.64 of the variance is predictable


@pytest.mark.x64
def test_fit_sign_needs_odd_gaps(quadratic):
    _, _, traj, _ = quadratic
    coords = tr.project(traj.params, Q, THETA_STAR)
    odd = tr.fit_decay(coords[::3], traj.steps[::3], ETA, rel_floor=1e-9)
    np.testing.assert_allclose(odd.fitted_eigenvalues, LAMBDAS, rtol=1e-8)
    even = tr.fit_decay(coords[::2], traj.steps[::2], ETA, rel_floor=1e-9)
    assert not even.sign_known.any()  # ρ^2 > 0: the sign is invisible, taken positive
    np.testing.assert_allclose(np.abs(even.ratio), np.abs(1 - ETA * LAMBDAS), rtol=1e-8)
    assert np.all(even.ratio > 0)
    # a single point above the floor: no fit
    lone = tr.fit_decay(np.array([1.0, 0.0, 0.0]), np.array([0, 1, 2]), ETA)
    assert np.isnan(lone.ratio[0]) and lone.num_points[0] == 1


def test_fit_decay_checks_inputs():
    c, t = np.ones((5, 2)), np.arange(5)
    with pytest.raises(ValueError, match="strictly increasing"):
        tr.fit_decay(c, np.array([0, 1, 1, 2, 3]), 0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        tr.fit_decay(c, t, 0.0)
    with pytest.raises(ValueError, match="m = len"):
        tr.fit_decay(c, t[:4], 0.1)
    with pytest.raises(ValueError, match="equally spaced"):
        tr.fit_decay(c, np.array([0, 1, 2, 4, 5]), 0.1, differences=True)
    with pytest.raises(ValueError, match="non-finite"):
        tr.fit_decay(np.full((5, 2), np.nan), t, 0.1)
    with pytest.raises(ValueError, match="eigenvalues"):
        tr.quadratic_model_fit(np.ones((5, 3)), t, np.eye(3), np.ones(2), 0.1)


# ----------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("shape", [(20, 50), (50, 8)])  # wide (Gram + Ritz) and tall (SVD)
def test_pca_matches_covariance_oracle(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * np.linspace(3, 0.1, shape[1]) + rng.normal(size=shape[1])
    k = 5
    res = tr.pca(x, k)
    cov = np.cov(x, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    np.testing.assert_allclose(res.explained_variance, values[:k], rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance_ratio, values[:k] / values.sum(), rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(res.components * vectors[:, :k], 0)), 1, atol=1e-10)
    np.testing.assert_allclose(res.components.T @ res.components, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(res.mean, x.mean(0))
    np.testing.assert_allclose(res.total_variance, values.sum(), rtol=1e-10)
    raw = tr.pca(x, k, center=False)  # uncentred: eigenvectors of xᵀx / m
    second = np.linalg.eigh(x.T @ x / shape[0])[0][::-1]
    np.testing.assert_allclose(raw.explained_variance, second[:k], rtol=1e-10)
    with pytest.raises(ValueError, match="k must be"):
        tr.pca(x, min(shape[0] - 1, shape[1]) + 1)
    with pytest.raises(ValueError, match="do not vary"):
        tr.pca(np.ones((4, 3)), 1)


@pytest.mark.x64
def test_update_pca_finds_the_dominant_eigenvector_and_weight_pca_the_drift(quadratic):
    """Late window (steps 30..59): the oscillating top direction (ρ = -0.9) dominates the
    variance of the updates; the slow direction (ρ = 0.98, large amplitude) dominates the
    weights, which barely see e_1."""
    _, _, traj, _ = quadratic
    late = slice(30, None)
    upd = tr.pca(traj.updates[late], 3)
    wts = tr.pca(traj.params[late], 3)
    assert abs(upd.components[:, 0] @ Q[:, 0]) ** 2 > 0.999
    assert abs(wts.components[:, 0] @ Q[:, 0]) ** 2 < 1e-3
    drift = tr.drift_mode(traj.params[late], traj.steps[late])
    assert abs(drift.direction @ Q[:, -1]) ** 2 > 0.99
    assert drift.explained_variance_ratio > 0.99 and drift.displacement_share > 0.99
    np.testing.assert_allclose(abs(drift.direction @ wts.components[:, 0]), 1, atol=1e-12)
    assert drift.coordinates[-1] > drift.coordinates[0]  # oriented along the motion
    # overlap vs k of the top-k PCs with the top-k eigenvectors, against an independent oracle:
    # the mean cos² of scipy's principal angles between the two k-dimensional spans
    ks = [1, 2, 3]
    u_curve, w_curve = tr.pca_overlap(upd, Q, ks), tr.pca_overlap(wts, Q, ks)
    for res, curve in ((upd, u_curve), (wts, w_curve)):
        want = [np.mean(np.cos(scipy.linalg.subspace_angles(res.components[:, :k], Q[:, :k])) ** 2)
                for k in ks]  # fmt: skip
        np.testing.assert_allclose(curve.overlap, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(curve.chance, np.asarray(ks) / N)
    assert np.all(u_curve.overlap > w_curve.overlap)
    # a construction with known overlaps, PCs (e_1, (e_2 + e_3)/√2, e_4) against the top
    # eigenvectors (e_1, e_2, e_3): ‖AₖᵀBₖ‖²_F = 1 at k = 1, 1 + 1/2 at k = 2, 1 + 1 + 0 at k = 3
    mix = np.zeros((N, 3))
    mix[0, 0], mix[1, 1], mix[2, 1], mix[3, 2] = 1, 1 / np.sqrt(2), 1 / np.sqrt(2), 1
    curve = tr.pca_overlap(upd._replace(components=Q @ mix), Q, ks)
    np.testing.assert_allclose(curve.overlap, [1, (1 + 0.5) / 2, (1 + 1 + 0) / 3], atol=1e-12)
    # the slow direction decays along the drift: its increments give λ = 0.2
    fit = tr.fit_decay(drift.coordinates, drift.steps, ETA, differences=True)
    np.testing.assert_allclose(fit.fitted_eigenvalues, [0.2], rtol=1e-2)


# ----------------------------------------------------------------------------- weights

D_IN, HIDDEN, C, SAMPLES = 4, 5, 3, 32
MLP_MODEL = MLP((HIDDEN, C), act="tanh")


@pytest.fixture(scope="module")
def mlp_oracle():
    """A small tanh MLP (float64), its Hessian operator, and the dense Hessian's eigh."""
    with enable_x64():
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.normal(size=(2, SAMPLES // 2, D_IN)))
        y = jnp.asarray(rng.integers(0, C, size=(2, SAMPLES // 2)))
        params = MLP_MODEL.init(jax.random.key(0), x[0])
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64) * 2.0, params)
        loss_fn = MeanLoss(MLP_MODEL.apply, cross_entropy)
        op = hessian_operator(loss_fn, params, (x, y))
        flat = op.layout.ravel(params)
        full = (x.reshape(-1, D_IN), y.reshape(-1))
        dense = jax.jit(jax.hessian(lambda f: loss_fn(op.unravel(f), full)))(flat)
        values, vectors = np.linalg.eigh(np.asarray(dense))
        return params, op, np.asarray(dense), values[::-1], vectors[:, ::-1]


@pytest.mark.x64
def test_weight_svd_directions_are_orthonormal_and_reconstruct_the_kernels(mlp_oracle):
    params, op, _, _, _ = mlp_oracle
    theta = np.asarray(op.layout.ravel(params))
    svds = wt.weight_svd(op.layout, params)
    assert [s.name for s in svds] == ["Dense_0", "Dense_1"]
    kernel_mask = np.zeros(op.size, bool)
    for s in svds:
        dirs = wt.svd_directions(s)
        r = min(s.kernel.rows, s.kernel.cols)
        assert dirs.shape == (op.size, r) and s.size == op.size
        np.testing.assert_allclose(dirs.T @ dirs, np.eye(r), atol=1e-12)
        inside = np.zeros(op.size, bool)
        inside[s.kernel.start : s.kernel.stop] = True
        assert np.all(dirs[~inside] == 0)
        # W = Σ s_i u_i v_iᵀ, in the flat layout
        np.testing.assert_allclose(dirs @ s.s, np.where(inside, theta, 0.0), atol=1e-12)
        w = params["params"][s.name]["kernel"]
        np.testing.assert_allclose(s.s, np.linalg.svd(np.asarray(w), compute_uv=False))
        kernel_mask |= inside
    # the slices are exactly the kernel leaves of the layout
    kernels = op.unravel(jnp.asarray(kernel_mask, jnp.float64))
    for name in ("Dense_0", "Dense_1"):
        assert np.all(np.asarray(kernels["params"][name]["kernel"]) == 1)
        assert np.all(np.asarray(kernels["params"][name]["bias"]) == 0)
    # flat params work as well as the tree
    np.testing.assert_allclose(wt.weight_svd(op.layout, theta)[0].s, svds[0].s)


def test_weight_svd_of_conv_kernels_uses_the_row_major_reshape():
    model = ConvNet((4,), num_outputs=3)
    params = model.init(jax.random.key(1), jnp.ones((2, 8)))
    layout = make_layout(params)
    svds = {s.name: s for s in wt.weight_svd(layout, params)}
    conv = svds["Conv_0"]
    kernel = np.asarray(params["params"]["Conv_0"]["kernel"])  # (3, 1, 4)
    assert conv.kernel.shape == kernel.shape and (conv.kernel.rows, conv.kernel.cols) == (3, 4)
    np.testing.assert_allclose((conv.u * conv.s) @ conv.v.T, kernel.reshape(3, 4), atol=1e-6)
    flat = np.asarray(layout.ravel(params))
    inside = np.zeros(layout.size, bool)
    inside[conv.kernel.start : conv.kernel.stop] = True
    np.testing.assert_allclose(
        wt.svd_directions(conv) @ conv.s, np.where(inside, flat, 0), atol=1e-6
    )
    np.testing.assert_array_equal(flat[inside], kernel.ravel())
    assert "Dense_0" in svds and svds["Dense_0"].kernel.shape == (4, 3)


@pytest.mark.x64
def test_svd_eigen_overlap_against_dense_oracle(mlp_oracle):
    params, op, _, values, vectors = mlp_oracle
    k = 6
    assert np.all(-np.diff(values[: k + 1]) > 1e-3 * values[0])  # distinct: vectors unique
    res = eigsh(op, k, key=jax.random.key(2), tol=1e-10, num_steps=op.size - 1)
    lanczos = np.asarray(res.eigenvectors)
    for s in wt.weight_svd(op.layout, params):
        got = wt.svd_eigen_overlap(s, lanczos, np.asarray(res.eigenvalues))
        oracle = (wt.svd_directions(s).T @ vectors[:, :k]) ** 2  # explicit |<d_i, e_j>|²
        np.testing.assert_allclose(got.overlap, oracle, atol=1e-8)
        np.testing.assert_allclose(got.eigenvalues, values[:k], rtol=1e-8)
        sl = slice(s.kernel.start, s.kernel.stop)
        np.testing.assert_allclose(got.kernel_mass, np.sum(vectors[sl, :k] ** 2, 0), atol=1e-8)
        assert np.all(got.overlap.sum(0) <= got.kernel_mass + 1e-12)
        np.testing.assert_allclose(got.chance, got.kernel_mass / s.kernel.size)
        i, j, best = got.best()
        assert best == got.overlap.max() == got.overlap[i, j]
        # the curvature of each SVD direction is its Rayleigh quotient with the dense Hessian
        _, _, dense, _, _ = mlp_oracle
        dirs = wt.svd_directions(s)
        np.testing.assert_allclose(
            wt.rayleigh_quotients(op, dirs), np.sum(dirs * (dense @ dirs), 0), atol=1e-10
        )
    # eigenvectors from another layout (here: the kernels-only one) are refused
    with pytest.raises(ValueError, match="n = "):
        wt.svd_eigen_overlap(wt.weight_svd(op.layout, params)[0], lanczos[:-1])


@pytest.mark.x64
def test_weight_alignment_against_direct_computation(mlp_oracle):
    params, op, _, values, vectors = mlp_oracle
    theta = np.asarray(op.layout.ravel(params))
    k = 8
    al = wt.weight_alignment(op.layout, params, vectors[:, :k], values[:k])
    np.testing.assert_allclose(
        al.global_cos, np.abs(vectors[:, :k].T @ theta) / np.linalg.norm(theta)
    )
    part = partition_by_layer(op.layout)
    assert al.names == part.names == ("Dense_0", "Dense_1")
    for b in range(len(al.names)):
        idx = part.block_ids == b
        e, t = vectors[idx, :k], theta[idx]
        want = np.abs(t @ e) / (np.linalg.norm(t) * np.linalg.norm(e, axis=0))
        np.testing.assert_allclose(al.layer_cos[b], want, rtol=1e-10)
        np.testing.assert_allclose(al.layer_mass[b], np.sum(e**2, 0), rtol=1e-10)
        assert al.layer_chance[b] == random_alignment(int(idx.sum()))
    np.testing.assert_allclose(al.layer_mass.sum(0), 1.0)
    assert al.global_chance == random_alignment(op.size)
    assert json.dumps(al.as_dict())
    # the weight vector itself as an "eigenvector": |cos| = 1 everywhere
    self_al = wt.weight_alignment(op.layout, theta, theta[:, None], np.ones(1))
    np.testing.assert_allclose(self_al.global_cos, 1.0)
    np.testing.assert_allclose(self_al.layer_cos, 1.0)
    with pytest.raises(ValueError, match="eigenvalues"):
        wt.weight_alignment(op.layout, params, vectors[:, :k], values[: k - 1])
    with pytest.raises(ValueError, match="zero"):
        wt.weight_alignment(op.layout, np.zeros(op.size), vectors[:, :k], values[:k])


def test_random_walk_drift_null_matches_brownian_closed_form():
    """Isotropic random walks (m << dim): the top principal component's share of the variance
    is close to 6/π² (Brownian motion's first Karhunen-Loève share, mean removed); a straight
    line instead puts all of it there, and bad sizes are refused."""
    null = tr.random_walk_drift(200, 4000, key=jax.random.key(0), num_walks=8)
    assert null.explained_variance_ratio == pytest.approx(6 / np.pi**2, abs=0.04)
    assert 0 < null.explained_variance_ratio_std < 0.1 and 0 < null.displacement_share < 1
    line = tr.drift_mode(np.outer(np.arange(50.0), np.ones(30)))
    assert line.explained_variance_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_snapshots >= 3"):
        tr.random_walk_drift(2, 10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_walks"):
        tr.random_walk_drift(10, 10, key=jax.random.key(0), num_walks=0)
