"""Symmetric linear operators on flat vectors.

An `Operator` is a pytree: its `args` (parameters, data, a dense matrix) are traced leaves and
its `product` function is static. Solvers take the operator as an argument of one `jax.jit`,
so arrays reach XLA as inputs, never as constant-folded closures.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hessjax.linalg import _checks

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
    if is_traceable(op):
        return _apply_block_traced(op, vs, block_size)
    return jnp.stack([op.matvec(v) for v in vs.T], axis=1)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _apply_block_traced(op: Operator, vs: Array, block_size: int | None) -> Array:
    return jax.lax.map(op.matvec, vs.T, batch_size=block_size or vs.shape[1]).T
