"""Power iteration with deflation: the PyHessian baseline for top eigenpairs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hessjax import _checks
from hessjax.linalg.lanczos import EigshResult
from hessjax.linalg.operator import Operator

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("k", "num_steps", "tol"))
def _power_traced(op: Operator, key: Array, k: int, num_steps: int, tol: float) -> EigshResult:
    n, dtype = op.size, op.dtype
    found = jnp.zeros((k, n), dtype)  # rows: eigenvectors found so far (zeros elsewhere)

    def deflate(v, found):
        v = v - found.T @ (found @ v)
        return v / jnp.linalg.norm(v)

    def one_pair(i, carry):
        found, values, residuals, iters = carry
        v = deflate(jax.random.normal(jax.random.fold_in(key, i), (n,), dtype), found)

        def cond(c):
            _, lam, lam_prev, it, _ = c
            change = jnp.abs(lam - lam_prev) / (jnp.abs(lam_prev) + 1e-6)
            stop = (change < tol) | ~jnp.isfinite(lam)
            return (it < num_steps) & ((it < 2) | ~stop)

        def body(c):
            v, lam, _, it, _ = c
            v = deflate(v, found)
            w = op.matvec(v)
            new_lam = jnp.vdot(v, w)
            res = jnp.linalg.norm(w - new_lam * v)
            norm = jnp.linalg.norm(w)
            # A v = 0: v is an eigenvector with λ = 0; keep it (w / 0 would be NaN)
            return (
                jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), v),
                new_lam,
                lam,
                it + 1,
                res,
            )

        inf = jnp.asarray(jnp.inf, dtype)
        v, lam, _, it, res = lax.while_loop(cond, body, (v, inf, inf, 0, inf))
        v = deflate(v, found)
        return (
            found.at[i].set(v),
            values.at[i].set(lam),
            residuals.at[i].set(res),
            iters.at[i].set(it),
        )

    init = (found, jnp.zeros((k,), dtype), jnp.zeros((k,), dtype), jnp.zeros((k,), jnp.int32))
    found, values, residuals, iters = lax.fori_loop(0, k, one_pair, init)
    ok = (iters < num_steps) & jnp.isfinite(values)
    return EigshResult(values, found.T, residuals, ok, jnp.sum(iters))


@_checks.renamed(max_iters="num_steps")
def power_iteration(
    op: Operator, k: int, *, key: Array, num_steps: int = 100, tol: float = 1e-3
) -> EigshResult:
    """Top-k eigenpairs by |λ| via power iteration with deflation (as PyHessian does).

    Each pair iterates v <- A v / ‖A v‖ (v kept orthogonal to the pairs already found) until the
    Rayleigh quotient changes by less than `tol` relative, or `num_steps` products. Eigenvalues
    (k,) come in the order found (roughly descending |λ|); residuals are ‖A v - λ v‖ from the
    last iteration, `converged` is False for pairs that hit `num_steps`. tol must lie in
    (0, 1). On a zero operator every pair has λ = 0 and residual 0.
    """
    if not isinstance(op, Operator):
        raise TypeError("power_iteration needs a traceable Operator (data as a pytree of arrays)")
    _checks.check_dtype(op.dtype)
    _checks.check_k(k, op.size)
    _checks.check_positive(num_steps, "num_steps")
    _checks.check_tol(tol)
    _checks.check_key(key)
    result = _power_traced(op, key, int(k), int(num_steps), float(tol))
    if _checks.is_concrete(result.eigenvalues) and not bool(
        jnp.all(jnp.isfinite(result.eigenvalues))
    ):
        raise FloatingPointError(
            "power_iteration: a product returned NaN or inf (the loss or its derivatives are "
            "not finite for these parameters and data)"
        )
    return _checks.concrete_matvecs(result)
