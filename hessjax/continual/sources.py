"""Where protected directions and memories come from, computed on an old task at its trained
parameters θ_old.

Flat vectors and bases use the layout of `make_layout(params)` (all leaves, leaf order), the
layout of `hessian_operator` and of `eigsh` eigenvectors:

* `hessian_directions`: top-k Hessian eigenvectors of the old task's loss (Lanczos).
* `weight_svd_directions`: rank-one directions u_i v_iᵀ of each kernel's SVD.
* `update_pca_directions`: principal directions of recorded parameter updates.
* `logit_gradients`: per-example logit gradients (the memory of OGD).
* `fisher_diagonal`: the diagonal empirical Fisher (the memory of EWC).
* `dense_inputs`, `gpm_sizes` and `gpm_extend`: per-layer input subspaces with an energy
  threshold (GPM).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax import _checks
from hessjax.analysis.trajectory import pca
from hessjax.analysis.weights import kernel_slices, svd_directions, weight_svd
from hessjax.continual import _helpers
from hessjax.curvature import dense_layer_io, hessian_operator, leaf_paths, make_layout
from hessjax.curvature.layout import select_mask
from hessjax.linalg import eigsh
from hessjax.linalg.subspace import check_orthonormal, extend_basis

Array = jax.Array
PyTree = Any


class Directions(NamedTuple):
    """vectors: (n, k) orthonormal columns over the flat params layout; values: (k,) the
    importance of each (Hessian eigenvalue, singular value, or update variance)."""

    vectors: Array
    values: Array


@_checks.renamed(operator="make_operator")
def hessian_directions(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    data: PyTree,
    k: int,
    *,
    key: Array,
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    max_restarts: int = 0,
    make_operator: Callable[..., Any] = hessian_operator,
) -> Directions:
    """Top-k eigenpairs (largest algebraic) of the Hessian of the mean of loss_fn over `data`
    (leaves (m, b, ...): m microbatches) at `params`: vectors (n, k), values (k,) descending.
    `num_steps`, `tol`, `max_restarts`: Lanczos budget, stopping rule and thick restarts of
    `hessjax.linalg.eigsh`. `make_operator(loss_fn, params, data)` builds the Hessian operator
    (default `curvature.hessian_operator`; e.g. one placed on a device mesh)."""
    op = make_operator(loss_fn, params, data)
    top = eigsh(op, k, key=key, which="LA", num_steps=num_steps, tol=tol, max_restarts=max_restarts)
    return Directions(top.eigenvectors, top.eigenvalues)


def weight_svd_directions(params: PyTree, k: int) -> Directions:
    """The top-k rank-one directions u_i v_iᵀ of every kernel's SVD W = Σ s_i u_i v_iᵀ
    (`hessjax.analysis.weights.weight_svd`: dense kernels (in, out), conv kernels reshaped),
    each a unit flat vector over the params layout, zero outside its kernel: vectors (n, K),
    K = Σ_layers min(k, rank), layer by layer in leaf order, each by descending s_i;
    orthonormal (one kernel's directions in the Frobenius inner product, different kernels by
    disjoint support). values (K,): the singular values s_i."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    layout = make_layout(params)
    dtype = layout.dtype
    svds = weight_svd(layout, params)
    vectors = [svd_directions(svd, min(k, svd.s.shape[0])) for svd in svds]
    values = [svd.s[: min(k, svd.s.shape[0])] for svd in svds]
    return Directions(
        jnp.asarray(np.concatenate(vectors, axis=1), dtype),
        jnp.asarray(np.concatenate(values), dtype),
    )


def update_pca_directions(updates: Array, k: int, center: bool = True) -> Directions:
    """Top-k principal directions of recorded updates (T, n) (rows: flat updates over the
    params layout, e.g. `read_snapshots(opt_state).updates` of a
    `hessjax.analysis.trajectory.recording` chained last): `trajectory.pca` of the (centred,
    if `center`) matrix; vectors (n, k) in the dtype of `updates`, values (k,) the explained
    variances."""
    dtype = jnp.result_type(updates)
    p = pca(updates, k, center=center)
    if not float(p.singular_values[-1]) > 0:
        raise ValueError(f"the updates span fewer than k={k} directions")
    return Directions(jnp.asarray(p.components, dtype), jnp.asarray(p.explained_variance, dtype))


@functools.partial(jax.jit, static_argnames=("model_fn",))
def _logit_gradients(model_fn, params, inputs, labels):
    layout = make_layout(params)

    def one(x, c):
        grad = jax.grad(lambda p: model_fn(p, x[None])[0, c])(params)
        return layout.ravel(grad)

    return jax.vmap(one)(inputs, labels).T


@functools.partial(jax.jit, static_argnames=("model_fn",))
def _all_logit_gradients(model_fn, params, inputs):
    layout = make_layout(params)

    def one(x):
        jac = jax.jacrev(lambda p: model_fn(p, x[None])[0])(params)  # leaves (C, ...)
        return jax.vmap(layout.ravel)(jac)  # (C, n)

    out = jax.vmap(one)(inputs)  # (N, C, n)
    return out.reshape(-1, out.shape[-1]).T


def logit_gradients(
    model_fn: Callable[[PyTree, Array], Array],
    params: PyTree,
    inputs: Array,
    labels: Array | None = None,
) -> Array:
    """Gradients of the network's logits in the params, the memory of orthogonal gradient
    descent (OGD, Farajtabar et al. 2020), as flat columns over the params layout.

    inputs (N, ...); with labels (N,) the gradient of each sample's true-class logit
    (OGD-GTL): (n, N); without, of all C logits (OGD-ALL): (n, N·C), sample-major.
    Columns are not orthonormal: orthonormalise with `extend_basis`. `model_fn` must be
    hashable (e.g. a Linen `model.apply`)."""
    inputs = jnp.asarray(inputs)
    if labels is None:
        return _all_logit_gradients(model_fn, params, inputs)
    labels = jnp.asarray(labels)
    if labels.shape != inputs.shape[:1]:
        raise ValueError(f"labels must be ({inputs.shape[0]},), got {labels.shape}")
    return _logit_gradients(model_fn, params, inputs, labels)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _fisher_diagonal(loss_fn, params, data):
    def per_example(p, example):
        return loss_fn(p, jax.tree_util.tree_map(lambda a: a[None], example))

    def body(acc, batch):
        grads = jax.vmap(jax.grad(per_example), in_axes=(None, 0))(params, batch)
        return jax.tree_util.tree_map(lambda a, g: a + jnp.sum(g**2, axis=0), acc, grads), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    total, _ = lax.scan(body, zeros, data)
    count = (
        jax.tree_util.tree_leaves(data)[0].shape[0] * jax.tree_util.tree_leaves(data)[0].shape[1]
    )
    return jax.tree_util.tree_map(lambda t: t / count, total)


def fisher_diagonal(loss_fn: Callable[[PyTree, Any], Array], params: PyTree, data: PyTree):
    """Diagonal of the empirical Fisher, F_i = mean over samples of (∂ℓ_s/∂θ_i)², with ℓ_s =
    loss_fn(params, batch of the one sample s), over data with leaves (m, b, ...) (m
    microbatches of b samples, one `lax.scan`); params-shaped. The memory of EWC."""
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves or any(np.ndim(x) < 2 for x in leaves):
        raise ValueError("data leaves must have a microbatch and a batch axis, (m, b, ...)")
    out = _fisher_diagonal(loss_fn, params, data)
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(out)):
        raise ValueError("the Fisher diagonal is not finite (non-finite loss or gradients)")
    return out


def dense_layers(params: PyTree) -> list[str]:
    """Names of the dense layers (module paths of their 2-D kernels without a leading
    'params' and without '/kernel': 'params/Dense_0/kernel' -> 'Dense_0'), in leaf order."""
    return [ks.name for ks in kernel_slices(make_layout(params)) if len(ks.shape) == 2]


@_checks.renamed(variables="params")
def dense_inputs(
    model: nn.Module,
    params: PyTree,
    inputs: Array,
    layers: Sequence[str] | None = None,
    with_bias: bool = True,
) -> dict[str, Array]:
    """Inputs x (N, in) of each Dense layer of a Linen model on `inputs` (N, ...), with a
    constant 1 column appended, (N, in + 1), when `with_bias` and the layer has a bias (so a
    basis of this space covers the kernel and the bias together). layers: default all dense
    layers (`dense_layers`)."""
    layers = dense_layers(params) if layers is None else list(layers)
    biased = {name: _has_bias(params, name) for name in layers}
    out = {}
    for name in layers:
        x = dense_layer_io(model, params, inputs, name).x
        if with_bias and biased[name]:
            x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
        out[name] = x
    return out


def gpm_sizes(params: PyTree) -> dict[str, int]:
    """{dense layer: d}, the rows of its GPM basis as `dense_inputs` builds them: the
    kernel's inputs, + 1 when the layer has a bias."""
    kernels = {ks.name: ks.shape for ks in kernel_slices(make_layout(params))}
    return {name: kernels[name][0] + int(_has_bias(params, name)) for name in dense_layers(params)}


def _has_bias(params: PyTree, layer: str) -> bool:
    return any(select_mask(leaf_paths(params), f"{layer}/bias"))


def gpm_extend(
    bases: Mapping[str, Array] | None,
    activations: Mapping[str, Array],
    threshold: float | Mapping[str, float],
) -> dict[str, Array]:
    """Gradient projection memory update (Saha et al., ICLR 2021) for one new task.

    For each layer, R (d, N) = activations[layer]ᵀ, the layer inputs (N, d) of the new task's
    samples (`dense_inputs`), and U (d, k) the layer's orthonormal basis (absent: k = 0). The
    part of R outside span(U), R̂ = (I − UUᵀ) R = Û Ŝ V̂ᵀ, contributes its top r directions
    Û[:, :r], r the smallest number with ‖UᵀR‖²_F + Σ_{i<=r} Ŝ_i² >= threshold · ‖R‖²_F
    (r = 0 when U already holds that share of R's energy). Returns {layer: (d, k + r)}
    orthonormal; layers missing from `activations` keep their basis.
    """
    bases = dict(bases or {})
    out = dict(bases)
    for name, acts in activations.items():
        thr = float(threshold[name] if isinstance(threshold, Mapping) else threshold)
        if not 0 < thr <= 1:
            raise ValueError(f"GPM threshold must be in (0, 1], got {thr} for layer {name!r}")
        r_mat = np.asarray(acts, np.float64).T
        if r_mat.ndim != 2:
            raise ValueError(f"activations[{name!r}] must be (N, d), got shape {acts.shape}")
        d = r_mat.shape[0]
        old = bases.get(name)
        if old is not None:
            check_orthonormal(old, f"GPM basis of {name!r}")
        u = np.zeros((d, 0)) if old is None else np.asarray(old, np.float64)
        if u.shape[0] != d:
            raise ValueError(f"layer {name!r}: basis has {u.shape[0]} rows, activations {d}")
        total = float(np.sum(r_mat**2))
        if total == 0:
            continue
        resid = r_mat - u @ (u.T @ r_mat)
        kept = total - float(np.sum(resid**2))
        uh, sh, _ = np.linalg.svd(resid, full_matrices=False)
        r = _helpers.energy_rank(np.cumsum(sh**2), thr * total - kept, total)
        r = min(r, d - u.shape[1], int(np.sum(sh > sh[0] * 1e-10)) if sh.size else 0)
        dtype = np.asarray(acts).dtype if old is None else np.asarray(old).dtype
        if r > 0:
            out[name] = extend_basis(jnp.asarray(u, dtype), jnp.asarray(uh[:, :r], dtype))
        elif old is None:
            out[name] = jnp.zeros((d, 0), dtype)
    return out
