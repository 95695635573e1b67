"""Curvature operators of a loss: Hessian, generalised Gauss-Newton and empirical Fisher.

Data for one operator is a pytree whose leaves carry a leading microbatch axis (m, b, ...);
a product scans over the m microbatches inside one `jit` and averages. For data that does not
fit in memory, `batches=` takes a re-iterable of batches (b, ...) and sums on the host.

Every operator acts on flat vectors over the selected parameters (`select`, see
`layout.select_mask`); restricted to a block of parameters it is the diagonal block H_ii.

Construction checks the inputs and evaluates the loss (the per-example losses for the Fisher)
once on every microbatch, or every streamed batch: one jitted forward pass over the data
(a fraction of one product's cost), then one host transfer of m flags. A non-finite loss raises
a ValueError naming the first bad (micro)batch. Under an outer `jit` (traced params or data)
only shapes are checked. Products themselves are not checked: a NaN that arises only in the
curvature (a finite loss with a NaN second derivative) is left to the solvers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax import _checks
from hessjax.curvature.layout import ParamLayout, PyTree, Select, make_layout, vector_dtype
from hessjax.curvature.losses import MeanLoss
from hessjax.linalg.operator import Operator

Array = jax.Array


class CurvatureProduct:
    """Shared skeleton of a curvature product: split params into the selected leaves and the
    rest, and average `per_batch` over the microbatch axis of data with one `lax.scan`.

    Subclasses define per_batch(merge, picked, tangent, batch) -> product as a list of
    selected leaves, where merge(picked) rebuilds the full params tree.
    """

    layout: ParamLayout

    def __call__(self, v: Array, params: PyTree, data: PyTree) -> Array:
        lay = self.layout
        leaves = lay.leaves(params)
        picked, tangent = lay.pick(leaves), lay.unravel_picked(v)

        def merge(p):
            return lay.merge(p, leaves)

        def body(acc, batch):
            product = lay.ravel_picked(self.per_batch(merge, picked, tangent, batch))
            return acc + product.astype(acc.dtype), None  # half-precision products, float32 sums

        num_microbatches = jax.tree_util.tree_leaves(data)[0].shape[0]
        if num_microbatches == 1:
            # No loop for one microbatch: XLA:CPU compiles convolutions inside a while loop
            # (lax.scan) to a slow generic kernel, ~25x slower for a small conv net.
            return body(jnp.zeros_like(v), jax.tree_util.tree_map(lambda x: x[0], data))[0]
        total, _ = lax.scan(body, jnp.zeros_like(v), data)
        return total / num_microbatches


@dataclasses.dataclass(frozen=True)
class HessianProduct(CurvatureProduct):
    """v -> H v, H the Hessian of loss_fn(params, batch) averaged over microbatches;
    forward-over-reverse (jvp of grad)."""

    loss_fn: Callable[[PyTree, Any], Array]
    layout: ParamLayout

    def per_batch(self, merge, picked, tangent, batch):
        grad = jax.grad(lambda p: self.loss_fn(merge(p), batch))
        return jax.jvp(grad, (picked,), (tangent,))[1]


@dataclasses.dataclass(frozen=True)
class GaussNewtonProduct(CurvatureProduct):
    """v -> G v = Jᵀ H_out J v for the mean of per_example_loss(model_fn(params, x), y)."""

    model_fn: Callable[[PyTree, Any], Array]
    per_example_loss: Callable[[Array, Any], Array]
    layout: ParamLayout

    def per_batch(self, merge, picked, tangent, batch):
        inputs, targets = batch
        out, jvp_fn = jax.linearize(lambda p: self.model_fn(merge(p), inputs), picked)
        out_grad = jax.grad(lambda o: jnp.mean(self.per_example_loss(o, targets)))
        h_jv = jax.jvp(out_grad, (out,), (jvp_fn(tangent),))[1]
        return jax.linear_transpose(jvp_fn, picked)(h_jv)[0]


@dataclasses.dataclass(frozen=True)
class FisherProduct(CurvatureProduct):
    """v -> F v, F = (1/b) Σ_i g_i g_iᵀ with g_i the gradient of example i's loss (empirical
    Fisher), without materialising per-example gradients (one jvp and one transpose)."""

    model_fn: Callable[[PyTree, Any], Array]
    per_example_loss: Callable[[Array, Any], Array]
    layout: ParamLayout

    def per_batch(self, merge, picked, tangent, batch):
        inputs, targets = batch

        def losses(p):
            return self.per_example_loss(self.model_fn(merge(p), inputs), targets)

        per_example, jvp_fn = jax.linearize(losses, picked)
        gv = jvp_fn(tangent)
        return jax.linear_transpose(jvp_fn, picked)(gv / per_example.shape[0])[0]


class _TreeViews:
    """Pytree views shared by the in-memory and streaming operators (needs `self.layout`)."""

    layout: ParamLayout

    def ravel(self, tree: PyTree) -> Array:
        """Params-shaped tree -> flat (size,) vector (checks structure, shapes and dtypes)."""
        return self.layout.ravel(tree)

    def unravel(self, v: Array) -> PyTree:
        """Flat (size,) -> params-shaped tree (zeros outside the selected leaves)."""
        return self.layout.unravel(v)

    def unravel_vectors(self, vs: Array) -> PyTree:
        """(size, k) columns -> params-shaped tree whose leaves have a leading k axis."""
        _checks.check_operand(vs, self.layout.size, (2,), "vs")
        return jax.vmap(self.layout.unravel, in_axes=1)(vs)

    def tree_matvec(self, tree: PyTree) -> PyTree:
        """Product in pytree form: params-shaped tree -> params-shaped tree."""
        return self.unravel(self @ self.ravel(tree))

    def tree_matmat(self, trees: PyTree) -> PyTree:
        """Block product in pytree form: params-shaped leaves with a leading k axis -> same."""
        return self.unravel_vectors(self @ jax.vmap(self.ravel, out_axes=1)(trees))


@dataclasses.dataclass(frozen=True)
class CurvatureOperator(Operator, _TreeViews):
    """A curvature `Operator` with the `ParamLayout` of its selected parameters; args =
    (params, data) (the Kronecker factors for `kronecker_operator`); a pytree, so solvers
    jit over them as inputs."""

    layout: ParamLayout | None = None


jax.tree_util.register_dataclass(
    CurvatureOperator, data_fields=["args"], meta_fields=["product", "size", "dtype", "layout"]
)


class StreamingOperator(_TreeViews):
    """A curvature operator over a re-iterable of batches: each product is a host loop of
    jitted per-batch products, weighted by batch size. Solvers drive it from the host."""

    def __init__(self, product, params: PyTree, batches, layout: ParamLayout):
        self.layout, self.size, self.dtype = layout, layout.size, vector_dtype(layout)
        self.params, self._batches = params, batches
        self._product = jax.jit(product)

    def batches(self) -> Iterable[PyTree]:
        return self._batches() if callable(self._batches) else iter(self._batches)

    def matvec(self, v: Array) -> Array:
        _checks.check_operand(v, self.size, (1,))
        total, count = jnp.zeros_like(v), 0
        for batch in self.batches():
            b = _leading_size(batch)
            total, count = total + b * self._product(v, self.params, _stack(batch)), count + b
        return total / count

    def matmat(self, vs: Array) -> Array:
        _checks.check_operand(vs, self.size, (2,), "vs")
        return jnp.stack([self.matvec(v) for v in vs.T], axis=1)

    def __matmul__(self, x: Array) -> Array:
        _checks.check_operand(x, self.size, (1, 2), "x")
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)


def _stack(batch: PyTree) -> PyTree:
    """One batch (b, ...) as data with a single microbatch (1, b, ...)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], batch)


def _leading_size(tree: PyTree, axis_name: str = "batch") -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("data has no array leaves")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"all data leaves need the same leading {axis_name} axis, got {sizes}")
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"data is empty (leading {axis_name} axis has size 0)")
    return size


def _is_tracer(tree: PyTree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


@functools.partial(jax.jit, static_argnums=0)
def _loss_values(value_fn: Callable[[PyTree, Any], Array], params: PyTree, data: PyTree):
    """value_fn(params, batch) on every microbatch of data (m, b, ...), stacked: (m, ...)."""
    if jax.tree_util.tree_leaves(data)[0].shape[0] == 1:  # no loop (see CurvatureProduct)
        value = value_fn(params, jax.tree_util.tree_map(lambda x: x[0], data))
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], value)
    return lax.map(functools.partial(value_fn, params), data)


def _finite_losses(value_fn, params: PyTree, data: PyTree, per_example: bool) -> Array | None:
    """(m,) flags, True where the loss on microbatch i of data (m, b, ...) is finite (None
    under an outer trace, where only shapes are checked). One jitted forward pass, cached per
    (hashable) loss and shapes. per_example: value_fn returns (b,) losses, else a scalar."""
    values = _loss_values(value_fn, params, data)
    if not isinstance(values, jax.Array):
        raise ValueError(
            f"loss_fn must return a scalar; got a {type(values).__name__} — wrap it, e.g. "
            "lambda p, b: loss_fn(p, b)[0]"
        )
    want = (jax.tree_util.tree_leaves(data)[0].shape[1],) if per_example else ()
    if values.shape[1:] != want:
        raise ValueError(
            f"per_example_loss must return per-example losses of shape (batch,) = {want}, got "
            f"shape {values.shape[1:]}: pass the unreduced loss (e.g. cross_entropy), not its mean"
            if per_example
            else f"loss_fn must return a scalar; got shape {values.shape[1:]} (reduce it, e.g. "
            "with jnp.mean)"
        )
    if _is_tracer(values):
        return None
    return jnp.all(jnp.isfinite(values.reshape(values.shape[0], -1)), axis=1)


def _raise_non_finite(finite: Array, where: str) -> None:
    bad = np.flatnonzero(~np.asarray(finite))
    if bad.size:
        raise ValueError(
            f"loss is not finite on {where} {bad[0]} (0-based; {bad.size} of {finite.size} "
            f"{where}es non-finite): check its inputs and the params"
        )


def build_operator(
    product: CurvatureProduct,
    value_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    data: PyTree | None,
    batches: Iterable[PyTree] | Callable[[], Iterable[PyTree]] | None,
    layout: ParamLayout,
    per_example: bool = False,
) -> CurvatureOperator | StreamingOperator:
    """The in-memory (`data`) or streaming (`batches`) operator of a product (a hashable
    `CurvatureProduct` subclass), after checking the inputs and that value_fn (the loss, or the
    per-example losses) is finite on every (micro)batch. For new operator kinds (e.g.
    `lm_head_ggn_operator`)."""
    if (data is None) == (batches is None):
        raise ValueError("pass exactly one of data= (microbatched pytree) or batches= (iterable)")
    if data is not None:
        _leading_size(data, "microbatch")
        _leading_size(jax.tree_util.tree_map(lambda x: x[0], data))
        finite = _finite_losses(value_fn, params, data, per_example)
        if finite is not None:
            _raise_non_finite(finite, "microbatch")
        dtype = vector_dtype(layout)
        return CurvatureOperator(product, (params, data), layout.size, dtype, layout)
    if not callable(batches) and iter(batches) is batches:
        raise ValueError(
            "batches must be re-iterable (a list, or a callable returning a fresh iterator); "
            "a generator is exhausted after one product"
        )
    op = StreamingOperator(product, params, batches, layout)
    finite = []
    for batch in op.batches():
        _leading_size(batch)
        finite.append(_finite_losses(value_fn, params, _stack(batch), per_example))
    if not finite:
        raise ValueError("batches is empty")
    if finite[0] is not None:
        _raise_non_finite(jnp.concatenate(finite), "batch")
    return op


def hessian_operator(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    data: PyTree | None = None,
    *,
    batches: Iterable[PyTree] | Callable[[], Iterable[PyTree]] | None = None,
    select: Select = None,
) -> CurvatureOperator | StreamingOperator:
    """Hessian of the mean of loss_fn(params, batch) over the data.

    Args:
      loss_fn: scalar loss of (params, batch); use a hashable function (module-level, or a
        `MeanLoss`) so that repeated operators reuse compilations.
      params: any pytree of arrays; the selected leaves must share one floating dtype.
      data: batch pytree with a leading microbatch axis on every leaf, (m, b, ...).
      batches: instead of `data`, a re-iterable of batches (b, ...) streamed from the host.
      select: restrict to a parameter block: a path pattern like 'Dense_0', a list of them,
        or a predicate on '/'-joined leaf paths. The result is the diagonal block H_ii.
    """
    layout = make_layout(params, select)
    return build_operator(HessianProduct(loss_fn, layout), loss_fn, params, data, batches, layout)


def ggn_operator(
    model_fn: Callable[[PyTree, Any], Array],
    per_example_loss: Callable[[Array, Any], Array],
    params: PyTree,
    data: tuple[Any, Any] | None = None,
    *,
    batches: Iterable[tuple[Any, Any]] | Callable[[], Iterable[Any]] | None = None,
    select: Select = None,
) -> CurvatureOperator | StreamingOperator:
    """Generalised Gauss-Newton Jᵀ H_out J of mean(per_example_loss(model_fn(params, x), y)).

    data is a pair (inputs, targets), each with a leading microbatch axis; H_out is the Hessian
    of the loss in the outputs (PSD for convex losses such as `cross_entropy` and `mse`).
    """
    layout = make_layout(params, select)
    product = GaussNewtonProduct(model_fn, per_example_loss, layout)
    loss = MeanLoss(model_fn, per_example_loss)
    return build_operator(product, loss, params, data, batches, layout)


def empirical_fisher_operator(
    model_fn: Callable[[PyTree, Any], Array],
    per_example_loss: Callable[[Array, Any], Array],
    params: PyTree,
    data: tuple[Any, Any] | None = None,
    *,
    batches: Iterable[tuple[Any, Any]] | Callable[[], Iterable[Any]] | None = None,
    select: Select = None,
) -> CurvatureOperator | StreamingOperator:
    """Empirical Fisher (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ of the per-example losses (data as for GGN)."""
    layout = make_layout(params, select)
    product = FisherProduct(model_fn, per_example_loss, layout)
    losses = MeanLoss(model_fn, per_example_loss).per_example
    return build_operator(product, losses, params, data, batches, layout, per_example=True)
