"""Input validation shared by the solvers: clear `ValueError`s instead of NaNs."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
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
    if is_concrete(v):
        if not bool(jnp.all(jnp.isfinite(v))):
            raise ValueError(f"{name} has non-finite entries")
        if not bool(jnp.any(v != 0)):
            raise ValueError(f"{name} is the zero vector")


def is_concrete(x) -> bool:
    """False for values traced by an outer `jit` / `vmap` (no host checks possible)."""
    return not isinstance(x, jax.core.Tracer)


def check_dtype(dtype) -> None:
    """Solver vectors are float32 or float64 (half-precision products: see curvature)."""
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(
            f"operator dtype {np.dtype(dtype)} is not supported: Krylov solvers need float32 or "
            "float64 vectors (curvature operators of bfloat16/float16 params already use float32 "
            "vectors; wrap other half-precision products accordingly)"
        )


def check_tol(tol, name: str = "tol", allow_none: bool = False) -> None:
    """tol must lie in (0, 1): a relative threshold; 0, NaN or >= 1 would stop at once."""
    if tol is None and allow_none:
        return
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating) or not 0 < tol < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {tol!r}")


def check_block_size(block_size) -> None:
    """None (all columns at once) or a positive integer."""
    if block_size is not None:
        check_positive(block_size, "block_size")


def raise_if_nonfinite(bad, solver: str) -> None:
    """Raise when the solver saw a non-finite product (`bad` >= 0 is its index)."""
    if is_concrete(bad) and int(bad) >= 0:
        raise FloatingPointError(
            f"{solver}: operator product {int(bad) + 1} returned NaN or inf. The loss or its "
            "derivatives are not finite for these parameters and data (a NaN or inf in some "
            "microbatch, an overflow, a log of 0?); check them with a plain jax.grad first"
        )


def concrete_matvecs(result):
    """`result` with num_matvecs as a Python int (unchanged under an outer trace)."""
    n = result.num_matvecs
    return result._replace(num_matvecs=int(n)) if is_concrete(n) else result


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


def renamed(**old_to_new: str) -> Callable[[Callable], Callable]:
    """Decorator for a public function whose keyword arguments were renamed: a call with an
    old name raises a TypeError naming the new one (kept for one release after a rename)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    raise TypeError(f"{fn.__name__}(): argument {old!r} was renamed {new!r}")
            return fn(*args, **kwargs)

        return call

    return wrap


def keyword_only(*names: str) -> Callable[[Callable], Callable]:
    """Decorator for a public function whose arguments `names` (after the first) became
    keyword-only: a call passing them by position raises a TypeError that names them."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if len(args) > 1:
                given = ", ".join(f"{n}={a!r}" for n, a in zip(names, args[1:], strict=False))
                raise TypeError(f"{fn.__name__}(): pass {', '.join(names)} by keyword ({given})")
            return fn(*args, **kwargs)

        return call

    return wrap
