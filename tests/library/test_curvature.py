"""Tests for hessjax.curvature: operators against dense float64 oracles (jax.hessian of the
mean loss, explicit JᵀH_outJ, per-example gradients), eigsh, pytree views, restriction,
streaming, a Flax NNX model, data sharded over 4 CPU devices, and input validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hessjax.curvature import (
    CurvatureOperator,
    MeanLoss,
    StreamingOperator,
    cross_entropy,
    empirical_fisher_operator,
    ggn_operator,
    group_by_prefix,
    hessian_operator,
    make_layout,
    mse,
)
from hessjax.linalg import eigsh, to_dense
from hessjax.models import MLP, ConvNet

M, B, D, C = 2, 8, 8, 3  # microbatches, batch size, input size, classes / outputs
NUM_STEPS = 40  # one Krylov size for every eigsh call (n = 75 for the tanh MLP)
KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def float64():
    """The oracles here are float64, with or without global x64; float32 tests cast."""
    with jax.enable_x64(True):
        yield


def f64(tree):
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), tree)


def make_data(seed, m=M, b=B, regression=False):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(m, b, D)))
    if regression:
        return x, jnp.asarray(rng.normal(size=(m, b, C)))
    return x, jnp.asarray(rng.integers(0, C, size=(m, b)))


def init(model, seed):
    return f64(model.init(jax.random.key(seed), jnp.zeros((1, D))))


def microbatch(data, i):
    return jax.tree_util.tree_map(lambda x: x[i], data)


@functools.partial(jax.jit, static_argnums=0)
def _dense_hessian(loss_fn, params, data):
    flat, unravel = ravel_pytree(params)
    m = jax.tree_util.tree_leaves(data)[0].shape[0]

    def mean_loss(w):
        return sum(loss_fn(unravel(w), microbatch(data, i)) for i in range(m)) / m

    return jax.hessian(mean_loss)(flat)


def dense_hessian(loss_fn, params, data):
    """Oracle: jax.hessian of the mean over microbatches of loss_fn, on ravel_pytree's flat
    vector, in float64."""
    return np.asarray(_dense_hessian(loss_fn, f64(params), data))


def scale_of(matrix):
    return float(np.abs(matrix).max())


def assert_matrix_close(actual, expected, rel=1e-10):
    expected = np.asarray(expected)
    assert scale_of(expected) > 1e-3  # not a vacuous comparison
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rel * scale_of(expected))


def expected_pairs(w, v, k, which):
    """Eigenpairs an eigsh(which) call should return, from ascending numpy eigh output."""
    if which == "LA":
        idx = np.arange(len(w))[::-1][:k]
    elif which == "SA":
        idx = np.arange(k)
    else:  # BE: ceil(k/2) largest and floor(k/2) smallest, sorted descending
        top = np.arange(len(w))[::-1][: (k + 1) // 2]
        idx = np.concatenate([top, np.arange(k // 2)[::-1]])
    return w[idx], v[:, idx], idx


def assert_eigsh_matches(res, w, v, k, which, rel):
    want, vecs, idx = expected_pairs(w, v, k, which)
    scale = np.abs(w).max()
    got = np.asarray(res.eigenvalues, np.float64)
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * scale)
    # eigenvectors of eigenvalues separated from the rest of the spectrum
    checked = 0
    for col, i in enumerate(idx):
        gap = np.min(np.abs(np.delete(w, i) - w[i]))
        if gap > 1e-3 * scale:
            cos = abs(float(np.dot(np.asarray(res.eigenvectors[:, col], np.float64), vecs[:, col])))
            assert cos >= 1 - 1e-6, (which, col, cos)
            checked += 1
    assert checked >= 1


# ----------------------------------------------------------------------------- problems


class Problem:
    def __init__(self, loss, params, data, model=None, per_example_loss=None):
        self.loss, self.params, self.data = loss, params, data
        self.model, self.per_example_loss = model, per_example_loss
        self.op = hessian_operator(loss, params, data)
        self.H = dense_hessian(loss, params, data)

    @functools.cached_property
    def dense(self):
        return np.asarray(to_dense(self.op))

    @functools.cached_property
    def eigh(self):
        return np.linalg.eigh(self.H)


def linen_problem(model, per_example_loss, seed, regression=False):
    params = init(model, seed)
    data = make_data(seed + 100, regression=regression)
    loss = MeanLoss(model.apply, per_example_loss)
    return Problem(loss, params, data, model, per_example_loss)


@pytest.fixture(scope="module")
def tanh_ce():
    return linen_problem(MLP((6, C), act="tanh"), cross_entropy, seed=1)


@pytest.fixture(scope="module")
def relu_ce():
    return linen_problem(MLP((6, C), act="relu"), cross_entropy, seed=2)


@pytest.fixture(scope="module")
def conv_ce():
    return linen_problem(ConvNet((2, 3), C, act="relu"), cross_entropy, seed=3)


@pytest.fixture(scope="module")
def tanh_mse():
    return linen_problem(MLP((6, C), act="tanh"), mse, seed=4, regression=True)


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 4
    return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# ----------------------------------------------------------------------------- flat layout


def test_flat_order_is_ravel_pytree_order(tanh_ce):
    op, params = tanh_ce.op, tanh_ce.params
    flat, unravel = ravel_pytree(params)
    assert isinstance(op, CurvatureOperator)
    assert op.size == flat.size == 75 and op.shape == (75, 75) and op.dtype == np.float64
    v = jax.random.normal(jax.random.key(1), (op.size,), jnp.float64)
    tree = unravel(v)
    np.testing.assert_array_equal(op.ravel(tree), v)
    np.testing.assert_array_equal(op.ravel(params), flat)
    for a, b in zip(
        jax.tree_util.tree_leaves(op.unravel(v)), jax.tree_util.tree_leaves(tree), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # paths follow tree_leaves order
    keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert [p.split("/") for p in op.layout.paths] == [
        [s.strip("[]'") for s in k.split("][")] for k in keys
    ]


# ----------------------------------------------------------------------------- Hessian


@pytest.mark.parametrize("name", ["tanh_ce", "relu_ce", "conv_ce", "tanh_mse"])
def test_hessian_matches_dense_oracle(name, request):
    problem = request.getfixturevalue(name)
    assert problem.op.size <= 300
    assert_matrix_close(problem.dense, problem.H)


def test_hessian_differs_between_losses(tanh_ce):
    # guards the oracle comparison: a different loss at the same params gives another matrix
    x, _ = tanh_ce.data
    targets = jax.nn.one_hot(tanh_ce.data[1], C, dtype=jnp.float64)
    H_mse = dense_hessian(MeanLoss(tanh_ce.model.apply, mse), tanh_ce.params, (x, targets))
    assert np.abs(H_mse - tanh_ce.H).max() > 1e-3 * scale_of(tanh_ce.H)


def test_eigsh_top_k_matches_eigh(tanh_ce):
    w, v = tanh_ce.eigh
    res = eigsh(tanh_ce.op, 3, key=KEY, num_steps=NUM_STEPS, tol=None)
    assert_eigsh_matches(res, w, v, 3, "LA", rel=1e-8)
    assert bool(np.all(res.converged))


@pytest.mark.parametrize("which, k", [("SA", 3), ("BE", 4)])
def test_eigsh_smallest_and_both_ends_on_indefinite_hessian(tanh_ce, which, k):
    w, v = tanh_ce.eigh
    assert w[0] < -1e-3 * np.abs(w).max()  # indefinite: there is a negative end to find
    res = eigsh(tanh_ce.op, k, key=KEY, which=which, num_steps=NUM_STEPS, tol=None)
    assert_eigsh_matches(res, w, v, k, which, rel=1e-8)


def test_eigsh_float32_matches_float64_oracle(tanh_ce):
    params32 = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), tanh_ce.params)
    x, y = tanh_ce.data
    x32 = x.astype(jnp.float32)
    op32 = hessian_operator(tanh_ce.loss, params32, (x32, y))
    assert op32.dtype == np.float32
    res = eigsh(op32, 3, key=KEY, num_steps=NUM_STEPS, tol=None)
    assert res.eigenvalues.dtype == jnp.float32
    w = np.linalg.eigvalsh(dense_hessian(tanh_ce.loss, params32, (f64(x32), y)))
    np.testing.assert_allclose(np.asarray(res.eigenvalues, np.float64), w[::-1][:3], rtol=1e-4)


# ----------------------------------------------------------------------------- products, views


def test_block_products_and_pytree_views(tanh_ce):
    op = tanh_ce.op
    V = jax.random.normal(jax.random.key(2), (op.size, 4), jnp.float64)
    AV = np.asarray(op @ V)
    assert AV.shape == (op.size, 4)
    columns = np.stack([np.asarray(op @ V[:, i]) for i in range(4)], axis=1)
    assert_matrix_close(AV, columns, rel=1e-12)
    assert_matrix_close(AV, tanh_ce.H @ np.asarray(V))

    v = V[:, 0]
    tree = op.unravel(v)
    np.testing.assert_array_equal(op.ravel(tree), v)
    out = op.tree_matvec(tree)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tanh_ce.params)
    np.testing.assert_allclose(op.ravel(out), columns[:, 0], rtol=0, atol=1e-12 * scale_of(AV))

    trees = op.unravel_vectors(V)
    _, unravel = ravel_pytree(tanh_ce.params)
    for i in range(4):
        for a, b in zip(
            jax.tree_util.tree_leaves(trees),
            jax.tree_util.tree_leaves(unravel(V[:, i])),
            strict=True,
        ):
            assert a.shape == (4, *b.shape)
            np.testing.assert_array_equal(a[i], b)

    block = op.tree_matmat(trees)
    assert jax.tree_util.tree_structure(block) == jax.tree_util.tree_structure(tanh_ce.params)
    flat_block = jax.vmap(op.ravel, out_axes=1)(block)
    assert_matrix_close(np.asarray(flat_block), AV, rel=1e-12)


# ----------------------------------------------------------------------------- restriction


def flat_indices(params, keep):
    """Indices in ravel_pytree order of the leaves whose key path (as a list of names) passes
    `keep`, computed independently of hessjax's path handling."""
    idx, start = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(k.key) for k in path]
        if keep(names):
            idx.extend(range(start, start + leaf.size))
        start += leaf.size
    return np.array(idx)


@pytest.mark.parametrize(
    "select, keep",
    [
        ("Dense_1", lambda n: "Dense_1" in n),
        (
            ["Dense_0/bias", "Dense_1/kernel"],
            lambda n: n[1:] in (["Dense_0", "bias"], ["Dense_1", "kernel"]),
        ),
        (lambda path: path.endswith("kernel"), lambda n: n[-1] == "kernel"),
    ],
    ids=["str", "list", "predicate"],
)
def test_select_gives_diagonal_block(tanh_ce, select, keep):
    op = hessian_operator(tanh_ce.loss, tanh_ce.params, tanh_ce.data, select=select)
    idx = flat_indices(tanh_ce.params, keep)
    assert 0 < op.size == idx.size < tanh_ce.op.size
    assert_matrix_close(to_dense(op), tanh_ce.H[np.ix_(idx, idx)])
    # views of the restricted operator: ravel keeps the selected leaves, unravel zero-fills
    flat = ravel_pytree(tanh_ce.params)[0]
    np.testing.assert_array_equal(op.ravel(tanh_ce.params), flat[idx])
    back = np.asarray(ravel_pytree(op.unravel(flat[idx]))[0])
    expected = np.zeros(flat.size)
    expected[idx] = flat[idx]
    np.testing.assert_array_equal(back, expected)


def test_group_by_prefix_lists_layers(tanh_ce, conv_ce):
    assert group_by_prefix(tanh_ce.params) == ["Dense_0", "Dense_1"]
    assert group_by_prefix(conv_ce.params) == ["Conv_0", "Conv_1", "Dense_0"]
    assert group_by_prefix(tanh_ce.params, depth=2)[:2] == ["Dense_0/bias", "Dense_0/kernel"]


# ----------------------------------------------------------------------------- GGN, Fisher


def test_ggn_equals_hessian_for_linear_model_with_mse():
    problem = linen_problem(MLP((C,)), mse, seed=5, regression=True)
    ggn = ggn_operator(problem.model.apply, mse, problem.params, problem.data)
    assert ggn.size == D * C + C
    assert_matrix_close(to_dense(ggn), problem.H)


@pytest.fixture(scope="module")
def tanh_ggn_dense(tanh_ce):
    op = ggn_operator(tanh_ce.model.apply, cross_entropy, tanh_ce.params, tanh_ce.data)
    return np.asarray(to_dense(op))


def test_ggn_is_psd_for_tanh_mlp_with_cross_entropy(tanh_ce, tanh_ggn_dense):
    G = tanh_ggn_dense
    np.testing.assert_allclose(G, G.T, rtol=0, atol=1e-12 * scale_of(G))
    w = np.linalg.eigvalsh(G)
    assert w[0] >= -1e-10 * w[-1]
    assert tanh_ce.eigh[0][0] < -1e-3 * w[-1]  # while the Hessian is indefinite


def test_ggn_equals_explicit_jt_hout_j(tanh_ce, tanh_ggn_dense):
    flat, unravel = ravel_pytree(tanh_ce.params)
    x, y = tanh_ce.data
    x, y = x.reshape(-1, D), y.reshape(-1)
    J = jax.jacobian(lambda w: tanh_ce.model.apply(unravel(w), x))(flat)  # (N, C, n)
    out = tanh_ce.model.apply(tanh_ce.params, x)
    H_out = jax.vmap(jax.hessian(lambda o, t: cross_entropy(o[None], t[None])[0]))(out, y)
    G = np.einsum("nci,ncd,ndj->ij", J, H_out, J) / x.shape[0]
    assert_matrix_close(tanh_ggn_dense, G)


def test_empirical_fisher_equals_mean_outer_product_of_gradients(tanh_ce):
    op = empirical_fisher_operator(tanh_ce.model.apply, cross_entropy, tanh_ce.params, tanh_ce.data)
    flat, unravel = ravel_pytree(tanh_ce.params)
    x, y = tanh_ce.data
    x, y = x.reshape(-1, D), y.reshape(-1)

    def example_loss(w, xi, yi):
        return cross_entropy(tanh_ce.model.apply(unravel(w), xi[None]), yi[None])[0]

    g = np.asarray(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(flat, x, y))
    assert_matrix_close(to_dense(op), g.T @ g / x.shape[0])


# ----------------------------------------------------------------------------- streaming


def test_streaming_equals_in_memory_operator(tanh_ce):
    batches = [microbatch(tanh_ce.data, i) for i in range(M)]
    for source in (batches, lambda: iter(batches)):
        op = hessian_operator(tanh_ce.loss, tanh_ce.params, batches=source)
        assert isinstance(op, StreamingOperator) and op.size == tanh_ce.op.size
        assert_matrix_close(to_dense(op), tanh_ce.dense, rel=1e-12)
    V = jax.random.normal(jax.random.key(4), (op.size, 3), jnp.float64)
    AV = np.asarray(op @ V)
    assert AV.shape == (op.size, 3)
    assert_matrix_close(AV, tanh_ce.dense @ np.asarray(V), rel=1e-12)
    assert_matrix_close(
        op.tree_matvec(op.unravel(V[:, 1]))["params"]["Dense_0"]["kernel"],
        tanh_ce.op.unravel(AV[:, 1])["params"]["Dense_0"]["kernel"],
        rel=1e-12,
    )


@pytest.fixture(scope="module")
def ragged(tanh_ce):
    """Batches of sizes 8, 8, 5 and the oracle Hessian of the pooled mean loss over all 21."""
    x, y = make_data(7, m=1, b=21)
    x, y = x[0], y[0]
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    H = dense_hessian(tanh_ce.loss, tanh_ce.params, (x[None], y[None]))
    return batches, H


def test_streaming_ragged_batches_weight_by_batch_size(tanh_ce, ragged):
    batches, H = ragged

    def fresh():
        yield from batches

    op = hessian_operator(tanh_ce.loss, tanh_ce.params, batches=fresh)
    dense = np.asarray(to_dense(op))
    assert_matrix_close(dense, H)
    # the unweighted mean of the batch Hessians is a different matrix
    unweighted = sum(
        dense_hessian(tanh_ce.loss, tanh_ce.params, (bx[None], by[None])) for bx, by in batches
    )
    assert np.abs(unweighted / 3 - H).max() > 1e-4 * scale_of(H)


def test_eigsh_on_streaming_operator(tanh_ce, ragged):
    batches, H = ragged
    op = hessian_operator(tanh_ce.loss, tanh_ce.params, batches=batches)
    res = eigsh(op, 2, key=KEY, num_steps=NUM_STEPS, tol=None)
    w, v = np.linalg.eigh(H)
    assert_eigsh_matches(res, w, v, 2, "LA", rel=1e-8)


# ----------------------------------------------------------------------------- model agnosticism


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(D, 5, rngs=rngs, param_dtype=jnp.float64)
        self.l2 = nnx.Linear(5, C, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def nnx_loss(graphdef, state, batch):
    x, y = batch
    return jnp.mean(cross_entropy(nnx.merge(graphdef, state)(x), y))


def test_nnx_model_hessian_matches_dense_oracle():
    graphdef, state = nnx.split(NNXMLP(nnx.Rngs(0)))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state)} == {np.dtype("float64")}
    loss = functools.partial(nnx_loss, graphdef)
    data = make_data(8)
    op = hessian_operator(loss, state, data)
    assert op.size == D * 5 + 5 + 5 * C + C
    assert_matrix_close(to_dense(op), dense_hessian(loss, state, data))
    assert group_by_prefix(state) == ["l1", "l2"]


# ----------------------------------------------------------------------------- sharding


def test_sharded_data_matches_single_device(tanh_ce, mesh):
    data = jax.device_put(tanh_ce.data, NamedSharding(mesh, P(None, "data")))
    params = jax.device_put(tanh_ce.params, NamedSharding(mesh, P()))
    x = data[0]
    assert len(x.sharding.device_set) == 4
    assert x.addressable_shards[0].data.shape == (M, B // 4, D)
    op = hessian_operator(tanh_ce.loss, params, data)

    v = jax.random.normal(jax.random.key(3), (op.size,), jnp.float64)
    single = np.asarray(tanh_ce.op @ v)
    np.testing.assert_allclose(np.asarray(op @ v), single, rtol=0, atol=1e-10 * scale_of(single))

    res = eigsh(op, 3, key=KEY, num_steps=NUM_STEPS, tol=None)
    ref = eigsh(tanh_ce.op, 3, key=KEY, num_steps=NUM_STEPS, tol=None)
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(res.eigenvalues, tanh_ce.eigh[0][::-1][:3], rtol=1e-8)


# ----------------------------------------------------------------------------- errors


def _inf_loss(loss):
    def fn(params, batch):
        return loss(params, batch) + jnp.inf

    return fn


def test_non_finite_loss_raises(tanh_ce):
    nan_params = jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), tanh_ce.params)
    with pytest.raises(ValueError, match="not finite"):
        hessian_operator(tanh_ce.loss, nan_params, tanh_ce.data)
    with pytest.raises(ValueError, match="not finite"):
        hessian_operator(_inf_loss(tanh_ce.loss), tanh_ce.params, tanh_ce.data)
    batches = [microbatch(tanh_ce.data, i) for i in range(M)]
    with pytest.raises(ValueError, match="not finite"):
        ggn_operator(tanh_ce.model.apply, cross_entropy, nan_params, batches=batches)


def test_vector_tree_validation(tanh_ce):
    op, params = tanh_ce.op, tanh_ce.params
    missing = {"params": {"Dense_0": params["params"]["Dense_0"]}}
    for bad in (missing, jax.tree_util.tree_leaves(params)):
        with pytest.raises(ValueError, match="structure"):
            op.ravel(bad)
        with pytest.raises(ValueError, match="structure"):
            op.tree_matvec(bad)
    as32 = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
    transposed = jax.tree_util.tree_map(lambda p: p.T if p.ndim == 2 else p, params)
    for bad in (as32, transposed):
        with pytest.raises(ValueError, match="Dense_0"):
            op.ravel(bad)
        with pytest.raises(ValueError, match="Dense_0"):
            op.tree_matvec(bad)


def test_data_validation(tanh_ce):
    loss, params = tanh_ce.loss, tanh_ce.params
    x, y = tanh_ce.data
    with pytest.raises(ValueError, match="empty"):
        hessian_operator(loss, params, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="empty"):
        hessian_operator(loss, params, (x[:, :0], y[:, :0]))
    with pytest.raises(ValueError, match="same leading microbatch"):
        hessian_operator(loss, params, (x, y[:1]))
    with pytest.raises(ValueError, match="same leading batch"):
        hessian_operator(loss, params, (x, y[:, :5]))
    batches = [microbatch(tanh_ce.data, i) for i in range(M)]
    with pytest.raises(ValueError, match="exactly one"):
        hessian_operator(loss, params, tanh_ce.data, batches=batches)
    with pytest.raises(ValueError, match="exactly one"):
        hessian_operator(loss, params)
    with pytest.raises(ValueError, match="re-iterable"):
        hessian_operator(loss, params, batches=(b for b in batches))
    with pytest.raises(ValueError, match="batches is empty"):
        hessian_operator(loss, params, batches=[])
    with pytest.raises(ValueError, match="batches is empty"):
        hessian_operator(loss, params, batches=lambda: iter([]))


def test_select_and_dtype_validation(tanh_ce):
    loss, params, data = tanh_ce.loss, tanh_ce.params, tanh_ce.data
    for select in ("Dense_7", "Dense", ["nope", "Dense_0/scale"], lambda path: False):
        with pytest.raises(ValueError, match="matches no parameter"):
            hessian_operator(loss, params, data, select=select)
    mixed = {
        "params": {
            "Dense_0": jax.tree_util.tree_map(
                lambda p: p.astype(jnp.float32), params["params"]["Dense_0"]
            ),
            "Dense_1": params["params"]["Dense_1"],
        }
    }
    with pytest.raises(ValueError, match="one floating dtype"):
        hessian_operator(loss, mixed, data)
    with pytest.raises(ValueError, match="one floating dtype"):
        make_layout(mixed, ["Dense_0/kernel", "Dense_1/bias"])
    assert make_layout(mixed, "Dense_1").dtype == np.float64
    assert make_layout(mixed, "Dense_0").dtype == np.float32
