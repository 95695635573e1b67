"""Sketched eigendecomposition (hessjax.linalg.sketch) on synthetic operators with known
spectra and on a small network's Hessian against numpy.linalg.eigh of jax.hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hessjax import training
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import gaussian_mixture
from hessjax.linalg import dense_operator
from hessjax.linalg.sketch import random_test_matrix, sketch_eigh
from hessjax.models import MLP

N = 300
KINDS = ["gaussian", "rademacher", "srtt"]


pytestmark = pytest.mark.x64  # float64 oracles: the whole module runs in float64


def spectrum_matrix(lam, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(lam), len(lam))))
    return (q * lam) @ q.T


def top_by_magnitude(a, k):
    w, v = np.linalg.eigh(a)
    order = np.argsort(-np.abs(w))[:k]
    return w[order], v[:, order]


@pytest.mark.parametrize("kind", KINDS)
def test_exact_for_low_rank_indefinite(kind):
    """rank 8 (indefinite) with outer >= 8: the sketch recovers A exactly (float64)."""
    lam = np.zeros(N)
    lam[:8] = [9.0, -7.0, 5.0, 4.0, -3.0, 2.0, 1.5, -1.0]
    a = spectrum_matrix(lam)
    res = sketch_eigh(dense_operator(jnp.asarray(a)), 5, key=jax.random.key(0), outer=10,
                      inner=20, test_matrix=kind, error_probes=10)  # fmt: skip
    want, vecs = top_by_magnitude(a, 5)
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(res.eigenvectors) * vecs, 0)), 1, atol=1e-9)
    assert res.num_matvecs == 10 + 20 + 10
    # the rank-5 truncation error is known exactly: sqrt(sum of the other squared eigenvalues)
    truth = np.sqrt(np.sum(np.sort(lam**2)[::-1][5:]) / np.sum(lam**2))
    assert abs(float(res.error_estimate) - truth) <= 4 * float(res.error_stderr) + 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_low_rank_plus_noise_and_error_estimate(kind):
    rng = np.random.default_rng(1)
    lam = np.concatenate([[50.0, 40.0, -30.0, 20.0, 10.0], 0.01 * rng.normal(size=N - 5)])
    a = spectrum_matrix(lam, seed=2)
    res = sketch_eigh(dense_operator(jnp.asarray(a)), 5, key=jax.random.key(3), outer=20,
                      inner=40, test_matrix=kind, error_probes=40)  # fmt: skip
    want, _ = top_by_magnitude(a, 5)
    # Perturbation bound: |λ̂ - λ| <= ‖noise‖_2 ~ 0.03 (largest noise eigenvalue ≈ 0.03)
    np.testing.assert_allclose(res.eigenvalues, want, atol=0.05)
    v = np.asarray(res.eigenvectors)
    truth = np.linalg.norm(a - (v * np.asarray(res.eigenvalues)) @ v.T) / np.linalg.norm(a)
    assert abs(float(res.error_estimate) - truth) <= 4 * float(res.error_stderr), (
        float(res.error_estimate), float(res.error_stderr), truth)  # fmt: skip
    assert float(res.error_stderr) < 0.3 * truth  # the estimate is informative


def test_decaying_spectrum_accuracy_grows_with_sketch_size():
    lam = 0.8 ** np.arange(N) * np.where(np.arange(N) % 3 == 0, -1, 1)
    a = spectrum_matrix(lam, seed=4)
    want, _ = top_by_magnitude(a, 5)
    errors = []
    for outer in (10, 30):
        res = sketch_eigh(dense_operator(jnp.asarray(a)), 5, key=jax.random.key(5), outer=outer)
        errors.append(np.max(np.abs(np.asarray(res.eigenvalues) - want) / np.abs(want)))
    assert errors[1] < 1e-3 < errors[0] * 10 and errors[1] < errors[0]


def test_srtt_columns_are_orthogonal():
    o = np.asarray(random_test_matrix(jax.random.key(0), 64, 12, "srtt", jnp.float64))
    np.testing.assert_allclose(o.T @ o, 64 * np.eye(12), atol=1e-9)  # orthogonal columns
    np.testing.assert_allclose(np.mean(o**2), 1, rtol=1e-9)  # unit-variance entries


def test_small_network_top5_within_one_percent():
    """Tanh MLP 10-16-16-4 (516 params) trained briefly on a 4-class Gaussian mixture. Its
    Hessian spectrum decays slowly (1.34, 1.10, 0.63, 0.49, 0.43, 0.40, ...), the hard case for
    a single-pass sketch: top-5 errors measured 17 % / 3.6 % / 0.9 % / 0.5 % at outer = 60 /
    100 / 150 / 200 (inner = 2 outer); 200 / 400 holds 1 % with a 2x margin."""
    ds = gaussian_mixture(num_samples=512, num_classes=4, dim=10, seed=0)
    x, y = jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train)
    model = MLP((16, 16, 4), act="tanh")
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    model.init(jax.random.key(0), x[:1]))  # fmt: skip
    loss = MeanLoss(model.apply, cross_entropy)
    params, _ = training.train(loss, params, x, y, optimizer=training.make_optimizer("adam", 1e-2),
                               num_steps=200, batch_size=64, key=jax.random.key(1))  # fmt: skip
    data = (x[None, :256], y[None, :256])
    op = hessian_operator(loss, params, data)
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda w: loss(unravel(w), (data[0][0], data[1][0])))(flat))
    res = sketch_eigh(op, 5, key=jax.random.key(7), outer=200, inner=400, test_matrix="srtt")
    want, _ = top_by_magnitude(dense, 5)
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-2)


def test_errors():
    op = dense_operator(jnp.eye(20))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="outer <= inner"):
        sketch_eigh(op, 5, key=key, outer=4)
    with pytest.raises(ValueError, match="outer <= inner"):
        sketch_eigh(op, 2, key=key, outer=10, inner=5)
    with pytest.raises(ValueError, match="error_probes"):
        sketch_eigh(op, 2, key=key, error_probes=1)
    with pytest.raises(ValueError, match="test matrix"):
        sketch_eigh(op, 2, key=key, test_matrix="hadamard")
