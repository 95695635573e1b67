"""Tests for hessjax.analysis.kronecker (overlap curves, low rank of reshaped eigenvectors,
outlier counts) against dense float64 oracles (np.linalg.eigh of the exact layer block and of
np.kron of its factors), closed forms and synthetic spectra, and a tiny run of
experiments/kronecker.py. The oracle comparisons run in float64 (the `x64` marker; the layer
blocks are built inside `enable_x64`), the binary in JAX's default float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _x64 import enable_x64

from hessjax.analysis.kronecker import (
    count_outliers,
    cross_model_overlap,
    eigenvector_low_rank,
    exact_vs_kronecker_overlap,
)
from hessjax.curvature import cross_entropy, exact_layer_hessian, kron_eigh, kronecker_factors
from hessjax.linalg import overlap_curve, random_alignment, subspace_overlap
from hessjax.models import MLP

D, C, N = 6, 4, 64  # input size, classes, samples
MODEL = MLP((5, C), act="relu")  # Dense_0 6->5 (hidden), Dense_1 5->4 (output)


def top_eigh(matrix, k):
    """Oracle: top-k eigenpairs of a symmetric matrix in float64, descending."""
    values, vectors = np.linalg.eigh(np.asarray(matrix, np.float64))
    return values[::-1][:k], vectors[:, ::-1][:, :k]


def random_basis(rng, n, k):
    return np.linalg.qr(rng.normal(size=(n, k)))[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def layer_blocks():
    """Exact kernel blocks and Kronecker factors (float64) of both layers of a small ReLU MLP
    on inputs with a nonzero mean."""
    with enable_x64():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(loc=0.5, size=(N, D)))
        y = jnp.asarray(rng.integers(0, C, size=N))
        variables = MODEL.init(jax.random.key(0), x[:1])
        variables = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), variables)
        out = {}
        for layer in ("Dense_0", "Dense_1"):
            exact = np.asarray(exact_layer_hessian(MODEL, variables, (x, y), cross_entropy, layer))
            factors = kronecker_factors(MODEL, variables, (x, y), cross_entropy, layer)
            out[layer] = exact, factors
    return out


# ----------------------------------------------------------------------------- overlaps


@pytest.mark.x64
def test_overlap_curve_matches_oracle(layer_blocks):
    exact, factors = layer_blocks["Dense_0"]
    n = exact.shape[0]
    k_max = 8
    _, exact_vectors = top_eigh(exact, k_max)
    _, kron_vectors = top_eigh(np.kron(np.asarray(factors.a), np.asarray(factors.g)), k_max)
    curve = exact_vs_kronecker_overlap(exact_vectors, kron_vectors)
    assert curve.ks.tolist() == list(range(1, k_max + 1))
    for k, got in zip(curve.ks, curve.overlap, strict=True):
        p = exact_vectors[:, :k].T @ kron_vectors[:, :k]
        np.testing.assert_allclose(got, np.sum(p**2) / k, rtol=1e-10)
        want = subspace_overlap(exact_vectors[:, :k], kron_vectors[:, :k])
        np.testing.assert_allclose(got, float(want), rtol=1e-10)
    np.testing.assert_allclose(curve.chance, curve.ks / n)
    assert np.all((curve.overlap >= 0) & (curve.overlap <= 1 + 1e-6))
    # the Kronecker approximation's eigenvectors from kron_eigh span the same top spaces as
    # eigh of np.kron wherever the product eigenvalues are not tied at the cut
    kron_values, _ = top_eigh(np.kron(np.asarray(factors.a), np.asarray(factors.g)), k_max + 1)
    eig = kron_eigh(factors, k_max)
    same = overlap_curve(kron_vectors, np.asarray(eig.eigenvectors))
    untied = np.abs(kron_values[:-1] - kron_values[1:]) > 1e-8 * kron_values[0]
    np.testing.assert_allclose(same.overlap[untied], 1.0, atol=1e-6)


def test_overlap_curve_closed_forms():
    rng = np.random.default_rng(1)
    n = 50
    q = random_basis(rng, n, 10)
    # identical bases, and the same spaces with columns rotated inside every top-k prefix
    # (a sign flip per column): overlap 1 for every k
    assert np.allclose(cross_model_overlap(q, q * np.sign(rng.normal(size=10))).overlap, 1.0)
    # nested bases that share only their first 3 columns: overlap min(k, 3)/k
    other = np.concatenate([q[:, :3], np.linalg.qr(
        (np.eye(n) - q @ q.T) @ rng.normal(size=(n, 7)))[0]], axis=1)  # fmt: skip
    curve = cross_model_overlap(q, other, ks=[1, 3, 5, 10])
    np.testing.assert_allclose(curve.overlap, [1.0, 1.0, 3 / 5, 3 / 10], atol=1e-12)
    assert curve.at(5) == pytest.approx(0.6)
    # random subspaces: near chance k/n
    draws = [overlap_curve(random_basis(rng, n, 5), random_basis(rng, n, 5)) for _ in range(200)]
    chance = np.mean([d.overlap for d in draws], axis=0)
    np.testing.assert_allclose(chance, np.arange(1, 6) / n, rtol=0.25)


def test_overlap_curve_checks_inputs():
    rng = np.random.default_rng(2)
    q = random_basis(rng, 20, 4)
    with pytest.raises(ValueError, match="different spaces"):
        overlap_curve(q, random_basis(rng, 21, 4))
    with pytest.raises(ValueError, match="ks"):
        overlap_curve(q, q, ks=[0, 2])
    with pytest.raises(ValueError, match="ks"):
        overlap_curve(q, q[:, :3], ks=[4])
    with pytest.raises(ValueError, match="orthonormal"):
        overlap_curve(q, 2 * q)
    with pytest.raises(ValueError, match="non-finite"):
        overlap_curve(q, np.full_like(q, np.nan))
    with pytest.raises(ValueError, match="not among"):
        overlap_curve(q, q, ks=[1, 2]).at(3)


# ----------------------------------------------------------------------------- low rank


@pytest.mark.x64
def test_low_rank_of_kronecker_eigenvectors_is_exactly_rank_one(layer_blocks):
    _, factors = layer_blocks["Dense_0"]
    d_in, d_out = factors.a.shape[0], factors.g.shape[0]
    eig = kron_eigh(factors, 6)
    low = eigenvector_low_rank(np.asarray(eig.eigenvectors), d_in, d_out, factors.x_mean)
    np.testing.assert_allclose(low.top_share, 1.0, atol=1e-10)
    # input side = the eigenvector u_i of A = E[xxᵀ] it was built from
    u = np.linalg.eigh(np.asarray(factors.a))[1][:, ::-1][:, np.asarray(eig.input_index)]
    np.testing.assert_allclose(np.abs(np.sum(low.input_vectors * u.T, axis=1)), 1.0, atol=1e-8)
    x_mean = np.asarray(factors.x_mean)
    np.testing.assert_allclose(
        low.mean_alignment, np.abs(u.T @ x_mean) / np.linalg.norm(x_mean), atol=1e-8
    )


@pytest.mark.x64
def test_low_rank_against_svd_oracle(layer_blocks):
    exact, factors = layer_blocks["Dense_1"]
    d_in, d_out = factors.a.shape[0], factors.g.shape[0]
    _, vectors = top_eigh(exact, 5)
    low = eigenvector_low_rank(vectors, d_in, d_out, factors.x_mean)
    assert low.singular_values.shape == (5, min(d_in, d_out))
    assert low.input_vectors.shape == (5, d_in) and low.output_vectors.shape == (5, d_out)
    for i in range(5):
        mat = vectors[:, i].reshape(d_in, d_out)  # row-major (in, out) kernel
        s = np.linalg.svd(mat, compute_uv=False)
        np.testing.assert_allclose(low.singular_values[i], s, atol=1e-12)
        assert low.top_share[i] == pytest.approx(s[0] ** 2 / np.sum(s**2))
        # σ₁ u vᵀ is the best rank-one approximation of the reshaped eigenvector
        rank_one = s[0] * np.outer(low.input_vectors[i], low.output_vectors[i])
        assert np.linalg.norm(mat - rank_one) == pytest.approx(np.sqrt(np.sum(s[1:] ** 2)))
    assert np.all((low.top_share >= 1 / min(d_in, d_out) - 1e-12) & (low.top_share <= 1 + 1e-12))
    assert np.all((low.mean_alignment >= 0) & (low.mean_alignment <= 1 + 1e-12))


def test_low_rank_layout_is_row_major_in_out():
    # a vector built as u ⊗ w in our (in, out) layout has input side u and output side w
    rng = np.random.default_rng(3)
    u, w = rng.normal(size=3), rng.normal(size=4)
    u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
    low = eigenvector_low_rank(np.kron(u, w), 3, 4, x_mean=u * 2.0)
    assert low.top_share[0] == pytest.approx(1.0)
    assert abs(low.input_vectors[0] @ u) == pytest.approx(1.0)
    assert abs(low.output_vectors[0] @ w) == pytest.approx(1.0)
    assert low.mean_alignment[0] == pytest.approx(1.0)


def test_random_alignment_closed_form():
    assert random_alignment(1) == pytest.approx(1.0)
    assert random_alignment(2) == pytest.approx(2 / np.pi)
    assert random_alignment(3) == pytest.approx(0.5)
    rng = np.random.default_rng(4)
    v = rng.normal(size=(20000, 30))
    mc = np.mean(np.abs(v[:, 0]) / np.linalg.norm(v, axis=1))
    assert random_alignment(30) == pytest.approx(mc, rel=0.02)


def test_low_rank_checks_inputs():
    v = np.eye(12)[:, :2]
    with pytest.raises(ValueError, match="in\\*out"):
        eigenvector_low_rank(v, 3, 5, np.ones(3))
    with pytest.raises(ValueError, match="x_mean must have shape"):
        eigenvector_low_rank(v, 3, 4, np.ones(4))
    with pytest.raises(ValueError, match="x_mean is zero"):
        eigenvector_low_rank(v, 3, 4, np.zeros(3))
    with pytest.raises(ValueError, match="zero column"):
        eigenvector_low_rank(np.zeros((12, 1)), 3, 4, np.ones(3))
    with pytest.raises(ValueError, match="in_dim"):
        eigenvector_low_rank(v, 0, 4, np.ones(0))


# ----------------------------------------------------------------------------- outliers


def _spiked_spectrum(rng, num_outliers, num_bulk=60, ratio=5.0):
    """num_outliers eigenvalues in [ratio, 2 ratio] · bulk edge above a Marchenko-Pastur bulk
    (eigenvalues of a Wishart matrix, edge ≈ 1), sorted descending."""
    z = rng.normal(size=(num_bulk, 4 * num_bulk))
    bulk = np.linalg.eigvalsh(z @ z.T / z.shape[1])
    edge = bulk.max()
    spikes = edge * ratio * (1 + rng.uniform(size=num_outliers))
    return np.sort(np.concatenate([spikes, bulk]))[::-1]


@pytest.mark.parametrize("num_outliers", [1, 2, 5, 9, 19])
def test_count_outliers_on_spiked_spectra(num_outliers):
    rng = np.random.default_rng(num_outliers)
    lam = _spiked_spectrum(rng, num_outliers)
    top = lam[: 3 * num_outliers + 10]  # the top of the spectrum, as an eigensolver gives it
    res = count_outliers(top)
    assert res.count == num_outliers
    assert res.gap == pytest.approx(top[num_outliers - 1] / top[num_outliers])
    assert res.gap > 2.5
    assert res.ratios.shape == (top.size - 1,)
    # order does not matter
    assert count_outliers(rng.permutation(top)).count == num_outliers


def test_count_outliers_floor_max_count_and_flat_spectrum():
    # near-zero and negative bulk eigenvalues are floored: no spurious gap among them
    assert count_outliers([10.0, 9.0, 1e-8, 1e-12, -1e-3]).count == 2
    assert count_outliers([10.0, 9.0, 1e-3, 1e-9]).count == 2
    # without an effective floor the ratio between two tiny bulk values wins
    assert count_outliers([10.0, 9.0, 1e-3, 1e-9], rel_floor=1e-12).count == 3
    # max_count limits the candidate positions from above
    lam = [100.0, 10.0, 9.0, 8.0, 0.1, 0.09]
    assert count_outliers(lam).count == 4
    assert count_outliers(lam, max_count=3).count == 1
    flat = count_outliers(np.ones(6))
    assert flat.count == 0 and flat.gap == 1.0
    assert count_outliers([4.0, 3.0, 2.0, 1.0], min_gap=2.5).count == 0


def test_count_outliers_checks_inputs():
    with pytest.raises(ValueError, match=">= 2 values"):
        count_outliers([1.0])
    with pytest.raises(ValueError, match="positive"):
        count_outliers([-1.0, -2.0])
    with pytest.raises(ValueError, match="finite"):
        count_outliers([1.0, np.nan])
    with pytest.raises(ValueError, match="max_count"):
        count_outliers([3.0, 2.0, 1.0], max_count=3)
    with pytest.raises(ValueError, match="rel_floor"):
        count_outliers([3.0, 2.0], rel_floor=0.0)


@pytest.mark.x64
def test_outliers_of_output_layer_with_mean_dominated_inputs():
    """Closed-form case: the output layer of a linear softmax model at W = 0 (p uniform) on
    inputs x = μ + small noise. M = diag(p) - ppᵀ is the same for every sample, so the block is
    exactly A ⊗ G with G = (I - 11ᵀ/C)/C of rank C-1 and A ≈ μμᵀ: C-1 outliers ‖μ‖²/C."""
    rng = np.random.default_rng(5)
    model = MLP((C,), act="relu")
    mu = np.full(D, 2.0)
    x = jnp.asarray(mu + 0.05 * rng.normal(size=(200, D)))
    y = jnp.asarray(rng.integers(0, C, size=200))
    variables = jax.tree_util.tree_map(
        lambda p: jnp.zeros_like(p, jnp.float64), model.init(jax.random.key(0), x[:1])
    )
    exact = exact_layer_hessian(model, variables, (x, y), cross_entropy, "Dense_0")
    values, vectors = top_eigh(exact, 3 * C)
    res = count_outliers(values)
    assert res.count == C - 1
    np.testing.assert_allclose(values[: C - 1], np.mean(np.sum(np.asarray(x) ** 2, 1)) / C,
                               rtol=0.01)  # fmt: skip
    low = eigenvector_low_rank(vectors[:, : C - 1], D, C, np.asarray(x).mean(0))
    assert np.all(low.top_share > 0.999) and np.all(low.mean_alignment > 0.999)
    # exact block = A ⊗ G: the top-(C-1) eigenspaces coincide (k = 1 is degenerate: G has C-1
    # equal eigenvalues, so no single top eigenvector exists)
    factors = kronecker_factors(model, variables, (x, y), cross_entropy, "Dense_0")
    np.testing.assert_allclose(np.kron(factors.a, factors.g), exact, atol=1e-12)
    kron = kron_eigh(factors, C - 1)
    curve = exact_vs_kronecker_overlap(vectors[:, : C - 1], np.asarray(kron.eigenvectors), [C - 1])
    assert curve.overlap[0] == pytest.approx(1.0, abs=1e-8)
