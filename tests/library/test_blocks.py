"""Tests for block structure: generic blocks of a symmetric operator (hessjax.linalg.blocks)
against dense numpy slices, parameter partitions (hessjax.curvature.blocks), and the
layer-wise / neuron-block analyses on a small MLP against jax.hessian in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hessjax.analysis import blocks as analysis_blocks
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator, make_layout
from hessjax.curvature.blocks import (
    layer_block_diagonal,
    partition_by_layer,
    partition_by_neuron,
    partition_from_labels,
)
from hessjax.linalg import Partition, dense_operator, eigsh, to_dense
from hessjax.linalg.blocks import (
    Block,
    block_eigsh,
    block_frobenius_sq,
    block_operator,
    block_ratios,
    dense_block,
    dense_block_frobenius_sq,
)
from hessjax.models import MLP

N, NB = 24, 3
KEY = jax.random.key(0)
PART = Partition.from_ids(np.arange(N) % NB)  # strided: not contiguous


pytestmark = pytest.mark.x64  # float64 oracles: the whole module runs in float64


@pytest.fixture(scope="module")
def sym():
    """A symmetric indefinite (24, 24) matrix with a well-separated spectrum per block, and a
    strided (non-contiguous) partition into 3 blocks of 8."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    a = (q * np.linspace(-3, 5, N)) @ q.T
    ids = np.arange(N) % NB
    return a, dense_operator(jnp.asarray(a)), ids


def test_block_operator_matches_dense_slices(sym):
    a, op, ids = sym
    for i in range(NB):
        ri = np.flatnonzero(ids == i)
        diag = block_operator(op, PART, i)
        np.testing.assert_allclose(diag @ jnp.eye(ri.size), a[np.ix_(ri, ri)], atol=1e-12)
        for j in range(NB):
            if j == i:
                continue
            cj = np.flatnonzero(ids == j)
            off = block_operator(op, PART, i, j)
            assert isinstance(off, Block) and off.shape == (ri.size, cj.size)
            np.testing.assert_allclose(off @ jnp.eye(cj.size), a[np.ix_(ri, cj)], atol=1e-12)
            np.testing.assert_allclose(
                off.transpose @ jnp.eye(ri.size), a[np.ix_(cj, ri)], atol=1e-12
            )
            np.testing.assert_allclose(dense_block(op, PART, i, j), a[np.ix_(ri, cj)])
        np.testing.assert_allclose(dense_block(op, PART, i), a[np.ix_(ri, ri)], atol=1e-12)


@pytest.mark.parametrize("which", ["LA", "SA", "BE"])
def test_block_eigsh_matches_each_block(sym, which):
    a, op, ids = sym
    res = block_eigsh(op, PART, 2, key=KEY, which=which, num_steps=8, tol=None)
    assert res.eigenvalues.shape == (NB, 2) and res.eigenvectors.shape == (N, 2)
    np.testing.assert_array_equal(res.num_steps, 8)
    assert res.num_matvecs == 8 and isinstance(res.num_matvecs, int)
    for i in range(NB):
        ri = np.flatnonzero(ids == i)
        w, v = np.linalg.eigh(a[np.ix_(ri, ri)])
        pick = {"LA": [-1, -2], "SA": [0, 1], "BE": [-1, 0]}[which]
        np.testing.assert_allclose(res.eigenvalues[i], w[pick], rtol=1e-10, atol=1e-12)
        x = np.asarray(res.eigenvectors)[ri]  # packed: block i's rows hold its eigenvectors
        np.testing.assert_allclose(x.T @ x, np.eye(2), atol=1e-10)
        np.testing.assert_allclose(np.abs(np.sum(x * v[:, pick], axis=0)), 1, atol=1e-8)
        np.testing.assert_allclose(np.asarray(res.residuals[i]), 0, atol=1e-8)


def test_block_eigsh_unequal_blocks_and_custom_diagonal():
    """Blocks of sizes 3, 9 and 20 with 20 steps: the 3-block stops at 3 steps (exact, no
    restart garbage); a user-supplied block-diagonal operator gives the same answer."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    a = (q * np.linspace(-2, 6, 32)) @ q.T
    ids = rng.permutation(np.repeat([0, 1, 2], [3, 9, 20]))
    part = Partition.from_ids(ids)
    res = block_eigsh(dense_operator(jnp.asarray(a)), part, 2, key=KEY, num_steps=20, tol=None)
    np.testing.assert_array_equal(res.num_steps, [3, 9, 20])
    d = np.zeros_like(a)
    for i in range(3):
        ri = np.flatnonzero(ids == i)
        d[np.ix_(ri, ri)] = a[np.ix_(ri, ri)]
        want = np.linalg.eigvalsh(a[np.ix_(ri, ri)])[::-1][:2]
        np.testing.assert_allclose(res.eigenvalues[i], want, rtol=1e-9)
    same = block_eigsh(dense_operator(jnp.asarray(a)), part, 2, key=KEY, num_steps=20,
                       tol=None, block_diagonal=dense_operator(jnp.asarray(d)))  # fmt: skip
    np.testing.assert_allclose(same.eigenvalues, res.eigenvalues, rtol=1e-10)


def test_block_eigsh_stops_on_tol(sym):
    _, op, ids = sym
    res = block_eigsh(op, PART, 1, key=KEY, num_steps=8, tol=1e-6)
    assert np.all(np.asarray(res.converged))
    assert np.all(np.asarray(res.num_steps) <= 8) and res.num_matvecs <= 8


def test_frobenius_exact_and_ratios(sym):
    a, op, ids = sym
    want = np.zeros((NB, NB))
    for i in range(NB):
        for j in range(NB):
            want[i, j] = np.sum(a[np.ix_(ids == i, ids == j)] ** 2)
    exact = block_frobenius_sq(op, PART)
    np.testing.assert_allclose(exact.sq, want, rtol=1e-12)
    np.testing.assert_array_equal(exact.stderr, 0)
    assert exact.num_matvecs == N
    np.testing.assert_allclose(dense_block_frobenius_sq(a, PART), want, rtol=1e-12)
    some = block_frobenius_sq(op, PART, columns=[2])
    np.testing.assert_allclose(some.sq[:, 0], want[:, 2], rtol=1e-12)
    r = block_ratios(some.sq, some.columns)
    np.testing.assert_allclose(r, (want[2] / want[2, 2])[None], rtol=1e-12)
    np.testing.assert_allclose(block_ratios(want), want / np.diag(want)[:, None], rtol=1e-12)


def test_frobenius_estimate_is_unbiased(sym):
    a, op, ids = sym
    exact = dense_block_frobenius_sq(a, PART)
    est = block_frobenius_sq(op, PART, num_probes=400, key=KEY)
    z = np.abs(np.asarray(est.sq) - exact) / np.asarray(est.stderr)
    assert np.all(np.asarray(est.stderr) > 0)
    assert np.all(z < 4.5), z  # 9 entries within 4.5 standard errors (P(fail) < 1e-4)
    # and the estimate is informative: within 20 % of the truth at 400 probes
    np.testing.assert_allclose(est.sq, exact, rtol=0.2)


def test_block_errors(sym):
    _, op, ids = sym
    with pytest.raises(ValueError, match="covers 23 indices"):
        block_operator(op, Partition.from_ids(ids[:-1]), 0)
    with pytest.raises(ValueError, match="no index"):
        Partition(("a", "b"), np.zeros(N, int))
    with pytest.raises(ValueError, match="lie in"):
        Partition(("a", "b"), ids)
    with pytest.raises(ValueError, match="integer"):
        Partition.from_ids(ids.astype(float))
    with pytest.raises(TypeError, match="Partition"):
        block_operator(op, ids, 0)
    with pytest.raises(ValueError, match="out of range"):
        block_operator(op, PART, 5)
    with pytest.raises(ValueError, match="every block"):
        block_eigsh(op, PART, 8, key=KEY)
    with pytest.raises(ValueError, match="num_probes"):
        block_frobenius_sq(op, PART, num_probes=1, key=KEY)
    with pytest.raises(ValueError, match="key"):
        block_frobenius_sq(op, PART, num_probes=10)
    with pytest.raises(ValueError, match="block_size"):
        block_frobenius_sq(op, PART, block_size=0)


@pytest.mark.parametrize("which", ["XX", "la", None])
def test_block_eigsh_rejects_unknown_which(sym, which):
    """Today's code ran "both ends" for any unknown value."""
    _, op, _ = sym
    with pytest.raises(ValueError, match="which must be one of"):
        block_eigsh(op, PART, 1, key=KEY, which=which)


def test_block_eigsh_rejects_full_operator_as_block_diagonal(sym):
    """Passing A itself as D = Σ P_i A P_i couples the blocks and gave wrong per-block values;
    the probe check catches it, and accepts the true block-diagonal part."""
    a, op, ids = sym
    with pytest.raises(ValueError, match="couples different blocks"):
        block_eigsh(op, PART, 1, key=KEY, block_diagonal=op)
    d = np.where(ids[:, None] == ids[None, :], a, 0)
    res = block_eigsh(op, PART, 1, key=KEY, block_diagonal=dense_operator(jnp.asarray(d)))
    for i in range(NB):
        ri = np.flatnonzero(ids == i)
        np.testing.assert_allclose(
            res.eigenvalues[i, 0], np.linalg.eigvalsh(a[np.ix_(ri, ri)])[-1], rtol=1e-4
        )


# ----------------------------------------------------------------------------- networks


@pytest.fixture(scope="module")
def mlp():
    """tanh MLP 6-5-4-3 with biases, cross-entropy on 32 samples (one microbatch), float64."""
    model = MLP((5, 4, 3), act="tanh")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 32, 6)))
    y = jnp.asarray(rng.integers(0, 3, size=(1, 32)))
    params = jax.tree_util.tree_map(
        lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x[0])
    )
    loss = MeanLoss(model.apply, cross_entropy)
    op = hessian_operator(loss, params, (x, y))
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda w: loss(unravel(w), (x[0], y[0])))(flat))
    return op, dense, params, loss, (x, y)


def test_partitions_follow_the_layout(mlp):
    op, _, params, _, _ = mlp
    layers = partition_by_layer(op.layout)
    assert layers.names == ("Dense_0", "Dense_1", "Dense_2")
    np.testing.assert_array_equal(layers.sizes, [35, 24, 15])
    neurons = partition_by_neuron(op.layout)
    assert neurons.num_blocks == 5 + 4 + 3 and neurons.names[0] == "Dense_0/0"
    # block 'Dense_1/2' is column 2 of Dense_1's kernel plus bias[2]
    marked = op.unravel(jnp.asarray(neurons.block_ids == neurons.index("Dense_1/2"), float))
    d1 = marked["params"]["Dense_1"]
    np.testing.assert_array_equal(d1["kernel"], np.eye(4)[[2] * 5])
    np.testing.assert_array_equal(d1["bias"], np.eye(4)[2])
    assert float(sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(marked))) == 6
    labels = jax.tree_util.tree_map(lambda p: 0, params)
    labels["params"]["Dense_2"]["kernel"] = np.arange(3)  # broadcast over the input axis
    custom = partition_from_labels(op.layout, labels)
    assert custom.names == ("0", "1", "2")
    # block '0': Dense_0, Dense_1, Dense_2's bias and its kernel column 0 (4 inputs)
    np.testing.assert_array_equal(custom.sizes, [35 + 24 + 3 + 4, 4, 4])
    with pytest.raises(ValueError, match="broadcast"):
        labels["params"]["Dense_2"]["kernel"] = np.arange(4)
        partition_from_labels(op.layout, labels)
    restricted = partition_by_neuron(make_layout(params, "Dense_2"))
    assert restricted.names == ("Dense_2/0", "Dense_2/1", "Dense_2/2")


def test_layerwise_top_eigenvalues_against_dense(mlp):
    op, dense, *_ = mlp
    part = partition_by_layer(op.layout)
    table = analysis_blocks.layerwise_top_eigenvalues(op, part, key=KEY, tol=1e-10)
    for i in range(part.num_blocks):
        idx = np.flatnonzero(part.block_ids == i)
        want = np.linalg.eigvalsh(dense[np.ix_(idx, idx)])[-1]
        np.testing.assert_allclose(table.block_top[i], want, rtol=1e-8)
    np.testing.assert_allclose(table.whole_top, np.linalg.eigvalsh(dense)[-1], rtol=1e-8)
    assert table.names == part.names
    rows = table.as_rows()
    assert rows[0]["block"] == "Dense_0" and rows[-1]["block"] == "whole network"


def test_block_ratio_matrix_against_dense(mlp):
    op, dense, *_ = mlp
    part = partition_by_layer(op.layout)
    sq = dense_block_frobenius_sq(dense, part)
    got = analysis_blocks.block_ratio_matrix(op, part)
    np.testing.assert_allclose(got, np.asarray(sq) / np.diag(sq)[:, None], rtol=1e-10)
    # and the whole-network eigsh agrees with the block-diagonal part being dominant
    assert eigsh(op, 1, key=KEY).eigenvalues[0] > 0


def test_mse_output_blocks_are_exactly_block_diagonal():
    """f = V relu(W x) with MSE: the Hessian block of two output neurons (rows v_c, v_c') is
    E[h hᵀ] δ_cc' = 0 exactly for c != c' (Dong et al.)."""
    r = analysis_blocks.static_force_ratios(8, "mse", input_dim=6, width=5, num_samples=40,
                                            key=KEY, probed=3)  # fmt: skip
    assert r["output"] == 0.0
    assert r["hidden"] > 0


def test_static_force_ratios_in_microbatches_match_one_batch():
    """The same 40 samples in 4 microbatches of 10: the same Hessian, so the same ratios; a
    microbatch size that does not divide the samples is refused."""
    kw = dict(input_dim=6, width=5, num_samples=40, key=KEY, probed=2)
    one = analysis_blocks.static_force_ratios(7, "ce", **kw)
    four = analysis_blocks.static_force_ratios(7, "ce", microbatch_size=10, **kw)
    for block in ("output", "hidden"):
        assert one[block] > 0
        np.testing.assert_allclose(four[block], one[block], rtol=1e-10)
    with pytest.raises(ValueError, match="microbatch_size must be a positive divisor"):
        analysis_blocks.static_force_ratios(7, "ce", microbatch_size=12, **kw)


def test_layer_block_diagonal_restricted_products(mlp):
    op, dense, *_ = mlp
    part = partition_by_layer(op.layout)
    d = layer_block_diagonal(op, part)
    want = np.zeros_like(dense)
    for i in range(part.num_blocks):
        ri = np.flatnonzero(part.block_ids == i)
        want[np.ix_(ri, ri)] = dense[np.ix_(ri, ri)]
    np.testing.assert_allclose(to_dense(d), want, rtol=0, atol=1e-12 * np.abs(dense).max())
    fast = block_eigsh(op, part, 2, key=KEY, tol=None, num_steps=15, block_diagonal=d)
    slow = block_eigsh(op, part, 2, key=KEY, tol=None, num_steps=15)
    np.testing.assert_allclose(fast.eigenvalues, slow.eigenvalues, rtol=1e-10)
    with pytest.raises(ValueError, match="whole leaves"):
        layer_block_diagonal(op, partition_by_neuron(op.layout))


def test_block_eigsh_many_blocks_use_segment_sums():
    """70 blocks (more than the kernel handles as slices): the id-based path, strided, against
    numpy's eigh of every 2×2 block."""
    rng = np.random.default_rng(4)
    n, b = 140, 70
    a = rng.normal(size=(n, n))
    a = (a + a.T) / 2
    part = Partition.from_ids(np.arange(n) % b)
    res = block_eigsh(dense_operator(jnp.asarray(a)), part, 1, key=KEY, num_steps=2, tol=None)
    for i in range(b):
        ri = part.indices(i)
        want = np.linalg.eigvalsh(a[np.ix_(ri, ri)])[-1]
        np.testing.assert_allclose(res.eigenvalues[i, 0], want, rtol=1e-10)
        x = np.asarray(res.eigenvectors)[ri, 0]
        np.testing.assert_allclose(a[np.ix_(ri, ri)] @ x, want * x, atol=1e-10)
