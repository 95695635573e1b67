"""The chunked language-model head (`curvature.LMHeadLoss`, `lm_head_ggn_operator`) against the
plain loss on whole logits: loss values, Hessian products equal to `jax.jvp(jax.grad(...))`
(1e-10 relative in float64, 1e-5 in float32), Gauss-Newton products equal to the dense
Jᵀ H_out J, padding masks, tied embeddings, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hessjax import curvature as cv
from hessjax.models import GPT

V, T, B = 13, 4, 6  # vocabulary, context, sequences: 24 tokens
MODEL, TRUNK = GPT(V, T, 8, 2, 1), GPT(V, T, 8, 2, 1, logits=False)
KERNEL = "params/unembed/kernel"


def _problem(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    y = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    mask = jnp.asarray(np.maximum(rng.integers(0, 2, (B, T)), np.eye(B, T, dtype=int)))
    params = MODEL.init(jax.random.key(0), x)
    flat, unravel = ravel_pytree(jax.tree_util.tree_map(lambda p: p.astype(dtype), params))
    params = unravel(flat + 0.1 * jax.random.normal(jax.random.key(1), flat.shape, dtype))
    return x, y, mask, params


@jax.jit
def _plain_hvp(params, batch, v_tree):
    """The plain forward-over-reverse product on whole logits (the oracle)."""
    loss = cv.MeanLoss(MODEL.apply, cv.token_cross_entropy)
    return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v_tree,))[1]


@pytest.mark.parametrize(
    "dtype, rtol, masked, chunk", [(jnp.float64, 1e-10, True, 4), (jnp.float32, 1e-5, False, 24)]
)
def test_hessian_products_equal_the_plain_product(dtype, rtol, masked, chunk):
    with jax.enable_x64(dtype == jnp.float64):
        x, y, mask, params = _problem(dtype)
        plain = cv.MeanLoss(MODEL.apply, cv.token_cross_entropy)
        targets = (y, mask) if masked else y
        loss = cv.LMHeadLoss(TRUNK.apply, KERNEL, chunk)
        np.testing.assert_allclose(loss(params, (x, targets)), plain(params, (x, targets)),
                                   rtol=rtol)  # fmt: skip
        batch = (x[None], jax.tree_util.tree_map(lambda a: a[None], targets))
        op = cv.hessian_operator(loss, params, batch)
        v = jax.random.normal(jax.random.key(2), (op.size,), dtype)
        want = op.ravel(_plain_hvp(params, (x, targets), op.unravel(v)))
        got = op @ v
        assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < rtol


@pytest.mark.x64
def test_gauss_newton_equals_dense_oracle():
    x, y, mask, params = _problem(jnp.float64)
    flat, unravel = ravel_pytree(params)
    logits = MODEL.apply(params, x)
    jac = jax.jit(jax.jacobian(lambda f, x: MODEL.apply(unravel(f), x)))(flat, x)
    jac = jac.reshape(logits.size, -1)
    for targets in (y, (y, mask)):
        h_out = jax.jit(jax.hessian(
            lambda z, t: jnp.mean(cv.token_cross_entropy(z.reshape(logits.shape), t))
        ))(logits.ravel(), targets)  # fmt: skip
        dense = np.asarray(jac.T @ h_out @ jac)
        loss = cv.LMHeadLoss(TRUNK.apply, KERNEL, 8)
        batch = (x[None], jax.tree_util.tree_map(lambda a: a[None], targets))
        op = cv.lm_head_ggn_operator(loss, params, batch)
        np.testing.assert_allclose(np.asarray(op @ jnp.eye(op.size)), dense, atol=1e-12)
    # one block only (select): the diagonal block of the same matrix
    sub = cv.lm_head_ggn_operator(cv.LMHeadLoss(TRUNK.apply, KERNEL, 8), params,
                                  (x[None], y[None]), select="unembed")  # fmt: skip
    assert sub.size == 8 * V


@pytest.mark.x64
def test_tied_embeddings():
    x, y, _, _ = _problem(jnp.float64)
    tied, trunk = GPT(V, T, 8, 2, 1, tie_embeddings=True), GPT(V, T, 8, 2, 1, logits=False)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    tied.init(jax.random.key(0), x))  # fmt: skip
    plain = cv.MeanLoss(tied.apply, cv.token_cross_entropy)
    loss = cv.LMHeadLoss(trunk.apply, "params/token_embed/embedding", 12, transposed=True)
    np.testing.assert_allclose(loss(params, (x, y)), plain(params, (x, y)), rtol=1e-12)
    a = cv.ggn_operator(tied.apply, cv.token_cross_entropy, params, (x[None], y[None]))
    b = cv.lm_head_ggn_operator(loss, params, (x[None], y[None]))
    v = jax.random.normal(jax.random.key(3), (a.size,))
    np.testing.assert_allclose(b @ v, a @ v, rtol=1e-10, atol=1e-14)


def test_bad_input():
    x, y, _, params = _problem(jnp.float32)
    data = (x[None], y[None])
    with pytest.raises(ValueError, match="chunk_size 5 must divide the 24 tokens"):
        cv.hessian_operator(cv.LMHeadLoss(TRUNK.apply, KERNEL, 5), params, data)
    with pytest.raises(ValueError, match="chunk_size 48 must divide the 24 tokens"):
        cv.LMHeadLoss(TRUNK.apply, KERNEL, 48)(params, (x, y))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        cv.LMHeadLoss(TRUNK.apply, KERNEL, 0)(params, (x, y))
    with pytest.raises(ValueError, match="'params/head/kernel' is not a leaf"):
        cv.LMHeadLoss(TRUNK.apply, "params/head/kernel", 8)(params, (x, y))
    with pytest.raises(ValueError, match=r"target ids must lie in \[0, 13\), got \[0, 13\]"):
        cv.LMHeadLoss(TRUNK.apply, KERNEL, 8)(params, (x, y.at[0, 0].set(V)))
    with pytest.raises(ValueError, match="kernel must be \\(d, V\\) with d = 8"):
        cv.chunked_token_cross_entropy(jnp.ones((B, T, 8)), jnp.ones((7, V)), y, 8)
    with pytest.raises(ValueError, match="needs an LMHeadLoss"):
        cv.lm_head_ggn_operator(cv.MeanLoss(MODEL.apply, cv.token_cross_entropy), params, data)


def test_chunked_product_holds_one_logit_block():
    """Compiled memory (XLA's analysis, deterministic; nothing runs) of the Hessian product over
    2,048 tokens as V grows from 2,048 to 8,192: the naive product's temporaries grow by
    several (tokens, ΔV) float32 arrays, the chunked head's by a few (chunk, ΔV) blocks only
    (the trunk's activations do not depend on V)."""
    context, seqs, chunk = 256, 8, 256

    def temp_bytes(vocab):
        model = GPT(vocab, context, 16, 2, 1)
        trunk = GPT(vocab, context, 16, 2, 1, logits=False)
        x = jnp.zeros((1, seqs, context), jnp.int32)
        params = model.init(jax.random.key(0), x[0, :1])
        plain = cv.MeanLoss(model.apply, cv.token_cross_entropy)
        out = []
        for loss in (plain, cv.LMHeadLoss(trunk.apply, KERNEL, chunk)):
            op = cv.hessian_operator(loss, params, (x, x))
            exe = jax.jit(lambda o, u: o.matvec(u)).lower(op, jnp.zeros(op.size)).compile()
            out.append(exe.memory_analysis().temp_size_in_bytes)
        return np.asarray(out)

    naive, chunked = temp_bytes(8192) - temp_bytes(2048)
    delta_v = (8192 - 2048) * 4  # bytes per row of ΔV float32 logits
    assert naive >= 2 * seqs * context * delta_v
    assert chunked <= 4 * chunk * delta_v


@pytest.mark.x64
def test_vocabulary_block_ratio_against_dense():
    """Dong's ratio over the unembedding's vocabulary rows against a dense float64 Hessian of
    the kernel leaf: every token probed, chunked loss and plain loss alike."""
    from hessjax.analysis import transformer as tr

    x, y, _, params = _problem(jnp.float64)
    kernel = params["params"]["unembed"]["kernel"]  # (d, V)

    def loss_of(w):
        p = jax.tree_util.tree_map(lambda a: a, params)
        p["params"]["unembed"]["kernel"] = w.reshape(kernel.shape)
        return cv.MeanLoss(MODEL.apply, cv.token_cross_entropy)(p, (x, y))

    dense = np.asarray(jax.jit(jax.hessian(loss_of))(kernel.ravel()))
    cols = np.arange(kernel.size).reshape(kernel.shape)  # flat index of (row, token)
    sq = np.asarray([[np.sum(dense[np.ix_(cols[:, i], cols[:, j])] ** 2) for j in range(V)]
                     for i in range(V)])  # fmt: skip
    want = np.mean([np.mean(np.delete(sq[:, j], j)) / sq[j, j] for j in range(V)])
    for loss in (cv.MeanLoss(MODEL.apply, cv.token_cross_entropy),
                 cv.LMHeadLoss(TRUNK.apply, KERNEL, 8)):  # fmt: skip
        got = tr.vocabulary_block_ratio(loss, params, (x[None], y[None]), kernel_path=KERNEL,
                                        probed=V, key=jax.random.key(0))  # fmt: skip
        assert got.vocab_size == V and got.num_matvecs == kernel.size
        np.testing.assert_allclose(got.mean, want, rtol=1e-9)
    with pytest.raises(ValueError, match="probed must be in"):
        tr.vocabulary_block_ratio(cv.LMHeadLoss(TRUNK.apply, KERNEL, 8), params,
                                  (x[None], y[None]), kernel_path=KERNEL, probed=1,
                                  key=jax.random.key(0))  # fmt: skip
