"""Lanczos tridiagonalisation with full reorthogonalisation and a partial eigensolver.

Traceable operators (`Operator` pytrees) run the whole iteration inside one `jax.jit` as a
`lax.fori_loop` / `lax.while_loop`; other operators (e.g. a Hessian streamed over a Python
iterable of batches) run the same jitted step from a host loop, one product per step.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax.linalg import _checks
from hessjax.linalg.operator import LinearOperatorLike, is_traceable

Array = jax.Array
Which = Literal["LA", "SA", "LM", "BE"]
_WHICH = ("LA", "SA", "LM", "BE")


class LanczosState(NamedTuple):
    """Lanczos decomposition A Q_j = Q_j T_j + beta_{j-1} q_j e_jᵀ after j steps.

    basis: (m, n) rows q_0 .. q_{m-1} (rows >= j+1 are zero); alpha: (m,) diagonal of T;
    beta: (m,) off-diagonal, beta[i] couples q_i and q_{i+1} (0 where an invariant subspace was
    hit and the iteration restarted); q: (n,) the vector to multiply next; j: steps done;
    norm: running estimate of ‖A‖; key: PRNG key for restart vectors.
    """

    basis: Array
    alpha: Array
    beta: Array
    q: Array
    j: Array
    norm: Array
    key: Array


class EigshResult(NamedTuple):
    """k eigenpairs of a symmetric operator.

    eigenvalues: (k,), sorted descending for "LA" and "BE", ascending for "SA", by |λ| descending
    for "LM". eigenvectors: (n, k) orthonormal columns, column i belongs to eigenvalues[i].
    residuals: (k,) estimates of ‖A x_i - λ_i x_i‖ (Ritz estimates |β_j s_ji| for Lanczos).
    converged: (k,) bool, residual <= tol · max|λ|. num_matvecs: () products spent.
    """

    eigenvalues: Array
    eigenvectors: Array
    residuals: Array
    converged: Array
    num_matvecs: Array


_ORTHO_BLOCK = 8


def _init(v0: Array, num_steps: int, key: Array) -> LanczosState:
    q = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((num_steps, v0.shape[0]), v0.dtype).at[0].set(q)
    zeros = jnp.zeros((num_steps,), v0.dtype)
    return LanczosState(basis, zeros, zeros, q, jnp.int32(0), jnp.zeros((), v0.dtype), key)


def _orthogonalise(basis: Array, w: Array, num_rows: Array | None = None) -> Array:
    """Gram-Schmidt of w against the rows of `basis`: twice ("twice is enough").

    With `num_rows` (may be traced), only rows 0 .. num_rows-1 are read, in blocks of
    `_ORTHO_BLOCK` rows (block modified Gram-Schmidt), and the second pass runs only when the
    first one removed most of w (‖w'‖ < ‖w‖/√2, the Daniel-Gragg-Kaufman-Stewart test): rows
    after num_rows are still zero in a Lanczos basis and this loop is memory-bound, so its cost
    follows the steps done, not m.
    """
    if num_rows is None:
        w = w - basis.T @ (basis @ w)
        return w - basis.T @ (basis @ w)
    m = basis.shape[0]
    size = min(_ORTHO_BLOCK, m)
    num_blocks = (num_rows + size - 1) // size

    def block(i, w):
        start = jnp.minimum(i * size, m - size)  # the last block may overlap the previous one
        rows = lax.dynamic_slice_in_dim(basis, start, size, 0)
        idx = start + jnp.arange(size)
        h = jnp.where((idx >= i * size) & (idx < num_rows), rows @ w, 0)
        return w - rows.T @ h

    def one_pass(w):
        return lax.fori_loop(0, num_blocks, block, w)

    before = jnp.linalg.norm(w)
    w = one_pass(w)
    return lax.cond(jnp.linalg.norm(w) < before / np.sqrt(2), one_pass, lambda w: w, w)


def _step(state: LanczosState, w: Array) -> LanczosState:
    """One Lanczos step given w = A q_j."""
    basis, alpha, beta, q, j, norm, key = state
    a = jnp.vdot(q, w)
    w = _orthogonalise(basis, w, j + 1)
    b = jnp.linalg.norm(w)
    norm = jnp.maximum(norm, jnp.sqrt(a * a + b * b))
    eps = jnp.finfo(w.dtype).eps
    breakdown = b <= 100 * eps * jnp.maximum(norm, jnp.finfo(w.dtype).tiny)

    # Invariant subspace: continue from a random vector orthogonal to the basis, with beta = 0,
    # so T splits into blocks whose eigenvalues are all eigenvalues of A. Under `lax.cond` the
    # restart vector (n normals and two more orthogonalisations) is only made when needed.
    def restart(_):
        r = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
        r = _orthogonalise(basis, r, j + 1)
        return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(w.dtype).tiny)

    q_next = lax.cond(breakdown, restart, lambda _: w / jnp.where(breakdown, 1, b), None)
    return LanczosState(
        basis=basis.at[j + 1].set(q_next, mode="drop"),
        alpha=alpha.at[j].set(a),
        beta=beta.at[j].set(jnp.where(breakdown, 0, b)),
        q=q_next,
        j=j + 1,
        norm=norm,
        key=key,
    )


def _run(op: LinearOperatorLike, state: LanczosState, num_steps) -> LanczosState:
    """`num_steps` Lanczos steps inside a trace (may be a traced integer)."""
    return lax.fori_loop(0, num_steps, lambda _, s: _step(s, op.matvec(s.q)), state)


_step_jit = jax.jit(_step)


def _run_host(op: LinearOperatorLike, state: LanczosState, num_steps: int) -> LanczosState:
    for _ in range(num_steps):
        state = _step_jit(state, op.matvec(state.q))
    return state


def _padded_tridiagonal(alpha: Array, beta: Array, j: Array) -> Array:
    """Dense (m, m) T whose leading j×j block is T_j; the rest is decoupled and diagonal with a
    value above ‖T_j‖, so ascending eigenvalues 0..j-1 are exactly those of T_j."""
    m = alpha.shape[0]
    idx = jnp.arange(m)
    active = idx < j
    bound = jnp.max(jnp.where(active, jnp.abs(alpha), 0)) + 2 * jnp.max(
        jnp.where(active, jnp.abs(beta), 0)
    )
    diag = jnp.where(active, alpha, 2 * bound + 1)
    off = jnp.where(idx[:-1] < j - 1, beta[:-1], 0)
    return jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _select(theta: Array, j: Array, k: int, which: str) -> Array:
    """Indices (k,) of the wanted Ritz values among the first j (ascending) entries of theta."""
    idx = jnp.arange(theta.shape[0])
    if which == "LA":
        score = theta
    elif which == "SA":
        score = -theta
    elif which == "LM":
        score = jnp.abs(theta)
    else:  # both ends, alternating top/bottom: ceil(k/2) largest and floor(k/2) smallest
        score = -jnp.minimum(2 * (j - 1 - idx), 2 * idx + 1).astype(theta.dtype)
    score = jnp.where(idx < j, score, -jnp.inf)
    return lax.top_k(score, k)[1]


def _ritz(state: LanczosState, k: int, which: str):
    """Wanted Ritz values (k,), their eigenvectors of T (m, k), residual estimates (k,) and
    max |wanted Ritz value|, in the dtype of alpha."""
    theta, s = jnp.linalg.eigh(_padded_tridiagonal(state.alpha, state.beta, state.j))
    sel = _select(theta, state.j, k, which)
    last = state.j - 1
    residuals = jnp.abs(state.beta[last] * s[last, sel])
    s = jnp.where((jnp.arange(s.shape[0]) < state.j)[:, None], s[:, sel], 0)
    return theta[sel], s, residuals, jnp.max(jnp.abs(theta[sel]))


def _as_float64(state: LanczosState) -> LanczosState:
    return state._replace(
        alpha=state.alpha.astype(jnp.float64), beta=state.beta.astype(jnp.float64)
    )


def _converged(state: LanczosState, k: int, which: str, tol: float) -> Array:
    """Wanted residuals <= tol · scale. Never on the step of a first breakdown: the exhausted
    Krylov space has zero residuals but may miss wanted eigenvalues, so the random restart
    vector gets one product to show a better Ritz value."""
    _, _, residuals, scale = _ritz(state, k, which)
    j = state.j
    broke_now = state.beta[jnp.maximum(j - 1, 0)] == 0
    broke_before = (j >= 2) & (state.beta[jnp.maximum(j - 2, 0)] == 0)
    return (j >= k) & ~(broke_now & ~broke_before) & jnp.all(residuals <= tol * scale)


def _finalize(state: LanczosState, k: int, which: str, tol: float) -> EigshResult:
    dtype = state.basis.dtype
    with jax.enable_x64(True):  # the small tridiagonal eigenproblem in float64
        theta, s, residuals, scale = _ritz(_as_float64(state), k, which)
        if which == "BE":
            order = jnp.argsort(-theta)
            theta, s, residuals = theta[order], s[:, order], residuals[order]
        converged = residuals <= tol * scale
        theta, s, residuals = theta.astype(dtype), s.astype(dtype), residuals.astype(dtype)
    return EigshResult(
        eigenvalues=theta,
        eigenvectors=state.basis.T @ s,
        residuals=residuals,
        converged=converged,
        num_matvecs=state.j,
    )


@functools.partial(jax.jit, static_argnames=("k", "which", "num_steps", "tol", "check_every"))
def _eigsh_traced(op, v0, key, k, which, num_steps, tol, check_every) -> EigshResult:
    state = _init(v0, num_steps, key)
    if tol is None:
        return _finalize(_run(op, state, num_steps), k, which, _default_tol(v0.dtype))

    def cond(carry):
        state, done = carry
        return (state.j < num_steps) & ~done

    def body(carry):
        state, _ = carry
        state = _run(op, state, jnp.minimum(check_every, num_steps - state.j))
        return state, _converged(state, k, which, tol)

    state, _ = lax.while_loop(cond, body, (state, jnp.bool_(False)))
    return _finalize(state, k, which, tol)


def _eigsh_host(op, v0, key, k, which, num_steps, tol, check_every) -> EigshResult:
    state = _init(v0, num_steps, key)
    converged = jax.jit(_converged, static_argnums=(1, 2, 3))
    while int(state.j) < num_steps:
        state = _run_host(op, state, min(check_every, num_steps - int(state.j)))
        if tol is not None and bool(converged(state, k, which, tol)):
            break
    finalize = jax.jit(_finalize, static_argnums=(1, 2, 3))
    return finalize(state, k, which, _default_tol(v0.dtype) if tol is None else tol)


def _default_tol(dtype) -> float:
    return float(np.sqrt(np.finfo(dtype).eps))


def default_num_steps(k: int, n: int) -> int:
    """Default Krylov size: room for k wanted pairs plus a margin that separates them."""
    return min(n, max(2 * k + 20, k + 40))


def eigsh(
    op: LinearOperatorLike,
    k: int,
    *,
    key: Array,
    which: Which = "LA",
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    check_every: int | None = None,
    v0: Array | None = None,
    max_restarts: int = 0,
) -> EigshResult:
    """k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
      op: operator on flat (n,) vectors (`Operator` for a fully jitted solve).
      k: number of eigenpairs, 1 <= k < n.
      key: PRNG key for the start vector (unless `v0`) and for restarts after breakdown.
      which: "LA" largest, "SA" smallest, "LM" largest magnitude, "BE" both ends
        (ceil(k/2) largest and floor(k/2) smallest).
      num_steps: maximum Krylov dimension m (k <= m <= n); default `default_num_steps(k, n)`.
        Memory is an (m, n) basis.
      tol: stop as soon as every wanted Ritz residual estimate is <= tol · max|λ_wanted|;
        tol=None runs all m steps. The eigenvalue error is then at most min(r, r²/gap) and
        the eigenvector angle at most r/gap, with r the residual and gap the distance to the
        rest of the spectrum. 1e-4 sits above float32 round-off.
      check_every: steps between convergence checks. A check is an m×m eigh, O(m³):
        negligible next to a product for m up to ~100, not for m in the thousands. Default
        max(1, m // 40): every step for the default m of k < 30, at most ~40 checks, at most
        m/40 products past convergence.
      v0: optional (n,) start vector.
      max_restarts: 0 (default) runs one Krylov space of up to num_steps vectors. > 0 runs
        thick-restart Lanczos (`restart.py`) with a basis of exactly num_steps vectors: after
        each cycle it keeps the k + (num_steps - k) // 2 best Ritz vectors and extends again,
        at most max_restarts times, until the k wanted pairs meet `tol` (required). Use it
        for many eigenpairs (k in the hundreds) with bounded memory: num_steps ~ 1.5-2 k
        instead of the several k a single Krylov space needs. Not for "BE" or streaming ops.

    The tridiagonal eigenproblem of the final answer is solved in float64.
    """
    n = op.size
    _checks.check_k(k, n)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    num_steps = default_num_steps(k, n) if num_steps is None else num_steps
    _checks.check_steps(num_steps, k, n)
    check_every = max(1, num_steps // 40) if check_every is None else check_every
    _checks.check_positive(check_every, "check_every")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive or None, got {tol!r}")
    _checks.check_key(key)
    key, start_key = jax.random.split(key)
    if v0 is None:
        v0 = jax.random.normal(start_key, (n,), op.dtype)
    _checks.check_vector(v0, n, op.dtype)
    if max_restarts:
        _checks.check_positive(max_restarts, "max_restarts")
        if which == "BE" or tol is None or not is_traceable(op):
            raise ValueError(
                "max_restarts needs which in LA/SA/LM, a tol and an in-memory Operator"
            )
        keep = k + (num_steps - k) // 2
        if keep >= num_steps:
            raise ValueError(f"num_steps ({num_steps}) must exceed k ({k}) for restarts")
        from hessjax.linalg.restart import eigsh_restarted_traced

        return eigsh_restarted_traced(
            op, v0, key, k, which, int(num_steps), keep, int(max_restarts), tol
        )
    solver = _eigsh_traced if is_traceable(op) else _eigsh_host
    return solver(op, v0, key, k, which, int(num_steps), tol, int(check_every))


class Tridiagonal(NamedTuple):
    """Lanczos output: basis (m, n) orthonormal rows, alpha (m,), beta (m,) (see LanczosState)."""

    basis: Array
    alpha: Array
    beta: Array


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _tridiag_traced(op, v0, key, num_steps):
    state = _run(op, _init(v0, num_steps, key), num_steps)
    return Tridiagonal(state.basis, state.alpha, state.beta)


def lanczos_tridiag(
    op: LinearOperatorLike, v0: Array, num_steps: int, *, key: Array
) -> Tridiagonal:
    """Run exactly `num_steps` Lanczos steps from v0 (n,) and return the decomposition."""
    n = op.size
    _checks.check_steps(num_steps, 1, n)
    _checks.check_key(key)
    _checks.check_vector(v0, n, op.dtype)
    if is_traceable(op):
        return _tridiag_traced(op, v0, key, int(num_steps))
    state = _run_host(op, _init(v0, num_steps, key), num_steps)
    return Tridiagonal(state.basis, state.alpha, state.beta)


def tridiag_eigh(alpha: Array, beta: Array) -> tuple[Array, Array]:
    """Eigenvalues (m,) ascending and eigenvectors (m, m) of the tridiagonal T, in float64.

    beta[:-1] are the off-diagonal entries (beta[-1], the residual norm, is ignored).
    """
    with jax.enable_x64(True):
        alpha, beta = alpha.astype(jnp.float64), beta.astype(jnp.float64)
        return jnp.linalg.eigh(_padded_tridiagonal(alpha, beta, alpha.shape[-1]))
