"""Tests for hessjax.curvature.kronecker, all in float64 (with or without global x64): the
exact Dense-layer Hessian against jax.hessian of the mean loss, the Kronecker approximation
where it is exact (one sample; output layer under MSE), closed forms for the output Hessians,
chunking, matrix-free Kronecker products and eigenpairs against numpy on np.kron, the
block-diagonal Kronecker operator under eigsh against numpy on the explicit matrix, layer
inputs by hand, and input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator, mse
from hessjax.curvature.kronecker import (
    KroneckerFactors,
    dense_layer_io,
    exact_and_factors,
    exact_layer_hessian,
    kron_eigh,
    kron_matvec,
    kronecker_factors,
    kronecker_operator,
    output_hessians,
)
from hessjax.linalg import eigsh, to_dense
from hessjax.models import MLP

D, C, N = 5, 3, 6  # input size, classes / outputs, samples
WIDTHS = (4, 3, C)  # Dense_0 5->4, Dense_1 4->3 (hidden), Dense_2 3->3 (output)
MODEL = MLP(WIDTHS, act="tanh")


# ----------------------------------------------------------------------------- helpers


def kernel_hessian(model, variables, batch, per_example_loss, layer):
    """Oracle: jax.hessian of the mean loss w.r.t. one kernel (in, out), reshaped row-major to
    (in*out, in*out)."""
    inputs, targets = batch

    def loss(kernel):
        params = {**variables["params"], layer: {**variables["params"][layer], "kernel": kernel}}
        outputs = model.apply({"params": params}, inputs)
        return jnp.mean(per_example_loss(outputs, targets))

    kernel = variables["params"][layer]["kernel"]
    h = jax.jit(jax.hessian(loss))(kernel)
    return np.asarray(h).reshape(kernel.size, kernel.size)


def assert_matrix_close(actual, expected, rel=1e-10):
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max())
    assert scale > 1e-3  # not a vacuous comparison
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rel * scale)


def kron_of(factors):
    return np.kron(np.asarray(factors.a), np.asarray(factors.g))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Every test here compares against float64 oracles, with or without global x64."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def variables():
    v = MODEL.init(jax.random.key(0), jnp.zeros((1, D)))
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), v)


@pytest.fixture(scope="module")
def ce_batch():
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.normal(size=(N, D))), jnp.asarray(rng.integers(0, C, size=N))


@pytest.fixture(scope="module")
def mse_batch():
    rng = np.random.default_rng(2)
    return jnp.asarray(rng.normal(size=(N, D))), jnp.asarray(rng.normal(size=(N, C)))


@pytest.fixture(scope="module")
def exact_ce(variables, ce_batch):
    """layer -> (exact_layer_hessian, oracle) under cross-entropy on N samples."""
    return {
        layer: (
            np.asarray(exact_layer_hessian(MODEL, variables, ce_batch, cross_entropy, layer)),
            kernel_hessian(MODEL, variables, ce_batch, cross_entropy, layer),
        )
        for layer in ("Dense_1", "Dense_2")
    }


@pytest.fixture(scope="module")
def factors_ce(variables, ce_batch):
    return {
        layer: kronecker_factors(MODEL, variables, ce_batch, cross_entropy, layer)
        for layer in ("Dense_1", "Dense_2")
    }


def well_separated_factors(seed, alpha, gamma):
    """Factors with prescribed spectra in random orthonormal bases."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(len(alpha), len(alpha))))
    w, _ = np.linalg.qr(rng.normal(size=(len(gamma), len(gamma))))
    a, g = (u * alpha) @ u.T, (w * gamma) @ w.T
    a, g = (a + a.T) / 2, (g + g.T) / 2
    return KroneckerFactors(jnp.asarray(a), jnp.asarray(g), jnp.zeros(len(alpha)))


# ----------------------------------------------------------------------------- exact block


@pytest.mark.parametrize("layer", ["Dense_1", "Dense_2"])
def test_exact_layer_hessian_matches_jax_hessian(exact_ce, layer):
    exact, oracle = exact_ce[layer]
    assert exact.shape == oracle.shape == ((4 * 3, 4 * 3) if layer == "Dense_1" else (9, 9))
    assert_matrix_close(exact, oracle)


def test_exact_layer_hessian_is_the_operator_block(variables, ce_batch, exact_ce):
    # same flattening as the curvature operators' select='Dense_1/kernel' restriction
    data = jax.tree_util.tree_map(lambda x: x[None], ce_batch)
    loss = MeanLoss(MODEL.apply, cross_entropy)
    op = hessian_operator(loss, variables, data, select="Dense_1/kernel")
    assert_matrix_close(exact_ce["Dense_1"][0], to_dense(op))


def test_chunked_equals_unchunked(variables, ce_batch, exact_ce, factors_ce):
    # 4: one full chunk and a remainder of 2; 2: three full chunks in a scan
    for chunk_size in (4, 2):
        got = kronecker_factors(
            MODEL, variables, ce_batch, cross_entropy, "Dense_1", chunk_size=chunk_size
        )
        for g, w in zip(got, factors_ce["Dense_1"], strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    exact = exact_layer_hessian(MODEL, variables, ce_batch, cross_entropy, "Dense_1", chunk_size=4)
    assert_matrix_close(exact, exact_ce["Dense_1"][0], rel=1e-12)


def test_exact_and_factors_in_one_pass(variables, ce_batch, exact_ce, factors_ce):
    exact, factors = exact_and_factors(
        MODEL, variables, ce_batch, cross_entropy, "Dense_1", chunk_size=4
    )
    assert_matrix_close(exact, exact_ce["Dense_1"][0], rel=1e-12)
    for g, w in zip(factors, factors_ce["Dense_1"], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- factors


def test_factors_are_means_of_io_and_output_hessians(variables, ce_batch, factors_ce):
    x, _ = dense_layer_io(MODEL, variables, ce_batch[0], "Dense_1")
    m = output_hessians(MODEL, variables, ce_batch, cross_entropy, "Dense_1")
    f = factors_ce["Dense_1"]
    assert f.a.shape == (4, 4) and f.g.shape == (3, 3) and f.x_mean.shape == (4,)
    np.testing.assert_allclose(f.a, x.T @ x / N, rtol=1e-12)
    np.testing.assert_allclose(f.g, m.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(f.x_mean, x.mean(axis=0), rtol=1e-12)


def test_output_layer_hessians_closed_form(variables, ce_batch, mse_batch):
    # cross-entropy on the logits: M = diag(p) - p pᵀ; MSE: M = I
    logits = MODEL.apply(variables, ce_batch[0])
    p = np.asarray(jax.nn.softmax(logits, axis=-1))
    m = np.asarray(output_hessians(MODEL, variables, ce_batch, cross_entropy, "Dense_2"))
    assert m.shape == (N, C, C)
    want = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    np.testing.assert_allclose(m, want, rtol=0, atol=1e-13)
    m_mse = output_hessians(MODEL, variables, mse_batch, mse, "Dense_2")
    np.testing.assert_allclose(m_mse, np.broadcast_to(np.eye(C), (N, C, C)), atol=1e-13)


def test_hidden_layer_hessians_are_per_sample(variables, ce_batch):
    # each M_n depends only on sample n: the batch result equals single-sample results
    m = output_hessians(MODEL, variables, ce_batch, cross_entropy, "Dense_1")
    single = (ce_batch[0][2:3], ce_batch[1][2:3])
    one = output_hessians(MODEL, variables, single, cross_entropy, "Dense_1")
    np.testing.assert_allclose(m[2], one[0], rtol=1e-12, atol=1e-15)
    assert not np.allclose(m[0], m[1])


# ----------------------------------------------------------------------------- approximation


@pytest.mark.parametrize("layer", ["Dense_1", "Dense_2"])
def test_kronecker_exact_for_one_sample(variables, ce_batch, layer):
    batch = (ce_batch[0][:1], ce_batch[1][:1])
    factors = kronecker_factors(MODEL, variables, batch, cross_entropy, layer)
    oracle = kernel_hessian(MODEL, variables, batch, cross_entropy, layer)
    assert_matrix_close(kron_of(factors), oracle)


def test_kronecker_is_approximate_for_many_samples(exact_ce, factors_ce):
    # guards the exactness tests: with N > 1 and sample-dependent M the approximation differs
    for layer in ("Dense_1", "Dense_2"):
        exact = exact_ce[layer][0]
        err = np.abs(kron_of(factors_ce[layer]) - exact).max()
        assert err > 1e-3 * np.abs(exact).max()


def test_kronecker_exact_for_mse_output_layer(variables, mse_batch):
    factors = kronecker_factors(MODEL, variables, mse_batch, mse, "Dense_2")
    np.testing.assert_allclose(factors.g, np.eye(C), atol=1e-13)
    oracle = kernel_hessian(MODEL, variables, mse_batch, mse, "Dense_2")
    assert_matrix_close(kron_of(factors), oracle)
    assert_matrix_close(exact_layer_hessian(MODEL, variables, mse_batch, mse, "Dense_2"), oracle)


# ----------------------------------------------------------------------------- matvec / eigh


def test_kron_matvec_matches_numpy(factors_ce):
    factors = factors_ce["Dense_1"]
    dense = kron_of(factors)
    rng = np.random.default_rng(3)
    v = rng.normal(size=(12,))
    vs = rng.normal(size=(12, 5))
    np.testing.assert_allclose(kron_matvec(factors, jnp.asarray(v)), dense @ v, rtol=1e-12)
    np.testing.assert_allclose(kron_matvec(factors, jnp.asarray(vs)), dense @ vs, rtol=1e-12)


@pytest.mark.parametrize(
    "gamma",
    [np.array([0.6, 1.7, 3.1]), np.array([-0.45, 1.7, 3.1])],  # G PSD, and G indefinite
    ids=["psd", "indefinite"],
)
def test_kron_eigh_matches_numpy(gamma):
    alpha = np.array([0.3, 1.1, 2.3, 5.2])
    factors = well_separated_factors(4, alpha, gamma)
    w, v = np.linalg.eigh(kron_of(factors))
    w, v = w[::-1], v[:, ::-1]
    scale = np.abs(w).max()
    assert np.min(np.abs(np.diff(w))) > 5e-3 * scale  # well separated
    for k in (1, 5, 12):
        res = kron_eigh(factors, k)
        assert res.eigenvalues.shape == (k,) and res.eigenvectors.shape == (12, k)
        np.testing.assert_allclose(res.eigenvalues, w[:k], rtol=1e-10, atol=1e-10 * scale)
        cos = np.abs(np.sum(np.asarray(res.eigenvectors) * v[:, :k], axis=0))
        assert np.all(cos >= 1 - 1e-8), cos
        np.testing.assert_allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(k), atol=1e-12)
        # indices name the factor eigenpairs (descending order in each factor)
        np.testing.assert_allclose(
            res.eigenvalues, alpha[::-1][res.input_index] * gamma[::-1][res.output_index]
        )


def test_kron_eigh_vectors_are_rank_one(factors_ce):
    res = kron_eigh(factors_ce["Dense_2"], 3)
    for col in range(3):
        s = np.linalg.svd(np.asarray(res.eigenvectors[:, col]).reshape(3, 3), compute_uv=False)
        assert s[1] < 1e-12 * s[0]


# ----------------------------------------------------------------------------- layer io


def test_dense_layer_io_by_hand(variables, ce_batch):
    inputs = ce_batch[0]
    p = variables["params"]
    x0, z0 = dense_layer_io(MODEL, variables, inputs, "Dense_0")
    np.testing.assert_array_equal(x0, inputs)
    np.testing.assert_allclose(z0, inputs @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    x1, z1 = dense_layer_io(MODEL, variables, inputs, "params/Dense_1")
    np.testing.assert_allclose(x1, jnp.tanh(z0), rtol=1e-14)
    np.testing.assert_allclose(z1, x1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    assert x1.shape == (N, 4) and z1.shape == (N, 3)


def test_nested_layer_path(ce_batch):
    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return MLP(WIDTHS)(x)

    outer = Outer()
    v = outer.init(jax.random.key(0), jnp.zeros((1, D)))
    x, _ = dense_layer_io(outer, v, ce_batch[0], "MLP_0/Dense_0")
    np.testing.assert_array_equal(x, ce_batch[0])
    with pytest.raises(ValueError, match="MLP_0/Dense_1"):
        dense_layer_io(outer, v, ce_batch[0], "Dense_1")  # lists the paths that were seen


# ----------------------------------------------------------------------------- input checks


def test_unknown_layer(variables, ce_batch):
    with pytest.raises(ValueError, match=r"Dense_7.*\['Dense_0', 'Dense_1', 'Dense_2'\]"):
        dense_layer_io(MODEL, variables, ce_batch[0], "Dense_7")
    for fn in (output_hessians, kronecker_factors, exact_layer_hessian):
        with pytest.raises(ValueError, match="no dense or conv layer 'Dense_7' was called"):
            fn(MODEL, variables, ce_batch, cross_entropy, "Dense_7")
    with pytest.raises(ValueError, match="layer must be"):
        dense_layer_io(MODEL, variables, ce_batch[0], "")


def test_shared_layer_rejected(ce_batch):
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.Dense(D)
            return dense(jnp.tanh(dense(x)))

    model = Shared()
    v = model.init(jax.random.key(0), jnp.zeros((1, D)))
    with pytest.raises(ValueError, match="called 2 times"):
        dense_layer_io(model, v, ce_batch[0], "Dense_0")


@pytest.mark.parametrize("k", [0, 13, -1, 2.0, True])
def test_bad_k(factors_ce, k):
    with pytest.raises(ValueError, match="k must be an integer"):
        kron_eigh(factors_ce["Dense_1"], k)


def test_bad_inputs(variables, ce_batch, factors_ce):
    with pytest.raises(ValueError, match="chunk_size"):
        kronecker_factors(MODEL, variables, ce_batch, cross_entropy, "Dense_1", chunk_size=0)
    with pytest.raises(ValueError, match="6 samples but targets have 5"):
        kronecker_factors(
            MODEL, variables, (ce_batch[0], ce_batch[1][:5]), cross_entropy, "Dense_1"
        )
    with pytest.raises(ValueError, match="pair"):
        kronecker_factors(MODEL, variables, ce_batch[0], cross_entropy, "Dense_1")
    with pytest.raises(ValueError, match=r"shape \(12,\)"):
        kron_matvec(factors_ce["Dense_1"], jnp.zeros(11))


# ----------------------------------------------------------------------------- operator

LAYERS = ("Dense_0", "Dense_1", "Dense_2")
KERNELS = [f"params/{layer}/kernel" for layer in LAYERS]


def test_kronecker_operator_eigsh_matches_dense_kron(variables, ce_batch):
    op = kronecker_operator(MODEL, variables, ce_batch, cross_entropy)
    factors = [
        kronecker_factors(MODEL, variables, ce_batch, cross_entropy, layer) for layer in LAYERS
    ]
    dense = scipy.linalg.block_diag(*[kron_of(f) for f in factors])  # (20 + 12 + 9)²
    assert op.layout.selected_paths == tuple(KERNELS) and op.dtype == np.float64
    assert_matrix_close(to_dense(op), dense, rel=1e-13)
    w = np.linalg.eigh(dense)[0][::-1]
    res = eigsh(op, k=4, key=jax.random.key(0), tol=1e-8)  # eigenvalue error <= r² ~ 1e-16
    np.testing.assert_allclose(np.asarray(res.eigenvalues), w[:4], rtol=1e-12, atol=1e-14)
    # pytree view: kernels in place, zeros at the biases it leaves out
    tree = op.unravel(jnp.arange(op.size, dtype=jnp.float64))
    np.testing.assert_array_equal(tree["params"]["Dense_1"]["kernel"].ravel(), 20 + np.arange(12))
    assert not np.any(np.asarray(tree["params"]["Dense_1"]["bias"]))


def test_kronecker_operator_exact_blocks_for_one_sample(variables, ce_batch):
    """For one sample kron(A, G) is each kernel block of the Hessian (same flat order)."""
    one = jax.tree_util.tree_map(lambda x: x[:1], ce_batch)
    op = kronecker_operator(MODEL, variables, one, cross_entropy, ["Dense_2", "Dense_1"])
    loss = MeanLoss(MODEL.apply, cross_entropy)
    batched = jax.tree_util.tree_map(lambda x: x[None], one)
    h = np.asarray(to_dense(hessian_operator(loss, variables, batched, select=KERNELS[1:])))
    mask = scipy.linalg.block_diag(np.ones((12, 12)), np.ones((9, 9)))
    assert_matrix_close(to_dense(op), h * mask)


def test_kronecker_operator_bad_inputs(variables, ce_batch):
    with pytest.raises(ValueError, match="matches no parameter"):
        kronecker_operator(MODEL, variables, ce_batch, cross_entropy, ["Dense_7"])
    with pytest.raises(ValueError, match=r"no kernel at \['params/Dense_7/kernel'\]"):
        kronecker_operator(MODEL, variables, ce_batch, cross_entropy, ["Dense_0", "Dense_7"])
    low = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), variables)
    with pytest.raises(ValueError, match="params are bfloat16"):
        kronecker_operator(MODEL, low, ce_batch, cross_entropy)


def test_variables_argument_was_renamed_params(variables, ce_batch):
    """One name for the parameter pytree across the library: the old keyword names the new."""
    got = kronecker_factors(MODEL, params=variables, batch=ce_batch,
                            per_example_loss=cross_entropy, layer="Dense_1")  # fmt: skip
    assert got.a.shape == (4, 4)
    with pytest.raises(TypeError, match="argument 'variables' was renamed 'params'"):
        kronecker_factors(MODEL, variables=variables, batch=ce_batch,
                          per_example_loss=cross_entropy, layer="Dense_1")  # fmt: skip
