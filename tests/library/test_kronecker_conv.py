"""Tests for the conv and model-agnostic parts of hessjax.curvature.kronecker, in float64:
input patches against explicit im2col (Linen nn.Conv and the `conv` tag with strides, padding
and dilation), the exact conv kernel block against jax.hessian, the conv Kronecker form where
it is exact (one sample at one position; a linear conv net under a squared error at every
position), the Gauss-Newton form of M against ggn_operator (and equal to the exact one in a
ReLU net), tagged plain-JAX models against the same Linen model, and bad inputs (a model
without dense or conv layers) rejected before any work."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _x64 import as_float64 as f64
from test_kronecker import assert_matrix_close as assert_close

from hessjax.curvature import (
    MeanLoss,
    conv,
    cross_entropy,
    dense,
    exact_layer_hessian,
    ggn_operator,
    hessian_operator,
    kronecker_factors,
    kronecker_operator,
    layer_names,
    layer_patches,
    output_hessians,
)
from hessjax.linalg import to_dense
from hessjax.models import MLP, ConvNet

L, C, N = 6, 3, 5  # signal length, classes, samples
pytestmark = pytest.mark.x64

CONVNET = ConvNet((2, 2), C, act="tanh")  # Conv_0 (3,1,2), Conv_1 (3,2,2), Dense_0 2->3


@pytest.fixture(scope="module")
def conv_setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, L)))
    y = jnp.asarray(rng.integers(0, C, size=N))
    v = f64(CONVNET.init(jax.random.key(1), x[:1]))
    return v, (x, y)


def im2col(x, window, strides, pads, dilation):
    """Explicit patches (N, P, prod(window)*C) of x (N, *S, C), ordered (window..., C)."""
    x = np.pad(np.asarray(x), [(0, 0), *pads, (0, 0)])
    n, dims = x.shape[0], len(window)
    sizes = [
        (x.shape[1 + i] - dilation[i] * (window[i] - 1) - 1) // strides[i] + 1 for i in range(dims)
    ]
    rows = []
    for pos in itertools.product(*map(range, sizes)):
        patch = [
            x[(slice(None), *(pos[i] * strides[i] + off[i] * dilation[i] for i in range(dims)))]
            for off in itertools.product(*map(range, window))
        ]
        rows.append(np.stack(patch, 1).reshape(n, -1))
    return np.stack(rows, 1)


def kernel_hessian(apply, variables, batch, per_example_loss, path):
    """Oracle: jax.hessian of the mean loss w.r.t. the kernel leaf at `path` (a key tuple)."""

    def put(tree, keys, value):
        return value if not keys else {**tree, keys[0]: put(tree[keys[0]], keys[1:], value)}

    def loss(kernel):
        return jnp.mean(per_example_loss(apply(put(variables, path, kernel), batch[0]), batch[1]))

    kernel = get_leaf(variables, path)
    return np.asarray(jax.jit(jax.hessian(loss))(kernel)).reshape(kernel.size, kernel.size)


def get_leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# ----------------------------------------------------------------------------- patches


def test_linen_conv_patches_are_im2col(conv_setup):
    v, (x, y) = conv_setup
    assert layer_names(CONVNET, v, x) == ["Conv_0", "Conv_1", "Dense_0"]
    p0 = layer_patches(CONVNET, v, x, "Conv_0")
    np.testing.assert_allclose(p0, im2col(x[..., None], (3,), (1,), [(1, 1)], (1,)), atol=1e-14)
    # Conv_1's input is pooled tanh(Conv_0): SAME padding of a length-3 signal
    h = nn.avg_pool(jnp.tanh(p0 @ v["params"]["Conv_0"]["kernel"].reshape(3, 2)
                             + v["params"]["Conv_0"]["bias"]), (2,), strides=(2,))  # fmt: skip
    p1 = layer_patches(CONVNET, v, x, "Conv_1")
    np.testing.assert_allclose(p1, im2col(h, (3,), (1,), [(1, 1)], (1,)), atol=1e-14)
    # factors: A = E_n Σ_p P Pᵀ, E[P] over samples and positions
    f = kronecker_factors(CONVNET, v, (x, y), cross_entropy, "Conv_1")
    p1 = np.asarray(p1)
    np.testing.assert_allclose(f.a, np.einsum("npj,npk->jk", p1, p1) / N, rtol=1e-12)
    np.testing.assert_allclose(f.x_mean, p1.mean(axis=(0, 1)), rtol=1e-12)


def test_conv_tag_patches_are_im2col():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 2)))
    params = {"w": jnp.asarray(rng.normal(size=(2, 3, 2, 3))), "b": jnp.zeros(3)}
    opts = {"strides": (2, 1), "padding": ((1, 0), (0, 2)), "dilation": (1, 2)}

    def apply(p, x):
        return conv(x, p["w"], p["b"], name="c", **opts)

    patches = np.asarray(layer_patches(apply, params, x, "c"))
    want = im2col(x, (2, 3), (2, 1), [(1, 0), (0, 2)], (1, 2))
    assert patches.shape == want.shape == (2, 3 * 4, 12)
    np.testing.assert_allclose(patches, want, atol=1e-14)
    z = apply(params, x)  # outside the analysis the tag is the layer: z = P K (im2col)
    np.testing.assert_allclose(
        np.asarray(z).reshape(2, 12, 3), want @ np.asarray(params["w"]).reshape(12, 3), rtol=1e-12
    )


# ----------------------------------------------------------------------------- exact block


@pytest.mark.parametrize("layer", ["Conv_0", "Conv_1"])
def test_exact_conv_block_matches_jax_hessian(conv_setup, layer):
    v, batch = conv_setup
    exact = exact_layer_hessian(CONVNET, v, batch, cross_entropy, layer, chunk_size=2)
    oracle = kernel_hessian(CONVNET.apply, v, batch, cross_entropy, ("params", layer, "kernel"))
    assert exact.shape == oracle.shape == ((6, 6) if layer == "Conv_0" else (12, 12))
    assert_close(exact, oracle)
    m = output_hessians(CONVNET, v, batch, cross_entropy, layer)
    assert m.shape == ((N, 6, 2, 6, 2) if layer == "Conv_0" else (N, 3, 2, 3, 2))


def test_conv_kronecker_exact_for_one_sample_one_position():
    # a VALID conv whose window covers the whole signal: one output position per sample
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(L, 1, 4))), "b": jnp.asarray(rng.normal(size=4)),
              "v": jnp.asarray(rng.normal(size=(4, C)))}  # fmt: skip

    def apply(p, x):
        h = jnp.tanh(conv(x[..., None], p["w"], p["b"], name="c", padding="VALID"))
        return h[:, 0] @ p["v"]

    batch = (jnp.asarray(rng.normal(size=(1, L))), jnp.asarray([2]))
    f = kronecker_factors(apply, params, batch, cross_entropy, "c")
    oracle = kernel_hessian(apply, params, batch, cross_entropy, ("w",))
    assert_close(np.kron(f.a, f.g), oracle)


def test_conv_kronecker_exact_for_linear_conv_with_squared_error():
    """z = conv(x, K) + b and ℓ = ½‖z - t‖² over all positions: M_n[p, q] = δ_pq I, so
    H = Σ_p E[P Pᵀ] ⊗ I = kron(A, G) exactly, for many samples and SAME padding."""
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2, 3))), "b": jnp.asarray(rng.normal(size=3))}

    def apply(p, x):
        return conv(x, p["w"], p["b"], name="c")

    def sq(o, t):
        return 0.5 * jnp.sum((o - t) ** 2, axis=(1, 2))

    batch = (jnp.asarray(rng.normal(size=(N, L, 2))), jnp.asarray(rng.normal(size=(N, L, 3))))
    f = kronecker_factors(apply, params, batch, sq, "c")
    np.testing.assert_allclose(f.g, np.eye(3), atol=1e-13)
    oracle = kernel_hessian(apply, params, batch, sq, ("w",))
    assert_close(np.kron(f.a, f.g), oracle)
    assert_close(exact_layer_hessian(apply, params, batch, sq, "c"), oracle)


def test_conv_kronecker_is_approximate_in_general(conv_setup):
    v, batch = conv_setup
    f = kronecker_factors(CONVNET, v, batch, cross_entropy, "Conv_1")
    exact = np.asarray(exact_layer_hessian(CONVNET, v, batch, cross_entropy, "Conv_1"))
    assert np.abs(np.kron(f.a, f.g) - exact).max() > 1e-3 * np.abs(exact).max()


# ----------------------------------------------------------------------------- Gauss-Newton


@pytest.mark.parametrize("model", [MLP((4, 3, C), act="tanh"), CONVNET], ids=["mlp", "conv"])
def test_ggn_form_is_the_ggn_block(conv_setup, model):
    v0, batch = conv_setup
    v = f64(model.init(jax.random.key(5), batch[0][:1]))
    layer = "Dense_1" if isinstance(model, MLP) else "Conv_1"
    data = jax.tree_util.tree_map(lambda a: a[None], batch)
    ggn = to_dense(ggn_operator(model.apply, cross_entropy, v, data, select=f"{layer}/kernel"))
    assert_close(exact_layer_hessian(model, v, batch, cross_entropy, layer, curvature="ggn"), ggn)
    hess = exact_layer_hessian(model, v, batch, cross_entropy, layer)
    assert np.abs(np.asarray(hess) - np.asarray(ggn)).max() > 1e-4 * np.abs(ggn).max()  # tanh


def test_ggn_equals_hessian_in_relu_net(conv_setup):
    # piecewise-linear network: the downstream second-order terms vanish, M_GN = M
    _, (x, y) = conv_setup
    model = MLP((4, 3, C), act="relu")
    v = f64(model.init(jax.random.key(6), x[:1]))
    for layer in ("Dense_0", "Dense_1"):
        m = output_hessians(model, v, (x, y), cross_entropy, layer)
        m_gn = output_hessians(model, v, (x, y), cross_entropy, layer, curvature="ggn")
        assert_close(m_gn, m, rel=1e-12)


# ----------------------------------------------------------------------------- tagged models


def tagged_mlp(params, x):
    """The Linen MLP((4, 3, C), tanh) as a plain function with dense tags."""
    p = params["params"]
    for i in range(3):
        x = dense(x, p[f"Dense_{i}"]["kernel"], p[f"Dense_{i}"]["bias"], name=f"fc{i}")
        x = jnp.tanh(x) if i < 2 else x
    return x


def test_tagged_model_equals_linen(conv_setup):
    _, (x, y) = conv_setup
    model = MLP((4, 3, C), act="tanh")
    v = f64(model.init(jax.random.key(7), x[:1]))
    np.testing.assert_allclose(tagged_mlp(v, x), model.apply(v, x), rtol=1e-14)
    assert layer_names(tagged_mlp, v, x) == ["fc0", "fc1", "fc2"]
    got = kronecker_factors(tagged_mlp, v, (x, y), cross_entropy, "fc1", curvature="ggn")
    want = kronecker_factors(model, v, (x, y), cross_entropy, "Dense_1", curvature="ggn")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
    op_t = kronecker_operator(tagged_mlp, v, (x, y), cross_entropy)
    op_l = kronecker_operator(model, v, (x, y), cross_entropy)
    assert op_t.layout.selected_paths == op_l.layout.selected_paths
    assert_close(to_dense(op_t), to_dense(op_l), rel=1e-12)
    # the exact block of a tagged layer is the Hessian operator's kernel block
    loss = MeanLoss(tagged_mlp, cross_entropy)
    data = jax.tree_util.tree_map(lambda a: a[None], (x, y))
    h = to_dense(hessian_operator(loss, v, data, select="Dense_1/kernel"))
    assert_close(exact_layer_hessian(tagged_mlp, v, (x, y), cross_entropy, "fc1"), h)


# ----------------------------------------------------------------------------- bad inputs


class NoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x[:, :C] * self.param("scale", nn.initializers.ones, (C,))


def test_model_without_dense_or_conv_layers(conv_setup):
    _, (x, y) = conv_setup
    v = NoLayers().init(jax.random.key(0), x[:1])
    plain = {"scale": jnp.ones(C)}

    def untagged(p, x):
        return x[:, :C] @ jnp.diag(p["scale"])

    for model, params in ((NoLayers(), v), (untagged, plain)):
        with pytest.raises(ValueError, match="calls no dense or conv layer"):
            layer_names(model, params, x)
        with pytest.raises(ValueError, match="calls no dense or conv layer"):
            kronecker_operator(model, params, (x, y), cross_entropy)
        with pytest.raises(ValueError, match="calls no dense or conv layer"):
            kronecker_factors(model, params, (x, y), cross_entropy, "Dense_0")


def test_bad_tag_and_option_inputs(conv_setup):
    v, (x, y) = conv_setup
    with pytest.raises(ValueError, match="curvature must be one of"):
        kronecker_factors(CONVNET, v, (x, y), cross_entropy, "Conv_0", curvature="fisher")
    with pytest.raises(ValueError, match="model must be a flax Linen module or a function"):
        kronecker_factors(3, v, (x, y), cross_entropy, "Conv_0")
    w = jnp.ones((L, C))

    def twice(p, x):
        return dense(jnp.tanh(dense(x, p["w"], name="a")), p["w"], name="a")[:, :C]

    with pytest.raises(ValueError, match="called 2 times"):
        kronecker_factors(twice, {"w": jnp.ones((L, L))}, (x, y), cross_entropy, "a")

    def transposed(p, x):
        return dense(x, p["wt"].T, name="fc")

    with pytest.raises(ValueError, match=r"kernels of layers \['fc'\] are not leaves"):
        kronecker_operator(transposed, {"wt": w.T}, (x, y), cross_entropy)
    with pytest.raises(ValueError, match="kernel must be"):
        dense(x, jnp.ones((L + 1, C)), name="fc")
    with pytest.raises(ValueError, match="name must be"):
        dense(x, w, name="")
    with pytest.raises(ValueError, match="strides"):
        conv(x[..., None], jnp.ones((3, 1, 2)), name="c", strides=0)


def test_batch_norm_mlp_in_inference_mode(conv_setup):
    """models.MLP(batch_norm=True): after set_batch_statistics(x) the inference-mode network
    equals the train-mode one on x; the exact block of a layer feeding a BatchNorm is the
    kernel Hessian (per-sample analysis with the stored statistics)."""
    from hessjax.models import set_batch_statistics, train_mode_apply

    _, (x, y) = conv_setup
    model = MLP((4, C), act="relu", batch_norm=True)
    v = set_batch_statistics(model, f64(model.init(jax.random.key(8), x[:1])), x)
    np.testing.assert_allclose(model.apply(v, x), train_mode_apply(model, v, x), rtol=1e-10)
    assert layer_names(model, v, x) == ["Dense_0", "Dense_1"]
    exact = exact_layer_hessian(model, v, (x, y), cross_entropy, "Dense_0")
    oracle = kernel_hessian(model.apply, v, (x, y), cross_entropy, ("params", "Dense_0", "kernel"))
    assert_close(exact, oracle)
