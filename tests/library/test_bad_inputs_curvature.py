"""Clear errors instead of raw ones or NaNs for bad inputs to curvature operators and
`linalg.Operator`: wrong vector sizes, non-array and non-floating params leaves, losses that
are not scalars, mean losses given to the empirical Fisher, half-precision params, a NaN in a
late microbatch; and `check_deterministic` on deterministic, random and non-symmetric
operators. Everything here runs in float32, so it holds with and without jax_enable_x64."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    empirical_fisher_operator,
    ggn_operator,
    hessian_operator,
)
from hessjax.linalg import Operator, check_deterministic, dense_operator, eigsh
from hessjax.models import MLP

M, B, D, C = 4, 8, 5, 3  # microbatches, batch size, input size, classes
MODEL = MLP((4, C), act="tanh")
LOSS = MeanLoss(MODEL.apply, cross_entropy)
KEY = jax.random.key(0)


def f32(tree):
    return jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), tree)


@pytest.fixture(scope="module")
def params():
    return f32(MODEL.init(jax.random.key(1), jnp.zeros((1, D))))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(M, B, D)), jnp.float32)
    return x, jnp.asarray(rng.integers(0, C, size=(M, B)), jnp.int32)


def batches_of(data):
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], data) for i in range(M)]


def nested_loss(params, batch):
    """LOSS on params['model'] (the other leaves, e.g. a step counter, are not parameters)."""
    return LOSS(params["model"], batch)


# ----------------------------------------------------------------------------- vector sizes


def test_wrong_length_names_expected_and_got_size(params, data):
    op = hessian_operator(LOSS, params, data)
    streaming = hessian_operator(LOSS, params, batches=batches_of(data))
    n = op.size  # 5*4 + 4 + 4*3 + 3 = 39
    for calls in (
        (op.unravel, op.__matmul__, op.matvec, streaming.__matmul__, streaming.unravel),
        (jax.jit(op.matvec), jax.jit(op.unravel)),  # static shapes: the same check under jit
    ):
        for call in calls:
            with pytest.raises(ValueError, match=rf"\({n},\).*size {n}; got shape \({n + 1},\)"):
                call(jnp.zeros(n + 1, jnp.float32))
    for call in (op.unravel_vectors, op.__matmul__, op.matmat, streaming.__matmul__):
        with pytest.raises(ValueError, match=rf"size {n}; got shape \({n - 1}, 2\)"):
            call(jnp.zeros((n - 1, 2), jnp.float32))
    with pytest.raises(ValueError, match="got shape \\(\\) \\(a scalar\\)"):
        op @ jnp.float32(1.0)
    dense = dense_operator(jnp.eye(3, dtype=jnp.float32))
    with pytest.raises(ValueError, match=r"size 3; got shape \(4,\) \(size 4\)"):
        dense @ jnp.ones(4, jnp.float32)
    with pytest.raises(ValueError, match=r"size 3; got shape \(4,\) \(size 4\)"):
        jax.jit(dense.matvec)(jnp.ones(4, jnp.float32))


# ----------------------------------------------------------------------------- params leaves


def test_string_leaf_is_named(params, data):
    bad = {"model": params, "name": "mlp"}
    with pytest.raises(ValueError, match="leaf 'name' is a str .*not a numeric array"):
        hessian_operator(nested_loss, bad, data)
    with pytest.raises(ValueError, match="leaf 'name' is a str"):
        hessian_operator(nested_loss, bad, data, select="model")  # cannot even be traced


def test_integer_leaf_needs_select(params, data):
    with_step = {"model": params, "step": jnp.asarray(3, jnp.int32)}
    with pytest.raises(ValueError, match="leaf 'step' has dtype int32.*select="):
        hessian_operator(nested_loss, with_step, data)
    op = hessian_operator(nested_loss, with_step, data, select="model")
    plain = hessian_operator(LOSS, params, data)
    v = jax.random.normal(KEY, (plain.size,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(op @ v), np.asarray(plain @ v))
    assert op.unravel(v)["step"].dtype == jnp.int32


@pytest.mark.parametrize("dtype, rtol", [(jnp.bfloat16, 0.05), (jnp.float16, 0.01)])
def test_half_precision_params_and_data(params, data, dtype, rtol):
    """They crashed in LAPACK inside eigsh. Now products run in the params' dtype and the
    Krylov vectors in float32: the top eigenvalues match the float32 ones to a few units of
    the half-precision epsilon (2^-8 for bfloat16, 2^-11 for float16) times the reductions'
    length; the bounds are 13 and 20 of those epsilons."""
    low = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    low_data = (data[0].astype(dtype), data[1])
    pairs = [
        (hessian_operator(LOSS, low, low_data), hessian_operator(LOSS, params, data)),
        (
            hessian_operator(LOSS, low, batches=batches_of(low_data)),
            hessian_operator(LOSS, params, data),
        ),
        (
            ggn_operator(MODEL.apply, cross_entropy, low, low_data),
            ggn_operator(MODEL.apply, cross_entropy, params, data),
        ),
    ]
    for op, reference in pairs:
        assert op.dtype == np.float32
        got = eigsh(op, 2, key=KEY, tol=1e-3).eigenvalues
        assert got.dtype == jnp.float32
        want = eigsh(reference, 2, key=KEY, tol=1e-5).eigenvalues
        np.testing.assert_allclose(got, want, rtol=rtol)
    assert op.unravel(jnp.ones(op.size))["params"]["Dense_0"]["kernel"].dtype == dtype


# ----------------------------------------------------------------------------- loss outputs


def _with_aux(params, batch):
    return LOSS(params, batch), {"accuracy": 0.5}


def _unreduced(params, batch):
    return LOSS.per_example(params, batch)


def _mean_cross_entropy(logits, labels):
    return jnp.mean(cross_entropy(logits, labels))


def test_loss_must_be_scalar(params, data):
    with pytest.raises(ValueError, match="must return a scalar; got a tuple .*\\[0\\]"):
        hessian_operator(_with_aux, params, data)
    with pytest.raises(ValueError, match="must return a scalar; got a tuple"):
        hessian_operator(_with_aux, params, batches=batches_of(data))
    with pytest.raises(ValueError, match=f"must return a scalar; got shape \\({B},\\)"):
        hessian_operator(_unreduced, params, data)


def test_fisher_needs_per_example_losses(params, data):
    with pytest.raises(ValueError, match=f"per-example losses of shape \\(batch,\\) = \\({B},\\)"):
        empirical_fisher_operator(MODEL.apply, _mean_cross_entropy, params, data)
    with pytest.raises(ValueError, match="got shape \\(\\)"):
        batches = batches_of(data)
        empirical_fisher_operator(MODEL.apply, _mean_cross_entropy, params, batches=batches)
    # the GGN of a mean loss is the GGN of its per-example losses: accepted
    ggn = ggn_operator(MODEL.apply, _mean_cross_entropy, params, data)
    ref = ggn_operator(MODEL.apply, cross_entropy, params, data)
    v = jax.random.normal(KEY, (ref.size,), jnp.float32)
    np.testing.assert_allclose(np.asarray(ggn @ v), np.asarray(ref @ v), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- non-finite data


def test_nan_in_third_microbatch_is_named(params, data):
    x, y = data
    bad = (x.at[2, 5, 0].set(jnp.nan), y)
    for build in (
        lambda: hessian_operator(LOSS, params, bad),
        lambda: ggn_operator(MODEL.apply, cross_entropy, params, bad),
        lambda: empirical_fisher_operator(MODEL.apply, cross_entropy, params, bad),
    ):
        with pytest.raises(ValueError, match="not finite on microbatch 2 \\(0-based; 1 of 4"):
            build()
    with pytest.raises(ValueError, match="not finite on batch 2 \\(0-based; 1 of 4 batches"):
        hessian_operator(LOSS, params, batches=batches_of(bad))
    inf_last = (x.at[3].set(jnp.inf), y)
    with pytest.raises(ValueError, match="not finite on microbatch 3"):
        hessian_operator(LOSS, params, inf_last)


def test_under_jit_only_shapes_are_checked(params, data):
    x, y = data

    @jax.jit
    def top(p, x):
        return eigsh(hessian_operator(LOSS, p, (x, y)), k=1, key=KEY).eigenvalues

    assert np.isfinite(top(params, x)).all()
    with pytest.raises(ValueError, match="must return a scalar"):
        jax.jit(lambda p: hessian_operator(_with_aux, p, data).size)(params)


# ----------------------------------------------------------------------------- check_deterministic


def test_check_deterministic_passes_hessian(params, data):
    for op in (
        hessian_operator(LOSS, params, data),
        hessian_operator(LOSS, params, batches=batches_of(data)),
    ):
        check = check_deterministic(op, key=KEY, num_vectors=3)
        assert check.repeat_error == 0.0  # the same program on the same CPU
        assert check.symmetry_error < 1e-5  # float32 round-off of forward-over-reverse


_TRACES = itertools.count()


def _dropout_product(v, matrix):
    """A product that draws a dropout mask from host state at trace time."""
    mask = jax.random.bernoulli(jax.random.key(next(_TRACES)), 0.5, v.shape)
    return matrix @ jnp.where(mask, v, 0.0)


def test_check_deterministic_catches_randomness_and_asymmetry(params, data):
    sym = jnp.eye(6, dtype=jnp.float32) + 1.0
    random_op = Operator(_dropout_product, (sym,), 6, np.dtype(np.float32))
    with pytest.raises(ValueError, match="not deterministic"):
        check_deterministic(random_op, key=KEY)
    passes = itertools.count()

    def shuffled():  # a loader that serves a different batch on every pass
        return [batches_of(data)[next(passes) % M]]

    with pytest.raises(ValueError, match="not deterministic"):
        check_deterministic(hessian_operator(LOSS, params, batches=shuffled), key=KEY)
    triangular = dense_operator(jnp.triu(jnp.ones((6, 6), jnp.float32)))
    with pytest.raises(ValueError, match="not symmetric"):
        check_deterministic(triangular, key=KEY)
    with pytest.raises(ValueError, match="num_vectors"):
        check_deterministic(triangular, key=KEY, num_vectors=0)
