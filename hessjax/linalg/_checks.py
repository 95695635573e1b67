"""Input validation shared by the solvers: clear `ValueError`s instead of NaNs."""

from __future__ import annotations

import jax
import numpy as np


def check_k(k: int, n: int, name: str = "k") -> None:
    if not isinstance(k, int | np.integer) or k < 1 or k >= n:
        raise ValueError(f"{name} must be an integer with 1 <= {name} < n = {n}, got {k!r}")


def check_steps(num_steps: int, k: int, n: int) -> None:
    if not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps must be an integer, got {num_steps!r}")
    if num_steps < k:
        raise ValueError(f"num_steps ({num_steps}) must be >= k ({k})")
    if num_steps > n:
        raise ValueError(f"num_steps ({num_steps}) cannot exceed the operator size n = {n}")


def check_positive(value: int, name: str) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_key(key: jax.Array) -> None:
    if not isinstance(key, jax.Array) or not (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.shape == (2,) and key.dtype == np.uint32)  # legacy raw uint32 key
    ):
        raise ValueError(f"key must be a jax PRNG key (jax.random.key(seed)), got {key!r}")


def check_vector(v: jax.Array, n: int, dtype: np.dtype, name: str = "v0") -> None:
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name} has dtype {v.dtype}, the operator works in {dtype}")


def check_operand(x: jax.Array, n: int, ndims: tuple[int, ...] = (1, 2), name: str = "v") -> None:
    """x must be a vector (n,) (ndim 1) or a block of vectors (n, k) (ndim 2), as `ndims`
    allows, for an operator of size n. Shapes are static, so this is free under `jit`."""
    shape = tuple(np.shape(x))
    if len(shape) in ndims and shape[0] == n:
        return
    want = " or ".join({1: f"({n},)", 2: f"({n}, k)"}[d] for d in ndims)
    got = f"size {shape[0]}" if shape else "a scalar"
    raise ValueError(
        f"{name} must have shape {want} for an operator of size {n}; got shape {shape} ({got})"
    )
