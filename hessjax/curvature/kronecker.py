"""Kronecker structure of the Hessian of dense and convolution layers (Wu et al., "Dissecting
Hessian", arXiv 2010.04261; for convolutions the KFC form of Grosse & Martens, 2016), for any
model whose dense/conv layers can be seen: flax Linen `nn.Dense` / `nn.Conv` modules (found by
`flax.linen.intercept_methods`), or, in any `apply(params, inputs)` (plain JAX, Equinox, NNX),
layers computed with the tags `dense` and `conv` of this module.

A layer computes z = P K + b per output position: K the kernel flattened to (J, out) (a Dense
kernel (in, out): J = in; a Conv kernel (*window, in, out): J = prod(window)·in), P_p (J,) the
layer's input patch at output position p (for Dense, the input itself, one position per
sample, or one per leading axis of a (N, ..., in) input). We flatten K row-major, so K[j, c]
sits at flat index j*out + c (as `jax.flatten_util.ravel_pytree` and `ParamLayout` do). For
the mean loss (1/N) Σ_n ℓ_n the exact kernel-kernel Hessian block is

    H_K = (1/N) Σ_n Σ_{p,q} kron(P_np P_nqᵀ, M_n[p, q]),        (J*out, J*out)

with M_n[p, q] = ∂²ℓ_n/∂z_np∂z_nqᵀ (out, out) the Hessian of sample n's loss in the layer
output, exact (`curvature="hessian"`: downstream second-order terms included; equal to the
Gauss-Newton form almost everywhere in piecewise-linear, e.g. ReLU, networks) or its
Gauss-Newton form M = J_zᵀ ∇²ℓ J_z (`curvature="ggn"`, J_z the Jacobian of the network output
in z; then H_K is the kernel block of the GGN). Wu et al. write M ⊗ xxᵀ because they flatten
W (out, in) the other way; with our row-major (J, out) kernels the factor order is swapped.

The Kronecker approximation replaces the mean of products by the product of means, and drops
the cross-position terms p ≠ q (spatially uncorrelated output derivatives, as KFC does):

    H_K ≈ kron(A, G),  A = E_n[Σ_p P_np P_npᵀ] (J, J),  G = E_n[(1/P) Σ_p M_n[p, p]] (out, out),

which is exact for one sample at one position, and whenever M_n[p, q] = δ_pq M for every
sample (e.g. the output layer under `mse`, where M_n = I, or a linear conv net under a squared
error on every output position). Its eigenpairs are products of those of A and G, so
`kron_matvec` and `kron_eigh` never form the (J*out)² matrix. `kronecker_operator` stacks the
approximations of several layers into one block-diagonal `Operator` for every solver.

Finding the layers. `model` is either a flax Linen module (called as model.apply(params,
inputs); a layer is named by its module path, the path its parameters have under 'params',
e.g. 'Dense_1' or 'MLP_0/Conv_0') or any function apply(params, inputs) -> outputs whose
dense and conv layers are computed by the tags

    z = hessjax.curvature.dense(x, kernel, bias, name="fc1")           # x @ kernel + bias
    z = hessjax.curvature.conv(x, kernel, bias, name="conv1", strides=1, padding="SAME")

(kernel (in, out) and (*window, in, out), channels-last inputs). Outside the functions of this
module a tag is just the layer; inside them it records the layer's input and lets its output
be perturbed (a context-local tape, as `intercept_methods` does for Linen). Each tagged layer
must be called exactly once per forward pass, directly in `apply` (not inside a `jax.jit`,
`lax.scan` or `vmap` of its own), on inputs with the leading batch axis. Output Hessians are
computed per sample (a vmap over single-sample forward passes), so the network must treat
samples independently (no batch statistics: batch norm in inference mode is fine).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax import _checks
from hessjax._arrays import concat
from hessjax.curvature.layout import check_precision, leaf_paths, make_layout
from hessjax.curvature.operators import CurvatureOperator

Array = jax.Array
PyTree = Any
PerExampleLoss = Callable[[Array, Any], Array]
Model = nn.Module | Callable[[PyTree, Any], Array]
CURVATURES = ("hessian", "ggn")


class DenseIO(NamedTuple):
    """Input x (N, ...) and output z (N, ..., out) of one dense or conv layer over a batch
    ((N, in) -> (N, out) for a Dense layer on flat inputs)."""

    x: Array
    z: Array


class KroneckerFactors(NamedTuple):
    """Kronecker factors of a dense or conv kernel's Hessian, H_K ≈ kron(a, g).

    a: (J, J) E_n[Σ_p P_np P_npᵀ] over the layer's input patches (J = in for Dense, where it
    is E[x xᵀ]); g: (out, out) E_n[(1/P) Σ_p M_n[p, p]], M the per-sample Hessian (or its
    Gauss-Newton form) of the loss in the layer output; x_mean: (J,) the mean patch E[P] over
    samples and positions (E[x] for Dense).
    """

    a: Array
    g: Array
    x_mean: Array


class KroneckerEigenpairs(NamedTuple):
    """Top-k eigenpairs of kron(a, g).

    eigenvalues: (k,) descending, α_i γ_j for eigenvalues α of a and γ of g; eigenvectors:
    (J*out, k) orthonormal columns u_i ⊗ w_j (reshaped to (J, out) each is the rank-one
    u_i w_jᵀ); input_index, output_index: (k,) the i and j of each pair (columns of
    eigh(a) and eigh(g) in descending eigenvalue order).
    """

    eigenvalues: Array
    eigenvectors: Array
    input_index: Array
    output_index: Array


# ----------------------------------------------------------------------------- the tape


class _Call(NamedTuple):
    """One recorded layer call: its name, input x, output z, kernel, linear(x, k) (the
    layer's kernel part computed with kernel k, bias excluded) and the params path of the
    kernel when the model says it (Linen), else None."""

    name: str
    x: Array
    z: Array
    kernel: Array
    linear: Callable[[Array, Array], Array]
    kernel_path: str | None


class _Tape:
    def __init__(self, deltas: dict[str, Array]):
        self.deltas = deltas
        self.calls: list[_Call] = []


_TAPES = threading.local()


def _stack() -> list[_Tape]:
    if not hasattr(_TAPES, "stack"):
        _TAPES.stack = []
    return _TAPES.stack


@contextlib.contextmanager
def _taping(deltas: dict[str, Array] | None = None) -> Iterator[_Tape]:
    """Record every tagged layer called in this context; add deltas[name] (reshaped to the
    output's shape) to the output of layer `name`."""
    tape = _Tape(deltas or {})
    _stack().append(tape)
    try:
        yield tape
    finally:
        _stack().pop()


def _tap(name: str, x, z, kernel, linear, kernel_path: str | None = None) -> Array:
    stack = _stack()
    if not stack:
        return z
    tape = stack[-1]
    tape.calls.append(_Call(name, x, z, kernel, linear, kernel_path))
    delta = tape.deltas.get(name)
    return z if delta is None else z + delta.reshape(z.shape).astype(z.dtype)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string naming the layer, got {name!r}")


def _dense_linear(x: Array, kernel: Array) -> Array:
    return jnp.matmul(x, kernel)


def dense(x: Array, kernel: Array, bias: Array | None = None, *, name: str) -> Array:
    """A dense layer z = x @ kernel + bias, tagged for the Kronecker analysis of this module.

    x: (N, ..., in); kernel: (in, out); bias: (out,) or None; returns (N, ..., out). Use it in
    any apply(params, inputs) (plain JAX, Equinox, NNX) in place of the layer's matmul, with a
    name unique per layer; pass the kernel leaf of params itself (not a transposed copy) so
    that `kronecker_operator` finds its place in params. Outside this module's functions it is
    just the layer.
    """
    _check_name(name)
    if kernel.ndim != 2 or x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"dense {name!r}: kernel must be (in, out) with in = x.shape[-1], got x {x.shape}, "
            f"kernel {kernel.shape}"
        )
    z = _dense_linear(x, kernel)
    return _tap(name, x, z if bias is None else z + bias, kernel, _dense_linear)


def _spatial_tuple(value: int | Sequence[int], spatial: int, what: str) -> tuple[int, ...]:
    out = (value,) * spatial if isinstance(value, int | np.integer) else tuple(value)
    if len(out) != spatial or not all(isinstance(v, int | np.integer) and v >= 1 for v in out):
        raise ValueError(f"{what} must be a positive int or {spatial} of them, got {value!r}")
    return tuple(int(v) for v in out)


def _conv_linear(x, kernel, *, strides, padding, dilation) -> Array:
    letters = "DHW"[3 - (kernel.ndim - 2) :]
    specs = (f"N{letters}C", f"{letters}IO", f"N{letters}C")
    return lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=specs
    )


def conv(
    x: Array,
    kernel: Array,
    bias: Array | None = None,
    *,
    name: str,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    dilation: int | Sequence[int] = 1,
) -> Array:
    """A convolution z = conv(x, kernel) + bias (channels last, `lax.conv_general_dilated`),
    tagged for the Kronecker analysis of this module.

    x: (N, *spatial, in) with 1 to 3 spatial axes; kernel: (*window, in, out); bias: (out,)
    or None; strides, dilation (of the kernel): an int or one per spatial axis; padding:
    'SAME', 'VALID' or one (low, high) pair per spatial axis. Returns (N, *out_spatial, out).
    As `dense`, it is just the layer outside this module's functions.
    """
    _check_name(name)
    spatial = kernel.ndim - 2
    if not 1 <= spatial <= 3 or x.ndim != kernel.ndim or x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"conv {name!r}: need x (N, *spatial, in) and kernel (*window, in, out) with 1 to 3 "
            f"spatial axes, got x {x.shape}, kernel {kernel.shape}"
        )
    if not isinstance(padding, str):
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    linear = functools.partial(
        _conv_linear,
        strides=_spatial_tuple(strides, spatial, "strides"),
        padding=padding,
        dilation=_spatial_tuple(dilation, spatial, "dilation"),
    )
    z = linear(x, kernel)
    return _tap(name, x, z if bias is None else z + bias, kernel, linear)


# ----------------------------------------------------------------------------- Linen and apply


def _layer_name(layer: str) -> str:
    if not isinstance(layer, str) or not layer.strip("/"):
        raise ValueError(f"layer must be a layer name such as 'Dense_0', got {layer!r}")
    parts = tuple(layer.strip("/").split("/"))
    return "/".join(parts[1:] if parts[0] == "params" and len(parts) > 1 else parts)


def _linen_linear(module: nn.Module) -> Callable[[Array, Array], Array]:
    """linear(x, k): the Linen Dense/Conv `module` without bias, with kernel k (any out)."""
    if isinstance(module, nn.Conv) and (module.feature_group_count != 1 or module.mask is not None):
        raise ValueError(
            f"Conv module {'/'.join(module.path)!r}: grouped or masked convolutions are not "
            "supported (feature_group_count must be 1, mask None)"
        )

    def linear(x, k):
        clone = module.clone(parent=None, name=None, features=k.shape[-1], use_bias=False)
        return clone.apply({"params": {"kernel": k}}, x)

    return linear


def _linen_interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Dense | nn.Conv):
        return out
    name = "/".join(module.path)
    x = args[0] if args else kwargs["inputs"]
    kernel = module.variables["params"]["kernel"]
    return _tap(name, x, out, kernel, _linen_linear(module), f"params/{name}/kernel")


def _apply_fn(model: Model) -> Callable[[PyTree, Any], Array]:
    """apply(params, inputs) for a Linen module (its Dense/Conv calls routed to the tape)
    or a tagged apply function (itself)."""
    if isinstance(model, nn.Module):

        def apply(params, inputs):
            with nn.intercept_methods(_linen_interceptor):
                return model.apply(params, inputs)

        return apply
    if callable(model):
        return model
    raise ValueError(
        f"model must be a flax Linen module or a function apply(params, inputs), got "
        f"{type(model).__name__}"
    )


NO_LAYERS = (
    "the model calls no dense or conv layer: Kronecker factors need flax Linen nn.Dense / "
    "nn.Conv modules, or, in a plain apply(params, inputs), layers computed with "
    "hessjax.curvature.dense / conv"
)


def _record(model: Model, params: PyTree, inputs: PyTree) -> list[_Call]:
    """Run the model once; every dense/conv call, in call order."""
    with _taping() as tape:
        _apply_fn(model)(params, inputs)
    return tape.calls


def _find_call(calls: list[_Call], layer: str, n: int) -> _Call:
    """The one call of `layer` (checked: it exists, once, on (n, ...) inputs)."""
    name = _layer_name(layer)
    if not calls:
        raise ValueError(NO_LAYERS)
    mine = [c for c in calls if c.name == name]
    if not mine:
        seen = list(dict.fromkeys(c.name for c in calls))
        raise ValueError(f"no dense or conv layer {layer!r} was called; layers called: {seen}")
    if len(mine) > 1:
        raise ValueError(
            f"layer {layer!r} is called {len(mine)} times per forward pass (shared weights); "
            "its Hessian is not a single Kronecker sum"
        )
    call = mine[0]
    x, z, k = call.x, call.z, call.kernel
    if x.ndim < 2 or z.ndim < 2 or x.shape[0] != n or z.shape[0] != n or z.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"layer {layer!r} must map (batch, ...) inputs to (batch, ..., out) outputs with "
            f"batch = {n} and out = {k.shape[-1]}, got inputs {x.shape} -> outputs {z.shape}"
        )
    return call


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


@_checks.renamed(variables="params")
def layer_names(model: Model, params: PyTree, inputs: PyTree) -> list[str]:
    """Names of the dense and conv layers the model calls on inputs (N, ...), in call order
    (Linen module paths such as 'Conv_0', 'Dense_1', or the names given to the tags), from an
    abstract trace (no computation). Raises ValueError when there is none."""
    calls: list[_Call] = []
    jax.eval_shape(lambda v, i: calls.extend(_record(model, v, i)) or 0, params, inputs)
    if not calls:
        raise ValueError(NO_LAYERS)
    return list(dict.fromkeys(c.name for c in calls))


@_checks.renamed(variables="params")
def dense_layer_io(model: Model, params: PyTree, inputs: PyTree, layer: str) -> DenseIO:
    """Input x (N, ...) and output z (N, ..., out) of the dense or conv layer `layer` (a Linen
    module path under 'params', e.g. 'Dense_1', or a tag's name) for the model on inputs
    (N, ...).

    Raises ValueError if the model calls no dense or conv layer, if none is called `layer`
    (listing those that are), if it is called more than once, or if it does not act on
    (N, ...) inputs.
    """
    n = _batch_size(inputs, "inputs")
    call = _find_call(_record(model, params, inputs), layer, n)
    return DenseIO(call.x, call.z)


def _patches(call: _Call) -> Array:
    """(N, P, J) input patches of a recorded call (J = prod(kernel.shape[:-1])): the input
    itself for Dense; for conv, the layer's own kernel map applied to the identity kernel, so
    padding, strides and dilation are those of the layer."""
    kernel, n = call.kernel, call.x.shape[0]
    if kernel.ndim == 2:
        return call.x.reshape(n, -1, kernel.shape[0])
    j = math.prod(kernel.shape[:-1])
    eye = jnp.eye(j, dtype=call.x.dtype).reshape(*kernel.shape[:-1], j)
    return call.linear(call.x, eye).reshape(n, -1, j)


@_checks.renamed(variables="params")
def layer_patches(model: Model, params: PyTree, inputs: PyTree, layer: str) -> Array:
    """Input patches (N, P, J) of the dense or conv layer `layer` on inputs (N, ...): P output
    positions per sample (1 for a Dense layer on flat inputs), J = prod(kernel.shape[:-1]),
    ordered as the row-major flattening of the kernel's (*window, in) axes, so that the
    layer's output is z[n, p] = patches[n, p] @ kernel.reshape(J, out) + bias (im2col)."""
    n = _batch_size(inputs, "inputs")
    return _patches(_find_call(_record(model, params, inputs), layer, n))


def _call_shapes(model, params, inputs, layer) -> DenseIO:
    """Shapes and dtypes of (patches, z) from an abstract trace (also validates `layer`)."""
    n = _batch_size(inputs, "inputs")

    def shapes(v, i):
        call = _find_call(_record(model, v, i), layer, n)
        return DenseIO(_patches(call), call.z)

    return jax.eval_shape(shapes, params, inputs)


# ----------------------------------------------------------------------------- per-sample terms


def _sample_output_curvature(apply, params, sample, per_example_loss, name, z_shape, curvature):
    """M (P, out, P, out) of one sample (inputs, targets) without the batch axis."""
    inputs, targets = jax.tree_util.tree_map(lambda x: x[None], sample)
    size = math.prod(z_shape.shape[1:])

    def outputs(delta):
        with _taping({name: delta}):
            return apply(params, inputs)

    zero = jnp.zeros(size, z_shape.dtype)
    if curvature == "hessian":
        m = jax.hessian(lambda d: per_example_loss(outputs(d), targets)[0])(zero)
    else:
        out = outputs(zero)
        jac = jax.jacrev(outputs)(zero).reshape(-1, size)
        h = jax.hessian(lambda o: per_example_loss(o, targets)[0])(out).reshape(jac.shape[0], -1)
        m = jac.T @ h @ jac
    p, c = size // z_shape.shape[-1], z_shape.shape[-1]
    return m.reshape(p, c, p, c)


def _output_curvatures(model, params, batch, per_example_loss, layer, z_shape, curvature):
    """M (b, P, out, P, out) for a batch (inputs, targets) with leading axis b."""
    apply, name = _apply_fn(model), _layer_name(layer)
    return jax.vmap(
        lambda s: _sample_output_curvature(
            apply, params, s, per_example_loss, name, z_shape, curvature
        )
    )(batch)


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


def _check_options(chunk_size: int | None, curvature: str) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int | np.integer)
        or isinstance(chunk_size, bool)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")


# ----------------------------------------------------------------------------- public API


def _statistics(model, params, batch, per_example_loss, layer, chunk_size, kind, curvature):
    """The traced body of the public functions: per-sample output curvatures ("hessians"),
    the Kronecker factors ("factors"), the exact block ("exact") or both ("both": one pass
    over the samples)."""
    n = jax.tree_util.tree_leaves(batch[0])[0].shape[0]
    shapes = _call_shapes(model, params, batch[0], layer)
    (_, p, j), c = shapes.x.shape, shapes.z.shape[-1]

    def per_sample(chunk):
        """(patches (b, P, J), M (b, P, out, P, out)) of a chunk of samples."""
        call = _find_call(_record(model, params, chunk[0]), layer, chunk[1].shape[0])
        m = _output_curvatures(model, params, chunk, per_example_loss, layer, shapes.z, curvature)
        return _patches(call), m

    if kind == "hessians":
        m = _output_curvatures(model, params, batch, per_example_loss, layer, shapes.z, curvature)
        return m.reshape(n, c, c) if p == 1 else m

    def factor_sums(x, m):
        diag = jnp.diagonal(m, axis1=1, axis2=3)  # (b, out, out, P): the blocks M[p, p]
        return jnp.einsum("npj,npk->jk", x, x), jnp.sum(diag, axis=(0, 3)), jnp.sum(x, (0, 1))

    def exact_sum(x, m):
        return jnp.einsum("npj,npcqd,nqk->jckd", x, m, x)

    def stats(chunk):
        x, m = per_sample(chunk)
        return (
            factor_sums(x, m) if kind != "exact" else None,
            exact_sum(x, m) if kind != "factors" else None,
        )

    f_sums, total = _chunked_sum(stats, batch, n, chunk_size)
    factors = None if f_sums is None else KroneckerFactors(
        a=f_sums[0] / n, g=f_sums[1] / (n * p), x_mean=f_sums[2] / (n * p)
    )  # fmt: skip
    exact = None if total is None else (total / n).reshape(j * c, j * c)
    return {"factors": factors, "exact": exact, "both": (exact, factors)}[kind]


_STATIC = ("model", "per_example_loss", "layer", "chunk_size", "kind", "curvature")
_statistics_jit = jax.jit(_statistics, static_argnames=_STATIC)


def _run(model, params, batch, per_example_loss, layer, chunk_size, kind, curvature):
    """Validate, then run `_statistics` under one `jit` (cached when the model and loss are
    hashable, as Linen modules with tuple fields and module-level functions are)."""
    _check_batch(batch)
    _check_options(chunk_size, curvature)
    _apply_fn(model)
    batch = tuple(batch)
    _call_shapes(model, params, batch[0], layer)  # clear errors before tracing
    static = (model, per_example_loss, layer, chunk_size, kind, curvature)
    try:
        hash(static)
    except TypeError:
        return jax.jit(lambda v, b: _statistics(model, v, b, *static[1:]))(params, batch)
    return _statistics_jit(model, params, batch, *static[1:])


@_checks.renamed(variables="params")
def output_hessians(
    model: Model,
    params: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    curvature: str = "hessian",
) -> Array:
    """Per-sample Hessians M of ℓ_n w.r.t. the output z_n of the dense or conv layer
    `layer`, for batch = (inputs (N, ...), targets (N, ...)): (N, out, out) for a layer with
    one output position per sample (a Dense layer on flat inputs), else (N, P, out, P, out)
    over its P output positions.

    per_example_loss(outputs (b, ...), targets (b, ...)) -> (b,), e.g. `cross_entropy` or
    `mse`. curvature: 'hessian' (exact: downstream second-order terms included; a
    perturbation δ added to the layer's output of a single-sample forward pass, vmapped over
    samples) or 'ggn' (Gauss-Newton J_zᵀ ∇²ℓ J_z). The network must treat samples
    independently.
    """
    return _run(model, params, batch, per_example_loss, layer, None, "hessians", curvature)


@_checks.renamed(variables="params")
def kronecker_factors(
    model: Model,
    params: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    chunk_size: int | None = None,
    curvature: str = "hessian",
) -> KroneckerFactors:
    """Kronecker factors A = E_n[Σ_p P_np P_npᵀ] (J, J), G = E_n[(1/P) Σ_p M_n[p, p]]
    (out, out) and E[P] (J,) of the dense or conv layer `layer` over batch = (inputs (N, ...),
    targets (N, ...)) (no microbatch axis); for a Dense layer A = E[x xᵀ], G = E[M].

    chunk_size: process the N samples in chunks of this size inside a `lax.scan`, so memory
    stays O(chunk_size · (P·out)²) rather than O(N · (P·out)²). curvature: M exact
    ('hessian') or its Gauss-Newton form ('ggn'), see `output_hessians`.
    """
    return _run(model, params, batch, per_example_loss, layer, chunk_size, "factors", curvature)


@_checks.renamed(variables="params")
def exact_layer_hessian(
    model: Model,
    params: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    chunk_size: int | None = None,
    curvature: str = "hessian",
) -> Array:
    """Dense kernel-kernel Hessian block (J*out, J*out) = (1/N) Σ_n Σ_{p,q} kron(P_np P_nqᵀ,
    M_n[p, q]) of the mean loss, in the row-major flattening of the kernel (for Dense
    (1/N) Σ_n kron(x_n x_nᵀ, M_n)); with curvature='ggn' the kernel block of the Gauss-Newton
    matrix. For small layers.

    Accumulated as one contraction over samples, never materialising per-sample Kronecker
    products; chunk_size as in `kronecker_factors`.
    """
    return _run(model, params, batch, per_example_loss, layer, chunk_size, "exact", curvature)


@_checks.renamed(variables="params")
def exact_and_factors(
    model: Model,
    params: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layer: str,
    *,
    chunk_size: int | None = None,
    curvature: str = "hessian",
) -> tuple[Array, KroneckerFactors]:
    """(`exact_layer_hessian`, `kronecker_factors`) of the same layer in one pass over the
    samples (the per-sample M computed once): the exact block (J*out, J*out) and its
    Kronecker factors, arguments as there."""
    return _run(model, params, batch, per_example_loss, layer, chunk_size, "both", curvature)


def _check_factors(factors: KroneckerFactors) -> tuple[int, int]:
    a, g = factors.a, factors.g
    if a.ndim != 2 or a.shape[0] != a.shape[1] or g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"factors a and g must be square matrices, got {a.shape} and {g.shape}")
    return a.shape[0], g.shape[0]


def kron_matvec(factors: KroneckerFactors, v: Array) -> Array:
    """kron(A, G) @ v without forming it: vec(A V G) with V = v.reshape(J, out) (row-major).

    v: (J*out,) or (J*out, k) columns; returns the same shape.
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
    indefinite for hidden layers); eigenvectors are u_i ⊗ w_j (J*out, k), returned in the
    factors' dtype. Ties among products are ordered arbitrarily.
    """
    d_in, d_out = _check_factors(factors)
    size = d_in * d_out
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= size:
        raise ValueError(f"k must be an integer with 1 <= k <= J*out = {size}, got {k!r}")
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
    """Block-diagonal product: kron(A_l, G_l) on layer l's slice of v (J_l * out_l,)."""
    sizes = np.cumsum([f.a.shape[0] * f.g.shape[0] for f in factors])[:-1]
    parts = jnp.split(v, sizes)
    return concat([kron_matvec(f, x) for f, x in zip(factors, parts, strict=True)])


def _kernel_paths(model: Model, params: PyTree, inputs: PyTree, names: list[str]) -> dict:
    """params path of each layer's kernel: 'params/<module path>/kernel' for Linen; for tags,
    the params leaf the tag was given (found by identity in an abstract trace)."""
    if isinstance(model, nn.Module):
        return {name: f"params/{name}/kernel" for name in names}
    found: dict[str, str | None] = {}
    n = _batch_size(inputs, "inputs")

    def trace(v, i):
        paths = leaf_paths(v)
        by_id = {id(leaf): p for p, leaf in zip(paths, jax.tree_util.tree_leaves(v), strict=True)}
        calls = _record(model, v, i)
        for name in names:
            found[name] = by_id.get(id(_find_call(calls, name, n).kernel))
        return 0

    jax.eval_shape(trace, params, inputs)
    bad = [name for name, path in found.items() if path is None]
    if bad:
        raise ValueError(
            f"the kernels of layers {bad} are not leaves of params: pass the params leaf itself "
            "(shape (in, out) or (*window, in, out)) to hessjax.curvature.dense / conv"
        )
    return found


@_checks.renamed(variables="params")
def kronecker_operator(
    model: Model,
    params: PyTree,
    batch: tuple[Any, Any],
    per_example_loss: PerExampleLoss,
    layers: Sequence[str] | None = None,
    *,
    chunk_size: int | None = None,
    curvature: str = "hessian",
) -> CurvatureOperator:
    """The block-diagonal Kronecker approximation ⊕_l kron(A_l, G_l) of the Hessian's kernel
    blocks of the dense and conv layers `layers` (default: every one the model calls), as an
    `Operator` that every solver takes (args: the factors; see `kronecker_factors`).

    It acts on the flat vector of those kernels, (Σ_l J_l * out_l,), in params leaf order
    (`op.layout`; as `hessian_operator(..., select=<their kernel paths>)`). Biases and all other
    leaves are outside its space: `op.unravel` gives them zeros, i.e. the approximation has
    zero curvature there, not identity.
    """
    _check_batch(batch)
    _check_options(chunk_size, curvature)
    _apply_fn(model)
    if layers is None:
        layers = layer_names(model, params, batch[0])
    paths = _kernel_paths(model, params, batch[0], [_layer_name(layer) for layer in layers])
    kernels = {path: name for name, path in paths.items()}
    layout = make_layout(params, lambda path: path in kernels)
    missing = set(kernels) - set(layout.selected_paths)
    if missing:
        raise ValueError(f"no kernel at {sorted(missing)}; params leaves are {list(layout.paths)}")
    check_precision(layout)
    factors = tuple(
        kronecker_factors(
            model,
            params,
            batch,
            per_example_loss,
            kernels[path],
            chunk_size=chunk_size,
            curvature=curvature,
        )  # fmt: skip
        for path in layout.selected_paths
    )
    return CurvatureOperator(_kron_blocks_product, (factors,), layout.size, layout.dtype, layout)
