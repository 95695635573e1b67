"""The training trajectory against the Hessian (Haink, arXiv 2311.00452).

Recording (bounded memory, inside any jitted training loop):

* `init_recorder(params, capacity, every)` / `record(state, step, params, update)`: a pure
  ring buffer of the last `capacity` snapshots (taken at steps that are multiples of `every`)
  of the flat params θ_t and of the update Δ_t = θ_{t+1} − θ_t applied at that step; jit-,
  scan- and vmap-compatible.
* `recording(capacity, every)`: the same as an optax transformation that passes updates
  through unchanged; chain it last, `optax.chain(optax.sgd(lr), recording(200, 5))`, so that it
  sees the final updates. Read the snapshots out of any optimizer state with
  `read_snapshots(opt_state)` (it finds the recorder inside the chain's state).

Flat vectors are the params' leaves in `jax.tree_util` leaf order, each flattened row-major:
the layout of `make_layout(params)` (and of a `hessian_operator` without `select`), so
`op.unravel(row)` turns a snapshot back into a params tree.

Analysis (float64 numpy on the snapshots):

* `pca`: top-k principal directions (SVD of the centred snapshot matrix) and explained-
  variance ratios; `pca_overlap`: their overlap with a Hessian eigenspace for each k
  (`hessjax.linalg.overlap_curve`).
* `drift_mode`: the top principal component of late-training weight snapshots, its share of
  the variance and of the net displacement; `random_walk_drift`: the same statistics for
  isotropic Gaussian random walks, the null they are judged against (the top principal
  component of a random walk already carries ~6/π² ≈ 61 % of its variance).
* `fit_decay`, `quadratic_model_fit`: the quadratic-potential model along directions e_i,
  c_i(t) = <θ(t) − θ*, e_i> ≈ c_i(0)·(1 − ηλ_i)^t: a log-linear least-squares fit of |c_i(t)|
  gives |1 − ηλ_i|, the sign comes from sign flips between snapshots, and
  λ_i^fit = (1 − ρ_i)/η. Projections of the updates (or of the increments between weight
  snapshots) decay with the same ratio and need no θ*. `trajectory_quadratic_fit` fits the
  model to recorded weight snapshots themselves (one-step regression of each coordinate,
  exact under GD and the autoregressive form of the model under SGD): ρ_i, θ*'s coordinates
  and c_i(t) = <θ_t − θ*, e_i>, next to the prediction 1 − ηλ_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from hessjax.linalg.subspace import OverlapCurve, overlap_curve
from hessjax.training import find_state

Array = jax.Array
PyTree = Any

# ----------------------------------------------------------------------------- recorder


class RecorderState(NamedTuple):
    """Ring buffer of snapshots, all arrays (a pytree; lives in a scan carry or opt_state).

    params (capacity, n): flat θ_t; updates (capacity, n): flat Δ_t = θ_{t+1} − θ_t; steps
    (capacity,) int32: the step t of each slot (-1 while empty); count () int32: snapshots
    taken so far (slot count % capacity is written next); every () int32: the recording
    period.
    """

    params: Array
    updates: Array
    steps: Array
    count: Array
    every: Array


def _flatten(tree: PyTree, size: int, dtype, what: str) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no array leaves")
    flat = jnp.concatenate([jnp.ravel(x) for x in leaves])
    if flat.shape != (size,):
        raise ValueError(
            f"{what} has {flat.shape[0]} entries in its leaves, the recorder was built for {size}"
        )
    return flat.astype(dtype)


def _check_positive(value: int, name: str) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def init_recorder(params: PyTree, capacity: int, every: int = 1) -> RecorderState:
    """Empty recorder for params (any pytree of floating arrays sharing one dtype) keeping the
    last `capacity` snapshots taken every `every` steps: 2·capacity·n numbers of memory."""
    _check_positive(capacity, "capacity")
    _check_positive(every, "every")
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves")
    dtypes = {jnp.result_type(x) for x in leaves}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise ValueError(f"params must share one floating dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    size = sum(int(np.size(x)) for x in leaves)
    zeros = jnp.zeros((capacity, size), dtype)
    return RecorderState(
        params=zeros,
        updates=zeros,
        steps=jnp.full((capacity,), -1, jnp.int32),
        count=jnp.zeros((), jnp.int32),
        every=jnp.asarray(every, jnp.int32),
    )


def record(state: RecorderState, step: ArrayLike, params: PyTree, update: PyTree) -> RecorderState:
    """Store (θ_t, Δ_t) = (params, update) when step % every == 0, else return the state
    unchanged (as values; one row is rewritten either way, O(n), no host sync). params and
    update: trees with the recorded params' leaves (update as optax updates: the change
    applied to params at this step)."""
    capacity, size = state.params.shape
    flat_p = _flatten(params, size, state.params.dtype, "params")
    flat_u = _flatten(update, size, state.updates.dtype, "update")
    step = jnp.asarray(step, jnp.int32)
    take = (step % state.every) == 0
    slot = state.count % capacity
    return RecorderState(
        params=state.params.at[slot].set(jnp.where(take, flat_p, state.params[slot])),
        updates=state.updates.at[slot].set(jnp.where(take, flat_u, state.updates[slot])),
        steps=state.steps.at[slot].set(jnp.where(take, step, state.steps[slot])),
        count=state.count + take.astype(jnp.int32),
        every=state.every,
    )


class RecordingState(NamedTuple):
    """optax state of `recording`: step () int32 updates seen so far; recorder: the buffer."""

    step: Array
    recorder: RecorderState


def recording(capacity: int, every: int = 1) -> optax.GradientTransformation:
    """optax transformation that returns the updates unchanged and records (params, updates)
    every `every` steps into a ring buffer of `capacity` snapshots (see `record`). Chain it
    last so that it sees the updates actually applied; update() needs params."""
    _check_positive(capacity, "capacity")
    _check_positive(every, "every")

    def init_fn(params):
        return RecordingState(jnp.zeros((), jnp.int32), init_recorder(params, capacity, every))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("recording() needs params: call update(updates, state, params)")
        recorder = record(state.recorder, state.step, params, updates)
        return updates, RecordingState(state.step + 1, recorder)

    return optax.GradientTransformation(init_fn, update_fn)


def recorder_state(tree: PyTree) -> RecorderState:
    """The one `RecorderState` inside a pytree (e.g. the opt_state of a chain holding
    `recording`); the state itself is returned as it is."""
    return find_state(tree, RecorderState)


class Trajectory(NamedTuple):
    """Recorded snapshots in chronological order: steps (m,), params (m, n) flat θ_t, updates
    (m, n) flat Δ_t = θ_{t+1} − θ_t, m = min(snapshots taken, capacity)."""

    steps: np.ndarray
    params: np.ndarray
    updates: np.ndarray


def read_snapshots(state: PyTree) -> Trajectory:
    """Host-side read-out of a `RecorderState`, or of the recorder inside an optimizer state."""
    rec = recorder_state(state)
    count, capacity = int(rec.count), int(rec.steps.shape[0])
    m = min(count, capacity)
    order = np.arange(count - m, count) % capacity
    return Trajectory(
        steps=np.asarray(rec.steps)[order],
        params=np.asarray(rec.params)[order],
        updates=np.asarray(rec.updates)[order],
    )


# ----------------------------------------------------------------------------- PCA


def _matrix(x: ArrayLike, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise ValueError(f"{name} must be an (m, n) array with m >= {min_rows}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


class PCA(NamedTuple):
    """Top-k principal directions of m snapshots of R^n.

    components (n, k): orthonormal, by decreasing variance (sign: largest |entry| positive);
    singular_values (k,) of the (centred) snapshot matrix; explained_variance (k,):
    σ²/(m − 1) (centred) or σ²/m; explained_variance_ratio (k,): σ_i² / Σ_all σ²; mean (n,):
    the mean that was subtracted (zeros when not centred); total_variance: Σ_all σ²/(m − 1)
    (or /m).
    """

    components: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    total_variance: float


def _top_right_singular(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-k right singular vectors (n, k) and singular values (k,) of x (m, n), and ‖x‖²_F.

    Wide x (m < n, few snapshots of many parameters): eigh of the (m, m) Gram matrix gives a
    starting basis Xᵀu, refined by one Rayleigh-Ritz step (QR of the (n, k) basis, SVD of the
    (m, k) projection), so the singular values and vectors carry the accuracy of an SVD, not
    the squared condition number of the Gram matrix; O(m²n) instead of LAPACK's slower wide
    SVD. Tall x: plain thin SVD.
    """
    total = float(np.sum(x * x))
    m, n = x.shape
    if m >= n:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        return vt[:k].T, s[:k], total
    _, u = np.linalg.eigh(x @ x.T)
    basis, _ = np.linalg.qr(x.T @ u[:, ::-1][:, :k])  # (n, k)
    _, s, wt = np.linalg.svd(x @ basis, full_matrices=False)  # (m, k) projection
    return basis @ wt.T, s, total


def pca(snapshots: ArrayLike, k: int, *, center: bool = True) -> PCA:
    """Principal components of snapshots (m, n) (rows: flat weights or updates over a window)
    from the thin SVD of the centred (or raw, center=False) matrix; 1 <= k <= rank bound
    min(m − 1, n) (min(m, n) uncentred)."""
    x = _matrix(snapshots, "snapshots")
    m, n = x.shape
    top = min(m - 1, n) if center else min(m, n)
    if not isinstance(k, int | np.integer) or not 1 <= k <= top:
        raise ValueError(f"k must be an integer in [1, {top}] for {m} snapshots of R^{n}, got {k}")
    mean = x.mean(axis=0) if center else np.zeros(n)
    comps, s, total = _top_right_singular(x - mean, k)
    if total == 0.0:
        raise ValueError("the snapshots do not vary: every principal component is undefined")
    flip = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])
    comps = comps * np.where(flip == 0, 1.0, flip)
    dof = m - 1 if center else m
    return PCA(comps, s[:k], s[:k] ** 2 / dof, s[:k] ** 2 / total, mean, total / dof)


def pca_overlap(
    result: PCA, eigenvectors: ArrayLike, ks: Sequence[int] | None = None
) -> OverlapCurve:
    """Overlap ‖PₖᵀEₖ‖²_F / k of the top-k principal subspace with the top-k eigenspace
    (eigenvectors (n, K), largest eigenvalue first) for each k in ks (default 1 .. min)."""
    return overlap_curve(result.components, eigenvectors, ks)


class DriftMode(NamedTuple):
    """The drift mode of a window of weight snapshots.

    direction (n,): the top principal component (unit; oriented along the net displacement);
    explained_variance_ratio: its share of the snapshots' variance; displacement_share:
    cos² between the net displacement θ_last − θ_first and the direction; steps (m,);
    coordinates (m,): <θ(t) − θ̄, direction>.
    """

    direction: np.ndarray
    explained_variance_ratio: float
    displacement_share: float
    steps: np.ndarray
    coordinates: np.ndarray


def drift_mode(snapshots: ArrayLike, steps: ArrayLike | None = None) -> DriftMode:
    """Top principal component of weight snapshots (m, n) at steps (m,) (default 0 .. m-1),
    e.g. `read_snapshots(...).params` late in training."""
    x = _matrix(snapshots, "snapshots")
    t = np.arange(x.shape[0]) if steps is None else np.asarray(steps)
    if t.shape != (x.shape[0],):
        raise ValueError(f"steps must have shape ({x.shape[0]},), got {t.shape}")
    res = pca(x, 1)
    d = res.components[:, 0]
    coords = (x - res.mean) @ d
    if coords[-1] < coords[0]:
        d, coords = -d, -coords
    disp = x[-1] - x[0]
    disp_sq = float(disp @ disp)
    share = float((disp @ d) ** 2 / disp_sq) if disp_sq > 0 else float("nan")
    return DriftMode(d, float(res.explained_variance_ratio[0]), share, t, coords)


class DriftNull(NamedTuple):
    """`drift_mode` statistics of isotropic random walks: mean and standard deviation over
    `num_walks` walks of the explained-variance ratio and of the displacement share."""

    explained_variance_ratio: float
    explained_variance_ratio_std: float
    displacement_share: float
    displacement_share_std: float
    num_walks: int


def random_walk_drift(
    num_snapshots: int, dim: int, *, key: Array, num_walks: int = 20
) -> DriftNull:
    """The null of `drift_mode`: m = num_snapshots snapshots θ_t = Σ_{s<=t} ξ_s, ξ_s ~ N(0,
    I_dim), of `num_walks` independent walks, each through `drift_mode`. For m << dim the
    explained-variance ratio tends to 6/π² ≈ 0.608, the first Karhunen-Loève share of
    Brownian motion with its mean removed (Antognini and Sohl-Dickstein 2018)."""
    _check_positive(num_walks, "num_walks")
    if num_snapshots < 3 or dim < 1:
        raise ValueError(f"need num_snapshots >= 3 and dim >= 1, got {num_snapshots}, {dim}")
    ratios, shares = [], []
    for walk_key in jax.random.split(key, num_walks):
        steps = np.asarray(jax.random.normal(walk_key, (num_snapshots, dim)), np.float64)
        d = drift_mode(np.cumsum(steps, axis=0))
        ratios.append(d.explained_variance_ratio)
        shares.append(d.displacement_share)
    return DriftNull(float(np.mean(ratios)), float(np.std(ratios)), float(np.mean(shares)),
                     float(np.std(shares)), num_walks)  # fmt: skip


# ----------------------------------------------------------------------------- decay fit


class DecayFit(NamedTuple):
    """Per-direction geometric decay c_i(t) ≈ c_i(t₀)·ρ_i^(t − t₀) fitted to k series.

    ratio (k,): the signed per-step factor ρ_i (|ρ_i| from the log-linear slope, the sign
    from sign flips); fitted_eigenvalues (k,): (1 − ρ_i)/η; log_amplitude (k,): log|c_i(t₀)|
    of the fit; r2 (k,): R² of the log-linear fit; num_points (k,): points used (above the
    floor); flip_fraction (k,): share of sign changes between consecutive used points an odd
    number of steps apart (NaN if there are none); sign_known (k,): whether any such pair
    exists (else ρ_i is taken positive); learning_rate: η. NaN where fewer than 2 points.
    """

    ratio: np.ndarray
    fitted_eigenvalues: np.ndarray
    log_amplitude: np.ndarray
    r2: np.ndarray
    num_points: np.ndarray
    flip_fraction: np.ndarray
    sign_known: np.ndarray
    learning_rate: float


def _fit_one(c: np.ndarray, t: np.ndarray, rel_floor: float):
    mag = np.abs(c)
    peak = float(mag.max(initial=0.0))
    used = np.flatnonzero((mag > rel_floor * peak) & (mag > 0))
    nan = float("nan")
    if used.size < 2:
        return nan, nan, nan, int(used.size), nan, False
    x, y = (t[used] - t[0]).astype(np.float64), np.log(mag[used])
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    if sxx == 0.0:
        return nan, nan, nan, int(used.size), nan, False
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = ym - slope * xm
    resid = y - (intercept + slope * x)
    syy = float(np.sum((y - ym) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / syy if syy > 0 else 1.0
    consecutive = np.flatnonzero(np.diff(used) == 1)  # pairs of adjacent used snapshots
    gaps = t[used[consecutive] + 1] - t[used[consecutive]]
    odd = consecutive[gaps % 2 == 1]
    if odd.size:
        flips = np.sign(c[used[odd]]) != np.sign(c[used[odd] + 1])
        flip_fraction = float(np.mean(flips))
    else:
        flip_fraction = nan
    sign_known = bool(odd.size)
    sign = -1.0 if sign_known and flip_fraction > 0.5 else 1.0
    return (
        sign * float(np.exp(slope)),
        float(intercept),
        r2,
        int(used.size),
        flip_fraction,
        sign_known,
    )


def fit_decay(
    coordinates: ArrayLike,
    steps: ArrayLike,
    learning_rate: float,
    *,
    rel_floor: float = 1e-12,
    differences: bool = False,
) -> DecayFit:
    """Fit c_i(t) ≈ c_i(t₀)·ρ_i^(t − t₀) to each column of coordinates (m, k) (or (m,)) at
    steps (m,) (increasing; any spacing) by least squares on log|c_i(t)|.

    Points with |c_i| <= rel_floor·max_t|c_i| are left out (a series that has decayed to
    round-off or noise). ρ_i < 0 (ηλ_i > 1: the coordinate flips sign every step) is detected
    from sign changes between consecutive snapshots an odd number of steps apart; with only
    even gaps the sign is invisible and taken positive (sign_known False).
    differences: fit the increments c(t_{j+1}) − c(t_j) instead (at t_j; equal spacing
    needed): they decay with the same ρ and need no θ* when c are raw projections of θ(t).
    """
    c = np.asarray(coordinates, np.float64)
    c = c[:, None] if c.ndim == 1 else c
    t = np.asarray(steps)
    if c.ndim != 2 or t.shape != (c.shape[0],):
        raise ValueError(
            f"coordinates must be (m,) or (m, k) with m = len(steps); got {c.shape}, {t.shape}"
        )
    if not np.issubdtype(t.dtype, np.integer) or np.any(np.diff(t) <= 0):
        raise ValueError("steps must be strictly increasing integers")
    if not np.all(np.isfinite(c)):
        raise ValueError("coordinates have non-finite entries")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if not 0.0 <= rel_floor < 1.0:
        raise ValueError(f"rel_floor must be in [0, 1), got {rel_floor!r}")
    if differences:
        if len(set(np.diff(t).tolist())) > 1:
            raise ValueError("differences=True needs equally spaced steps")
        c, t = np.diff(c, axis=0), t[:-1]
    if c.shape[0] < 2:
        raise ValueError(f"need at least 2 points to fit, got {c.shape[0]}")
    rows = [_fit_one(c[:, i], t, rel_floor) for i in range(c.shape[1])]
    ratio, log_amp, r2, npts, flip, known = (np.asarray(col) for col in zip(*rows, strict=True))
    return DecayFit(
        ratio=ratio.astype(np.float64),
        fitted_eigenvalues=(1.0 - ratio) / learning_rate,
        log_amplitude=log_amp.astype(np.float64),
        r2=r2.astype(np.float64),
        num_points=npts.astype(np.int64),
        flip_fraction=flip.astype(np.float64),
        sign_known=known.astype(bool),
        learning_rate=float(learning_rate),
    )


def project(
    snapshots: ArrayLike, vectors: ArrayLike, reference: ArrayLike | None = None
) -> np.ndarray:
    """Coordinates (m, k) = (snapshots (m, n) − reference (n,)) @ vectors (n, k)."""
    x = _matrix(snapshots, "snapshots", min_rows=1)
    v = np.asarray(vectors, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[0] != x.shape[1]:
        raise ValueError(f"vectors must be (n, k) with n = {x.shape[1]}, got {v.shape}")
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        if ref.shape != (x.shape[1],):
            raise ValueError(f"reference must have shape ({x.shape[1]},), got {ref.shape}")
        x = x - ref
    return x @ v


class QuadraticModelFit(NamedTuple):
    """The quadratic-potential model along k eigendirections: eigenvalues (k,) measured λ_i;
    fitted (k,) λ_i^fit = (1 − ρ_i)/η; relative_error (k,) |λ^fit − λ|/|λ|; coordinates
    (m', k) the series that was fitted; decay: the full `DecayFit`."""

    eigenvalues: np.ndarray
    fitted: np.ndarray
    relative_error: np.ndarray
    coordinates: np.ndarray
    decay: DecayFit


def quadratic_model_fit(
    snapshots: ArrayLike,
    steps: ArrayLike,
    eigenvectors: ArrayLike,
    eigenvalues: ArrayLike,
    learning_rate: float,
    *,
    reference: ArrayLike | None = None,
    differences: bool = False,
    rel_floor: float = 1e-12,
) -> QuadraticModelFit:
    """Fit the decay of the projections of snapshots (m, n) on eigenvectors (n, k) and compare
    λ^fit with eigenvalues (k,). Pass weight snapshots with reference=θ* (c = <θ − θ*, e>),
    weight snapshots with differences=True (no θ* needed), or update snapshots Δ_t (their
    projections −ηλ_i c_i(t) decay with the same ratio). Exact for gradient descent at
    learning rate η on a quadratic loss with Hessian eigenpairs (λ_i, e_i)."""
    lam = np.asarray(eigenvalues, np.float64)
    coords = project(snapshots, eigenvectors, reference)
    if lam.shape != (coords.shape[1],):
        raise ValueError(f"eigenvalues must have shape ({coords.shape[1]},), got {lam.shape}")
    decay = fit_decay(coords, steps, learning_rate, rel_floor=rel_floor, differences=differences)
    fitted = decay.fitted_eigenvalues
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(fitted - lam) / np.abs(lam)
    return QuadraticModelFit(lam, fitted, rel, coords, decay)


class TrajectoryFit(NamedTuple):
    """The quadratic-potential model fitted to recorded weight snapshots θ_t themselves.

    eigenvalues (k,) λ_i; predicted_ratio (k,): 1 − ηλ_i, the per-step factor of gradient
    descent at η on a quadratic with these eigenpairs; snapshot_ratio (k,): the fitted factor
    b_i between consecutive snapshots (ρ_i^s for snapshots s steps apart); ratio (k,): the
    per-step ρ_i = sign(b_i)|b_i|^(1/s) (the sign is visible only for odd s, else taken
    positive); fitted (k,): (1 − ρ_i)/η; relative_error (k,): |fitted − λ|/|λ|; minimum (k,):
    the estimated <θ*, e_i>; amplitude (k,): c_i(t₀); coefficients (m, k): the
    eigen-coefficients c_i(t) = <θ_t − θ*, e_i>; r2 (k,): R² of the one-step regression. NaN
    where undefined (a constant series; θ* where |1 − b_i| < min_contrast: no decay to locate
    a minimum by).
    """

    eigenvalues: np.ndarray
    predicted_ratio: np.ndarray
    snapshot_ratio: np.ndarray
    ratio: np.ndarray
    fitted: np.ndarray
    relative_error: np.ndarray
    minimum: np.ndarray
    amplitude: np.ndarray
    coefficients: np.ndarray
    r2: np.ndarray


def trajectory_quadratic_fit(
    snapshots: ArrayLike,
    steps: ArrayLike,
    eigenvectors: ArrayLike,
    eigenvalues: ArrayLike,
    learning_rate: float,
    *,
    min_contrast: float = 1e-6,
) -> TrajectoryFit:
    """Fit the quadratic-potential model to weight snapshots (m, n) at equally spaced steps
    (m,) s apart, e.g. `read_snapshots(opt_state)` of a training run, along eigenvectors (n, k).

    On a quadratic with minimum θ*, the projections p_i(t) = <θ_t, e_i> obey
    p_i(t + s) − <θ*, e_i> = b_i (p_i(t) − <θ*, e_i>) with b_i = (1 − ηλ_i)^s: exactly under
    gradient descent (c_i(t) = c_i(0)(1 − ηλ_i)^t), and on average under SGD, whose noise
    makes c_i an autoregressive process with that coefficient. So each direction is one least-
    squares line p_i(t + s) = a_i + b_i p_i(t): b_i gives ρ_i, a_i / (1 − b_i) gives
    <θ*, e_i> and c_i(t) = p_i(t) − <θ*, e_i>. Exact for GD on a quadratic loss; needs no θ*
    and no floor on the series."""
    lam = np.asarray(eigenvalues, np.float64)
    p = project(snapshots, eigenvectors)
    t = np.asarray(steps)
    if t.shape != (p.shape[0],) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"steps must be ({p.shape[0]},) integers, got {t.dtype} {t.shape}")
    gaps = set(np.diff(t).tolist())
    if p.shape[0] < 3 or len(gaps) != 1 or min(gaps) <= 0:
        raise ValueError("need >= 3 snapshots at strictly increasing, equally spaced steps")
    if lam.shape != (p.shape[1],):
        raise ValueError(f"eigenvalues must have shape ({p.shape[1]},), got {lam.shape}")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    (gap,) = gaps
    k = p.shape[1]
    b, a, r2 = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
    for i in range(k):
        x, y = p[:-1, i], p[1:, i]
        xc, yc = x - x.mean(), y - y.mean()
        sxx, syy = float(xc @ xc), float(yc @ yc)
        if sxx == 0.0:
            continue
        b[i] = float(xc @ yc) / sxx
        a[i] = y.mean() - b[i] * x.mean()
        r2[i] = 1.0 - float(np.sum((yc - b[i] * xc) ** 2)) / syy if syy > 0 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        sign = np.where((gap % 2 == 1) & (b < 0), -1.0, 1.0)
        rho = sign * np.abs(b) ** (1.0 / gap)
        minimum = np.where(np.abs(1.0 - b) >= min_contrast, a / (1.0 - b), np.nan)
        fitted = (1.0 - rho) / learning_rate
        rel = np.abs(fitted - lam) / np.abs(lam)
    coefficients = p - minimum
    return TrajectoryFit(
        eigenvalues=lam,
        predicted_ratio=1.0 - learning_rate * lam,
        snapshot_ratio=b,
        ratio=rho,
        fitted=fitted,
        relative_error=rel,
        minimum=minimum,
        amplitude=coefficients[0],
        coefficients=coefficients,
        r2=r2,
    )


__all__ = [
    "PCA",
    "DecayFit",
    "DriftMode",
    "DriftNull",
    "QuadraticModelFit",
    "TrajectoryFit",
    "RecorderState",
    "RecordingState",
    "Trajectory",
    "drift_mode",
    "random_walk_drift",
    "fit_decay",
    "init_recorder",
    "pca",
    "pca_overlap",
    "project",
    "quadratic_model_fit",
    "read_snapshots",
    "record",
    "recorder_state",
    "recording",
    "trajectory_quadratic_fit",
]
