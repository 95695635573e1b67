"""A curvature monitor that runs inside a jitted training step (optax style).

Every `every` steps it measures, on a probe batch (the current minibatch or a fixed one):

* the top-k eigenvalues of the Hessian (or the Gauss-Newton matrix) of the loss, by Lanczos
  (`hessjax.linalg.eigsh`) warm-started from the previous measurement's top eigenvectors
  (v0 = their sum), so that a slowly changing Hessian costs a few products per measurement
  (k = 1 at tol >= 1e-3 skips reorthogonalisation: see `curvature_monitor`);
* optionally a Hutchinson trace estimate;
* the cosine |<v_1, Δθ>| / ‖Δθ‖ between the top eigenvector and the update of this step;
* the probe loss and the number of Hessian-vector products spent (Lanczos + trace).

The measurement is one `lax.cond` inside the step: the whole eigsh (a `lax.while_loop`) and the
operator, built from the current params and the probe batch (jit arguments, never closed-over
constants), sit in its true branch. Nothing synchronises with the host; results go into a
fixed-size ring buffer in `MonitorState`, and optionally to the host through
`jax.debug.callback` (`JsonlLog` appends one JSON line per measurement).

    monitor = curvature_monitor(loss_fn, every=100, k=1)
    state = monitor.init(params)
    state = monitor.update(state, params, batch, updates=updates, loss=loss)   # in the step
    log = read_log(state)                                                      # on the host

or as the last transformation of an optax chain (`monitoring`):

    opt = optax.chain(optax.sgd(0.1), monitoring(monitor))
    updates, opt_state = opt.update(grads, opt_state, params, batch=batch, loss=loss)

Adaptive optimisers (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"):
`curvature_monitor(..., preconditioned=True)` measures the top eigenvalues of
P^{-1/2} H P^{-1/2} (those of P⁻¹ H) for a diagonal preconditioner P passed to every `update`
as `preconditioner=` (a params-shaped tree), e.g. `adam_preconditioner(opt_state)`:
P = √v̂ + ε from Adam's bias-corrected second moments. Under full-batch Adam it rises to
(2 + 2β₁) / ((1 − β₁) η) (38/η for β₁ = 0.9) and hovers there.

Divergence: inside `jit` nothing can raise. When the training loss (passed as `loss=`) or a
measurement becomes non-finite the state records the first such step and stops measuring, so
the buffer keeps what was measured before; `check_finite(state)` raises `MonitorDivergence`
(a FloatingPointError naming the step and the value, carrying the state) on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from hessjax import _checks
from hessjax.curvature import MeanLoss, ggn_operator, hessian_operator
from hessjax.linalg import diagonal_congruence, eigsh, hutchinson
from hessjax.training import find_state

Array = jax.Array
PyTree = Any
Curvature = Literal["hessian", "ggn"]

# What made the state diverge (MonitorState.diverged_what).
_WHAT = {1: "training loss", 2: "probe loss", 3: "top eigenvalue"}


class MonitorState(NamedTuple):
    """All arrays (a pytree: lives in a scan carry, an optax state or a checkpoint).

    Ring buffer (capacity C; slot `count % C` is written next): steps (C,) int32, the training
    step of each measurement (-1 while empty); eigenvalues (C, k) descending; converged (C, k)
    bool; hvps (C,) int32 products spent (Lanczos + trace probes); trace (C,) Hutchinson
    estimate (NaN when off); alignment (C,) |cos| between the top eigenvector and the update
    (NaN without updates); loss (C,) the loss on the probe batch.

    Warm start: vectors (n, k) the last top eigenvectors; have_vectors () bool.
    step () int32: update calls so far (the step number of the next call); count () int32:
    measurements so far; key (2,) uint32 raw PRNG key data; diverged_at () int32: first step
    with a non-finite value (-1: none), diverged_what () int32 (1 training loss, 2 probe loss,
    3 eigenvalue), diverged_value (). Float buffers have the params dtype.
    """

    steps: Array
    eigenvalues: Array
    converged: Array
    hvps: Array
    trace: Array
    alignment: Array
    loss: Array
    vectors: Array
    have_vectors: Array
    step: Array
    count: Array
    key: Array
    diverged_at: Array
    diverged_what: Array
    diverged_value: Array


class Measurement(NamedTuple):
    """One measurement: eigenvalues (k,), eigenvectors (n, k), converged (k,), hvps () int32,
    trace (), loss () (probe loss)."""

    eigenvalues: Array
    eigenvectors: Array
    converged: Array
    hvps: Array
    trace: Array
    loss: Array


class MonitorLog(NamedTuple):
    """Host-side read-out (numpy, chronological): steps (m,), eigenvalues (m, k), converged
    (m, k), hvps (m,), trace (m,), alignment (m,), loss (m,); m = min(count, capacity)."""

    steps: np.ndarray
    eigenvalues: np.ndarray
    converged: np.ndarray
    hvps: np.ndarray
    trace: np.ndarray
    alignment: np.ndarray
    loss: np.ndarray

    @property
    def sharpness(self) -> np.ndarray:
        """(m,) the top eigenvalue of each measurement."""
        return self.eigenvalues[:, 0]


class MonitorDivergence(FloatingPointError):
    """Training or a measurement became non-finite; `.state` is the monitor state (the
    measurements before the divergence are intact), `.step` the first bad step."""

    def __init__(self, message: str, state: MonitorState, step: int):
        super().__init__(message)
        self.state, self.step = state, step


def _check_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class JsonlLog:
    """Host callback appending each measurement as one JSON line to `path` (steps may arrive
    out of order across devices; each line carries its step)."""

    path: str

    def __call__(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _emit(callback, step, eigenvalues, hvps, trace, alignment, loss):
    callback(
        {
            "step": int(step),
            "eigenvalues": np.asarray(eigenvalues, np.float64).tolist(),
            "hvps": int(hvps),
            "trace": _json_float(trace),
            "alignment": _json_float(alignment),
            "loss": _json_float(loss),
        }
    )


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Monitor:
    """Configuration of a curvature monitor (build it with `curvature_monitor`); hashable, so
    it can be a static argument of a jitted step. `init` and `update` are pure."""

    loss_fn: Callable[[PyTree, Any], Array]
    every: int
    k: int
    capacity: int
    curvature: Curvature
    tol: float
    num_steps: int | None
    trace_probes: int
    warm_start: bool
    microbatch_size: int | None
    callback: Callable[[dict], None] | None
    key_data: tuple[int, ...]  # the PRNG key's data (hashable): `jax.random.key_data(key)`
    reorthogonalize: bool = True
    preconditioned: bool = False

    # ------------------------------------------------------------------ state

    def init(self, params: PyTree, probe: PyTree | None = None) -> MonitorState:
        """Empty state for params; checks k < n and, when given, that `probe` fits loss_fn."""
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves:
            raise ValueError("params has no array leaves")
        n = sum(int(np.size(x)) for x in leaves)
        if self.k >= n:
            raise ValueError(f"k = {self.k} must be smaller than the number of parameters n = {n}")
        if self.num_steps is not None and self.num_steps > n:
            raise ValueError(f"num_steps = {self.num_steps} exceeds the number of parameters {n}")
        if probe is not None:
            self.check_batch(params, probe)
        dtype = jnp.result_type(*leaves)
        c, k = self.capacity, self.k
        nan = jnp.full((c,), jnp.nan, dtype)
        return MonitorState(
            steps=jnp.full((c,), -1, jnp.int32),
            eigenvalues=jnp.full((c, k), jnp.nan, dtype),
            converged=jnp.zeros((c, k), bool),
            hvps=jnp.zeros((c,), jnp.int32),
            trace=nan,
            alignment=nan,
            loss=nan,
            vectors=jnp.zeros((n, k), dtype),
            have_vectors=jnp.zeros((), bool),
            step=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            key=jnp.asarray(self.key_data, jnp.uint32),
            diverged_at=jnp.full((), -1, jnp.int32),
            diverged_what=jnp.zeros((), jnp.int32),
            diverged_value=jnp.zeros((), dtype),
        )

    def check_batch(self, params: PyTree, batch: PyTree) -> None:
        """Raise ValueError unless `batch` is a pytree of arrays sharing a leading batch axis
        (divisible by microbatch_size) on which loss_fn(params, batch) is a scalar. Only shapes
        are used (`jax.eval_shape`), so this is free and works under `jit`."""
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        shapes = [tuple(np.shape(x)) for x in leaves]
        where = f"probe batch {treedef} with leaf shapes {shapes}"
        if not leaves or any(len(s) == 0 for s in shapes):
            raise ValueError(f"{where}: needs array leaves with a leading batch axis")
        sizes = {s[0] for s in shapes}
        if len(sizes) != 1:
            raise ValueError(f"{where}: leaves have different leading batch sizes {sorted(sizes)}")
        b = sizes.pop()
        if b == 0:
            raise ValueError(f"{where}: the batch is empty")
        mb = self.microbatch_size
        if mb is not None and b % mb:
            raise ValueError(f"{where}: batch size {b} is not a multiple of microbatch_size {mb}")
        try:
            out = jax.eval_shape(self.loss_fn, params, batch)
        except Exception as err:  # noqa: BLE001 - any failure means the batch does not fit
            raise ValueError(f"{where} does not fit loss_fn: {type(err).__name__}: {err}") from err
        if not hasattr(out, "shape") or out.shape != ():
            raise ValueError(f"{where}: loss_fn must return a scalar on it, got {out}")

    # ------------------------------------------------------------------ measuring

    def operator(self, params: PyTree, batch: PyTree):
        """The curvature operator on `batch` (b, ...) as microbatches of microbatch_size."""
        mb = self.microbatch_size

        def split(x):
            x = jnp.asarray(x)
            return x[None] if mb is None else x.reshape((x.shape[0] // mb, mb) + x.shape[1:])

        data = jax.tree_util.tree_map(split, batch)
        if self.curvature == "ggn":
            return ggn_operator(self.loss_fn.model_fn, self.loss_fn.per_example_loss, params, data)
        return hessian_operator(self.loss_fn, params, data)

    def check_preconditioner(self, params: PyTree, preconditioner: PyTree | None) -> None:
        """ValueError unless a preconditioned monitor gets a params-shaped preconditioner (and
        a plain one none)."""
        if not self.preconditioned:
            if preconditioner is not None:
                raise ValueError("preconditioner= given to a monitor built without "
                                 "preconditioned=True")  # fmt: skip
            return
        if preconditioner is None:
            raise ValueError(
                "this monitor is preconditioned: pass preconditioner= (a params-shaped "
                "diagonal P, e.g. adam_preconditioner(opt_state))"
            )
        want = jax.tree_util.tree_map(jnp.shape, params)
        got = jax.tree_util.tree_map(jnp.shape, preconditioner)
        if want != got:
            raise ValueError(f"preconditioner must have the params' structure and shapes:\n"
                             f"{got}\nvs params\n{want}")  # fmt: skip

    def measure(
        self,
        params: PyTree,
        batch: PyTree,
        key: Array,
        v0: Array | None = None,
        preconditioner: PyTree | None = None,
    ) -> Measurement:
        """One measurement (no condition): top-k eigenpairs from v0 (random when None), the
        trace estimate (when trace_probes > 0) and the probe loss. Preconditioned monitors
        measure P^{-1/2} H P^{-1/2} with P = `preconditioner` (params-shaped, > 0); their
        eigenvectors are those of that matrix. Traceable."""
        self.check_preconditioner(params, preconditioner)
        op = self.operator(params, batch)
        if self.preconditioned:
            op = diagonal_congruence(op, jax.lax.rsqrt(op.ravel(preconditioner)))
        k_eig, k_trace = jax.random.split(key)
        num_steps = self.num_steps or min(op.size, self.k + 20)
        top = eigsh(
            op, self.k, key=k_eig, v0=v0, tol=self.tol, num_steps=num_steps,
            reorthogonalize=self.reorthogonalize,
        )  # fmt: skip
        hvps = jnp.asarray(top.num_matvecs, jnp.int32)
        if self.trace_probes:
            trace = hutchinson(op, num_probes=self.trace_probes, key=k_trace).estimate
            hvps = hvps + self.trace_probes
        else:
            trace = jnp.asarray(jnp.nan)
        return Measurement(
            eigenvalues=top.eigenvalues.astype(op.dtype),
            eigenvectors=top.eigenvectors,
            converged=top.converged,
            hvps=hvps,
            trace=jnp.asarray(trace, op.dtype),
            loss=jnp.asarray(self.loss_fn(params, batch), op.dtype),
        )

    def update(
        self,
        state: MonitorState,
        params: PyTree,
        batch: PyTree,
        *,
        updates: PyTree | None = None,
        loss: Array | None = None,
        applied: bool = False,
        preconditioner: PyTree | None = None,
    ) -> MonitorState:
        """Advance the monitor by one training step (call number s = state.step).

        params: where the curvature is taken: the params the step starts from (θ_s, measured
        when s % every == 0 and recorded as step s), or with applied=True the params it ends
        at (θ_{s+1} = θ_s + updates, measured when (s + 1) % every == 0 and recorded as step
        s + 1). Either way a recorded step counts the updates in the measured params.
        applied=True is cheaper inside a scanned step: a `lax.cond` reading θ_s, which the
        step then overwrites in place, makes XLA copy the params every step (with the update
        for the alignment, an idle monitor cost benchmarks/monitor.py's 235k-parameter MLP
        +14 % per step on CPU that way; with applied=True and no alignment, nothing measurable).
        batch: the probe batch (b, ...), a fixed one or the step's minibatch; updates: the
        update of this step (for the alignment), optional; loss: the step's training loss,
        optional (checked for divergence every step, recorded at step s); preconditioner: the
        diagonal P of a preconditioned monitor (required then), params-shaped. Pure and
        traceable; call it inside the jitted step.
        """
        self.check_batch(params, batch)
        self.check_preconditioner(params, preconditioner)
        step = state.step
        healthy = state.diverged_at < 0
        loss_bad = jnp.asarray(False) if loss is None else ~jnp.isfinite(loss)
        at = step + 1 if applied else step  # the updates in the measured params
        take = (at % self.every == 0) & healthy & ~loss_bad
        if updates is not None:
            num = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(updates))
            if num != state.vectors.shape[0]:
                raise ValueError(
                    f"updates have {num} entries, the monitor's params {state.vectors.shape[0]}"
                )
        state = lax.cond(
            take, self._measure_into, lambda s, *_: s, state, params, batch, updates, at,
            preconditioner,
        )  # fmt: skip
        if loss is not None:
            first, dtype = healthy & loss_bad, state.diverged_value.dtype
            state = state._replace(
                diverged_at=jnp.where(first, step, state.diverged_at),
                diverged_what=jnp.where(first, 1, state.diverged_what),
                diverged_value=jnp.where(first, jnp.asarray(loss, dtype), state.diverged_value),
            )
        return state._replace(step=step + 1)

    def _measure_into(self, state, params, batch, updates, at, preconditioner):
        key, sub, start = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        n, dtype = state.vectors.shape[0], state.vectors.dtype
        if self.warm_start:  # n normals drawn only when there is nothing to start from
            warm = jnp.sum(state.vectors, axis=1)
            v0 = lax.cond(
                state.have_vectors & jnp.any(warm != 0),
                lambda: warm,
                lambda: jax.random.normal(start, (n,), dtype),
            )
        else:
            v0 = jax.random.normal(start, (n,), dtype)
        m = self.measure(params, batch, sub, v0, preconditioner)
        fdt = state.eigenvalues.dtype
        m = m._replace(
            eigenvalues=m.eigenvalues.astype(fdt),
            trace=m.trace.astype(fdt),
            loss=m.loss.astype(fdt),
        )
        if updates is None:
            alignment = jnp.asarray(jnp.nan, fdt)
        else:
            flat_updates = jnp.concatenate(
                [jnp.ravel(x) for x in jax.tree_util.tree_leaves(updates)]
            ).astype(state.vectors.dtype)
            top = m.eigenvectors[:, 0]
            norm = jnp.linalg.norm(flat_updates)
            alignment = jnp.abs(top @ flat_updates) / jnp.where(norm > 0, norm, 1.0)
            alignment = jnp.where(norm > 0, alignment, jnp.nan).astype(fdt)
        slot = state.count % self.capacity
        loss_bad = ~jnp.isfinite(m.loss)
        eig_bad = ~jnp.all(jnp.isfinite(m.eigenvalues))
        bad = loss_bad | eig_bad
        if self.callback is not None:
            jax.debug.callback(
                functools.partial(_emit, self.callback),
                at, m.eigenvalues, m.hvps, m.trace, alignment, m.loss,
            )  # fmt: skip
        good_vectors = jnp.all(jnp.isfinite(m.eigenvectors)) & ~bad
        return state._replace(
            steps=state.steps.at[slot].set(at),
            eigenvalues=state.eigenvalues.at[slot].set(m.eigenvalues),
            converged=state.converged.at[slot].set(m.converged),
            hvps=state.hvps.at[slot].set(m.hvps),
            trace=state.trace.at[slot].set(m.trace),
            alignment=state.alignment.at[slot].set(alignment),
            loss=state.loss.at[slot].set(m.loss),
            vectors=jnp.where(
                good_vectors, m.eigenvectors.astype(state.vectors.dtype), state.vectors
            ),
            have_vectors=state.have_vectors | good_vectors,
            count=state.count + 1,
            key=jax.random.key_data(key),
            diverged_at=jnp.where(bad, at, state.diverged_at),
            diverged_what=jnp.where(loss_bad, 2, jnp.where(eig_bad, 3, state.diverged_what)),
            diverged_value=jnp.where(
                loss_bad, m.loss, jnp.where(eig_bad, m.eigenvalues[0], state.diverged_value)
            ),
        )


@_checks.renamed(seed="key")
def curvature_monitor(
    loss_fn: Callable[[PyTree, Any], Array],
    *,
    every: int = 100,
    k: int = 1,
    capacity: int = 1024,
    curvature: Curvature = "hessian",
    tol: float = 1e-2,
    num_steps: int | None = None,
    trace_probes: int = 0,
    warm_start: bool = True,
    microbatch_size: int | None = None,
    callback: Callable[[dict], None] | None = None,
    key: Array | None = None,
    reorthogonalize: bool | None = None,
    preconditioned: bool = False,
) -> Monitor:
    """A curvature monitor of loss_fn(params, batch) -> scalar.

    Args:
      loss_fn: hashable loss (a `MeanLoss` or a module-level function); for curvature="ggn" a
        `MeanLoss` (its model_fn and per_example_loss give the Gauss-Newton factors).
      every: measure at steps 0, every, 2·every, ... (N >= 1).
      k: top eigenvalues per measurement (1 <= k < number of parameters).
      capacity: ring-buffer slots (the last `capacity` measurements are kept).
      curvature: "hessian" or "ggn".
      tol: Lanczos stops when every wanted Ritz residual is <= tol · λ_max (see `eigsh`). The
        eigenvalue error is then at most ~ (tol · λ_max)² / gap (gap: distance to the rest of
        the spectrum), far below tol: the default 1e-2 gave relative sharpness errors below
        3e-4 on the MNIST MLP of benchmarks/monitor.py, enough to track sharpness at a few
        products per measurement. Much looser (>= 3e-2) let a warm start stop on the previous
        top eigenvalue after an eigenvalue crossing there (errors of 4 % and more).
      num_steps: maximum Krylov size (default k + 20: room for the first, cold, measurement;
        a warm one takes a few steps; the (num_steps, n) basis stays small).
      trace_probes: Rademacher probes of a Hutchinson trace per measurement (0: no trace).
      warm_start: start Lanczos from the sum of the previous top-k eigenvectors.
      microbatch_size: split the probe batch into microbatches of this size (scanned; less
        memory); None: one microbatch.
      callback: host function called with a dict per measurement through `jax.debug.callback`
        (e.g. `JsonlLog(path)`); must be hashable.
      key: PRNG key (`jax.random.key`) of the cold start vectors and trace probes (default
        jax.random.key(0)).
      reorthogonalize: full reorthogonalisation in Lanczos (`eigsh`). None (default): off for
        k = 1 at tol >= 1e-3, on otherwise. Off, a Lanczos step reads no basis rows (about a
        quarter of a warm measurement's time on benchmarks/monitor.py's MLP); orthogonality
        is only lost as a Ritz pair converges far below the tolerance (|q_{j+1}ᵀ y| ~
        ε‖A‖ / its residual, Paige), which a k = 1 run stopped at tol >= 1e-3 never reaches.
      preconditioned: measure P^{-1/2} H P^{-1/2} (the eigenvalues of P⁻¹ H) for the diagonal
        P passed to every `update` as preconditioner= (e.g. `adam_preconditioner`): Cohen et
        al. (2022)'s preconditioned sharpness of adaptive optimisers.
    """
    _check_int(every, "every (the measurement period N)", 1)
    _check_int(k, "k", 1)
    _check_int(capacity, "capacity", 1)
    _check_int(trace_probes, "trace_probes", 0)
    if num_steps is not None:
        _check_int(num_steps, "num_steps", k)
    if microbatch_size is not None:
        _check_int(microbatch_size, "microbatch_size", 1)
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if curvature == "ggn" and not isinstance(loss_fn, MeanLoss):
        raise ValueError(
            f"curvature='ggn' needs loss_fn = MeanLoss(model_fn, per_example_loss), got {loss_fn!r}"
        )
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if not isinstance(preconditioned, bool):
        raise ValueError(f"preconditioned must be True or False, got {preconditioned!r}")
    if reorthogonalize is None:
        reorthogonalize = not (k == 1 and tol >= 1e-3)
    elif not isinstance(reorthogonalize, bool):
        raise ValueError(f"reorthogonalize must be None, True or False, got {reorthogonalize!r}")
    try:
        hash(loss_fn), hash(callback)
    except TypeError as err:
        raise ValueError(f"loss_fn and callback must be hashable: {err}") from err
    key = jax.random.key(0) if key is None else key
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise ValueError(f"key must be a PRNG key (jax.random.key(seed)), got {key!r}")
    key_data = tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel())
    return Monitor(
        loss_fn, int(every), int(k), int(capacity), curvature, float(tol),
        None if num_steps is None else int(num_steps), int(trace_probes), bool(warm_start),
        None if microbatch_size is None else int(microbatch_size), callback, key_data,
        reorthogonalize, preconditioned,
    )  # fmt: skip


# ----------------------------------------------------------------------------- optax


class MonitoringState(NamedTuple):
    """optax state of `monitoring`: the monitor state and the fixed probe batch (or None)."""

    monitor: MonitorState
    probe: PyTree


def monitoring(
    monitor: Monitor, probe: PyTree | None = None, *, alignment: bool = False
) -> optax.GradientTransformation:
    """optax transformation that passes updates through unchanged and runs `monitor` on the
    params each step ends at (params + updates, `Monitor.update(applied=True)`: measured
    after updates N, 2N, ...). Chain it last (it then sees the updates actually applied). The
    probe batch is `probe` (kept in the state, so it is a jit argument) or, per call, the
    extra argument `batch=`; the extra argument `loss=` enables the divergence check every
    step; `preconditioner=` feeds a preconditioned monitor. alignment=True also records |cos|
    between the top eigenvector and the update; it keeps the update as a buffer of its own
    every step (benchmarks/monitor.py's MLP on 2 CPU cores under Adam: training time x 1.21
    with it, x 1.05 without), so it is off by default:

        opt = optax.chain(optax.sgd(0.1), monitoring(monitor, probe))
        updates, opt_state = opt.update(grads, opt_state, params, loss=loss)
    """
    if not isinstance(monitor, Monitor):
        raise ValueError(f"monitoring needs a Monitor (curvature_monitor(...)), got {monitor!r}")

    def init_fn(params):
        return MonitoringState(monitor.init(params, probe), probe)

    def update_fn(updates, state, params=None, *, batch=None, loss=None, preconditioner=None,
                  **extra_args):  # fmt: skip
        del extra_args
        if params is None:
            raise ValueError("monitoring needs params: call update(updates, state, params)")
        batch = state.probe if batch is None else batch
        if batch is None:
            raise ValueError("monitoring needs a probe batch: monitoring(monitor, probe) or batch=")
        after = optax.apply_updates(params, updates)  # XLA shares it with the caller's
        new = monitor.update(
            state.monitor, after, batch, updates=updates if alignment else None, loss=loss,
            applied=True, preconditioner=preconditioner,
        )  # fmt: skip
        return updates, MonitoringState(new, state.probe)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_threshold(learning_rate: float, b1: float = 0.9) -> float:
    """Adam's stability threshold for the preconditioned sharpness, (2 + 2β₁)/((1 − β₁)η)
    (Cohen et al. 2022): 38/η for β₁ = 0.9."""
    return (2 + 2 * b1) / ((1 - b1) * learning_rate)


def adam_preconditioner(opt_state: PyTree, *, b2: float = 0.999, eps: float = 1e-8) -> PyTree:
    """Adam's diagonal preconditioner P = √v̂ + ε (params-shaped), v̂ = ν / (1 − β₂^t) the
    bias-corrected second moments of the one `optax.ScaleByAdamState` in opt_state (an
    `optax.adam` / `adamw` state or a chain holding one); b2 and eps must be the optimiser's.
    The update is −η m̂ / P, so λ_max(P⁻¹ H) is the preconditioned sharpness (Cohen et al.
    2022). ValueError when opt_state has no Adam second moments. Traceable."""
    try:
        adam = find_state(opt_state, optax.ScaleByAdamState)
    except ValueError as err:
        raise ValueError("the optimiser state has no Adam second moments (optax "
                         f"ScaleByAdamState): {err}") from err  # fmt: skip
    if not 0 <= b2 < 1 or not eps >= 0:
        raise ValueError(f"need 0 <= b2 < 1 and eps >= 0, got b2 = {b2}, eps = {eps}")
    t = jnp.maximum(adam.count, 1)

    def diagonal(nu):
        correction = 1 - jnp.asarray(b2, nu.dtype) ** t.astype(nu.dtype)
        return jnp.sqrt(nu / correction) + jnp.asarray(eps, nu.dtype)

    return jax.tree_util.tree_map(diagonal, adam.nu)


# ----------------------------------------------------------------------------- host side


def monitor_state(tree: PyTree) -> MonitorState:
    """The one `MonitorState` inside a pytree (an optax chain's state), or the state itself."""
    return find_state(tree, MonitorState)


def read_log(tree: PyTree) -> MonitorLog:
    """The recorded measurements in chronological order (numpy), from a `MonitorState` or any
    pytree holding one."""
    s = monitor_state(tree)
    count, capacity = int(s.count), int(s.steps.shape[0])
    m = min(count, capacity)
    order = np.arange(count - m, count) % capacity
    return MonitorLog(
        *(np.asarray(getattr(s, f))[order] for f in MonitorLog._fields)  # same field names
    )


def check_finite(tree: PyTree) -> None:
    """Raise `MonitorDivergence` (naming the step, what and its value) when the monitor saw a
    non-finite training loss or measurement; the state it carries keeps every measurement
    taken before (none is taken from that step on)."""
    s = monitor_state(tree)
    step = int(s.diverged_at)
    if step < 0:
        return
    what = _WHAT.get(int(s.diverged_what), "value")
    log = read_log(s)
    kept = log.steps[log.steps < step] if log.steps.size else log.steps
    last = f", the last at step {int(kept[-1])}" if kept.size else ""
    raise MonitorDivergence(
        f"{what} became {float(s.diverged_value)} at step {step}: training diverged (or the "
        f"curvature is not finite there); the monitor kept {kept.size} measurements{last}",
        s,
        step,
    )
