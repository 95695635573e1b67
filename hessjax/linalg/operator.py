"""Symmetric linear operators on flat vectors.

An `Operator` is a pytree: its `args` (parameters, data, a dense matrix) are traced leaves and
its `product` function is static. Solvers take the operator as an argument of one `jax.jit`,
so arrays reach XLA as inputs, never as constant-folded closures.

Sharding: `with_vector_sharding(op, sharding)` declares how flat (n,) vectors of `op` are laid
out over a device mesh (e.g. split along n over every device, `distributed.vector_sharding`).
Every product then constrains its input and output to that layout, and the solvers place their
start and probe vectors with `place_vectors` (outside `jit`) and `constrain` (inside), so GSPMD
keeps n-length vectors and Krylov bases (m, n) split along n. Without one, nothing changes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks

Array = jax.Array


class LinearOperatorLike(Protocol):
    """Anything a solver accepts: `size`, `dtype` and `matvec` on flat (size,) vectors."""

    size: int
    dtype: np.dtype

    def matvec(self, v: Array) -> Array: ...


@dataclasses.dataclass(frozen=True)
class Operator:
    """Symmetric operator A on R^size with A v = product(v, *args).

    `product` must be hashable and stable across calls (a module-level function or a frozen
    dataclass) so that jitted solvers hit their compilation cache.
    """

    product: Callable[..., Array]
    args: tuple[Any, ...]
    size: int
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def matvec(self, v: Array) -> Array:
        """(size,) -> (size,), traced into the caller (call it inside `jit`, or use `op @ v`)."""
        _checks.check_operand(v, self.size, (1,))
        return self.product(v, *self.args)

    def matmat(self, vs: Array) -> Array:
        """(size, k) -> (size, k): one vmapped product over the columns."""
        _checks.check_operand(vs, self.size, (2,), "vs")
        return jax.vmap(self.matvec, in_axes=1, out_axes=1)(vs)

    def __matmul__(self, x: Array) -> Array:
        """Jitted product with a vector (size,) or a block of vectors (size, k)."""
        _checks.check_operand(x, self.size, (1, 2), "x")
        return _matmul_jit(self, x)


jax.tree_util.register_dataclass(
    Operator, data_fields=["args"], meta_fields=["product", "size", "dtype"]
)


@jax.jit
def _matmul_jit(op: Operator, x: Array) -> Array:
    return op.matvec(x) if x.ndim == 1 else op.matmat(x)


def _dense_product(v: Array, matrix: Array) -> Array:
    return matrix @ v


def dense_operator(matrix: Array) -> Operator:
    """Wrap a symmetric (n, n) array as an `Operator` (for tests and small problems)."""
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"dense_operator needs a square matrix, got shape {matrix.shape}")
    return Operator(_dense_product, (matrix,), int(matrix.shape[0]), np.dtype(matrix.dtype))


def _difference_product(v: Array, a: Operator, b: Operator) -> Array:
    return a.matvec(v) - b.matvec(v)


def difference(a: Operator, b: Operator) -> Operator:
    """A − B for two in-memory operators on the same space (e.g. Hessian − GGN: the functional
    part of the curvature); one product costs one product of each."""
    for op, name in ((a, "a"), (b, "b")):
        if not isinstance(op, Operator):
            raise ValueError(f"difference needs in-memory Operators, {name} is {type(op).__name__}")
    if a.size != b.size or a.dtype != b.dtype:
        raise ValueError(f"operators differ: size {a.size} vs {b.size}, dtype {a.dtype} vs "
                         f"{b.dtype}")  # fmt: skip
    return Operator(_difference_product, (a, b), a.size, a.dtype)


def _congruence_product(v: Array, op: Operator, d: Array) -> Array:
    return d * op.matvec(d * v)


def diagonal_congruence(op: Operator, d: Array) -> Operator:
    """D A D for an in-memory operator A and D = diag(d), d (n,): e.g. P^{-1/2} H P^{-1/2} with
    d = P^{-1/2}, whose eigenvalues are those of the preconditioned P⁻¹ H."""
    if not isinstance(op, Operator):
        raise ValueError(f"diagonal_congruence needs an in-memory Operator, got "
                         f"{type(op).__name__}")  # fmt: skip
    d = jnp.asarray(d)
    if d.shape != (op.size,):
        raise ValueError(f"d must have shape ({op.size},), got {d.shape}")
    return Operator(_congruence_product, (op, d.astype(op.dtype)), op.size, op.dtype)


def to_dense(op: LinearOperatorLike, block_size: int | None = None) -> Array:
    """Materialise the (size, size) matrix of `op` column by column (small operators only),
    `block_size` products at a time (see `apply_block`)."""
    eye = jnp.eye(op.size, dtype=op.dtype)
    return apply_block(op, eye, block_size)


def is_traceable(op: LinearOperatorLike) -> bool:
    """True for pytree operators whose products can run inside one `jit`."""
    return isinstance(op, Operator)


def apply_block(op: LinearOperatorLike, vs: Array, block_size: int | None = None) -> Array:
    """A @ vs for (size, p) vs, `block_size` columns at a time (all at once by default)."""
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    if is_traceable(op):
        return _apply_block_traced(op, vs, block_size)
    return jnp.stack([op.matvec(v) for v in vs.T], axis=1)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _apply_block_traced(op: Operator, vs: Array, block_size: int | None) -> Array:
    vs = constrain(op, vs)
    return constrain(op, jax.lax.map(op.matvec, vs.T, batch_size=block_size or vs.shape[1]).T)


@dataclasses.dataclass(frozen=True)
class ShardedProduct:
    """`product` with its vector input and output constrained to `sharding` (a NamedSharding of
    a flat (n,) vector); hashable, so jitted solvers still hit their compilation cache."""

    product: Callable[..., Array]
    sharding: jax.sharding.NamedSharding

    def __call__(self, v: Array, *args: Any) -> Array:
        v = _constrain(self.sharding, v)
        return _constrain(self.sharding, self.product(v, *args))


def with_vector_sharding(op: Operator, sharding: jax.sharding.NamedSharding | None) -> Operator:
    """`op` whose flat vectors are laid out as `sharding` (a NamedSharding whose spec has one
    entry, the split of n); None removes a declared layout. The matrix is unchanged."""
    if not is_traceable(op):
        raise ValueError("with_vector_sharding needs an in-memory Operator (not a streaming one)")
    product = op.product.product if isinstance(op.product, ShardedProduct) else op.product
    if sharding is None:
        return dataclasses.replace(op, product=product)
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.spec) != 1:
        raise ValueError(f"need a NamedSharding of a flat vector, e.g. P('fsdp'), got {sharding}")
    return dataclasses.replace(op, product=ShardedProduct(product, sharding))


def vector_sharding(op: LinearOperatorLike) -> jax.sharding.NamedSharding | None:
    """The declared layout of `op`'s flat vectors (see `with_vector_sharding`), or None."""
    product = getattr(op, "product", None)
    return product.sharding if isinstance(product, ShardedProduct) else None


def _block_sharding(sharding: jax.sharding.NamedSharding, ndim: int, axis: int = 0):
    """The layout of an ndim array whose `axis` has length n: split as in `sharding`, the
    other axes whole."""
    entries = [None] * ndim
    entries[axis] = sharding.spec[0]
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*entries))


def _constrain(sharding, x: Array, axis: int = 0) -> Array:
    if sharding is None or x.shape[axis] % num_shards(sharding):
        # uneven n: XLA would split it with padding inside the jit, but a solver's (n, k)
        # outputs then come back with shardings JAX cannot represent (IndivisibleError)
        return x
    return jax.lax.with_sharding_constraint(x, _block_sharding(sharding, x.ndim, axis % x.ndim))


def constrain(op: LinearOperatorLike, x: Array, axis: int = 0) -> Array:
    """Inside `jit`: x, whose `axis` has length n ((n, ...) by default, -1 for rows of
    vectors (..., n)), constrained to `op`'s vector layout (n split, other axes whole); x
    unchanged when `op` declares none or n does not split evenly."""
    return _constrain(vector_sharding(op), x, axis)


def place_vectors(op: LinearOperatorLike, x: Array) -> Array:
    """Outside `jit`: x (n, ...) put on `op`'s vector layout when it declares one and n splits
    evenly (arrays between jitted calls cannot be split unevenly); else x unchanged."""
    sharding = vector_sharding(op)
    if sharding is None or isinstance(x, jax.core.Tracer):
        return x
    if x.shape[0] % num_shards(sharding):
        return x
    return jax.device_put(x, _block_sharding(sharding, x.ndim))


def num_shards(sharding: jax.sharding.NamedSharding) -> int:
    """Number of pieces n is split into by a flat-vector layout."""
    entry = sharding.spec[0]
    axes = () if entry is None else tuple(entry) if isinstance(entry, tuple | list) else (entry,)
    return int(np.prod([sharding.mesh.shape[a] for a in axes]))


class OperatorCheck(NamedTuple):
    """Relative errors measured by `check_deterministic` (floats, in float64).

    repeat_error: max_j ‖A v_j - A' v_j‖ / max_j ‖A v_j‖ between two separately traced
      applications A, A' of the operator to the same vectors v_j.
    symmetry_error: max_ij |v_iᵀ A v_j - v_jᵀ A v_i| / (max_i ‖v_i‖ · max_j ‖A v_j‖).
    """

    repeat_error: float
    symmetry_error: float


def check_deterministic(
    op: LinearOperatorLike, *, key: Array, num_vectors: int = 2, rtol: float | None = None
) -> OperatorCheck:
    """Opt-in check that `op` is a fixed symmetric matrix, as every solver assumes.

    Applies op to num_vectors Gaussian vectors twice, each time from a fresh trace (so Python
    code in the product, e.g. a counter or a dropout key drawn on the host, runs again; a
    streaming operator re-reads its batches), and checks the symmetry of Vᵀ A V from the same
    products (needs num_vectors >= 2). Costs 2 * num_vectors products and two compilations.

    Raises ValueError if either error of the returned `OperatorCheck` exceeds rtol (default
    10 sqrt(eps) of op.dtype: 3.5e-3 in float32, 1.5e-7 in float64, well above round-off).
    """
    _checks.check_key(key)
    _checks.check_positive(num_vectors, "num_vectors")
    rtol = 10 * float(np.sqrt(np.finfo(op.dtype).eps)) if rtol is None else rtol
    vs = jax.random.normal(key, (op.size, num_vectors), op.dtype)
    first, second = (np.asarray(_apply_retraced(op, vs), np.float64) for _ in range(2))
    v64 = np.asarray(vs, np.float64)
    scale = max(float(np.linalg.norm(first, axis=0).max()), np.finfo(np.float64).tiny)
    repeat = float(np.linalg.norm(first - second, axis=0).max()) / scale
    gram = v64.T @ first
    symmetry = float(np.abs(gram - gram.T).max()) / (np.linalg.norm(v64, axis=0).max() * scale)
    if repeat > rtol:
        raise ValueError(
            f"operator is not deterministic: two products with the same vectors differ by "
            f"{repeat:.2e} (relative, rtol={rtol:.1e}); does its product read randomness or "
            "Python state (a dropout key, a counter, a shuffling data loader)?"
        )
    if symmetry > rtol:
        raise ValueError(
            f"operator is not symmetric: |uᵀAv - vᵀAu| is {symmetry:.2e} of ‖u‖‖Av‖ "
            f"(rtol={rtol:.1e}); the solvers assume a symmetric matrix"
        )
    return OperatorCheck(repeat, symmetry)


def _apply_retraced(op: LinearOperatorLike, vs: Array) -> Array:
    """A @ vs (size, p) from a fresh trace: a new jitted function, never a cached one."""
    if is_traceable(op):
        return jax.jit(lambda o, x: o.matmat(x))(op, vs)
    return apply_block(op, vs)
