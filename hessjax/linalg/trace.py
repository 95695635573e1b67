"""Stochastic trace estimators: Hutchinson and Hutch++ (Meyer, Musco, Musco, Woodruff 2021)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax.linalg.operator import LinearOperatorLike, apply_block, place_vectors

Array = jax.Array
Probe = Literal["rademacher", "gaussian"]


class TraceEstimate(NamedTuple):
    """estimate: () trace estimate; stderr: () its standard error from the probe sample
    (of the stochastic part, for Hutch++); num_matvecs: int, products spent."""

    estimate: Array
    stderr: Array
    num_matvecs: int


def probes(key: Array, n: int, num: int, dtype, kind: Probe = "rademacher") -> Array:
    """(n, num) random probe vectors with E[v vᵀ] = I."""
    if kind == "rademacher":
        return jax.random.rademacher(key, (n, num), dtype)
    if kind == "gaussian":
        return jax.random.normal(key, (n, num), dtype)
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")


def _mean_and_stderr(samples: Array) -> tuple[Array, Array]:
    num = samples.shape[0]
    stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num) if num > 1 else jnp.asarray(jnp.nan)
    return jnp.mean(samples), stderr


@_checks.keyword_only("num_probes")
def hutchinson(
    op: LinearOperatorLike,
    *,
    num_probes: int,
    key: Array,
    probe: Probe = "rademacher",
    block_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator tr(A) ≈ mean_i v_iᵀ A v_i over `num_probes` probes.

    Products are taken `block_size` probes at a time (all at once by default).
    """
    _checks.check_dtype(op.dtype)
    _checks.check_positive(num_probes, "num_probes")
    _checks.check_block_size(block_size)
    _checks.check_key(key)
    vs = place_vectors(op, probes(key, op.size, num_probes, op.dtype, probe))
    samples = jnp.sum(vs * apply_block(op, vs, block_size), axis=0)
    return TraceEstimate(*_mean_and_stderr(samples), int(num_probes))


def hutchpp(
    op: LinearOperatorLike, num_matvecs: int, *, key: Array, block_size: int | None = None
) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    Uses num_matvecs (a multiple of 3, >= 3) products: num_matvecs/3 to sketch the range,
    num_matvecs/3 for the trace on it, num_matvecs/3 Rademacher probes for the remainder.
    """
    _checks.check_dtype(op.dtype)
    _checks.check_block_size(block_size)
    if not isinstance(num_matvecs, int | np.integer) or num_matvecs < 3 or num_matvecs % 3:
        raise ValueError(f"num_matvecs must be a positive multiple of 3, got {num_matvecs!r}")
    _checks.check_key(key)
    m = int(num_matvecs) // 3
    if m >= op.size:
        raise ValueError(f"num_matvecs/3 = {m} must be smaller than the operator size {op.size}")
    k_sketch, k_probe = jax.random.split(key)
    sketch = place_vectors(op, probes(k_sketch, op.size, m, op.dtype))
    q = place_vectors(op, jnp.linalg.qr(apply_block(op, sketch, block_size))[0])
    top = jnp.trace(q.T @ apply_block(op, q, block_size))
    g = place_vectors(op, probes(k_probe, op.size, m, op.dtype))
    g = g - q @ (q.T @ g)
    rest, stderr = _mean_and_stderr(jnp.sum(g * apply_block(op, g, block_size), axis=0))
    return TraceEstimate(top + rest, stderr, int(num_matvecs))
