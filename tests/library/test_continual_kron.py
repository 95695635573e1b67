"""Tests for hessjax.continual.kron in float64 on a small Linen MLP: the summed per-layer
factors against jax.hessian of one sample's loss in [K; b] (where kron(A, G) is exact) and the
layer inputs by hand; the Kronecker projection against the explicit projector from numpy's
eigh of np.kron(A, G) (one share per layer; mode mass by a plain loop over rows); the proximal
step against solving (I + η s H) θ⁺ = θ + u − θ* explicitly (then projected, with a share),
finite for every strength and equal to the null-space projection in the limit; the
curvature-mass ranks (per layer and across layers) on known spectra; Hessian projection with k
by curvature mass against the dense Hessian; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessjax.continual import kron
from hessjax.curvature import MeanLoss, cross_entropy, dense_layer_io, make_layout
from hessjax.models import MLP

pytestmark = pytest.mark.x64

D, C = 5, 3
MODEL = MLP((4, C), act="tanh")  # Dense_0 5->4 (hidden), Dense_1 4->3 (output)
LAYERS = ("Dense_0", "Dense_1")


@pytest.fixture(scope="module")
def setup():
    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = MODEL.init(k1, jnp.zeros((1, D), jnp.float64))
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * jax.random.normal(k4, p.shape), params)
    x = jax.random.normal(k2, (8, D), jnp.float64)
    y = jax.random.randint(k3, (8,), 0, C)
    mem = kron.kron_remember(None, MODEL, params, (x[:4], y[:4]), cross_entropy, chunk_size=None)
    mem = kron.kron_remember(mem, MODEL, params, (x[4:], y[4:]), cross_entropy, chunk_size=None)
    return params, x, y, mem


def stacked_hessian(params, x, y, layer):
    """Oracle: jax.hessian of the loss in W = [K; b] (d, out), row-major (d*out, d*out)."""
    w0 = kron.layer_matrices(params, [layer])[layer]

    def loss(w):
        p = kron._set_layer_matrices(params, {layer: w})
        return MeanLoss(MODEL.apply, cross_entropy)(p, (x, y))

    return np.asarray(jax.hessian(loss)(w0)).reshape(w0.size, w0.size)


@pytest.mark.parametrize("layer", LAYERS)
def test_one_sample_factors_are_the_exact_stacked_hessian(setup, layer):
    params, x, y, _ = setup
    mem = kron.kron_remember(None, MODEL, params, (x[:1], y[:1]), cross_entropy)
    f = mem[layer]
    np.testing.assert_allclose(
        np.kron(f.a, f.g), stacked_hessian(params, x[:1], y[:1], layer), rtol=0, atol=1e-10
    )


def test_summed_factors_by_hand(setup):
    params, x, y, mem = setup
    assert mem["Dense_0"].tasks == 2
    for layer in LAYERS:
        a = 0
        for part in (slice(0, 4), slice(4, 8)):
            xin = np.asarray(dense_layer_io(MODEL, params, x[part], layer).x)
            xt = np.concatenate([xin, np.ones((4, 1))], axis=1)
            a = a + xt.T @ xt / 4
        np.testing.assert_allclose(mem[layer].a, a, rtol=1e-12, atol=1e-12)
    # G of the output layer under cross-entropy: E[diag(p) − p pᵀ], summed over the two halves
    logits = MODEL.apply(params, x)
    p = np.asarray(jax.nn.softmax(logits))
    m = np.einsum("ni,ij->nij", p, np.eye(C)) - np.einsum("ni,nj->nij", p, p)
    np.testing.assert_allclose(mem["Dense_1"].g, m[:4].mean(0) + m[4:].mean(0), atol=1e-12)


def random_updates(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)]
    )


def dense_eig(f):
    """eigh of np.kron(A, G⁺) (G⁺: G with negative eigenvalues clipped), descending."""
    gw, gv = np.linalg.eigh(np.asarray(f.g))
    gplus = gv @ np.diag(np.maximum(gw, 0)) @ gv.T
    w, v = np.linalg.eigh(np.kron(np.asarray(f.a), gplus))
    return w[::-1], v[:, ::-1], gplus


def mass_oracle(mem, share):
    """Mode "mass" by a plain loop: rows (eigenvectors of A) of all layers in decreasing
    α tr(G⁺) / out, taken until their α tr(G⁺) reaches share of Σ tr(A) tr(G⁺)."""
    rows = []
    for layer in LAYERS:
        a, g = np.linalg.eigvalsh(np.asarray(mem[layer].a)), np.linalg.eigvalsh(mem[layer].g)
        tg = np.clip(g, 0, None).sum()
        rows += [(-ai * tg / g.size, ai * tg, layer) for ai in np.clip(a, 0, None)]
    rows.sort(key=lambda r: r[0])
    total, acc, k = sum(r[1] for r in rows), 0.0, dict.fromkeys(LAYERS, 0)
    for _, m, layer in rows:
        if acc >= share * total:
            break
        acc += m
        k[layer] += 1
    return k


@pytest.mark.parametrize(
    "mode,share",
    [("product", 0.9), ("product", 0.999), ("input", 0.95), ("input", (0.99, 0.8)),
     ("mass", 0.95)],
)  # fmt: skip
def test_projection_is_the_explicit_projector(setup, mode, share):
    params, _, _, mem = setup
    if isinstance(share, tuple):  # one share per layer
        share = dict(zip(LAYERS, share, strict=True))
    state = kron.kron_projection_state(mem, share, mode)
    ranks = mass_oracle(mem, share) if mode == "mass" else None
    tx = kron.kron_transform(state)
    u = random_updates(params, 1)
    out, _ = jax.jit(tx.update)(u, tx.init(params))
    got, want_in = kron.layer_matrices(out, LAYERS), kron.layer_matrices(u, LAYERS)
    for layer in LAYERS:
        f = mem[layer]
        d, o = f.a.shape[0], f.g.shape[0]
        if mode == "product":  # the top-k eigenvectors of the dense kron, k by curvature mass
            w, v, _ = dense_eig(f)
            k = kron.curvature_rank(w, share)
            protected = v[:, :k]
        else:  # the top-k eigenvectors of A (k by mass, per layer or global), times R^out
            aw, av = np.linalg.eigh(np.asarray(f.a))
            if mode == "mass":
                k = ranks[layer]
            else:
                k = kron.curvature_rank(aw, share[layer] if isinstance(share, dict) else share)
            protected = np.kron(av[:, ::-1][:, :k], np.eye(o))
        assert 0 < protected.shape[1] < d * o  # a real, partial projection
        proj = np.eye(d * o) - protected @ protected.T
        want = (proj @ np.asarray(want_in[layer]).ravel()).reshape(d, o)
        np.testing.assert_allclose(got[layer], want, rtol=0, atol=1e-10)
        assert int(np.sum(np.asarray(state.scale[layer]) == 0)) == protected.shape[1]
    again, _ = tx.update(out, tx.init(params))  # idempotent
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(out), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_block_mode_protects_the_cartesian_block(setup):
    params, _, _, mem = setup
    state = kron.kron_projection_state(mem, 0.9, "block", output_share=0.8)
    for layer in LAYERS:
        f = mem[layer]
        ka = kron.curvature_rank(np.linalg.eigvalsh(np.asarray(f.a)), 0.9)
        kg = kron.curvature_rank(np.linalg.eigvalsh(np.asarray(f.g)), 0.8)
        want = np.ones(state.scale[layer].shape)
        want[:ka, :kg] = 0
        np.testing.assert_array_equal(state.scale[layer], want)


@pytest.mark.parametrize("share", [None, 0.8])
def test_prox_solves_the_implicit_step(setup, share):
    """θ⁺ − θ* = P (I + η s H)⁻¹ (θ + u − θ*), P the projector of kron_project (input mode)
    with `share` (I for None): P and H = kron(A, G⁺) / T commute (both act on A's
    eigenvectors)."""
    params, _, _, mem = setup
    anchor = random_updates(params, 2)
    lr, strength = 0.05, 30.0
    proj = None if share is None else kron.kron_projection_state(mem, share, "input")
    state = kron.kron_prox_state(mem, anchor, strength, lr, proj)
    tx = kron.kron_transform(state, proximal=True)
    u = random_updates(params, 3)
    out, _ = jax.jit(tx.update)(u, tx.init(params), params)
    got = kron.layer_matrices(out, LAYERS)
    theta, star = kron.layer_matrices(params, LAYERS), kron.layer_matrices(anchor, LAYERS)
    uu = kron.layer_matrices(u, LAYERS)
    for layer in LAYERS:
        _, _, gplus = dense_eig(mem[layer])
        h = np.kron(np.asarray(mem[layer].a), gplus) / mem[layer].tasks
        rhs = np.asarray(theta[layer] + uu[layer] - star[layer]).ravel()
        p = np.eye(h.shape[0])
        if share is not None:
            aw, av = np.linalg.eigh(np.asarray(mem[layer].a))
            k = kron.curvature_rank(aw, share)
            assert 0 < k < aw.size
            q = np.kron(av[:, ::-1][:, :k], np.eye(gplus.shape[0]))
            p = p - q @ q.T
        new = p @ np.linalg.solve(np.eye(h.shape[0]) + lr * strength * h, rhs)
        want = new + np.ravel(star[layer]) - np.ravel(theta[layer])
        assert np.max(np.abs(want - np.ravel(uu[layer]))) > 1e-2  # the penalty acts
        np.testing.assert_allclose(np.ravel(got[layer]), want, rtol=0, atol=1e-10)


def test_prox_is_stable_for_every_strength_and_projects_in_the_limit(setup):
    params, _, _, mem = setup
    u = random_updates(params, 4)
    for strength in (1.0, 1e2, 1e4, 1e8):
        state = kron.kron_prox_state(mem, params, strength, 0.05)  # anchor = params: δ = 0
        tx = kron.kron_transform(state, proximal=True)
        out, _ = tx.update(u, tx.init(params), params)
        for layer, w in kron.layer_matrices(out, LAYERS).items():
            assert np.all(np.isfinite(w))
            assert np.linalg.norm(w) <= np.linalg.norm(kron.layer_matrices(u, LAYERS)[layer])
    # s -> ∞: θ⁺ − θ* = projection of θ + u − θ* onto the null space of H (here δ = 0); at
    # η s = 5e8 every curvature is either far below 1/(η s) (the null space, round-off) or
    # far above it, so the step equals that projection to ~1e-4 relative
    lr, strength = 0.05, 1e10
    state = kron.kron_prox_state(mem, params, strength, lr)
    out, _ = kron.kron_transform(state, proximal=True).update(u, state, params)
    for layer in LAYERS:
        w, v, _ = dense_eig(mem[layer])
        w = w / mem[layer].tasks
        null = np.abs(w) * lr * strength < 1e-4
        assert np.all(null | (w * lr * strength > 1e4))
        if layer == "Dense_1":  # G of the output layer under cross-entropy: G 1 = 0
            assert np.any(null)
        uu = np.ravel(kron.layer_matrices(u, LAYERS)[layer])
        want = v[:, null] @ (v[:, null].T @ uu)
        np.testing.assert_allclose(np.ravel(kron.layer_matrices(out, LAYERS)[layer]), want,
                                   atol=1e-3 * np.abs(uu).max())  # fmt: skip


def test_curvature_rank_on_known_spectra():
    assert kron.curvature_rank(np.array([4.0, 3.0, 2.0, 1.0]), 0.7) == 2  # 7/10
    assert kron.curvature_rank(np.array([1.0, 3.0, 2.0, 4.0]), 0.71) == 3  # any order
    assert kron.curvature_rank(np.array([4.0, 3.0, 2.0, 1.0]), 1.0) == 4
    assert kron.curvature_rank(np.array([5.0, -9.0, 5.0]), 0.5) == 1  # negatives ignored
    assert kron.curvature_rank(np.array([-1.0, 0.0]), 0.5) == 0
    assert kron.curvature_rank(10.0 ** -np.arange(8.0), 0.999) == 3


def test_mass_ranks_on_known_spectra():
    # L1: α (1,), tr G = 4, out 4: mass 4, 1 per parameter; L2: α (2,), G (1,): mass 2, 2
    spectra = {"L1": (np.array([1.0]), np.ones(4)), "L2": (np.array([2.0]), np.array([1.0]))}
    assert kron.mass_ranks(spectra, 0.3) == {"L1": 0, "L2": 1}  # denser first, not heavier
    assert kron.mass_ranks(spectra, 0.34) == {"L1": 1, "L2": 1}  # 2/6 < 0.34
    two = {"L1": (np.array([4.0, 1.0]), np.array([1.0, 1.0, -5.0])),  # γ⁺: tr G⁺ = 2, out 3
           "L2": (np.array([3.0, 1.0]), np.array([1.0]))}  # fmt: skip
    # masses 8, 2 | 3, 1 (total 14); per parameter 8/3, 2/3 | 3, 1: order L2, L1, L2, L1
    assert kron.mass_ranks(two, 3 / 14) == {"L1": 0, "L2": 1}
    assert kron.mass_ranks(two, 11 / 14) == {"L1": 1, "L2": 1}
    assert kron.mass_ranks(two, 12 / 14) == {"L1": 1, "L2": 2}
    assert kron.mass_ranks(two, 1.0) == {"L1": 2, "L2": 2}


def test_hessian_mass_directions_against_the_dense_hessian(setup):
    params, x, y, _ = setup
    loss = MeanLoss(MODEL.apply, cross_entropy)
    data = (x.reshape(2, 4, D), y.reshape(2, 4))
    layout = make_layout(params)
    h = jax.hessian(lambda v: loss(layout.unravel(v), (x, y)))(layout.ravel(params))
    w, v = np.linalg.eigh(np.asarray(h))
    w, v = w[::-1], v[:, ::-1]
    max_k, share = 6, 0.8
    d = kron.hessian_mass_directions(
        loss, params, data, share, max_k, key=jax.random.key(5), num_steps=layout.size - 1, tol=None
    )
    k = kron.curvature_rank(w[:max_k], share)
    assert 1 < k < max_k
    assert d.vectors.shape == (layout.size, k)
    np.testing.assert_allclose(d.values, w[:k], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.abs(v[:, :k].T @ np.asarray(d.vectors)), np.eye(k), atol=1e-6)


def test_bad_input(setup):
    params, x, y, mem = setup
    with pytest.raises(ValueError, match="share"):
        kron.curvature_rank(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="share"):
        kron.kron_projection_state(mem, float("nan"))
    with pytest.raises(ValueError, match="mode"):
        kron.kron_projection_state(mem, 0.9, "diagonal")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            kron.kron_prox_state(mem, params, bad, 0.05)
    with pytest.raises(ValueError, match="memory has layers"):
        kron.kron_remember({"Dense_0": mem["Dense_0"]}, MODEL, params, (x, y), cross_entropy)
    with pytest.raises(ValueError, match="share has layers"):
        kron.kron_projection_state(mem, {"Dense_0": 0.9}, "input")
    with pytest.raises(ValueError, match="share of 'Dense_1'"):
        kron.kron_projection_state(mem, {"Dense_0": 0.9, "Dense_1": 1.5}, "input")
    with pytest.raises(ValueError, match="one share for all layers"):
        kron.kron_projection_state(mem, {"Dense_0": 0.9, "Dense_1": 0.9}, "mass")
    other = kron.kron_projection_state({"Dense_0": mem["Dense_0"]}, 0.9)
    with pytest.raises(ValueError, match="projection has layers"):
        kron.kron_prox_state(mem, params, 1.0, 0.1, other)
    with pytest.raises(ValueError, match="memory must be"):
        kron.kron_projection_state({}, 0.9)
    state = kron.kron_projection_state(mem, 0.9)
    bad_state = state._replace(u_a={**state.u_a, "Dense_0": 3.0 * state.u_a["Dense_0"]})
    with pytest.raises(ValueError, match="not orthogonal"):
        kron.kron_transform(bad_state)
    with pytest.raises(ValueError, match="needs params"):
        tx = kron.kron_transform(kron.kron_prox_state(mem, params, 1.0, 0.1), proximal=True)
        tx.update(params, tx.init(params))
    wrong = optax.tree_utils.tree_set(state, scale={**state.scale, "Dense_1": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="scale of 'Dense_1'"):
        kron.kron_transform(wrong)


def test_identity_state_then_a_new_memory_swapped_in(setup):
    params, _, _, mem = setup
    tx = optax.chain(optax.sgd(0.1), kron.kron_transform(kron.kron_identity_state(params)))
    opt_state = tx.init(params)
    u = random_updates(params, 6)
    step = jax.jit(tx.update)
    out, _ = step(u, opt_state, params)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(u), strict=True):
        np.testing.assert_allclose(a, -0.1 * b, rtol=1e-12)
    new = kron.kron_projection_state(mem, 0.9, "input")
    swapped = optax.tree_utils.tree_set(opt_state, **new._asdict())
    out, _ = step(u, swapped, params)
    direct, _ = kron.kron_transform(new).update(jax.tree_util.tree_map(lambda x: -0.1 * x, u), new)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(direct), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert step._cache_size() == 1  # the swapped-in memory did not recompile


def test_plain_function_model_with_tagged_layers(setup):
    """A model that is no Linen module: plain params {hidden, out: {kernel, bias}} and an apply
    whose layers are `curvature.dense` tags named after those subtrees. Its factors and the
    kron_project strategy's projected update equal the Linen MLP's with the same weights."""
    from hessjax import continual as cl
    from hessjax.curvature import dense

    params, x, y, mem = setup
    p = params["params"]
    plain = {"hidden": p["Dense_0"], "out": p["Dense_1"]}

    def apply(q, inputs):
        h = jnp.tanh(dense(inputs, q["hidden"]["kernel"], q["hidden"]["bias"], name="hidden"))
        return dense(h, q["out"]["kernel"], q["out"]["bias"], name="out")

    got = kron.kron_remember(None, apply, plain, (x[:4], y[:4]), cross_entropy, chunk_size=None)
    got = kron.kron_remember(got, apply, plain, (x[4:], y[4:]), cross_entropy, chunk_size=None)
    for ours, theirs in (("hidden", "Dense_0"), ("out", "Dense_1")):
        np.testing.assert_allclose(got[ours].a, mem[theirs].a, rtol=1e-12)
        np.testing.assert_allclose(got[ours].g, mem[theirs].g, rtol=1e-12)

    def projected(strategy, q):
        data = (x.reshape(2, 4, D), y.reshape(2, 4))  # microbatches (m, b, ...)
        memory = strategy.remember(strategy.init_memory(q), q, data, key=jax.random.key(0))
        grads = jax.tree_util.tree_map(jnp.ones_like, q)
        return strategy.transform(memory).update(grads, strategy.transform(memory).init(q), q)[0]

    want = projected(cl.kron_project(MODEL, cross_entropy, share=0.9), params)["params"]
    out = projected(cl.kron_project(apply, cross_entropy, share=0.9), plain)
    for ours, theirs in (("hidden", "Dense_0"), ("out", "Dense_1")):
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(out[ours][leaf], want[theirs][leaf], rtol=1e-10, atol=1e-12)
