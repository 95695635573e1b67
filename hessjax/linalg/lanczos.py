"""Partial eigendecomposition by Lanczos with full reorthogonalisation, and thick restart.

Both run on the one kernel of `krylov.py` (b = 1). Traceable operators (`Operator` pytrees)
run the whole iteration inside one `jax.jit` as a `lax.fori_loop` / `lax.while_loop`; other
operators (e.g. a Hessian streamed over a Python iterable of batches) run the same jitted step
from a host loop, one product per step.

Thick restart (Wu and Simon 2000): a cycle extends the kept basis to m vectors, solves the
projected m×m problem in float64 and restarts from the `keep` best Ritz vectors plus the
residual direction (the projected matrix is then arrowhead). Memory stays an (m, n) basis
however many cycles run; every cycle spends m - keep products.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hessjax import _checks
from hessjax.linalg import krylov
from hessjax.linalg.operator import LinearOperatorLike, constrain, is_traceable, place_vectors

Array = jax.Array
Which = Literal["LA", "SA", "LM", "BE"]


class EigshResult(NamedTuple):
    """k eigenpairs of a symmetric operator.

    eigenvalues: (k,), sorted descending for "LA" and "BE", ascending for "SA", by |λ| descending
    for "LM". eigenvectors: (n, k) orthonormal columns, column i belongs to eigenvalues[i].
    residuals: (k,) estimates of ‖A x_i - λ_i x_i‖ (Ritz estimates |β_j s_ji| for Lanczos).
    converged: (k,) bool, residual <= tol · max|λ|. num_matvecs: int, products spent (a traced
    int32 scalar under an outer `jit`).
    """

    eigenvalues: Array
    eigenvectors: Array
    residuals: Array
    converged: Array
    num_matvecs: int | Array


class Progress(NamedTuple):
    """What a long `eigsh` reports at every convergence check (plain Lanczos) or restart
    cycle (thick restart): steps in the current basis, restarts done, products spent, wanted
    pairs converged of k, and the largest wanted residual relative to tol · max|λ| (<= 1 when
    all have converged); seconds since the solve started (host clock)."""

    steps: int
    restarts: int
    num_matvecs: int
    converged: int
    k: int
    worst_residual_over_tol: float
    seconds: float


def log_progress(p: Progress) -> None:
    """A `progress` callback for `eigsh` that logs one line per report (Python logging,
    logger 'hessjax'), e.g. through absl in the binaries."""
    logging.getLogger("hessjax").info(
        "eigsh: %d/%d converged, %d products, %d restarts, worst residual %.2g x tol, %.0f s",
        p.converged, p.k, p.num_matvecs, p.restarts, p.worst_residual_over_tol, p.seconds,
    )  # fmt: skip


class _Reporter:
    """Host side of eigsh progress: adds the elapsed time, calls the user's callback and
    reports an exception from it once (the solve goes on)."""

    def __init__(self, callback):
        self.callback, self.start, self.failed = callback, time.perf_counter(), False

    def __call__(self, steps, restarts, matvecs, converged, k, worst):
        if self.failed:
            return
        try:
            self.callback(Progress(int(steps), int(restarts), int(matvecs), int(converged), int(k),
                                   float(worst), time.perf_counter() - self.start))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a broken callback must not stop the solve
            self.failed = True
            warnings.warn(f"eigsh progress callback raised {err!r}; further reports are "
                          "skipped, the solve goes on", RuntimeWarning, stacklevel=1)  # fmt: skip


_REPORTERS: list[_Reporter] = []  # the active reporter of the eigsh call that runs (host side)


def _dispatch(*args) -> None:
    if _REPORTERS:
        _REPORTERS[-1](*args)


def _report(state: krylov.KrylovState, restarts, k: int, which: str, tol: float) -> None:
    """One progress report from inside the solve (a `jax.debug.callback`)."""
    r = krylov.ritz(state, k, which)
    ratio = r.residuals[0] / (tol * jnp.maximum(r.scale[0], jnp.finfo(r.scale.dtype).tiny))
    enough = state.j >= k  # before k steps the padded projected matrix has no k Ritz pairs
    converged = jnp.where(enough, jnp.sum(ratio <= 1), 0)
    worst = jnp.where(enough, jnp.max(ratio), jnp.inf)
    jax.debug.callback(_dispatch, state.j, restarts, state.matvecs, converged, k, worst,
                       ordered=True)  # fmt: skip


def _result(state: krylov.KrylovState, k: int, which: str, tol: float) -> EigshResult:
    """The k wanted pairs of a b = 1 state; NaN eigenvalues after a non-finite product."""
    r = krylov.final_ritz(state, k, which)
    bad = state.bad >= 0
    with jax.enable_x64(True):
        converged = (r.residuals[0] <= tol * r.scale[0]) & ~bad
    return EigshResult(
        eigenvalues=jnp.where(bad, jnp.nan, r.values[0]),
        eigenvectors=krylov.ritz_vectors(state, r.vectors),
        residuals=r.residuals[0],
        converged=converged,
        num_matvecs=state.matvecs,
    )


@functools.partial(
    jax.jit,
    static_argnames=("k", "which", "num_steps", "tol", "check_every", "reorthogonalize",
                     "progress"),
)  # fmt: skip
def _eigsh_traced(op, v0, key, k, which, num_steps, tol, check_every, reorthogonalize=True,
                  progress=False):  # fmt: skip
    state = krylov.init(constrain(op, v0), num_steps, key)
    if tol is None:
        state = krylov.run(op, state, num_steps, reorthogonalize)
        return _result(state, k, which, krylov.default_tol(v0.dtype)), state.bad
    state = _run_until_converged(op, state, num_steps, k, which, tol, check_every,
                                 reorthogonalize, progress)  # fmt: skip
    return _result(state, k, which, tol), state.bad


def _run_until_converged(op, state, num_steps, k, which, tol, check_every, reorthogonalize=True,
                         progress=False):  # fmt: skip
    """Steps until row num_steps, a non-finite product, or convergence, tested every
    `check_every` steps (each test reported when `progress`)."""

    def cond(carry):
        state, done = carry
        return (state.j < num_steps) & ~done

    def body(carry):
        state, _ = carry
        steps = jnp.minimum(check_every, num_steps - state.j)
        state = krylov.run(op, state, steps, reorthogonalize)
        if progress:
            _report(state, 0, k, which, tol)
        return state, krylov.converged(state, k, which, tol) | (state.bad >= 0)

    return lax.while_loop(cond, body, (state, jnp.bool_(False)))[0]


def _eigsh_host(op, v0, key, k, which, num_steps, tol, check_every, reorthogonalize=True):
    state = krylov.init(v0, num_steps, key)
    converged = jax.jit(krylov.converged, static_argnums=(1, 2, 3))
    while int(state.j) < num_steps and int(state.bad) < 0:
        steps = min(check_every, num_steps - int(state.j))
        state = krylov.run_host(op, state, steps, reorthogonalize)
        if tol is not None and bool(converged(state, k, which, tol)):
            break
    final_tol = krylov.default_tol(v0.dtype) if tol is None else tol
    return jax.jit(_result, static_argnums=(1, 2, 3))(state, k, which, final_tol), state.bad


@functools.partial(
    jax.jit,
    static_argnames=("k", "which", "num_steps", "keep", "max_restarts", "tol", "check_every",
                     "progress"),
)  # fmt: skip
def _eigsh_restarted(op, v0, key, k, which, num_steps, keep, max_restarts, tol, check_every,
                     progress=False):  # fmt: skip
    """A first cycle (it stops early when converged), then restart + extend until converged:
    no `lax.cond` around the restart (a cond on the state would hold a second (m, n) basis)."""

    def more(carry):
        state, restarts = carry
        done = krylov.converged(state, k, which, tol) | (state.bad >= 0)
        return ~done & (restarts < max_restarts)

    def cycle(carry):
        state, restarts = carry
        state = krylov.run(op, krylov.restart(state, keep, which), num_steps - keep)
        if progress:
            _report(state, restarts + 1, k, which, tol)
        return state, restarts + 1

    state = krylov.init(constrain(op, v0), num_steps, key)
    state = _run_until_converged(op, state, num_steps, k, which, tol, check_every, True,
                                 progress)  # fmt: skip
    state, _ = lax.while_loop(more, cycle, (state, jnp.int32(0)))
    return _result(state, k, which, tol), state.bad


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
    reorthogonalize: bool = True,
    progress: Callable[[Progress], None] | bool | None = None,
) -> EigshResult:
    """k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
      op: operator on flat (n,) vectors (`Operator` for a fully jitted solve), float32 or
        float64.
      k: number of eigenpairs, 1 <= k < n.
      key: PRNG key for the start vector (unless `v0`) and for restarts after breakdown.
      which: "LA" largest, "SA" smallest, "LM" largest magnitude, "BE" both ends
        (ceil(k/2) largest and floor(k/2) smallest).
      num_steps: maximum Krylov dimension m (k <= m <= n); default `default_num_steps(k, n)`.
        Memory is an (m, n) basis.
      tol: in (0, 1): stop as soon as every wanted Ritz residual estimate is <= tol ·
        max|λ_wanted|; tol=None runs all m steps. The eigenvalue error is then at most
        min(r, r²/gap) and the eigenvector angle at most r/gap, with r the residual and gap the
        distance to the rest of the spectrum. 1e-4 sits above float32 round-off.
      check_every: steps between convergence checks. A check is an m×m eigh, O(m³):
        negligible next to a product for m up to ~100, not for m in the thousands. Default
        max(1, m // 40): every step for the default m of k < 30, at most ~40 checks, at most
        m/40 products past convergence.
      v0: optional (n,) start vector (finite, nonzero).
      max_restarts: 0 (default) runs one Krylov space of up to num_steps vectors. > 0 runs
        thick-restart Lanczos with a basis of exactly num_steps vectors: after each cycle it
        keeps the k + (num_steps - k) // 2 best Ritz vectors and extends again, at most
        max_restarts times, until the k wanted pairs meet `tol` (required). Use it for many
        eigenpairs (k in the hundreds) with bounded memory: num_steps ~ 1.5-2 k instead of the
        several k a single Krylov space needs. Not for "BE" or streaming ops.
      reorthogonalize: True (default): full reorthogonalisation (Gram-Schmidt of every new
        vector against the basis). False: the plain three-term recurrence, no basis reads, so
        a step costs little more than its product; orthogonality is then lost as Ritz pairs
        converge (|q_{j+1}ᵀ y| ~ ε‖A‖ / residual of y, Paige), which makes ghost copies of
        converged eigenvalues. Only for one or a few wanted pairs at a loose tol (the curvature
        monitor's k = 1, tol >= 1e-3 default); not with max_restarts.
      progress: None/False (default): silent, nothing extra is compiled. A callable gets a
        `Progress` at every convergence check and after every restart cycle (through an
        ordered `jax.debug.callback`, so it works inside the one jit; each report costs an
        m×m eigh). True: `log_progress` (one log line per report). A callback that raises is
        reported once as a RuntimeWarning and the solve goes on. For traceable operators with
        a tol; reports of a solve run under an outer `jit` go to the callback of the eigsh
        call that traced it only while that call runs.

    Raises FloatingPointError when a product returns NaN or inf (the solve stops there); under
    an outer `jit` it cannot raise and returns NaN eigenvalues with converged False instead.
    The tridiagonal eigenproblem of the final answer is solved in float64.
    """
    n = op.size
    _checks.check_dtype(op.dtype)
    _checks.check_k(k, n)
    krylov.check_which(which)
    num_steps = default_num_steps(k, n) if num_steps is None else num_steps
    _checks.check_steps(num_steps, k, n)
    check_every = max(1, num_steps // 40) if check_every is None else check_every
    _checks.check_positive(check_every, "check_every")
    _checks.check_tol(tol, allow_none=True)
    _checks.check_key(key)
    key, start_key = jax.random.split(key)
    if v0 is None:
        v0 = jax.random.normal(start_key, (n,), op.dtype)
    _checks.check_vector(v0, n, op.dtype)
    v0 = place_vectors(op, v0)  # split along n when op declares a vector sharding
    if not isinstance(reorthogonalize, bool):
        raise ValueError(f"reorthogonalize must be True or False, got {reorthogonalize!r}")
    if max_restarts:
        _checks.check_positive(max_restarts, "max_restarts")
        if not reorthogonalize:
            raise ValueError("max_restarts needs reorthogonalize=True (a restart needs an "
                             "orthonormal basis)")  # fmt: skip
        if which == "BE" or tol is None or not is_traceable(op):
            raise ValueError(
                "max_restarts needs which in LA/SA/LM, a tol and an in-memory Operator"
            )
        keep = k + (num_steps - k) // 2
        if keep >= num_steps:
            raise ValueError(f"num_steps ({num_steps}) must exceed k ({k}) for restarts")
        with _reporting(progress):
            result, bad = _eigsh_restarted(
                op, v0, key, k, which, int(num_steps), keep, int(max_restarts), tol,
                int(check_every), bool(progress),
            )  # fmt: skip
            jax.block_until_ready(result)
    elif is_traceable(op):
        with _reporting(progress if tol is not None else None):
            result, bad = _eigsh_traced(
                op, v0, key, k, which, int(num_steps), tol, int(check_every), reorthogonalize,
                bool(progress) and tol is not None,
            )  # fmt: skip
            jax.block_until_ready(result)
    else:
        if progress:
            raise ValueError("progress needs a traceable Operator (in-memory data); a streaming "
                             "operator's host loop is not reported")  # fmt: skip
        result, bad = _eigsh_host(
            op, v0, key, k, which, int(num_steps), tol, int(check_every), reorthogonalize
        )
    _checks.raise_if_nonfinite(bad, "eigsh")
    return _checks.concrete_matvecs(result)


class _reporting:
    """Context: make `progress` (a callable, True for `log_progress`, or None/False) the
    active reporter while a solve runs."""

    def __init__(self, progress):
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise ValueError(f"progress must be None, a bool or a callable, got {progress!r}")
        callback = log_progress if progress is True else progress or None
        self.reporter = None if callback is None else _Reporter(callback)

    def __enter__(self):
        if self.reporter is not None:
            _REPORTERS.append(self.reporter)

    def __exit__(self, *exc):
        if self.reporter is not None:
            _REPORTERS.remove(self.reporter)


class Tridiagonal(NamedTuple):
    """Lanczos output: basis (m, n) orthonormal rows, alpha (m,) diagonal, beta (m,)
    off-diagonal (beta[i] couples rows i and i+1; beta[-1] is the residual norm)."""

    basis: Array
    alpha: Array
    beta: Array


def _tridiagonal(state: krylov.KrylovState) -> Tridiagonal:
    return Tridiagonal(state.basis, state.alpha[0], state.beta[0])


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _tridiag_traced(op, v0, key, num_steps):
    state = krylov.run(op, krylov.init(constrain(op, v0), num_steps, key), num_steps)
    return _tridiagonal(state), state.bad


def lanczos_tridiag(
    op: LinearOperatorLike, v0: Array, num_steps: int, *, key: Array
) -> Tridiagonal:
    """Run exactly `num_steps` Lanczos steps from v0 (n,) and return the decomposition."""
    n = op.size
    _checks.check_dtype(op.dtype)
    _checks.check_steps(num_steps, 1, n)
    _checks.check_key(key)
    _checks.check_vector(v0, n, op.dtype)
    if is_traceable(op):
        out, bad = _tridiag_traced(op, v0, key, int(num_steps))
    else:
        state = krylov.run_host(op, krylov.init(v0, num_steps, key), num_steps)
        out, bad = _tridiagonal(state), state.bad
    _checks.raise_if_nonfinite(bad, "lanczos_tridiag")
    return out


def tridiag_eigh(alpha: Array, beta: Array) -> tuple[Array, Array]:
    """Eigenvalues (m,) ascending and eigenvectors (m, m) of the tridiagonal T, in float64.

    beta[:-1] are the off-diagonal entries (beta[-1], the residual norm, is ignored).
    """
    with jax.enable_x64(True):
        alpha, beta = alpha.astype(jnp.float64), beta.astype(jnp.float64)
        m = alpha.shape[-1]
        t = krylov.projected_matrix(alpha, beta, jnp.zeros_like(alpha), jnp.int32(0), m)
        return jnp.linalg.eigh(t)
