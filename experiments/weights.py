r"""Hessian eigenvectors vs the weights and the training trajectory (Haink, "Hessian
Eigenvectors and Principal Component Analysis of Neural Network Weight Matrices", arXiv
2311.00452).

  python -m experiments.weights --workdir=runs/weights
  python -m experiments.weights --workdir=runs/weights_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist

Trains an MLP (SGD by default) with `hessjax.analysis.trajectory.recording` chained after the
optimizer, so the jitted `lax.scan` training loop keeps a ring buffer of the last snapshots of
the weights θ_t and the updates Δ_t. Then, at the trained params:

* the top-k (and bottom) Hessian eigenpairs;
* PCA of the weight snapshots vs PCA of the update snapshots over the late window: overlap of
  their top-k subspaces with the top-k Hessian eigenspace (chance k/n);
* the drift mode: top principal component of the weight snapshots, its explained variance,
  its curvature dᵀHd and the decay rate of the motion along it;
* PCA variances against the Hessian eigenvalues: the i-th variance against λ_i (log-log
  slope of the rank-matched spectra) and each component's own curvature p_iᵀHp_i;
* the quadratic-potential model on the recorded trajectory itself: along each top
  eigenvector, c_i(t) = <θ_t − θ*, e_i> from the weight snapshots (θ*'s coordinates fitted),
  the fitted per-step decay ρ_i (one-step regression of the snapshots: exact under GD, the
  autoregressive form of the model under SGD) against 1 − ηλ_i at the training η;
* the quadratic-potential model along the top eigendirections: a short full-batch GD probe
  from the trained params (pure recorder in a `lax.scan`), fitted decay (1 − ηλ_i)^t of the
  projected updates, λ_fit vs λ;
* each Dense kernel's SVD directions u_i v_iᵀ vs the whole network's eigenvectors and vs the
  kernel block's own eigenvectors, and every eigenvector's alignment |cos(e_j, θ)| (globally
  and per layer) vs its eigenvalue.

Writes into the workdir: pca_vs_hessian_overlap.png, pca_vs_hessian_eigenvalues.png,
drift_mode.png, quadratic_fit.png, trajectory_fit.png, weight_alignment.png, svd_overlap.png,
svd_curvature.png and, last, results.json (the previous
run's copies are deleted first), and the checkpoint params_weights.ckpt of the trained params
and snapshots (reused when the same data/model/train/record config is run again).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from scipy import stats

from experiments import common, figures
from hessjax import curvature, distributed, linalg, training
from hessjax.analysis import blocks as analysis_blocks
from hessjax.analysis import trajectory, weights

OUTPUTS = (
    "results.json", "pca_vs_hessian_overlap.png", "pca_vs_hessian_eigenvalues.png",
    "drift_mode.png", "quadratic_fit.png", "trajectory_fit.png", "weight_alignment.png",
    "svd_overlap.png", "svd_curvature.png",
)  # fmt: skip
RULES = common.SHARED_RULES | {
    "record.capacity": common.int_at_least(2),
    "record.every": common.POSITIVE_INT,
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.top_k": common.POSITIVE_INT,
    "hessian.bottom_k": common.NONNEGATIVE_INT,
    "hessian.num_steps": common.NONNEGATIVE_INT,
    "hessian.tol": common.POSITIVE,
    "hessian.layer_k": common.NONNEGATIVE_INT,
    "pca.k": common.POSITIVE_INT,
    "pca.ks": common.ints_at_least(1),
    "fit.num_directions": common.POSITIVE_INT,
    "fit.steps": common.int_at_least(3),
    "fit.learning_rate": common.real_in(0.0, closed=True),
    "fit.rel_floor": common.PROBABILITY,
    "svd.num_show": common.POSITIVE_INT,
    "svd.num_top": common.POSITIVE_INT,
    "svd.trace_probes": common.int_at_least(2),
}
RELATIONS = (
    common.at_most_train_samples("hessian.num_samples"),
    common.at_most("hessian.microbatch_size", "hessian.num_samples"),
    common.at_most_train_samples("train.batch_size"),
    common.divides_mesh("hessian.microbatch_size"),
    common.Relation(
        "record.every",
        lambda c: 2 * c.record.every <= c.train.steps,
        "at most train.steps / 2 (PCA needs >= 2 snapshots)",
    ),
)


def _floats(values, digits: int = 6) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.ravel(values)]


def train_recorded(config, workdir: str, loss_fn, params, ds, key):
    """Train with the recording optax transform chained after the optimizer, or resume params,
    history and snapshots from the workdir when they were written under the same config.
    Returns (params, history, Trajectory)."""
    t, r = config.train, config.record
    fingerprint = {k: config[k].to_dict() for k in ("data", "model", "train", "record")}
    fingerprint |= {"seed": config.seed}
    ckpt = os.path.join(workdir, "params_weights.ckpt")
    empty = np.zeros(0)  # snapshot arrays are restored whatever their shape
    target = {"params": params, "trajectory": {"steps": empty, "params": empty, "updates": empty}}
    loaded = common.load_checkpoint(ckpt, fingerprint, target)
    if loaded is not None:
        state, meta = loaded
        traj = trajectory.Trajectory(**state["trajectory"])
        logging.info("resumed trained params and %d snapshots from %s", len(traj.steps), ckpt)
        return state["params"], meta["history"], traj

    optimizer = optax.chain(
        training.make_optimizer(t.optimizer, t.learning_rate),
        trajectory.recording(int(r.capacity), int(r.every)),
    )
    params, history, opt_state = training.train(
        loss_fn, params, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train),
        optimizer=optimizer, num_steps=int(t.steps), batch_size=int(t.batch_size), key=key,
        log_every=int(t.log_every), return_opt_state=True,
        log=lambda s, v: logging.info("train step %d/%d: loss %.4f", s, t.steps, v),
    )  # fmt: skip
    traj = trajectory.read_snapshots(opt_state)
    state = {"params": params, "trajectory": traj._asdict()}
    common.save_checkpoint(ckpt, fingerprint, state, {"history": history})
    return params, history, traj


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps"))
def gd_probe(loss_fn, params, batch, learning_rate, num_steps: int):
    """num_steps of full-batch gradient descent on loss_fn(·, batch) from params, recorded
    every step with the pure recorder inside one lax.scan. Returns the RecorderState."""
    state = trajectory.init_recorder(params, num_steps, 1)

    def step(carry, t):
        p, s = carry
        grads = jax.grad(loss_fn)(p, batch)
        update = jax.tree_util.tree_map(lambda g: -learning_rate * g, grads)
        return (optax.apply_updates(p, update), trajectory.record(s, t, p, update)), None

    (_, state), _ = jax.lax.scan(step, (params, state), jnp.arange(num_steps))
    return state


def _eigsh(op, k: int, which: str, h, key):
    num_steps = h.num_steps or max(4 * k, linalg.default_num_steps(k, op.size))
    res = linalg.eigsh(op, k, key=key, which=which, num_steps=min(num_steps, op.size), tol=h.tol)
    if not bool(np.all(res.converged)):
        logging.warning("eigsh %s: %d of %d pairs unconverged", which,
                        int(np.sum(~np.asarray(res.converged))), k)  # fmt: skip
    return res


def _loglog_slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Slope of log y against log x over the pairs where both are positive (None if < 2)."""
    ok = (x > 0) & (y > 0)
    return analysis_blocks.fit_loglog_slope(x[ok], y[ok])[0] if ok.sum() >= 2 else None


def pca_spectrum(res: trajectory.PCA, op, values: np.ndarray) -> dict:
    """The PCA's variances against the Hessian by eigenvalues: the i-th variance against the
    i-th eigenvalue λ_i (rank-matched spectra: log-log slope over i < k), and each component's
    own curvature p_iᵀHp_i (k products) against its variance (Spearman, log-log slope)."""
    var = np.asarray(res.explained_variance, np.float64)
    k = var.shape[0]
    curv = weights.rayleigh_quotients(op, res.components, block_size=min(k, 32))
    return {
        "explained_variance": _floats(var, 12),
        "component_curvature": _floats(curv),
        "variance_vs_eigenvalue_slope": _loglog_slope(values[:k], var),
        "variance_decay": float(var[0] / var[-1]),
        "eigenvalue_decay": float(values[0] / values[k - 1]),
        "curvature_variance_spearman": float(stats.spearmanr(var, curv).statistic)
        if k > 2
        else None,
        "curvature_vs_variance_slope": _loglog_slope(var, curv),
    }


def pca_part(config, traj, op, vectors: np.ndarray, values: np.ndarray) -> tuple[dict, dict]:
    """PCA of weights and of updates over the window; overlap vs k with the Hessian's top-k
    eigenspace, and the PCA variances against the Hessian eigenvalues (`pca_spectrum`).
    Returns (json part, PCA results)."""
    p = config.pca
    k = min(int(p.k), len(traj.steps) - 1, vectors.shape[1])
    ks = sorted({int(x) for x in p.ks if int(x) <= k} | {k})
    out, fits = {}, {}
    for name, snaps in (("weights", traj.params), ("updates", traj.updates)):
        res = trajectory.pca(snaps, k)
        curve = trajectory.pca_overlap(res, vectors)
        fits[name] = res
        out[name] = {
            "explained_variance_ratio": _floats(res.explained_variance_ratio),
            "overlap": curve.as_dict(),
            "overlap_at": {str(kk): curve.at(kk) for kk in ks},
            "spectrum": pca_spectrum(res, op, values),
        }
    out["chance_at"] = {str(kk): kk / vectors.shape[0] for kk in ks}
    out["k"] = k
    logging.info(
        "overlap with the top-k Hessian eigenspace at k=%s: PCA of weights %s, PCA of updates "
        "%s, chance %s", ks, [round(out["weights"]["overlap_at"][str(x)], 3) for x in ks],
        [round(out["updates"]["overlap_at"][str(x)], 3) for x in ks],
        [f"{x / vectors.shape[0]:.1e}" for x in ks],
    )  # fmt: skip
    for name in ("weights", "updates"):
        sp = out[name]["spectrum"]
        logging.info(
            "PCA of %s vs the Hessian by eigenvalues: variance_i vs λ_i log-log slope %s "
            "(variance decays ×%.3g over %d components, λ ×%.3g); Spearman(variance, p_iᵀHp_i) "
            "%s", name, _fmt(sp["variance_vs_eigenvalue_slope"]), sp["variance_decay"], k,
            sp["eigenvalue_decay"], _fmt(sp["curvature_variance_spearman"]),
        )  # fmt: skip
    return out, fits


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def trajectory_part(config, traj, vectors: np.ndarray, values: np.ndarray):
    """The quadratic-potential model on the recorded training trajectory itself: along each
    top eigenvector, c_i(t) = <θ_t − θ*, e_i> from the weight snapshots
    (`trajectory.trajectory_quadratic_fit`), its fitted per-step decay ρ_i against 1 − ηλ_i
    (the prediction for plain SGD at the training η; None for adam)."""
    lr = float(config.train.learning_rate)
    q = trajectory.trajectory_quadratic_fit(traj.params, traj.steps, vectors, values, lr)
    sgd = config.train.optimizer == "sgd"
    err = np.abs(q.ratio - q.predicted_ratio)
    every = int(config.record.every)
    out = {
        "learning_rate": lr,
        "window": [int(traj.steps[0]), int(traj.steps[-1])],
        "snapshot_every": every,
        "eigenvalues": _floats(q.eigenvalues),
        "predicted_ratio": _floats(q.predicted_ratio) if sgd else None,
        "predicted_snapshot_ratio": _floats(q.predicted_ratio**every) if sgd else None,
        "ratio": _floats(q.ratio),
        "snapshot_ratio": _floats(q.snapshot_ratio),
        "ratio_abs_error": _floats(err) if sgd else None,
        "fitted": _floats(q.fitted) if sgd else None,
        "relative_error": _floats(q.relative_error) if sgd else None,
        "r2": _floats(q.r2),
        "minimum": _floats(q.minimum),
        "amplitude": _floats(q.amplitude),
        "median_ratio_abs_error": float(np.nanmedian(err)) if sgd else None,
        "median_relative_error": float(np.nanmedian(q.relative_error)) if sgd else None,
        "median_r2": float(np.nanmedian(q.r2)),
        "ratio_spearman": float(
            stats.spearmanr(q.ratio, q.predicted_ratio, nan_policy="omit").statistic
        )
        if sgd and len(values) > 2
        else None,
    }
    logging.info(
        "quadratic model on the training trajectory (steps %d..%d, η=%g): 1 − ηλ %s\n"
        "  fitted ρ %s (R² %s); median |ρ − (1 − ηλ)| %s, median rel. error of λ_fit %s",
        *out["window"], lr, np.round(q.predicted_ratio[:10], 4).tolist(),
        np.round(q.ratio[:10], 4).tolist(), np.round(q.r2[:10], 2).tolist(),
        _fmt(out["median_ratio_abs_error"]), _fmt(out["median_relative_error"]),
    )  # fmt: skip
    return out, q


def drift_part(config, traj, op, vectors: np.ndarray, values: np.ndarray):
    """Drift mode of the weight window: explained variance, share of the net displacement,
    curvature dᵀHd, overlap with the top eigenspace, decay of its coordinate's increments."""
    drift = trajectory.drift_mode(traj.params, traj.steps)
    theta = np.asarray(traj.params[-1], np.float64)
    d = jnp.asarray(drift.direction, op.dtype)
    rayleigh = float(d @ (op @ d))
    fit = trajectory.fit_decay(
        drift.coordinates, traj.steps, float(config.train.learning_rate), differences=True
    )
    sgd = config.train.optimizer == "sgd"
    out = {
        "explained_variance_ratio": drift.explained_variance_ratio,
        "displacement_share": drift.displacement_share,
        "curvature": rayleigh,
        "top_eigenspace_overlap": float(np.sum((vectors.T @ drift.direction) ** 2)),
        "weight_cos": float(abs(drift.direction @ theta) / np.linalg.norm(theta)),
        "decay_ratio_per_step": float(fit.ratio[0]),
        "decay_fit_r2": float(fit.r2[0]),
        # (1 - ρ)/η is the curvature the quadratic model assigns to it (plain SGD only)
        "fitted_curvature": float(fit.fitted_eigenvalues[0]) if sgd else None,
        "window": [int(traj.steps[0]), int(traj.steps[-1])],
        "top_eigenvalue": float(values[0]),
    }
    null = trajectory.random_walk_drift(
        len(traj.steps), traj.params.shape[1], key=jax.random.key(config.seed + 5), num_walks=10
    )  # the same statistics for isotropic random walks of the same shape
    out["random_walk_null"] = null._asdict()
    logging.info(
        "drift mode (steps %d..%d): %.1f%% of the weight variance, %.1f%% of the net "
        "displacement (random walks: %.1f%%, %.1f%%); dᵀHd = %.4g (λ₁ = %.4g); decay "
        "ratio/step %.6f (R² %.2f) -> λ_fit %s",
        *out["window"], 100 * out["explained_variance_ratio"], 100 * out["displacement_share"],
        100 * null.explained_variance_ratio, 100 * null.displacement_share, rayleigh, values[0],
        out["decay_ratio_per_step"], out["decay_fit_r2"],
        "n/a" if not sgd else f"{out['fitted_curvature']:.4g}",
    )  # fmt: skip
    return out, drift, fit


def fit_part(config, loss_fn, params, batch, vectors: np.ndarray, values: np.ndarray):
    """Quadratic model along the top eigendirections from a full-batch GD probe."""
    f = config.fit
    lr = float(f.learning_rate or config.train.learning_rate)
    m = min(int(f.num_directions), vectors.shape[1])
    state = gd_probe(loss_fn, params, batch, lr, int(f.steps))
    probe = trajectory.read_snapshots(state)
    q = trajectory.quadratic_model_fit(
        probe.updates, probe.steps, vectors[:, :m], values[:m], lr,
        differences=True, rel_floor=float(f.rel_floor),
    )  # fmt: skip
    out = {
        "learning_rate": lr,
        "probe_steps": int(f.steps),
        "eigenvalues": _floats(q.eigenvalues),
        "fitted": _floats(q.fitted),
        "relative_error": _floats(q.relative_error),
        "ratio_per_step": _floats(q.decay.ratio),
        "r2": _floats(q.decay.r2),
        "num_points": [int(x) for x in q.decay.num_points],
        "median_relative_error": float(np.nanmedian(q.relative_error)),
    }
    logging.info(
        "quadratic model, GD probe η=%g: λ %s\n  λ_fit %s (median rel. error %.3f)",
        lr, np.round(q.eigenvalues, 3).tolist(), np.round(q.fitted, 3).tolist(),
        out["median_relative_error"],
    )  # fmt: skip
    return out, q, probe


def _svd_summary(ov: weights.SVDOverlap, num_top: int, num_show: int) -> dict:
    i, j, best = ov.best()
    mass = np.maximum(ov.kernel_mass, 1e-300)
    rows_cols = float(np.mean(ov.kernel_mass / np.maximum(ov.chance, 1e-300)))  # rows·cols
    share_top = ov.overlap[:num_top].sum(axis=0) / mass
    share_all = ov.overlap.sum(axis=0) / mass
    return {
        "best": {"svd_index": i, "eigen_index": j, "overlap": best},
        "top_direction_vs_top_eigvec": float(ov.overlap[0, 0]),
        "kernel_mass": _floats(ov.kernel_mass),
        "chance": _floats(ov.chance),
        # share of e_j's in-kernel part along the first num_top / all r SVD directions, vs
        # the share num_top / (rows·cols), r / (rows·cols) of a random unit vector
        "share_top_svd": _floats(share_top),
        "share_top_svd_chance": num_top / rows_cols,
        "share_all_svd": _floats(share_all),
        "share_all_svd_chance": ov.overlap.shape[0] / rows_cols,
        "overlap": [_floats(row) for row in ov.overlap[:num_show]],
        "singular_values": _floats(ov.singular_values[:num_show]),
    }


def svd_part(config, loss_fn, params, data, op, vectors, values, h, key):
    """For each kernel: its SVD directions vs the whole network's top eigenvectors and vs the
    top eigenvectors of the kernel's own Hessian block H_ll; the curvature dᵀH_ll d of every
    SVD direction against the block's mean curvature tr(H_ll)/n_l (Hutchinson).

    The kernel blocks are handled together: one operator over all kernels, its layer-block
    diagonal D (restricted products), `block_eigsh` for every block's eigenpairs in one
    compiled Lanczos, and one batch of products with D for all curvatures."""
    s = config.svd
    k_eig, k_probe = jax.random.split(key)
    kop = distributed.placed_operator(
        curvature.hessian_operator,
        config.mesh,
        loss_fn,
        params,
        data,
        select=lambda path: path.split("/")[-1] == "kernel",
    )
    part = curvature.partition_by_layer(kop.layout)
    diag = curvature.layer_block_diagonal(kop, part)
    svds = weights.weight_svd(kop.layout, params)  # slices in the kernels-only layout
    whole_svds = {ws.name: ws for ws in weights.weight_svd(op.layout, params)}
    sizes = [ws.kernel.size for ws in svds]
    k_l = min(int(h.layer_k), min(sizes) - 1)
    block_vectors = None
    if k_l >= 1:
        res = linalg.block_eigsh(
            kop, part, k_l, key=k_eig, tol=h.tol,
            num_steps=max(4 * k_l, linalg.default_num_steps(k_l, max(sizes))),
            block_diagonal=diag,
        )  # fmt: skip
        block_values = np.asarray(res.eigenvalues, np.float64)  # (b, k_l)
        block_vectors = np.asarray(distributed.to_host(res.eigenvectors), np.float64)  # packed
        if not bool(np.all(res.converged)):
            unconverged = int(np.sum(~np.asarray(res.converged)))
            logging.warning(
                "block_eigsh: %d of %d pairs unconverged", unconverged, res.converged.size
            )
    # curvature of every SVD direction and Hutchinson probes of every block, one batch
    dirs = np.concatenate([weights.svd_directions(ws) for ws in svds], axis=1)
    num_probes = int(s.trace_probes)
    probes = np.asarray(linalg.probes(k_probe, kop.size, num_probes, kop.dtype), np.float64)
    products = np.asarray(
        linalg.apply_block(diag, jnp.asarray(np.concatenate([dirs, probes], 1), kop.dtype), 32),
        np.float64,
    )
    c_all = np.sum(dirs * products[:, : dirs.shape[1]], axis=0)
    probe_sq = probes * products[:, dirs.shape[1] :]
    out, mats, curv = {}, {}, {}
    offset = 0
    for ws in svds:
        b = part.index(ws.name)
        ov = weights.svd_eigen_overlap(whole_svds[ws.name], vectors, values)
        entry = {"shape": list(ws.kernel.shape), "whole": _svd_summary(ov, s.num_top, s.num_show)}
        mats[f"{ws.name} (whole H)"] = ov.overlap[: s.num_show]
        if block_vectors is not None:
            bov = weights.svd_eigen_overlap(ws, block_vectors, block_values[b])
            entry["block"] = _svd_summary(bov, s.num_top, s.num_show)
            entry["block"]["eigenvalues"] = _floats(block_values[b])
            mats[f"{ws.name} (block H_ll)"] = bov.overlap[: s.num_show]
        r = ws.s.shape[0]
        c_svd = c_all[offset : offset + r]
        offset += r
        samples = probe_sq[part.block_ids == b].sum(axis=0)  # v_lᵀ H_ll v_l per probe
        mean_c = float(samples.mean()) / ws.kernel.size
        stderr = float(samples.std(ddof=1) / np.sqrt(num_probes)) / ws.kernel.size
        top = min(int(s.num_top), r)
        entry["curvature"] = {
            "svd_directions": _floats(c_svd),
            "singular_values": _floats(ws.s),
            "mean": mean_c,
            "mean_stderr": stderr,
            "top_svd_over_mean": float(np.mean(c_svd[:top]) / mean_c),
            "all_svd_over_mean": float(np.mean(c_svd) / mean_c),
            "spearman_singular_value": float(stats.spearmanr(ws.s, c_svd).statistic)
            if r > 2
            else None,
        }
        curv[ws.name] = (ws.s, c_svd, mean_c)
        out[ws.name] = entry
        logging.info(
            "[%s %s] SVD vs whole-H eigvecs: best |<u_i v_iᵀ, e_j>|² %.3f at (i=%d, j=%d); "
            "(1,1) %.3g; e₁ mass in kernel %.3f; top-%d SVD share of e₁'s kernel part %.3f "
            "(chance %.2g)%s; curvature of the top-%d SVD directions / mean %.2f (all %.2f, "
            "Spearman with s_i %.2f)",
            ws.name, "x".join(map(str, ws.kernel.shape)), entry["whole"]["best"]["overlap"],
            entry["whole"]["best"]["svd_index"], entry["whole"]["best"]["eigen_index"],
            entry["whole"]["top_direction_vs_top_eigvec"], entry["whole"]["kernel_mass"][0],
            s.num_top, entry["whole"]["share_top_svd"][0], entry["whole"]["share_top_svd_chance"],
            "" if "block" not in entry else
            f"; vs block eigvecs: best {entry['block']['best']['overlap']:.3f}, (1,1) "
            f"{entry['block']['top_direction_vs_top_eigvec']:.3g}, top-{s.num_top} share of "
            f"e₁ {entry['block']['share_top_svd'][0]:.3f}",
            top, entry["curvature"]["top_svd_over_mean"], entry["curvature"]["all_svd_over_mean"],
            entry["curvature"]["spearman_singular_value"] or float("nan"),
        )  # fmt: skip
    return out, mats, curv


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    h = config.hessian
    key = jax.random.key(config.seed)
    k_init, k_train, k_top, k_bottom, k_layer, k_trace = jax.random.split(key, 6)
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    ds = common.load_data(config.data)
    model, params, loss_fn = common.init_classifier(config.model, ds, k_init)
    distributed.check_mesh_fits(config.mesh, params, h.microbatch_size)

    (params, history, traj), seconds["train"] = common.timed(
        "training (recorded)", train_recorded, config, workdir, loss_fn, params, ds, k_train
    )
    test_acc = float(training.accuracy(model.apply, params, ds.x_test, ds.y_test))
    logging.info("test accuracy %.4f; %d snapshots, steps %d..%d", test_acc, len(traj.steps),
                 traj.steps[0], traj.steps[-1])  # fmt: skip

    t0 = time.perf_counter()
    data = common.hessian_data(ds.x_train, ds.y_train, h.num_samples, h.microbatch_size)
    op = distributed.placed_operator(curvature.hessian_operator, config.mesh, loss_fn, params, data)
    n = op.size
    top = _eigsh(op, int(h.top_k), "LA", h, k_top)
    values = np.asarray(top.eigenvalues, np.float64)
    vectors = distributed.host_orthonormal(top.eigenvectors)
    logging.info("top eigenvalues %s (%d HVPs)", np.round(values, 3).tolist(), top.num_matvecs)
    bottom = None
    if h.bottom_k:
        bottom = _eigsh(op, int(h.bottom_k), "SA", h, k_bottom)
        logging.info("bottom eigenvalues %s", np.round(bottom.eigenvalues, 4).tolist())
    seconds["eigenpairs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pca_out, pca_fits = pca_part(config, traj, op, vectors, values)
    drift_out, drift, drift_fit = drift_part(config, traj, op, vectors, values)
    traj_out, traj_fit = trajectory_part(config, traj, vectors, values)
    seconds["pca_drift"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch = common.hessian_data(ds.x_train, ds.y_train, h.num_samples)
    fit_out, qfit, probe = fit_part(config, loss_fn, params, batch, vectors, values)
    seconds["quadratic_fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    svd_out, svd_mats, svd_curv = svd_part(
        config, loss_fn, params, data, op, vectors, values, h, k_layer
    )
    all_values, all_vectors = values, vectors
    if bottom is not None:
        all_values = np.concatenate([values, np.asarray(bottom.eigenvalues, np.float64)])
        all_vectors = np.concatenate([vectors, np.asarray(bottom.eigenvectors, np.float64)], 1)
    align = weights.weight_alignment(op.layout, params, all_vectors, all_values)
    top_cos = align.global_cos[: len(values)]
    corr = float(np.corrcoef(np.log(values[values > 0]), np.log(top_cos[values > 0]))[0, 1])
    trace = linalg.hutchinson(op, num_probes=int(config.svd.trace_probes), key=k_trace)
    theta = np.asarray(op.layout.ravel(params), np.float64)
    theta_unit = jnp.asarray(theta / np.linalg.norm(theta), op.dtype)
    align_out = align.as_dict() | {
        "log_log_corr_top": corr,
        # share of ‖θ‖² in the top-k eigenspace (chance k/n) and θ's own curvature
        "weight_energy_top_k": float(np.sum(top_cos**2)),
        "weight_energy_chance": len(values) / n,
        "weight_curvature": float(theta_unit @ (op @ theta_unit)),
        "mean_curvature": float(trace.estimate) / n,  # tr(H)/n, Hutchinson
        "mean_curvature_stderr": float(trace.stderr) / n,
    }
    logging.info(
        "|cos(e_j, θ)| for the top %d eigenvectors: %s (chance %.4f); corr(log λ, log|cos|) "
        "%.2f; bottom: %s", len(values), np.round(top_cos, 4).tolist(), align.global_chance,
        corr, np.round(align.global_cos[len(values):], 4).tolist(),
    )  # fmt: skip
    logging.info(
        "share of ‖θ‖² in the top-%d eigenspace %.2e (chance %.2e); θᵀHθ/‖θ‖² = %.4g vs mean "
        "curvature tr(H)/n = %.4g ± %.2g", len(values), align_out["weight_energy_top_k"],
        align_out["weight_energy_chance"], align_out["weight_curvature"],
        align_out["mean_curvature"], align_out["mean_curvature_stderr"],
    )  # fmt: skip
    seconds["svd_alignment"] = time.perf_counter() - t0

    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "num_params": int(n),
        "train_history": history,
        "test_accuracy": test_acc,
        "hessian_samples": int(h.num_samples),
        "window": {
            "steps": [int(traj.steps[0]), int(traj.steps[-1])],
            "num_snapshots": int(len(traj.steps)),
        },  # fmt: skip
        "top_eigenvalues": _floats(values),
        "top_converged": np.asarray(top.converged).tolist(),
        "bottom_eigenvalues": None if bottom is None else _floats(bottom.eigenvalues),
        "pca": pca_out,
        "drift_mode": drift_out,
        "quadratic_fit": fit_out,
        "trajectory_fit": traj_out,
        "svd": svd_out,
        "alignment": align_out,
        "seconds": seconds,
    }

    t0 = time.perf_counter()
    title = (f"{ds.name}, {config.model.kind} {tuple(config.model.widths)} "
             f"{config.model.activation}, {config.train.optimizer} η={config.train.learning_rate}, "
             f"{n} params")  # fmt: skip
    figures.plot_overlap_curves(
        {"PCA of weights": pca_out["weights"]["overlap"],
         "PCA of updates": pca_out["updates"]["overlap"]},
        os.path.join(workdir, "pca_vs_hessian_overlap.png"),
        title=f"top-k PCA subspace vs top-k Hessian eigenspace, steps {traj.steps[0]}.."
        f"{traj.steps[-1]}\n{title}",
    )  # fmt: skip
    figures.plot_drift_mode(
        drift.steps, drift.coordinates, pca_fits["weights"].explained_variance_ratio,
        pca_fits["updates"].explained_variance_ratio,
        os.path.join(workdir, "drift_mode.png"),
        title=f"drift mode: {100 * drift.explained_variance_ratio:.1f}% of the weight variance, "
        f"dᵀHd = {drift_out['curvature']:.3g} (λ₁ = {values[0]:.3g})\n{title}",
    )  # fmt: skip
    figures.plot_quadratic_fit(
        probe.steps[:-1], qfit.coordinates[1:] - qfit.coordinates[:-1], qfit.decay.ratio,
        qfit.decay.log_amplitude, qfit.eigenvalues, qfit.fitted,
        os.path.join(workdir, "quadratic_fit.png"),
        title=f"quadratic model along the top eigenvectors, GD probe η={fit_out['learning_rate']}"
        f"\n{title}",
    )  # fmt: skip
    figures.plot_trajectory_fit(
        traj.steps, traj_fit.coefficients, traj_fit.eigenvalues,
        traj_out["predicted_ratio"], traj_fit.ratio, traj_fit.r2,
        os.path.join(workdir, "trajectory_fit.png"),
        title=f"quadratic model on the recorded training trajectory, steps {traj.steps[0]}.."
        f"{traj.steps[-1]}, every {config.record.every} (η = {config.train.learning_rate})"
        f"\n{title}",
    )  # fmt: skip
    figures.plot_pca_spectra(
        values, {name: (pca_out[name]["spectrum"]["explained_variance"],
                        pca_out[name]["spectrum"]["component_curvature"])
                 for name in ("weights", "updates")},
        os.path.join(workdir, "pca_vs_hessian_eigenvalues.png"),
        title=f"PCA variances vs Hessian eigenvalues, steps {traj.steps[0]}..{traj.steps[-1]}"
        f"\n{title}",
    )  # fmt: skip
    figures.plot_weight_alignment(
        align.eigenvalues, align.global_cos, dict(zip(align.names, align.layer_cos, strict=True)),
        align.global_chance, os.path.join(workdir, "weight_alignment.png"),
        title=f"eigenvector alignment with the weights\n{title}",
    )  # fmt: skip
    figures.plot_svd_overlap(
        svd_mats, os.path.join(workdir, "svd_overlap.png"),
        title=f"|<u_i v_iᵀ, e_j>|² per kernel\n{title}",
    )  # fmt: skip
    figures.plot_svd_curvature(
        {name: v[0] for name, v in svd_curv.items()},
        {name: v[1] for name, v in svd_curv.items()},
        {name: v[2] for name, v in svd_curv.items()},
        os.path.join(workdir, "svd_curvature.png"),
        title=f"curvature along the SVD directions u_i v_iᵀ of each kernel\n{title}",
    )  # fmt: skip
    seconds["figures"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and figures to %s (%.1f s)", workdir, seconds["total"])
    return results


if __name__ == "__main__":
    common.run_binary("weights", run)
