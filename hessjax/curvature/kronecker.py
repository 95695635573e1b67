"""Kronecker structure of the Hessian of a dense layer (Wu et al., "Dissecting Hessian",
arXiv 2010.04261), for flax Linen `nn.Dense` layers.

A Dense layer computes z = x @ K + b with kernel K of shape (in, out). We flatten K row-major,
so K[a, c] sits at flat index a*out + c (as `jax.flatten_util.ravel_pytree` and `ParamLayout`
do). For the mean loss (1/N) Σ_n ℓ_n the exact kernel-kernel Hessian block is

    H_K = (1/N) Σ_n kron(x_n x_nᵀ, M_n),        (in*out, in*out)

with x_n (in,) the layer input of sample n and M_n = ∂²ℓ_n/∂z_n∂z_nᵀ (out, out) the Hessian of
its loss in the layer output, exact (it includes the second-order terms of the layers
downstream, not only a Gauss-Newton part). Wu et al. write M ⊗ xxᵀ because they flatten W
(out, in) the other way; with our row-major (in, out) kernels the factor order is swapped.

The Kronecker approximation replaces the mean of products by the product of means,

    H_K ≈ kron(A, G),  A = E[x xᵀ] (in, in),  G = E[M] (out, out),

which is exact for one sample, and whenever M_n is the same for every sample (e.g. the output
layer under `mse`, where M_n = I). Its eigenpairs are products of those of A and G, so
`kron_matvec` and `kron_eigh` never form the (in*out)² matrix. `kronecker_operator` stacks
the approximations of several layers into one block-diagonal `Operator` for every solver.

Layer inputs and output Hessians are captured with `flax.linen.intercept_methods`, matching the
Dense module by its path (the same path its parameters have under 'params', e.g. 'Dense_1' or
'MLP_0/Dense_1'). The layer must be called exactly once per forward pass, on (batch, in) inputs.
Output Hessians are computed per sample (a vmap over single-sample forward passes), so the
network must treat samples independently (no batch statistics, no cross-sample attention).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax.curvature.layout import check_precision, make_layout
from hessjax.curvature.operators import CurvatureOperator
from hessjax.linalg._arrays import concat

Array = jax.Array
PyTree = Any
PerExampleLoss = Callable[[Array, Any], Array]


class DenseIO(NamedTuple):
    """Input x (N, in) and output z (N, out) of one Dense layer over a batch."""

    x: Array
    z: Array


class KroneckerFactors(NamedTuple):
    """Kronecker factors of a Dense kernel's Hessian, H_K ≈ kron(a, g).

    a: (in, in) E[x xᵀ] over the layer inputs; g: (out, out) E[M], M the per-sample Hessian of
    the loss in the layer output; x_mean: (in,) E[x].
    """

    a: Array
    g: Array
    x_mean: Array


class KroneckerEigenpairs(NamedTuple):
    """Top-k eigenpairs of kron(a, g).

    eigenvalues: (k,) descending, α_i γ_j for eigenvalues α of a and γ of g; eigenvectors:
    (in*out, k) orthonormal columns u_i ⊗ w_j (reshaped to (in, out) each is the rank-one
    u_i w_jᵀ); input_index, output_index: (k,) the i and j of each pair (columns of
    eigh(a) and eigh(g) in descending eigenvalue order).
    """

    eigenvalues: Array
    eigenvectors: Array
    input_index: Array
    output_index: Array


# ----------------------------------------------------------------------------- interception


def _layer_path(layer: str) -> tuple[str, ...]:
    if not isinstance(layer, str) or not layer.strip("/"):
        raise ValueError(f"layer must be a Dense module path such as 'Dense_0', got {layer!r}")
    parts = tuple(layer.strip("/").split("/"))
    return parts[1:] if parts[0] == "params" and len(parts) > 1 else parts


def _is_dense_call(context) -> bool:
    return isinstance(context.module, nn.Dense) and context.method_name == "__call__"


def _dense_inputs(args: tuple, kwargs: dict) -> Array:
    return args[0] if args else kwargs["inputs"]


def _apply_recording(model: nn.Module, variables: PyTree, inputs: PyTree, layer: str | None):
    """Run the model once, recording (x, z) of every call of the Dense module at `layer` (none
    for None) and the paths of all Dense modules called."""
    path = None if layer is None else _layer_path(layer)
    calls: list[tuple[Array, Array]] = []
    seen: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_dense_call(context):
            seen.append("/".join(context.module.path))
            if tuple(context.module.path) == path:
                calls.append((_dense_inputs(args, kwargs), out))
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, inputs)
    return calls, seen


def _check_calls(calls, seen, layer: str, n: int) -> None:
    if not calls:
        raise ValueError(
            f"no Dense module with path {layer!r} was called; Dense modules called: {seen}"
        )
    if len(calls) > 1:
        raise ValueError(
            f"Dense module {layer!r} is called {len(calls)} times per forward pass (shared "
            "weights); its Hessian is not a single Kronecker sum"
        )
    x, z = calls[0]
    if x.ndim != 2 or z.ndim != 2 or x.shape[0] != n or z.shape[0] != n:
        raise ValueError(
            f"Dense module {layer!r} must map (batch, in) to (batch, out) with batch = {n}, "
            f"got inputs {x.shape} -> outputs {z.shape}"
        )


def _batch_size(tree: PyTree, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"all leaves of {name} need the same leading batch axis, got {sizes}")
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name} is empty (leading batch axis has size 0)")
    return n


def dense_layer_io(model: nn.Module, variables: PyTree, inputs: PyTree, layer: str) -> DenseIO:
    """Input x (N, in) and output z (N, out) of the Dense submodule at path `layer` (its path
    under 'params', e.g. 'Dense_1'), for model.apply(variables, inputs) with inputs (N, ...).

    Raises ValueError if no Dense module with that path is called (listing those that are), if
    it is called more than once, or if it does not act on (N, in) inputs.
    """
    n = _batch_size(inputs, "inputs")
    calls, seen = _apply_recording(model, variables, inputs, layer)
    _check_calls(calls, seen, layer, n)
    return DenseIO(*calls[0])


def _layer_shapes(model, variables, inputs, layer) -> DenseIO:
    """Shapes and dtypes of (x, z) from an abstract trace (also validates `layer`)."""
    return jax.eval_shape(lambda v, i: dense_layer_io(model, v, i, layer), variables, inputs)


# ----------------------------------------------------------------------------- per-sample terms


def _perturbed_apply(model, variables, inputs, layer: str, delta: Array) -> Array:
    """model.apply with `delta` added to the output of the Dense module at `layer`."""
    path = _layer_path(layer)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_dense_call(context) and tuple(context.module.path) == path:
            out = out + delta
        return out

    with nn.intercept_methods(interceptor):
        return model.apply(variables, inputs)


def _output_hessians(model, variables, batch, per_example_loss, layer, z_shape) -> Array:
    """M (b, out, out) for a batch (inputs, targets) with leading axis b (no validation)."""
    out_dim, dtype = z_shape.shape[1], z_shape.dtype

    def one(sample):
        inputs, targets = jax.tree_util.tree_map(lambda x: x[None], sample)

        def loss(delta):
            outputs = _perturbed_apply(model, variables, inputs, layer, delta[None])
            return per_example_loss(outputs, targets)[0]

        return jax.hessian(loss)(jnp.zeros(out_dim, dtype))

    return jax.vmap(one)(batch)


def _per_sample(model, variables, batch, per_example_loss, layer, z_shape):
    """(x (b, in), M (b, out, out)) for a chunk of samples."""
    calls, _ = _apply_recording(model, variables, batch[0], layer)
    m = _output_hessians(model, variables, batch, per_example_loss, layer, z_shape)
    return calls[0][0], m


def _chunked_sum(stat_fn: Callable[[Any], PyTree], batch, n: int, chunk_size: int | None):
    """Σ over chunks of `batch` (leading axis n) of stat_fn(chunk), a pytree of sums; full
    chunks run in one `lax.scan`, a remainder chunk after it."""
    if chunk_size is None or chunk_size >= n:
        return stat_fn(batch)
    full = n // chunk_size

    def head(x):
        return x[: full * chunk_size].reshape(full, chunk_size, *x.shape[1:])

    chunks = jax.tree_util.tree_map(head, batch)
    if full == 1:
        total = stat_fn(jax.tree_util.tree_map(lambda x: x[0], chunks))
    else:
        first = jax.tree_util.tree_map(lambda x: x[0], chunks)
        zeros = jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(stat_fn, first)
        )

        def body(acc, chunk):
            return jax.tree_util.tree_map(jnp.add, acc, stat_fn(chunk)), None

        total, _ = lax.scan(body, zeros, chunks)
    if n % chunk_size:
        rest = stat_fn(jax.tree_util.tree_map(lambda x: x[full * chunk_size :], batch))
        total = jax.tree_util.tree_map(jnp.add, total, rest)
    return total


def _check_batch(batch) -> int:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError("batch must be a pair (inputs, targets) with a leading batch axis")
    n_in, n_t = _batch_size(batch[0], "inputs"), _batch_size(batch[1], "targets")
    if n_in != n_t:
        raise ValueError(f"inputs have {n_in} samples but targets have {n_t}")
    return n_in


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int | np.integer)
        or isinstance(chunk_size, bool)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")


# ----------------------------------------------------------------------------- public API


def _statistics(model, variables, batch, per_example_loss, layer, chunk_size, kind):
    """The traced body of the public functions: per-sample output Hessians ("hessians"), the
    Kronecker factors ("factors") or the exact block ("exact")."""
    n = jax.tree_util.tree_leaves(batch[0])[0].shape[0]
    io = _layer_shapes(model, variables, batch[0], layer)
    d_in, d_out = io.x.shape[1], io.z.shape[1]
    if kind == "hessians":
        return _output_hessians(model, variables, batch, per_example_loss, layer, io.z)

    def factor_stats(chunk):
        x, m = _per_sample(model, variables, chunk, per_example_loss, layer, io.z)
        return x.T @ x, jnp.sum(m, axis=0), jnp.sum(x, axis=0)

    def exact_stats(chunk):
        x, m = _per_sample(model, variables, chunk, per_example_loss, layer, io.z)
        xx = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], d_in * d_in)
        return xx.T @ m.reshape(m.shape[0], d_out * d_out)

    if kind == "factors":
        a, g, x_sum = _chunked_sum(factor_stats, batch, n, chunk_size)
        return KroneckerFactors(a=a / n, g=g / n, x_mean=x_sum / n)
    total = _chunked_sum(exact_stats, batch, n, chunk_size) / n
    h = total.reshape(d_in, d_in, d_out, d_out).transpose(0, 2, 1, 3)
    return h.reshape(d_in * d_out, d_in * d_out)


_statistics_jit = jax.jit(
    _statistics, static_argnames=("model", "per_example_loss", "layer", "chunk_size", "kind")
)


def _run(model, variables, batch, per_example_loss, layer, chunk_size, kind):
    """Validate, then run `_statistics` under one `jit` (cached when the model and loss are
    hashable, as Linen modules with tuple fields and module-level functions are)."""
    _check_batch(batch)
    _check_chunk(chunk_size)
    batch = tuple(batch)
    _layer_shapes(model, variables, batch[0], layer)  # clear errors before tracing
    static = (model, per_example_loss, layer, chunk_size, kind)
    try:
        hash(static)
    except TypeError:
        return jax.jit(lambda v, b: _statistics(model, v, b, *static[1:]))(variables, batch)
    return _statistics_jit(model, variables, batch, per_example_loss, layer, chunk_size, kind)


def output_hessians(
    model: nn.Module,
    variables: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
) -> Array:
    """Per-sample Hessians M (N, out, out) of ℓ_n w.r.t. the output z_n of the Dense layer at
    `layer`, for batch = (inputs (N, ...), targets (N, ...)).

    per_example_loss(outputs (b, C), targets (b, ...)) -> (b,), e.g. `cross_entropy` or `mse`.
    Each M_n is the exact Hessian (downstream second-order terms included) of a single-sample
    forward pass with a perturbation δ added to the layer's output, vmapped over samples; the
    network must treat samples independently.
    """
    return _run(model, variables, batch, per_example_loss, layer, None, "hessians")


def kronecker_factors(
    model: nn.Module,
    variables: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    chunk_size: int | None = None,
) -> KroneckerFactors:
    """Kronecker factors A = E[x xᵀ] (in, in), G = E[M] (out, out) and E[x] (in,) of the Dense
    layer at `layer` over batch = (inputs (N, ...), targets (N, ...)) (no microbatch axis).

    chunk_size: process the N samples in chunks of this size inside a `lax.scan`, so memory
    stays O(chunk_size · out²) rather than O(N · out²).
    """
    return _run(model, variables, batch, per_example_loss, layer, chunk_size, "factors")


def exact_layer_hessian(
    model: nn.Module,
    variables: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    chunk_size: int | None = None,
) -> Array:
    """Dense kernel-kernel Hessian block (in*out, in*out) = (1/N) Σ_n kron(x_n x_nᵀ, M_n) of
    the mean loss, in the row-major flattening of the (in, out) kernel. For small layers.

    Accumulated as one contraction over samples ((N, in²)ᵀ @ (N, out²)), never materialising
    per-sample Kronecker products; chunk_size as in `kronecker_factors`.
    """
    return _run(model, variables, batch, per_example_loss, layer, chunk_size, "exact")


def _check_factors(factors: KroneckerFactors) -> tuple[int, int]:
    a, g = factors.a, factors.g
    if a.ndim != 2 or a.shape[0] != a.shape[1] or g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"factors a and g must be square matrices, got {a.shape} and {g.shape}")
    return a.shape[0], g.shape[0]


def kron_matvec(factors: KroneckerFactors, v: Array) -> Array:
    """kron(A, G) @ v without forming it: vec(A V G) with V = v.reshape(in, out) (row-major).

    v: (in*out,) or (in*out, k) columns; returns the same shape.
    """
    d_in, d_out = _check_factors(factors)
    if v.ndim not in (1, 2) or v.shape[0] != d_in * d_out:
        raise ValueError(
            f"v must have shape ({d_in * d_out},) or ({d_in * d_out}, k), got {v.shape}"
        )
    vs = v.reshape(d_in, d_out, -1)
    out = jnp.einsum("ab,bdk,dc->ack", factors.a, vs, factors.g)
    return out.reshape(v.shape)


def kron_eigh(factors: KroneckerFactors, k: int) -> KroneckerEigenpairs:
    """Top-k eigenpairs of kron(A, G) from eigh of A and G (in float64), never forming it.

    Eigenvalues are the k largest products α_i γ_j, descending (algebraically: G may be
    indefinite for hidden layers); eigenvectors are u_i ⊗ w_j (in*out, k), returned in the
    factors' dtype. Ties among products are ordered arbitrarily.
    """
    d_in, d_out = _check_factors(factors)
    size = d_in * d_out
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= size:
        raise ValueError(f"k must be an integer with 1 <= k <= in*out = {size}, got {k!r}")
    return _kron_eigh(factors.a, factors.g, int(k))


@functools.partial(jax.jit, static_argnames="k")
def _kron_eigh(a: Array, g: Array, k: int) -> KroneckerEigenpairs:
    d_in, d_out = a.shape[0], g.shape[0]
    size = d_in * d_out
    dtype = jnp.result_type(a, g)
    with jax.enable_x64(True):  # the factor eigenproblems in float64
        alpha, u = jnp.linalg.eigh(a.astype(jnp.float64))
        gamma, w = jnp.linalg.eigh(g.astype(jnp.float64))
        alpha, u, gamma, w = alpha[::-1], u[:, ::-1], gamma[::-1], w[:, ::-1]
        products = (alpha[:, None] * gamma[None, :]).reshape(size)
        values, flat = lax.top_k(products, k)
        i, j = flat // d_out, flat % d_out
        vectors = (u[:, None, i] * w[None, :, j]).reshape(size, k)
        values, vectors = values.astype(dtype), vectors.astype(dtype)
        i, j = i.astype(jnp.int32), j.astype(jnp.int32)
    return KroneckerEigenpairs(values, vectors, i, j)


def _kron_blocks_product(v: Array, factors: tuple[KroneckerFactors, ...]) -> Array:
    """Block-diagonal product: kron(A_l, G_l) on layer l's slice of v (in_l * out_l,)."""
    sizes = np.cumsum([f.a.shape[0] * f.g.shape[0] for f in factors])[:-1]
    parts = jnp.split(v, sizes)
    return concat([kron_matvec(f, x) for f, x in zip(factors, parts, strict=True)])


def _dense_paths(model: nn.Module, variables: PyTree, inputs: PyTree) -> list[str]:
    """Paths of the Dense modules model.apply calls, in call order (an abstract trace)."""
    seen: list[str] = []
    jax.eval_shape(
        lambda v, i: seen.extend(_apply_recording(model, v, i, None)[1]), variables, inputs
    )
    return list(dict.fromkeys(seen))


def kronecker_operator(
    model: nn.Module,
    variables: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layers: Sequence[str] | None = None,
    *,
    chunk_size: int | None = None,
) -> CurvatureOperator:
    """The block-diagonal Kronecker approximation ⊕_l kron(A_l, G_l) of the Hessian's kernel
    blocks of the Dense layers `layers` (default: every Dense module the model calls), as an
    `Operator` that every solver takes (args: the factors; see `kronecker_factors`).

    It acts on the flat vector of those kernels, (Σ_l in_l * out_l,), in params leaf order
    (`op.layout`; as `hessian_operator(..., select=<their kernel paths>)`). Biases and all other
    leaves are outside its space: `op.unravel` gives them zeros, i.e. the approximation has
    zero curvature there, not identity.
    """
    _check_batch(batch)
    if layers is None:
        layers = _dense_paths(model, variables, batch[0])
    kernels = {"/".join(("params", *_layer_path(layer), "kernel")): layer for layer in layers}
    layout = make_layout(variables, lambda path: path in kernels)
    missing = set(kernels) - set(layout.selected_paths)
    if missing:
        raise ValueError(f"no kernel at {sorted(missing)}; params leaves are {list(layout.paths)}")
    check_precision(layout)
    factors = tuple(
        kronecker_factors(
            model, variables, batch, per_example_loss, kernels[path], chunk_size=chunk_size
        )
        for path in layout.selected_paths
    )
    return CurvatureOperator(_kron_blocks_product, (factors,), layout.size, layout.dtype, layout)
