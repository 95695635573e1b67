"""Thick-restart Lanczos (Wu and Simon, 2000): many eigenpairs with a basis of fixed size m.

A cycle extends the kept basis to m vectors by Lanczos steps with full reorthogonalisation,
solves the projected m×m problem in float64, and restarts from the `keep` best Ritz vectors
plus the residual direction. After a restart the projected matrix is arrowhead: the kept Ritz
values on the diagonal, coupled to the next Lanczos vector by s_i = β_m y_{m,i}. Memory stays
an (m, n) basis however many cycles run; every cycle spends m - keep products.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hessjax.linalg.lanczos import EigshResult, _orthogonalise

Array = jax.Array


class _Cycle(NamedTuple):
    """basis (m, n) rows; t (m, m) projected matrix; r (n,) unit residual direction after the
    last row; beta: coupling of r; start: rows kept at the last restart; matvecs; cycles;
    done; key."""

    basis: Array
    t: Array
    r: Array
    beta: Array
    start: Array
    matvecs: Array
    cycles: Array
    done: Array
    key: Array


def _score(theta: Array, which: str) -> Array:
    return {"LA": theta, "SA": -theta, "LM": jnp.abs(theta)}[which]


def _extend(op, c: _Cycle) -> _Cycle:
    """Lanczos steps from row `start` to m-1 (row `start` already holds the next vector)."""
    m = c.basis.shape[0]
    eps = jnp.finfo(c.basis.dtype).eps

    def step(j, c):
        q = c.basis[j]
        w = op.matvec(q)
        a = jnp.vdot(q, w)
        w = _orthogonalise(c.basis, w, j + 1)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.max(jnp.abs(c.t)), jnp.abs(a))
        breakdown = b <= 100 * eps * jnp.maximum(scale, jnp.finfo(w.dtype).tiny)

        def fresh(_):  # invariant subspace: continue with a random orthogonal vector, β = 0
            v = jax.random.normal(jax.random.fold_in(c.key, c.matvecs + j), w.shape, w.dtype)
            v = _orthogonalise(c.basis, v, j + 1)
            return v / jnp.linalg.norm(v)

        nxt = lax.cond(breakdown, fresh, lambda _: w / jnp.where(breakdown, 1, b), None)
        b = jnp.where(breakdown, 0, b)
        t = c.t.at[j, j].set(a)
        last = j == m - 1
        t = jnp.where(last, t, t.at[j, j + 1].set(b).at[j + 1, j].set(b))
        basis = c.basis.at[j + 1].set(nxt, mode="drop")
        return c._replace(
            basis=basis,
            t=t,
            r=jnp.where(last, nxt, c.r),
            beta=jnp.where(last, b, c.beta),
        )

    c = lax.fori_loop(c.start, m, step, c)
    return c._replace(matvecs=c.matvecs + m - c.start, cycles=c.cycles + 1)


def _ritz(c: _Cycle, which: str):
    """All m Ritz values (float64) sorted by `which` (best first), their vectors of T and
    residual estimates |β y_m|."""
    with jax.enable_x64(True):
        theta, y = jnp.linalg.eigh(c.t.astype(jnp.float64))
        order = jnp.argsort(-_score(theta, which))
        theta, y = theta[order], y[:, order]
        residuals = jnp.abs(c.beta.astype(jnp.float64) * y[-1])
    return theta, y, residuals


@functools.partial(
    jax.jit, static_argnames=("k", "which", "num_steps", "keep", "max_restarts", "tol")
)
def eigsh_restarted_traced(
    op, v0, key, k, which, num_steps, keep, max_restarts, tol
) -> EigshResult:
    m = num_steps
    dtype = v0.dtype
    basis = jnp.zeros((m, v0.shape[0]), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zero = jnp.zeros((), dtype)
    c = _Cycle(basis, jnp.zeros((m, m), dtype), jnp.zeros_like(v0), zero, jnp.int32(0),
               jnp.int32(0), jnp.int32(0), jnp.bool_(False), key)  # fmt: skip

    def converged(c):
        theta, _, residuals = _ritz(c, which)
        scale = jnp.max(jnp.abs(theta[:k]))
        return jnp.all(residuals[:k] <= tol * scale)

    def restart(c):
        theta, y, _ = _ritz(c, which)
        y_keep = y[:, :keep].astype(dtype)
        kept = y_keep.T @ c.basis  # (keep, n) Ritz vectors
        s = (c.beta.astype(jnp.float64) * y[-1, :keep]).astype(dtype)
        t = jnp.zeros((m, m), dtype)
        t = t.at[jnp.arange(keep), jnp.arange(keep)].set(theta[:keep].astype(dtype))
        t = t.at[keep, :keep].set(s).at[:keep, keep].set(s)
        basis = jnp.zeros_like(c.basis).at[:keep].set(kept).at[keep].set(c.r)
        return c._replace(basis=basis, t=t, start=jnp.int32(keep))

    def body(c):
        c = _extend(op, c)
        done = converged(c) | (c.cycles > max_restarts)
        return lax.cond(done, lambda c: c, restart, c)._replace(done=done)

    c = lax.while_loop(lambda c: ~c.done, body, c)
    theta, y, residuals = _ritz(c, which)
    with jax.enable_x64(True):
        scale = jnp.max(jnp.abs(theta[:k]))
        ok = residuals[:k] <= tol * scale
    vectors = c.basis.T @ y[:, :k].astype(dtype)
    return EigshResult(theta[:k].astype(dtype), vectors, residuals[:k].astype(dtype), ok, c.matvecs)
