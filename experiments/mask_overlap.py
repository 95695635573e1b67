r"""Parameter magnitudes vs Hessian eigenspaces over training (Fernandez, Schneider, Mahsereci
and Hennig, "Connecting Parameter Magnitudes and Hessian Eigenspaces at Scale using Sketched
Methods", TMLR 2025).

  python -m experiments.mask_overlap --workdir=runs/mask_overlap            # MNIST-1D
  python -m experiments.mask_overlap --workdir=runs/mask_overlap_mnist \
      --config.data.dir=../shared/data/mnist                                # paper: 16×16 MNIST
  python -m experiments.mask_overlap --config=experiments/configs/mask_overlap.py:large \
      --config.data.dir=../shared/data/mnist                                # one GPU

Trains with SGD and stops at `config.checkpoints` (training between them carries the optimizer
state). At each checkpoint, with H the Hessian of the mean cross-entropy on class-balanced
training samples and n the number of parameters:

* exact: H in float64 as a dense (n, n) matrix (vmapped HVP blocks), numpy `eigh`, eigenpairs
  ranked by |λ| (skipped above `exact.max_params`);
* sketch: `linalg.sketch_eigh(op, sketch.k)` on the float32 operator, ranked by |λ|, with its
  a-posteriori error estimate of ‖H − Ĥ_k‖_F / ‖H‖_F;
* for every k in `overlap.ks`: overlap ‖V_k[mask]‖²_F / k between the top-k |θ| mask and the
  top-k eigenspace V_k (exact and sketched), its chance level k/n, the overlaps of random
  k-masks (mean ± std), the per-layer magnitude mask (each layer keeps its share of k), and
  the Grassmann distances between the mask and V_k;
* the sketch against the exact answer: true relative error vs the estimate (and the optimal
  rank-k error), relative error of the sketched eigenvalues (top 10 and all k), overlap of
  the sketched and exact top-k eigenspaces.

Writes into the workdir: spectra.npz (the exact eigenvalues and the sketched ones at every
checkpoint), mask_overlap.png (overlap vs training step, one panel per k, with chance and
random-mask bands), sketch_accuracy.png (sketch vs exact) and, last, results.json (the
previous run's copies are deleted first), and per checkpoint state_<step>.ckpt (training
state, measurements and spectra; reused when the same config is run again, so an interrupted
run resumes).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature, distributed, linalg, training
from hessjax.data import (
    DATASET_NAMES,
    Dataset,
    class_balanced_subset,
    load_dataset,
    microbatches,
)

OUTPUTS = ("results.json", "spectra.npz", "mask_overlap.png", "sketch_accuracy.png")
RULES = common.SHARED_RULES | {
    "data.name": common.one_of("auto", *DATASET_NAMES),
    "data.resize": common.NONNEGATIVE_INT,
    "train.steps": common.Rule(lambda v: v == 0, "0 (unused: config.checkpoints are the steps)"),
    "checkpoints": common.ints_at_least(0),
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "overlap.ks": common.ints_at_least(1),
    "overlap.num_random_masks": common.POSITIVE_INT,
    "overlap.layerwise": common.BOOL,
    "exact.enabled": common.BOOL,
    "exact.max_params": common.POSITIVE_INT,
    "exact.block_size": common.POSITIVE_INT,
    "sketch.k": common.POSITIVE_INT,
    "sketch.outer": common.NONNEGATIVE_INT,
    "sketch.inner": common.NONNEGATIVE_INT,
    "sketch.test_matrix": common.one_of("gaussian", "rademacher", "srtt"),
    "sketch.error_probes": common.POSITIVE_INT,
    "sketch.block_size": common.NONNEGATIVE_INT,
}
RELATIONS = (
    common.at_most_train_samples("hessian.num_samples", lambda c: _resolved_data(c.data)),
    common.at_most("hessian.microbatch_size", "hessian.num_samples"),
    common.divides_mesh("hessian.microbatch_size"),
    common.Relation(
        "sketch.outer",
        lambda c: c.sketch.outer == 0 or c.sketch.outer >= c.sketch.k,
        "0 (2 sketch.k) or at least sketch.k",
    ),
    common.Relation(
        "sketch.inner",
        lambda c: c.sketch.inner == 0 or c.sketch.inner >= _sketch_sizes(c.sketch)[1],
        "0 (2 outer) or at least the outer size",
    ),
)
NUM_TOP = 20  # eigenvalues by |λ| written to results.json per checkpoint (all in spectra.npz)


# ----------------------------------------------------------------------------- data, model


def resize_images(x, size: int) -> np.ndarray:
    """Flat square images (N, s·s) -> (N, size, size, 1) float32, resized bilinearly
    (`jax.image.resize`, antialiased when shrinking); size 0 or s keeps them as they are."""
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"inputs of {x.shape[1]} features are not square images")
    x = jnp.asarray(x).reshape(len(x), side, side, 1)
    if size and size != side:
        x = jax.image.resize(x, (len(x), size, size, 1), "bilinear")
    return np.asarray(x, np.float32)


def _resolved_data(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the data config with name 'auto' resolved: mnist when `dir` is set, else
    mnist1d."""
    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    if cfg.name == "auto":
        cfg.name = "mnist" if cfg.get("dir") else "mnist1d"
    return cfg


def load_data(data_cfg: ml_collections.ConfigDict) -> Dataset:
    """Dataset of `data_cfg` (name 'auto': see `_resolved_data`). MNIST-style images become
    (N, s, s, 1) in [0, 1] (no standardisation), s = `resize` (0: kept; see `resize_images`);
    MNIST-1D stays (N, 40)."""
    cfg = _resolved_data(data_cfg).to_dict()
    ds = load_dataset(cfg)
    if cfg["name"] not in ("mnist", "fashion_mnist"):
        return ds
    size = int(cfg.get("resize", 0))
    return ds._replace(
        x_train=resize_images(ds.x_train, size), x_test=resize_images(ds.x_test, size)
    )


def sketch_peak_bytes(n: int, k: int, outer: int, inner: int, itemsize: int = 4) -> int:
    """Estimated peak memory of `linalg.sketch_eigh` (current implementation): the test
    matrices, their concatenation, the products and their slices in the operator dtype
    (3 (outer + inner) columns), and the float64 core (Y, Φ, Q, Q U: 2 outer + inner + k)."""
    return int(n * (3 * (outer + inner) * itemsize + 8 * (2 * outer + inner + k)))


def _sketch_sizes(s: ml_collections.ConfigDict) -> tuple[int, int, int]:
    outer = s.outer or 2 * s.k
    return s.k, outer, s.inner or 2 * outer


# ----------------------------------------------------------------------------- measuring


def _overlaps(theta, basis, ks, partition, random_masks) -> dict:
    """Mask-vs-eigenspace metrics for each k (basis columns ranked by |λ|, >= max ks)."""
    out = {"overlap": {}, "layerwise_overlap": {}, "random": {}, "grassmann": {}}
    for k in ks:
        vk = basis[:, :k]
        mask = linalg.top_magnitude_mask(theta, k)
        out["overlap"][k] = float(linalg.mask_overlap(mask, vk))
        if partition is not None:
            layer_mask = linalg.top_magnitude_mask(theta, k, partition)
            out["layerwise_overlap"][k] = float(linalg.mask_overlap(layer_mask, vk))
        dist = linalg.mask_grassmann_distances(mask, vk)  # no dense (n, k) mask basis
        out["grassmann"][k] = {name: float(v) for name, v in dist._asdict().items()}
        values = [float(linalg.mask_overlap(m, vk)) for m in random_masks[k]]
        out["random"][k] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values,
        }
    return out


def _dense_hessian(loss_fn, params, data, block_size: int) -> np.ndarray:
    """(n, n) float64 Hessian from vmapped float64 HVP blocks."""
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        data64 = (jnp.asarray(data[0], jnp.float64), data[1])
        op64 = curvature.hessian_operator(loss_fn, params64, data64)
        h = np.asarray(linalg.to_dense(op64, block_size))
    return (h + h.T) / 2


def sketch_vs_exact(h, lam, vec, lam_s, vec_s, ks) -> dict:
    """Accuracy of sketched eigenpairs against the exact ones. h: (n, n) matrix; lam (n,): all
    its eigenvalues ranked by |λ|, vec (n, >= max ks): the matching eigenvectors; lam_s (k,),
    vec_s (n, k): the sketch's, ranked by |λ|. True error ‖H − V_s Λ_s V_sᵀ‖_F / ‖H‖_F (exact
    for any V_s, orthonormal or not), the optimal rank-k error, relative eigenvalue errors of
    the top 10 and of all k (`linalg.magnitude_errors`), and the overlap of the sketched and exact
    top-k eigenspaces for each k in ks (<= k)."""
    k_s = lam_s.shape[0]
    fro2 = float(np.sum(lam**2))
    gram = vec_s.T @ vec_s
    approx2 = float(np.sum(lam_s[:, None] * lam_s[None, :] * gram**2))  # ‖V Λ Vᵀ‖²_F
    cross = float(np.sum(lam_s * np.einsum("ij,ij->j", vec_s, h @ vec_s)))  # tr(H V Λ Vᵀ)
    top = min(10, k_s)
    rel_top = linalg.magnitude_errors(lam_s[:top], lam[:top])
    rel = linalg.magnitude_errors(lam_s, lam[:k_s])
    return {
        "true_relative_error": float(np.sqrt(max(fro2 - 2 * cross + approx2, 0.0) / fro2)),
        "optimal_relative_error": float(np.sqrt(np.sum(lam[k_s:] ** 2) / fro2)),
        "eigenvalue_rel_error": {
            "top10_max": float(rel_top.max()),
            "top10_median": float(np.median(rel_top)),
            "all_max": float(rel.max()),
            "all_median": float(np.median(rel)),
            "per_rank": rel.tolist(),
        },
        "subspace_overlap_with_exact": {
            k: float(linalg.subspace_overlap(vec_s[:, :k], vec[:, :k])) for k in ks
        },
    }


def measure(config, step, params, loss_fn, model, data, ds, ks, random_masks, key) -> tuple:
    """All metrics at one checkpoint; returns (record, exact eigenvalues or None, sketched
    eigenvalues)."""
    op = common.placed_hessian(config.mesh, loss_fn, params, data)
    n = op.size
    theta = np.asarray(op.ravel(params))
    partition = None
    if config.overlap.layerwise:
        partition = curvature.partition_by_layer(op.layout)
    flat_data = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), data)
    record = {
        "step": int(step),
        "hessian_loss": float(jax.jit(loss_fn)(params, flat_data)),
        "test_accuracy": float(training.accuracy(model.apply, params, ds.x_test, ds.y_test)),
        "theta_norm": float(np.linalg.norm(theta)),
    }

    # --- sketched eigendecomposition of the float32 operator
    s = config.sketch
    k_s, outer, inner = _sketch_sizes(s)
    start = time.perf_counter()
    sk = linalg.sketch_eigh(
        op, k_s, key=key, outer=outer, inner=inner, test_matrix=s.test_matrix,
        error_probes=s.error_probes, block_size=s.block_size or None,
    )  # fmt: skip
    lam_s = np.asarray(jax.block_until_ready(sk.eigenvalues), np.float64)
    vec_s = np.asarray(distributed.to_host(sk.eigenvectors), np.float64)
    sketch_ks = [k for k in ks if k <= k_s]
    record["sketch"] = {
        "k": k_s,
        "outer": outer,
        "inner": inner,
        "test_matrix": s.test_matrix,
        "num_matvecs": int(sk.num_matvecs),
        "seconds": time.perf_counter() - start,
        "eigenvalues_top": lam_s[:NUM_TOP].tolist(),
        "error_estimate": float(sk.error_estimate),
        "error_stderr": float(sk.error_stderr),
    } | _overlaps(theta, vec_s, sketch_ks, partition, random_masks)
    logging.info(
        "[step %d] sketch k=%d (%d HVPs, %.1f s): top |λ| %s, error estimate %.4f ± %.4f",
        step, k_s, sk.num_matvecs, record["sketch"]["seconds"], np.round(lam_s[:3], 4),
        sk.error_estimate, sk.error_stderr,
    )  # fmt: skip

    if not (config.exact.enabled and n <= config.exact.max_params):
        record["exact"] = None
        if config.exact.enabled:
            logging.info("exact eigh skipped: n = %d > exact.max_params", n)
        return record, None, lam_s

    # --- exact: dense float64 Hessian and eigh
    e = {}
    start = time.perf_counter()
    h = _dense_hessian(loss_fn, params, data, config.exact.block_size)
    e["seconds_dense_hessian"] = time.perf_counter() - start
    start = time.perf_counter()
    lam, vec = np.linalg.eigh(h)
    e["seconds_eigh"] = time.perf_counter() - start
    order = np.argsort(-np.abs(lam), kind="stable")
    lam, vec = lam[order], vec[:, order[: max(ks)]]
    fro2 = float(np.sum(lam**2))
    e |= {
        "eigenvalues_top": lam[:NUM_TOP].tolist(),
        # below −n·eps·max|λ|: eigenvalues within round-off of 0 count as neither sign
        "num_negative": int(np.sum(lam < -n * np.finfo(np.float64).eps * np.abs(lam[0]))),
        "frobenius": float(np.sqrt(fro2)),
        "trace": float(np.sum(lam)),
    } | _overlaps(theta, vec, ks, partition, random_masks)
    record["exact"] = e

    # --- the sketch against the exact answer
    record["sketch"] |= sketch_vs_exact(h, lam, vec, lam_s, vec_s, sketch_ks)
    logging.info(
        "[step %d] exact (dense %.1f s, eigh %.1f s): top |λ| %s; sketch true error %.4f "
        "(estimate %.4f, optimal rank-%d %.4f), top-10 eigenvalue rel. error <= %.2e",
        step, e["seconds_dense_hessian"], e["seconds_eigh"], np.round(lam[:3], 4),
        record["sketch"]["true_relative_error"],
        sk.error_estimate, k_s, record["sketch"]["optimal_relative_error"],
        record["sketch"]["eigenvalue_rel_error"]["top10_max"],
    )  # fmt: skip
    return record, lam, lam_s


# ----------------------------------------------------------------------------- main


def _fingerprint(config, checkpoints_so_far) -> dict:
    return config.to_dict() | {"checkpoints": list(checkpoints_so_far)}


def _checkpoint_path(workdir, step) -> str:
    return os.path.join(workdir, f"state_{step}.ckpt")


def _load_checkpoint(workdir, step, fingerprint, target):
    loaded = common.load_checkpoint(_checkpoint_path(workdir, step), fingerprint, target)
    if loaded is None:
        return None
    restored, saved = loaded
    spectra = {name: np.asarray(saved["spectra"][name]) for name in ("exact", "sketch")}
    return restored, saved["record"], saved["history"], spectra


def _save_checkpoint(workdir, step, fingerprint, state, record, history, lam, lam_s):
    spectra = {"exact": [] if lam is None else lam.tolist(), "sketch": lam_s.tolist()}
    meta = {"record": record, "history": history, "spectra": spectra}
    common.save_checkpoint(_checkpoint_path(workdir, step), fingerprint, state, meta)


def _keyed(d):
    """JSON round trip turns int keys into str; make them str everywhere for one format."""
    return json.loads(json.dumps(d))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    k_init, k_train, k_masks, k_sketch = jax.random.split(key, 4)

    ds = load_data(config.data)
    logging.info(
        "data %s: %d train / %d test, input %s",
        ds.name, len(ds.y_train), len(ds.y_test), ds.x_train.shape[1:],
    )  # fmt: skip
    model, params, loss_fn = common.init_classifier(config.model, ds, k_init)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    common.check_mesh_fits(config.mesh, params, config.hessian.microbatch_size)

    h = config.hessian
    if h.num_samples % ds.num_classes:
        raise ValueError(f"hessian.num_samples must be a multiple of {ds.num_classes} classes")
    hx, hy = class_balanced_subset(
        ds.x_train, ds.y_train, h.num_samples // ds.num_classes, seed=config.seed
    )
    data = microbatches((jnp.asarray(hx), jnp.asarray(hy)), h.microbatch_size)

    ks = sorted({int(k) for k in config.overlap.ks if 1 <= int(k) <= n})
    dropped = sorted({int(k) for k in config.overlap.ks} - set(ks))
    if dropped:
        logging.info("overlap.ks %s dropped: outside [1, n = %d]", dropped, n)
    if not ks:
        raise ValueError(f"no overlap.ks in [1, n = {n}]: {tuple(config.overlap.ks)}")
    k_s, outer, inner = _sketch_sizes(config.sketch)
    peak = sketch_peak_bytes(n, k_s, outer, inner)
    logging.info(
        "sketch k=%d outer=%d inner=%d: peak memory ≈ %.2f GB", k_s, outer, inner, peak / 1e9
    )
    random_masks = {
        k: [
            linalg.random_mask(jax.random.fold_in(jax.random.fold_in(k_masks, k), r), n, k)
            for r in range(config.overlap.num_random_masks)
        ]
        for k in ks
    }

    checkpoints = sorted({int(c) for c in config.checkpoints})
    if not checkpoints or checkpoints[0] < 0:
        raise ValueError(f"checkpoints must be non-negative steps, got {config.checkpoints}")
    t = config.train
    optimizer = training.make_optimizer(t.optimizer, t.learning_rate)
    x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    state = {"params": params, "opt_state": optimizer.init(params)}
    done, history, records, spectra = 0, [], [], {"exact": [], "sketch": []}
    for i, step in enumerate(checkpoints):
        fingerprint = _fingerprint(config, checkpoints[: i + 1])
        loaded = _load_checkpoint(workdir, step, fingerprint, state)
        train_seconds = 0.0
        if loaded is not None:
            state, record, history, spec = loaded
            logging.info("[step %d] resumed from %s", step, workdir)
        else:
            if step > done:  # minibatch keys depend on the segment's start step
                t0 = time.perf_counter()
                new_params, segment, opt_state = training.train(
                    loss_fn, state["params"], x_train, y_train, optimizer=optimizer,
                    num_steps=step - done, batch_size=t.batch_size,
                    key=jax.random.fold_in(k_train, done), log_every=t.log_every,
                    opt_state=state["opt_state"], return_opt_state=True,
                )  # fmt: skip
                state = {"params": new_params, "opt_state": opt_state}
                history = history + [(done + s, loss) for s, loss in segment]
                train_seconds = time.perf_counter() - t0
                logging.info("[step %d] trained: loss %.4f", step, segment[-1][1])
            t0 = time.perf_counter()
            record, lam, lam_s = measure(
                config, step, state["params"], loss_fn, model, data, ds, ks, random_masks,
                jax.random.fold_in(k_sketch, step),
            )  # fmt: skip
            record["train_loss"] = history[-1][1] if history else None
            record["seconds"] = {"train": train_seconds, "measure": time.perf_counter() - t0}
            record = _keyed(record)
            _save_checkpoint(workdir, step, fingerprint, state, record, history, lam, lam_s)
            spec = {"exact": np.asarray([] if lam is None else lam), "sketch": lam_s}
        done = step
        records.append(record)
        for name in spectra:
            spectra[name].append(spec[name])
        _log_checkpoint(record, ks)

    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "input_shape": list(ds.x_train.shape[1:]),
        "num_params": int(n),
        "hessian_samples": int(h.num_samples),
        "ks": ks,
        "chance": {str(k): linalg.overlap_chance(k, n) for k in ks},
        "sketch_peak_bytes_estimate": peak,
        "train_history": history,
        "checkpoints": records,
        "seconds_total": time.perf_counter() - start,
    }
    arrays = {"steps": np.asarray(checkpoints)}
    for name in ("exact", "sketch"):
        arrays |= {f"{name}_{s}": v for s, v in zip(checkpoints, spectra[name], strict=True)}
    common.write_atomic(os.path.join(workdir, "spectra.npz"), lambda f: np.savez(f, **arrays))
    _plot(results, spectra, workdir, config)
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json, spectra.npz and figures to %s", workdir)
    return results


def _log_checkpoint(record, ks) -> None:
    for k in ks:
        key = str(k)
        exact = record["exact"]["overlap"].get(key) if record["exact"] else None
        rnd = (record["exact"] or record["sketch"])["random"].get(key)
        logging.info(
            "[step %d] k=%d: overlap exact %s, sketch %s, random %s",
            record["step"], k, "-" if exact is None else f"{exact:.4f}",
            f"{record['sketch']['overlap'][key]:.4f}" if key in record["sketch"]["overlap"]
            else "-", "-" if rnd is None else f"{rnd['mean']:.4f} ± {rnd['std']:.4f}",
        )  # fmt: skip


def _plot(results, spectra, workdir, config) -> None:
    recs = results["checkpoints"]
    steps = [r["step"] for r in recs]
    ks = results["ks"]

    def series(kind, field):
        out = {}
        for k in ks:
            values = [(r[kind] or {}).get(field, {}).get(str(k)) for r in recs]
            if any(v is not None for v in values):
                out[k] = values
        return out

    exact, sketch = series("exact", "overlap"), series("sketch", "overlap")
    rnd = {}
    for k in ks:
        source = "exact" if k in exact else "sketch"
        values = [(r[source] or {}).get("random", {}).get(str(k)) for r in recs]
        if all(v is not None for v in values):
            rnd[k] = ([v["mean"] for v in values], [v["std"] for v in values])
    name = f"{results['dataset']}, {config.model.kind} {tuple(config.model.widths)}"
    figures.plot_mask_overlap(
        steps, exact, sketch, {k: results["chance"][str(k)] for k in ks}, rnd,
        os.path.join(workdir, "mask_overlap.png"),
        title=f"{name}, {results['num_params']} params: top-k |θ| mask vs top-k |λ| eigenspace",
        layerwise=series("exact", "layerwise_overlap") or series("sketch", "layerwise_overlap"),
    )  # fmt: skip
    figures.plot_sketch_accuracy(
        steps,
        [None if len(v) == 0 else v for v in spectra["exact"]],
        spectra["sketch"],
        [r["sketch"]["error_estimate"] for r in recs],
        [r["sketch"]["error_stderr"] for r in recs],
        [r["sketch"].get("true_relative_error") for r in recs],
        [r["sketch"].get("optimal_relative_error") for r in recs],
        exact, sketch,
        os.path.join(workdir, "sketch_accuracy.png"),
        title=f"{name}: sketch_eigh (k={recs[0]['sketch']['k']}, outer "
        f"{recs[0]['sketch']['outer']}, inner {recs[0]['sketch']['inner']}) vs exact eigh",
    )  # fmt: skip


if __name__ == "__main__":
    common.run_binary("mask_overlap", run)
