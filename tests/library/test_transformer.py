"""The transformer path against dense float64 oracles: GPT and ViT models, the token-level
loss under the Hessian, GGN and empirical-Fisher operators, role partitions, block-wise SLQ,
heterogeneity, Q/K/V/O block norms and exact-vs-Kronecker overlaps, on one tiny GPT
(n ≈ 1,100 parameters, so `jax.hessian` is the oracle)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.spatial.distance import jensenshannon

from hessjax import curvature, linalg
from hessjax.analysis import transformer as tr
from hessjax.curvature import MeanLoss, token_cross_entropy
from hessjax.linalg.trace import probes
from hessjax.models import GPT, ViT

pytestmark = pytest.mark.x64

V, T, B = 11, 4, 6  # vocabulary, context, sequences
MODEL = GPT(vocab_size=V, context=T, width=8, num_heads=2, num_layers=1)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
        y = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
        params = MODEL.init(jax.random.key(0), x)
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        # a less symmetric point than initialisation: random LayerNorm scales and positions
        flat, unravel = ravel_pytree(params)
        flat = flat + 0.1 * jax.random.normal(jax.random.key(1), flat.shape)
        params = unravel(flat)
        loss = MeanLoss(MODEL.apply, token_cross_entropy)
        dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), (x, y)))(flat))
        op = curvature.hessian_operator(loss, params, (x[None], y[None]))
        return {"x": x, "y": y, "params": params, "loss": loss, "dense": dense, "op": op,
                "flat": flat, "unravel": unravel}  # fmt: skip


# ----------------------------------------------------------------------------- models


def test_gpt_names_causality_and_tying():
    x = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, T)), jnp.int32)
    params = MODEL.init(jax.random.key(0), x)
    paths = curvature.leaf_paths(params)
    for leaf in ("params/block_0/attn/query/kernel", "params/block_0/attn/out/kernel",
                 "params/block_0/mlp/fc_in/kernel", "params/unembed/kernel",
                 "params/position_embed", "params/token_embed/embedding"):  # fmt: skip
        assert leaf in paths
    logits = MODEL.apply(params, x)
    assert logits.shape == (2, T, V)
    changed = x.at[:, -1].set((x[:, -1] + 1) % V)  # the last token sees everything before it
    np.testing.assert_allclose(MODEL.apply(params, changed)[:, :-1], logits[:, :-1], atol=1e-6)
    assert not np.allclose(MODEL.apply(params, changed)[:, -1], logits[:, -1])
    tied = GPT(V, T, 8, 2, 1, tie_embeddings=True)
    tp = tied.init(jax.random.key(0), x)
    assert "unembed" not in tp["params"]
    with pytest.raises(ValueError, match="longer than the context 4"):
        MODEL.apply(params, jnp.zeros((1, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        GPT(V, T, 9, 2, 1).init(jax.random.key(0), x)


def test_vit_pools_and_patches():
    images = jnp.ones((3, 8, 8))
    for pool, n_pos in (("mean", 4), ("cls", 5)):
        vit = ViT(num_classes=5, patch_size=4, width=8, num_heads=2, num_layers=1, pool=pool)
        p = vit.init(jax.random.key(0), images)
        assert vit.apply(p, images).shape == (3, 5)
        assert p["params"]["position_embed"].shape == (n_pos, 8)
        np.testing.assert_allclose(vit.apply(p, images.reshape(3, 64)), vit.apply(p, images))
    with pytest.raises(ValueError, match="not divisible into 3x3 patches"):
        ViT(5, 3, 8, 2, 1).init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="pool must be one of"):
        ViT(5, 4, 8, 2, 1, pool="max").init(jax.random.key(0), images)


# ----------------------------------------------------------------------------- the loss


def test_token_cross_entropy_mask_and_errors():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 5, 7)))
    ids = jnp.asarray(rng.integers(0, 7, (3, 5)))
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_cross_entropy(logits, ids), ce.mean(1), rtol=1e-12)
    mask = jnp.asarray(rng.integers(0, 2, (3, 5)))
    per_seq = token_cross_entropy(logits, (ids, mask))
    np.testing.assert_allclose(per_seq.mean(), (ce * mask).sum() / mask.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="selects no token"):
        token_cross_entropy(logits, (ids, jnp.zeros_like(mask)))
    with pytest.raises(ValueError, match=r"target ids must lie in \[0, 7\), got \[0, 7\]"):
        token_cross_entropy(logits, ids.at[0, 0].set(7))


def test_operators_match_dense_oracles(problem):
    """Hessian, GGN and empirical Fisher of the token loss on (b, T, V) logits, against
    jax.hessian, Jᵀ H_out J and the mean of per-sequence gradient outer products."""
    x, y, params, flat, unravel = (problem[k] for k in ("x", "y", "params", "flat", "unravel"))
    mask = jnp.asarray(np.random.default_rng(3).integers(0, 2, (B, T))).at[0].set(1)
    targets = (y, mask)
    v = jax.random.normal(jax.random.key(4), flat.shape)
    np.testing.assert_allclose(problem["op"] @ v, problem["dense"] @ v, rtol=1e-9, atol=1e-11)

    def logits(f):
        return MODEL.apply(unravel(f), x)

    jac = jax.jacobian(logits)(flat).reshape(-1, flat.size)
    out_h = jax.hessian(lambda o: token_cross_entropy(o.reshape(B, T, V), targets).mean())(
        logits(flat).ravel()
    )
    data = (x[None], (y[None], mask[None]))  # one microbatch, masked targets
    ggn = curvature.ggn_operator(MODEL.apply, token_cross_entropy, params, data)
    np.testing.assert_allclose(ggn @ v, jac.T @ (out_h @ (jac @ v)), rtol=1e-8, atol=1e-11)

    per_seq = jax.jacobian(lambda f: token_cross_entropy(logits(f), targets))(flat)  # (B, n)
    fisher = curvature.empirical_fisher_operator(MODEL.apply, token_cross_entropy, params, data)
    np.testing.assert_allclose(fisher @ v, per_seq.T @ (per_seq @ v) / B, rtol=1e-8, atol=1e-11)


# ----------------------------------------------------------------------------- partitions


def _dense_block(dense, partition, i):
    idx = partition.indices(i)
    return dense[np.ix_(idx, idx)]


def test_role_partition_names_heads_and_errors(problem):
    layout = problem["op"].layout
    part = tr.role_partition(layout)
    assert set(part.names) == {
        "embed", "pos", "block_0/Q", "block_0/K", "block_0/V", "block_0/O", "block_0/mlp_in",
        "block_0/mlp_out", "block_0/ln_attn/scale", "block_0/ln_attn/bias",
        "block_0/ln_mlp/scale", "block_0/ln_mlp/bias", "ln_final/scale", "ln_final/bias",
        "unembed",
    }  # fmt: skip
    q = problem["params"]["params"]["block_0"]["attn"]["query"]
    assert part.sizes[part.index("block_0/Q")] == q["kernel"].size + q["bias"].size
    heads = tr.role_partition(layout, num_heads=2)
    # head 1 of Q: kernel columns 4..7 and bias entries 4..7 (width 8, 2 heads)
    marker = jax.tree_util.tree_map(jnp.zeros_like, problem["params"])
    marker["params"]["block_0"]["attn"]["query"]["kernel"] = jnp.zeros((8, 8)).at[:, 4:].set(1.0)
    marker["params"]["block_0"]["attn"]["query"]["bias"] = jnp.zeros(8).at[4:].set(1.0)
    on = np.flatnonzero(np.asarray(layout.ravel(marker)))
    np.testing.assert_array_equal(heads.indices(heads.index("block_0/Q/head_1")), on)
    assert heads.sizes[heads.index("block_0/O/head_0")] == 4 * 8  # rows 0..3 of the O kernel
    assert "block_0/O/bias" in heads.names
    groups = {"attention": ["block_0/Q", "block_0/K", "block_0/V", "block_0/O"],
              "rest": [n for n in part.names if n[-1] not in "QKVO"]}  # fmt: skip
    grouped = tr.role_partition(layout, groups=groups)
    assert set(grouped.names) == {"attention", "rest"}
    assert grouped.sizes[grouped.index("attention")] == sum(
        part.sizes[part.index(n)] for n in groups["attention"]
    )
    with pytest.raises(ValueError, match="leave parameters out: roles .*'block_0/K'"):
        tr.role_partition(layout, groups={"a": [n for n in part.names if n != "block_0/K"]})
    with pytest.raises(ValueError, match="names role 'block_3/Q', which the model lacks"):
        tr.role_partition(layout, groups={"a": list(part.names) + ["block_3/Q"]})
    with pytest.raises(ValueError, match="has no transformer role"):
        tr.leaf_role("params/Dense_0/kernel")


# ----------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("heads", [None, 2])
def test_block_slq_matches_dense_blocks(problem, heads):
    """Gauss quadrature with m steps is exact for polynomials of degree < 2m: Σ w θ^q equals
    vᵢᵀ H_iiᵠ vᵢ / ‖vᵢ‖² for every block i and the very probe the solver drew."""
    op, dense = problem["op"], problem["dense"]
    part = tr.role_partition(op.layout, num_heads=heads)
    key = jax.random.key(5)
    quad = linalg.block_slq(op, part, num_probes=2, num_steps=12, key=key,
                            block_diagonal=tr.role_block_diagonal(op, part))  # fmt: skip
    assert quad.nodes.shape == (2, part.num_blocks, 12)
    vs = np.asarray(probes(jax.random.split(key)[0], op.size, 2, op.dtype))  # (n, p)
    for i in range(part.num_blocks):
        idx, block = part.indices(i), _dense_block(dense, part, i)
        for p in range(2):
            v = vs[idx, p] / np.linalg.norm(vs[idx, p])
            for power in (1, 2, 3):
                want = v @ np.linalg.matrix_power(block, power) @ v
                got = float(np.sum(quad.weights[p, i] * quad.nodes[p, i] ** power))
                scale = np.linalg.norm(block, 2) ** power
                assert abs(got - want) <= 1e-8 * scale + 1e-14, (part.names[i], power)


def test_js_distance_and_heterogeneity():
    p, q = np.array([1.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.0])
    assert tr.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)
    assert tr.js_distance(p, p) == 0.0
    assert tr.js_distance(p, np.array([0.0, 0.0, 2.0])) == pytest.approx(1.0)
    # Two blocks with equal spectra and one at 100x scale: distances ~0 and ~1.
    spectrum = np.linspace(0.1, 1.0, 6)
    dense = np.diag(np.concatenate([spectrum, spectrum, 100 * spectrum]))
    part = linalg.Partition(("a", "b", "c"), np.repeat(np.arange(3), 6))
    quad = linalg.block_slq(linalg.dense_operator(jnp.asarray(dense)), part, num_probes=3,
                            num_steps=6, key=jax.random.key(0))  # fmt: skip
    het = tr.block_heterogeneity(quad, part.names, sigma_ratio=0.002)
    assert het.distances[0, 1] < 0.1
    assert het.distances[0, 2] > 0.95 and het.distances[1, 2] > 0.95
    assert het.mean == pytest.approx(het.distances[np.triu_indices(3, 1)].mean())
    # split-half null: the same block from independent probes is closer than different blocks
    assert 0 <= het.noise_floor < het.between_halves <= 1
    np.testing.assert_allclose(het.densities.sum(1), 1.0)
    linear = tr.block_heterogeneity(quad, part.names, sigma_ratio=0.002, scale="linear")
    assert linear.distances[0, 2] > 0.95 and linear.scale == "linear"
    with pytest.raises(ValueError, match="scale must be one of"):
        tr.block_heterogeneity(quad, part.names, scale="log")


def test_qkvo_norms_against_dense(problem):
    op, dense = problem["op"], problem["dense"]
    part = tr.role_partition(op.layout)
    names = ["block_0/Q", "block_0/K", "block_0/V", "block_0/O"]
    exact = tr.diagonal_block_norms(op, part, names)
    want = [np.linalg.norm(_dense_block(dense, part, part.index(n))) for n in names]
    np.testing.assert_allclose(exact.norms, want, rtol=1e-9)
    est = tr.diagonal_block_norms(op, part, names, num_probes=200, key=jax.random.key(6))
    assert np.all(np.abs(est.norms - want) <= 5 * est.stderr + 1e-12)
    assert np.all(est.stderr > 0)


def test_kronecker_overlaps_against_dense(problem):
    """Exact block eigenvalues against the dense kernel block of the Hessian; Kronecker ones
    against eigh of kron(A, G) with A = Σ_t x xᵀ / N over the layer's token inputs and G the
    mean of the diagonal (position) blocks of the output Hessians."""
    x, y, params, dense, op = (problem[k] for k in ("x", "y", "params", "dense", "op"))
    layer = "block_0/attn/query"
    res = tr.kronecker_overlaps(MODEL, params, (x, y), token_cross_entropy, [layer], k=4,
                                key=jax.random.key(7), tol=1e-10)[0]  # fmt: skip
    kernel_idx = _kernel_indices(op.layout, curvature.make_layout(params, f"{layer}/kernel"))
    block = dense[np.ix_(kernel_idx, kernel_idx)]
    assert res.size == 64
    np.testing.assert_allclose(res.exact_top, np.linalg.eigvalsh(block)[::-1][:4], rtol=1e-7)
    io = curvature.dense_layer_io(MODEL, params, x, layer)
    a = np.einsum("ntj,ntk->jk", io.x, io.x) / B
    m = np.asarray(curvature.output_hessians(MODEL, params, (x, y), token_cross_entropy, layer))
    g = np.einsum("npcpd->cd", m) / (B * T)
    np.testing.assert_allclose(res.kron_top, np.linalg.eigvalsh(np.kron(a, g))[::-1][:4],
                               rtol=1e-7)  # fmt: skip
    assert 0 <= res.curve.overlap.min() and res.curve.overlap.max() <= 1 + 1e-9
    np.testing.assert_allclose(res.curve.chance, np.arange(1, 5) / 64)


def _kernel_indices(layout, sub):
    """Flat positions in `layout` of the leaves selected by `sub`."""
    sizes = [int(np.prod(s)) if on else 0 for s, on in zip(layout.shapes, layout.selected,
                                                            strict=True)]  # fmt: skip
    starts = np.cumsum([0] + sizes[:-1])
    return np.concatenate([np.arange(a, a + n) for a, n, on in
                           zip(starts, sizes, sub.selected, strict=True) if on])  # fmt: skip


# ----------------------------------------------------------------------------- input scale

GROWTH_BLOCKS = {"Q": "block_0/attn/query/kernel", "V": "block_0/attn/value/kernel"}
EMBEDDINGS = ("token_embed", "position_embed")


def _dense_parts(model, params, x, y, path):
    """Dense float64 H, GGN and H − GGN of the mean token loss w.r.t. one kernel leaf."""
    keys = path.split("/")

    def with_kernel(w):
        inner = jax.tree_util.tree_map(lambda a: a, params)
        node = inner["params"]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = w
        return inner

    w0 = params["params"]
    for k in keys:
        w0 = w0[k]
    shape = w0.shape

    def loss_of(f):
        return jnp.mean(token_cross_entropy(model.apply(with_kernel(f.reshape(shape)), x), y))

    flat = w0.ravel()
    hess = np.asarray(jax.jit(jax.hessian(loss_of))(flat))
    logits = model.apply(with_kernel(w0), x)
    jac = jax.jit(jax.jacobian(lambda f: model.apply(with_kernel(f.reshape(shape)), x)))(flat)
    jac = np.asarray(jac).reshape(logits.size, flat.size)
    h_out = jax.jit(
        jax.hessian(lambda z: jnp.mean(token_cross_entropy(z.reshape(logits.shape), y)))
    )(logits.ravel())
    ggn = jac.T @ np.asarray(h_out) @ jac
    return {"hessian": hess, "outer": ggn, "functional": hess - ggn}


def test_input_scale_growth_against_dense_and_ormaniec_powers(problem):
    x, y = problem["x"], problem["y"]
    plain = GPT(V, T, 8, 1, 1, layer_norm=False)
    with jax.enable_x64(True):
        params = plain.init(jax.random.key(2), x)
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        assert not any("ln_" in p for p in curvature.leaf_paths(params))
        data = (x[None], y[None])
        got = tr.input_scale_growth(plain.apply, token_cross_entropy, params, data,
                                    blocks=GROWTH_BLOCKS, scaled=EMBEDDINGS,
                                    scales=[0.5, 1.0])  # fmt: skip
        scaled = tr.rescaled(params, EMBEDDINGS, 0.5)
        emb = scaled["params"]["token_embed"]["embedding"]
        np.testing.assert_allclose(np.sqrt(np.mean(np.square(emb))), 0.5, rtol=1e-12)
        for j, name in enumerate(("Q", "V")):
            dense = _dense_parts(plain, scaled, x, y, GROWTH_BLOCKS[name])
            for part in tr.GROWTH_PARTS:
                want = np.linalg.norm(dense[part])
                np.testing.assert_allclose(got.norms[part][0, j], want, rtol=1e-8)
        # the leading powers of σ (Ormaniec et al.): at small σ the slopes are exact
        small = tr.input_scale_growth(plain.apply, token_cross_entropy, params, data,
                                      blocks=GROWTH_BLOCKS, scaled=EMBEDDINGS,
                                      scales=[1e-3, 2e-3])  # fmt: skip
        for name, powers in tr.ORMANIEC_EXPONENTS.items():
            j = small.names.index(name)
            for part, power in powers.items():
                assert abs(small.slopes[part][j] - power) < 0.05, (name, part, small.slopes)
        # Gaussian probes: the same probes at every σ, estimates within their errors
        probed = tr.input_scale_growth(plain.apply, token_cross_entropy, params, data,
                                       blocks=GROWTH_BLOCKS, scaled=EMBEDDINGS,
                                       scales=[0.5, 1.0], num_probes=8,
                                       key=jax.random.key(4))  # fmt: skip
        for part in tr.GROWTH_PARTS:
            err = np.abs(probed.norms[part] - got.norms[part])
            assert np.all(probed.stderr[part] > 0)
            assert np.all(err < 5 * probed.stderr[part]), part


def test_input_scale_growth_errors(problem):
    x, y = problem["x"], problem["y"]
    params, data = problem["params"], (x[None], y[None])

    def call(**kw):
        args = dict(blocks=GROWTH_BLOCKS, scaled=EMBEDDINGS, scales=[0.5, 1.0]) | kw
        return tr.input_scale_growth(MODEL.apply, token_cross_entropy, params, data, **args)

    with pytest.raises(ValueError, match="positive finite"):
        call(scales=[0.0, 1.0])
    with pytest.raises(ValueError, match="positive finite"):
        call(scales=[1.0])
    with pytest.raises(ValueError, match="distinct"):
        call(scales=[1.0, 1.0])
    with pytest.raises(ValueError, match="blocks is empty"):
        call(blocks={})
    with pytest.raises(ValueError, match="'nowhere' matches no parameter"):
        call(blocks={"Q": "nowhere"})
    with pytest.raises(ValueError, match="is in blocks 'A' and 'B'"):
        call(blocks={"A": "query/kernel", "B": "attn/query"})
    with pytest.raises(ValueError, match="scaled leaf 'embeds' matches no parameter"):
        call(scaled=("embeds",))


def test_difference_operator():
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((5, 5)) for _ in range(2))
    a, b = a + a.T, b + b.T
    op = linalg.difference(linalg.dense_operator(a), linalg.dense_operator(b))
    v = rng.standard_normal(5)
    np.testing.assert_allclose(np.asarray(op @ jnp.asarray(v)), (a - b) @ v, rtol=1e-5)
    with pytest.raises(ValueError, match="size 5 vs 4"):
        linalg.difference(linalg.dense_operator(a), linalg.dense_operator(b[:4, :4]))
