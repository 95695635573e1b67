"""Spectra of Hessian blocks (Dong et al. 2025): `linalg.block_spectra` and the neuron-block
analyses of `analysis.blocks` against dense slices of jax.hessian in float64, and the closed
form of the linear model's cross-entropy Hessian at V = 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hessjax.analysis import blocks as analysis_blocks
from hessjax.curvature import hessian_operator
from hessjax.curvature.blocks import partition_by_neuron
from hessjax.linalg import Partition, dense_operator
from hessjax.linalg.blocks import block_frobenius_sq, block_spectra

pytestmark = pytest.mark.x64  # float64 oracles: the whole module runs in float64

KEY = jax.random.key(3)
C, D, WIDTH, SAMPLES = 5, 6, 4, 40


@pytest.fixture(scope="module")
def nn_problem():
    """f = V relu(W x) at init (d 6, width 4, C 5: 44 params) with its dense Hessian."""
    problem, probe_key = analysis_blocks.static_problem(
        C, "ce", input_dim=D, width=WIDTH, num_samples=SAMPLES, key=KEY
    )
    flat, unravel = ravel_pytree(problem.params)
    batch = jax.tree_util.tree_map(lambda a: a[0], problem.data)  # the one microbatch
    dense = np.asarray(jax.hessian(lambda v: problem.loss_fn(unravel(v), batch))(flat))
    return problem, probe_key, dense


def _block(dense, part, i, j):
    return dense[np.ix_(part.indices(i), part.indices(j))]


def test_block_spectra_matches_dense_eigh_and_svd():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(14, 14))
    a = a + a.T
    ids = rng.permutation(np.repeat([0, 1, 2], [3, 5, 6]))
    part = Partition.from_ids(ids)
    pairs = [(1, 1), (0, 1), (2, 0), (2, 2), (1, 2)]
    res = block_spectra(dense_operator(jnp.asarray(a)), part, pairs, block_size=2)
    assert res.num_matvecs == 5 + 3 + 6  # one unit product per column of blocks 1, 0, 2
    for (i, j), values in zip(pairs, res.values, strict=True):
        b = _block(a, part, i, j)
        want = np.linalg.eigvalsh(b) if i == j else np.linalg.svd(b, compute_uv=False)
        assert values.shape == (min(b.shape),)
        np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-12)


def test_block_spectra_rejects_bad_pairs():
    op = dense_operator(jnp.eye(4))
    part = Partition.from_ids(np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="at least one"):
        block_spectra(op, part, [])
    with pytest.raises(ValueError, match="out of range"):
        block_spectra(op, part, [(0, 2)])


def test_neuron_block_spectra_against_jax_hessian(nn_problem):
    problem, probe_key, dense = nn_problem
    part = problem.partition
    for layer, n_j in (("Dense_0", D), ("Dense_1", WIDTH)):
        res = analysis_blocks.neuron_block_spectra(problem.op, part, layer, 3, key=probe_key)
        k = res.pairs.shape[0] // 2
        assert k == 3 and res.num_matvecs == 3 * n_j
        diag, off = res.pairs[:k], res.pairs[k:]
        np.testing.assert_array_equal(diag[:, 0], diag[:, 1])
        np.testing.assert_array_equal(off[:, 1], diag[:, 1])
        assert np.all(off[:, 0] != off[:, 1])  # a different block of the same layer
        assert all(part.names[i].startswith(layer + "/") for i in res.pairs.ravel())
        want_diag = np.concatenate([np.linalg.eigvalsh(_block(dense, part, j, j)) for j, _ in diag])
        want_off = np.concatenate(
            [np.linalg.svd(_block(dense, part, i, j), compute_uv=False) for i, j in off]
        )
        np.testing.assert_allclose(res.diagonal, want_diag, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.off_diagonal, want_off, rtol=1e-9, atol=1e-12)


def test_neuron_block_ratio_with_block_size_matches_dense(nn_problem):
    problem, probe_key, dense = nn_problem
    part = problem.partition
    members = [i for i, n in enumerate(part.names) if n.startswith("Dense_1/")]
    r = analysis_blocks.neuron_block_ratio(
        problem.op, part, "Dense_1", C, key=probe_key, block_size=3
    )  # every output block probed: the mean over all ordered pairs
    sq = {(i, j): np.sum(_block(dense, part, i, j) ** 2) for i in members for j in members}
    want = np.mean([sq[i, j] / sq[j, j] for i in members for j in members if i != j])
    assert r == pytest.approx(want, rel=1e-9)
    assert block_frobenius_sq(problem.op, part, columns=[0], block_size=5).num_matvecs == D


def test_linear_model_ce_closed_form_at_zero():
    """f = V x with V = 0: p = 1/C for every sample, so H_cc = (1/C)(1 - 1/C) Σ and
    H_cc' = -Σ / C², Σ = XᵀX / N: diagonal-block eigenvalues and off-diagonal singular values
    are the eigenvalues of Σ scaled by (C - 1)/C² and 1/C²."""
    num_classes = 7
    problem, probe_key = analysis_blocks.static_problem(
        num_classes, "ce", input_dim=D, width=WIDTH, num_samples=SAMPLES, key=KEY, model="linear"
    )
    zero = jax.tree_util.tree_map(jnp.zeros_like, problem.params)
    op = hessian_operator(problem.loss_fn, zero, problem.data)
    part = partition_by_neuron(op.layout)
    assert part.num_blocks == num_classes
    res = analysis_blocks.neuron_block_spectra(op, part, "Dense_0", 2, key=probe_key)
    x = np.asarray(problem.data[0][0], np.float64)
    sigma = np.linalg.eigvalsh(x.T @ x / SAMPLES)
    c = num_classes
    np.testing.assert_allclose(res.diagonal, np.tile(sigma * (c - 1) / c**2, 2), rtol=1e-10)
    np.testing.assert_allclose(res.off_diagonal, np.tile(sigma[::-1] / c**2, 2), rtol=1e-10)


def test_neuron_block_order_and_diagonal_mass(nn_problem):
    problem, _, dense = nn_problem
    part = problem.partition
    order, bounds = analysis_blocks.neuron_block_order(part)
    assert bounds[-1] == dense.shape[0] and len(bounds) == part.num_blocks + 1
    ids = part.block_ids[order]
    for b in range(part.num_blocks):  # block b is the contiguous range [bounds[b], bounds[b+1])
        assert np.all(ids[bounds[b] : bounds[b + 1]] == b)
    permuted = dense[np.ix_(order, order)]
    edges = zip(bounds[:-1], bounds[1:], strict=True)
    diag = sum(np.sum(permuted[a:e, a:e] ** 2) for a, e in edges)
    frac = analysis_blocks.diagonal_mass_fraction(dense, part)
    assert frac == pytest.approx(diag / np.sum(dense**2), rel=1e-12)
    assert 0 < frac < 1
    block_diag = np.zeros_like(permuted)
    for a, e in zip(bounds[:-1], bounds[1:], strict=True):
        block_diag[a:e, a:e] = permuted[a:e, a:e]
    inverse = np.argsort(order)
    assert analysis_blocks.diagonal_mass_fraction(
        block_diag[np.ix_(inverse, inverse)], part
    ) == pytest.approx(1.0)


def test_static_problem_rejects_unknown_model_and_loss():
    with pytest.raises(ValueError, match="model must be one of"):
        analysis_blocks.static_problem(3, "ce", input_dim=2, width=2, num_samples=4, key=KEY,
                                       model="cnn")  # fmt: skip
    with pytest.raises(ValueError, match="loss must be one of"):
        analysis_blocks.static_problem(3, "hinge", input_dim=2, width=2, num_samples=4, key=KEY)
