r"""Parameter magnitudes vs Hessian eigenspaces over training (Fernandez, Schneider, Mahsereci
and Hennig, "Connecting Parameter Magnitudes and Hessian Eigenspaces at Scale using Sketched
Methods", TMLR 2025).

  python -m experiments.mask_overlap --workdir=runs/mask_overlap            # MNIST-1D
  python -m experiments.mask_overlap --workdir=runs/mask_overlap_mnist \
      --config.data.dir=../shared/data/mnist                                # paper: 16×16 MNIST
  python -m experiments.mask_overlap --config=experiments/configs/mask_overlap.py:large \
      --config.data.dir=../shared/data/mnist                                # one GPU
  python -m experiments.mask_overlap --config=experiments/configs/mask_overlap.py:sweep \
      --workdir=runs/mask_overlap_sweep                                     # size sweep

Trains with SGD and stops at `config.checkpoints` (training between them carries the optimizer
state). At each checkpoint, with H the Hessian of the mean cross-entropy on class-balanced
training samples and n the number of parameters:

* exact: H in float64 as a dense (n, n) matrix (vmapped HVP blocks), numpy `eigh`, eigenpairs
  ranked by |λ| (skipped above `exact.max_params`);
* sketch: `linalg.sketch_eigh(op, sketch.k)` on the float32 operator, ranked by |λ|, with its
  a-posteriori error estimate of ‖H − Ĥ_k‖_F / ‖H‖_F;
* for every k in `overlap.ks`: overlap ‖V_k[mask]‖²_F / k between the top-k |θ| mask and the
  top-k eigenspace V_k (exact and sketched), its chance level k/n, the overlaps of random
  k-masks (mean ± std), the per-layer magnitude mask (each layer keeps its share of k), the
  best k-sparse mask (the k rows of largest ‖V_k[i, :]‖²: an upper bound for any mask), and
  the Grassmann distances between the mask and V_k;
* curves over every k = 1 .. K (K = max overlap.ks exact, sketch.k sketched): the magnitude
  mask's overlap and the best k-sparse mask's (`linalg.mask_overlap_curve`,
  `best_mask_overlap_curve`);
* crystallisation, from the second checkpoint on: IoU of the top-k |θ| masks of this and the
  previous checkpoint (and its chance level) and the overlap of their top-k eigenspaces;
* with `hessian.test_samples` > 0, the Hessian of that many class-balanced test samples
  (exact when the training one is, else sketched): its top eigenvalues, the mask overlaps
  and curves, and the overlap of its top-k eigenspaces with the training ones;
* the sketch against the exact answer: true relative error vs the estimate (and the optimal
  rank-k error), relative error of the sketched eigenvalues (top 10 and all k), overlap of
  the sketched and exact top-k eigenspaces.

Writes into the workdir: spectra.npz (the exact eigenvalues and the sketched ones at every
checkpoint), mask_overlap.png (overlap vs training step, one panel per k, with chance and
random-mask bands), overlap_vs_k.png (the curves), crystallisation.png, sketch_accuracy.png
(sketch vs exact) and, last, results.json (the previous run's copies are deleted first), and
per checkpoint state_<step>.ckpt (training state, measurements and spectra) and
bases_<step>.npz (the ranked eigenbases in float32, n · (max ks + sketch.k) · 4 bytes, for the
crystallisation of the next checkpoint); both are reused when the same config is run again,
so an interrupted run resumes.

Size sweep (a config with a `sweep` section, preset 'sweep'): MLPs of hidden widths
`sweep.widths` at depth `sweep.depth` and of depths `sweep.depths` at width `sweep.width`, each
one run as above in workdir/mlp_<widths> with the single k = round(sweep.k_fraction · n) (and
sketch.k = k); sweep.json (n, k, chance, and per checkpoint the exact and sketched overlaps,
best-mask bound and random masks of every setting; failed settings with their error) and
sweep.png (overlap against n, one panel per sweep).
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
from hessjax.linalg.sketch import DEFAULT_BLOCK_SIZE

OUTPUTS = (
    "results.json",
    "spectra.npz",
    "mask_overlap.png",
    "sketch_accuracy.png",
    "overlap_vs_k.png",
    "crystallisation.png",
)
RULES = common.SHARED_RULES | {
    "data.name": common.one_of("auto", *DATASET_NAMES),
    "data.resize": common.NONNEGATIVE_INT,
    "train.steps": common.Rule(lambda v: v == 0, "0 (unused: config.checkpoints are the steps)"),
    "checkpoints": common.ints_at_least(0),
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.test_samples": common.NONNEGATIVE_INT,
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
SWEEP_OUTPUTS = ("sweep.json", "sweep.png")
SWEEP_RULES = {
    "sweep.widths": common.ints_at_least(1),
    "sweep.depth": common.POSITIVE_INT,
    "sweep.depths": common.ints_at_least(1),
    "sweep.width": common.POSITIVE_INT,
    "sweep.k_fraction": common.real_in(0.0, 0.25, closed=False),
}
BASES = ("exact", "sketch", "test")  # ranked eigenbases kept per checkpoint (bases_<step>.npz)
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


def sketch_peak_bytes(n: int, k: int, outer: int, block_size: int, itemsize: int = 4) -> int:
    """Estimated peak memory in bytes of `linalg.sketch_eigh` beyond the operator's own: its
    documented n · (k_o + k + 3 block_size) · itemsize (the (k_o, n) range basis, the (n, k)
    result, a few blocks of products; the inner sketch size does not enter). Measured on CPU
    (benchmarks/results/memory_cpu.json, "after"): 1,655 bytes/param at k_o = 200, k = 50,
    block 32, i.e. 8.3 bytes/param per outer column, against 1,384 from this formula; the rest
    is the operator's products and the runtime."""
    return int(n * (outer + k + 3 * block_size) * itemsize)


def _sketch_sizes(s: ml_collections.ConfigDict) -> tuple[int, int, int]:
    outer = s.outer or 2 * s.k
    return s.k, outer, s.inner or 2 * outer


def _sketch_block(s: ml_collections.ConfigDict) -> int:
    """Products per block `sketch_eigh` uses for this config (0 = its default)."""
    return min(s.block_size or DEFAULT_BLOCK_SIZE, _sketch_sizes(s)[2])


# ----------------------------------------------------------------------------- measuring


def _overlaps(theta, basis, ks, partition, random_masks) -> dict:
    """Mask-vs-eigenspace metrics for each k in ks (basis (n, K) ranked by |λ|, K >= max ks),
    and the curves over every k = 1 .. K: the top-k |θ| mask and the best k-sparse mask (an
    upper bound; `linalg.best_mask_overlap_curve`)."""
    out = {"overlap": {}, "layerwise_overlap": {}, "random": {}, "grassmann": {}}
    curve = linalg.mask_overlap_curve(theta, basis)
    best = linalg.best_mask_overlap_curve(basis)
    out["curve"] = {"overlap": curve.overlap.tolist(), "best_mask": best.overlap.tolist()}
    out["best_mask"] = {k: float(best.overlap[k - 1]) for k in ks}
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


def crystallisation(theta_prev, theta, bases_prev, bases, ks) -> dict:
    """How much the mask and the eigenspaces move between two checkpoints: IoU of the top-k
    |θ| masks (and its chance level) and the overlap of the top-k eigenspaces of each method
    in bases ('exact', 'sketch': (n, K) ranked bases or None), at each k in ks and as curves
    over every k up to the largest basis width."""
    widths = [b.shape[1] for b in bases.values() if b is not None]
    iou = linalg.magnitude_mask_iou_curve(theta_prev, theta, np.arange(1, max(widths) + 1))
    out = {
        "mask_iou": {k: float(iou.iou[k - 1]) for k in ks},
        "mask_iou_chance": {k: float(iou.chance[k - 1]) for k in ks},
        "mask_iou_curve": iou.iou.tolist(),
    }
    for name, basis in bases.items():
        if basis is None or bases_prev.get(name) is None:
            continue
        curve = linalg.overlap_curve(bases_prev[name], basis)
        out[name] = {
            "eigenspace_overlap": {k: curve.at(k) for k in ks if k <= len(curve.ks)},
            "curve": curve.overlap.tolist(),
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
    vec_s = np.asarray(vec_s, np.float64)
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


def _sketched(config, op, key):
    """`sketch_eigh` of op at the config's sizes: (result, eigenvalues (k,) float64,
    eigenvectors (n, k) in the operator's dtype (so the orthonormality checks use its
    tolerance), numpy, ranked by |λ|, seconds)."""
    s = config.sketch
    k_s, outer, inner = _sketch_sizes(s)
    start = time.perf_counter()
    sk = linalg.sketch_eigh(
        op, k_s, key=key, outer=outer, inner=inner, test_matrix=s.test_matrix,
        error_probes=s.error_probes, block_size=s.block_size or None,
    )  # fmt: skip
    lam_s = np.asarray(jax.block_until_ready(sk.eigenvalues), np.float64)
    vectors = np.asarray(distributed.to_host(sk.eigenvectors))
    return sk, lam_s, vectors, time.perf_counter() - start


def _exact(config, loss_fn, params, data, width):
    """Dense float64 Hessian and numpy eigh: (h (n, n), all eigenvalues (n,) ranked by |λ|,
    the first `width` eigenvectors (n, width), timings)."""
    start = time.perf_counter()
    h = _dense_hessian(loss_fn, params, data, config.exact.block_size)
    seconds = {"seconds_dense_hessian": time.perf_counter() - start}
    start = time.perf_counter()
    lam, vec = np.linalg.eigh(h)
    seconds["seconds_eigh"] = time.perf_counter() - start
    order = np.argsort(-np.abs(lam), kind="stable")
    return h, lam[order], vec[:, order[:width]], seconds


def _test_hessian(config, params, loss_fn, test_data, theta, train_basis, ks, masks, key):
    """The Hessian of a class-balanced test subset, by the exact path when the training one
    used it, else by the sketch: its top eigenvalues, the mask overlaps (`_overlaps`) and the
    overlap of its top-k eigenspaces with the training ones for every k. Returns (record,
    ranked basis)."""
    op = curvature.hessian_operator(loss_fn, params, test_data)
    flat = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), test_data)
    record = {"hessian_loss": float(jax.jit(loss_fn)(params, flat))}
    if train_basis["exact"] is not None:
        _, lam, basis, _ = _exact(config, loss_fn, params, test_data, max(ks))
        record["method"], train = "exact", train_basis["exact"]
    else:
        _, lam, basis, _ = _sketched(config, op, key)
        record["method"], train = "sketch", train_basis["sketch"]
        ks = [k for k in ks if k <= len(lam)]
    record["eigenvalues_top"] = lam[:NUM_TOP].tolist()
    record |= _overlaps(theta, basis, ks, None, masks)
    both = linalg.overlap_curve(train, basis)
    record["train_test_overlap"] = {k: both.at(k) for k in ks}
    record["train_test_overlap_curve"] = both.overlap.tolist()
    return record, basis


def measure(
    config, step, params, loss_fn, model, data, ds, ks, random_masks, key, test_data=None
) -> tuple:
    """All metrics at one checkpoint; returns (record, exact eigenvalues or None, sketched
    eigenvalues, ranked bases {'exact': (n, max ks) or None, 'sketch': (n, sketch.k),
    'test': the test Hessian's or None}); the Hessian on config.mesh."""
    op = distributed.placed_operator(curvature.hessian_operator, config.mesh, loss_fn, params, data)
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
    key_train, key_test = key, jax.random.fold_in(key, 1)

    # --- sketched eigendecomposition of the float32 operator
    s = config.sketch
    k_s, outer, inner = _sketch_sizes(s)
    sk, lam_s, vec_s, seconds = _sketched(config, op, key_train)
    sketch_ks = [k for k in ks if k <= k_s]
    record["sketch"] = {
        "k": k_s,
        "outer": outer,
        "inner": inner,
        "test_matrix": s.test_matrix,
        "num_matvecs": int(sk.num_matvecs),
        "seconds": seconds,
        "eigenvalues_top": lam_s[:NUM_TOP].tolist(),
        "error_estimate": float(sk.error_estimate),
        "error_stderr": float(sk.error_stderr),
    } | _overlaps(theta, vec_s, sketch_ks, partition, random_masks)
    logging.info(
        "[step %d] sketch k=%d (%d HVPs, %.1f s): top |λ| %s, error estimate %.4f ± %.4f",
        step, k_s, sk.num_matvecs, seconds, np.round(lam_s[:3], 4),
        sk.error_estimate, sk.error_stderr,
    )  # fmt: skip
    bases = {"exact": None, "sketch": vec_s, "test": None}
    lam = None

    if config.exact.enabled and n <= config.exact.max_params:
        # --- exact: dense float64 Hessian and eigh
        h, lam, vec, e = _exact(config, loss_fn, params, data, max(ks))
        bases["exact"] = vec
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
    else:
        record["exact"] = None
        if config.exact.enabled:
            logging.info("exact eigh skipped: n = %d > exact.max_params", n)

    record["test_hessian"] = None
    if test_data is not None:
        record["test_hessian"], bases["test"] = _test_hessian(
            config, params, loss_fn, test_data, theta, bases, ks, random_masks, key_test
        )
    return record, lam, lam_s, bases


# ----------------------------------------------------------------------------- main


def _fingerprint(config, checkpoints_so_far) -> dict:
    return config.to_dict() | {"checkpoints": list(checkpoints_so_far)}


def _checkpoint_path(workdir, step) -> str:
    return os.path.join(workdir, f"state_{step}.ckpt")


def _bases_path(workdir, step) -> str:
    return os.path.join(workdir, f"bases_{step}.npz")


def _load_checkpoint(workdir, step, fingerprint, target):
    """(state, record, history, spectra, bases) of a checkpoint and its bases file, or None
    when either is missing or stale (then the checkpoint is recomputed)."""
    loaded = common.load_checkpoint(_checkpoint_path(workdir, step), fingerprint, target)
    if loaded is None or not os.path.exists(_bases_path(workdir, step)):
        return None
    restored, saved = loaded
    spectra = {name: np.asarray(saved["spectra"][name]) for name in ("exact", "sketch")}
    with np.load(_bases_path(workdir, step)) as f:
        bases = {name: f[name] if name in f.files else None for name in BASES}
    return restored, saved["record"], saved["history"], spectra, bases


def _save_checkpoint(workdir, step, fingerprint, state, record, history, lam, lam_s, bases):
    """The checkpoint (state, record, history, spectra) and, beside it, the ranked bases
    (float32 npz, written first: a checkpoint without its bases is recomputed)."""
    arrays = {name: b for name, b in bases.items() if b is not None}
    common.write_atomic(_bases_path(workdir, step), lambda f: np.savez(f, **arrays))
    spectra = {"exact": [] if lam is None else lam.tolist(), "sketch": lam_s.tolist()}
    meta = {"record": record, "history": history, "spectra": spectra}
    common.save_checkpoint(_checkpoint_path(workdir, step), fingerprint, state, meta)


def _flat_params(params) -> np.ndarray:
    """θ (n,) in the layout of the curvature operators (`make_layout(params).ravel`)."""
    return np.asarray(curvature.make_layout(params).ravel(params))


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
    distributed.check_mesh_fits(config.mesh, params, config.hessian.microbatch_size)

    h = config.hessian
    if h.num_samples % ds.num_classes:
        raise ValueError(f"hessian.num_samples must be a multiple of {ds.num_classes} classes")
    hx, hy = class_balanced_subset(
        ds.x_train, ds.y_train, h.num_samples // ds.num_classes, seed=config.seed
    )
    data = microbatches((jnp.asarray(hx), jnp.asarray(hy)), h.microbatch_size)
    test_data = None
    if h.test_samples:
        if h.test_samples % ds.num_classes:
            raise ValueError(f"hessian.test_samples must be a multiple of {ds.num_classes} classes")
        tx, ty = class_balanced_subset(
            ds.x_test, ds.y_test, h.test_samples // ds.num_classes, seed=config.seed
        )
        test_data = microbatches(
            (jnp.asarray(tx), jnp.asarray(ty)), min(h.microbatch_size, h.test_samples)
        )

    ks = sorted({int(k) for k in config.overlap.ks if 1 <= int(k) <= n})
    dropped = sorted({int(k) for k in config.overlap.ks} - set(ks))
    if dropped:
        logging.info("overlap.ks %s dropped: outside [1, n = %d]", dropped, n)
    if not ks:
        raise ValueError(f"no overlap.ks in [1, n = {n}]: {tuple(config.overlap.ks)}")
    k_s, outer, inner = _sketch_sizes(config.sketch)
    peak = sketch_peak_bytes(n, k_s, outer, _sketch_block(config.sketch))
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
    train_step = training.make_train_step(loss_fn, optimizer)  # compiled once, all segments
    x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    state = {"params": params, "opt_state": optimizer.init(params)}
    done, history, records, spectra = 0, [], [], {"exact": [], "sketch": []}
    previous = None  # (θ, bases) of the previous checkpoint
    for i, step in enumerate(checkpoints):
        fingerprint = _fingerprint(config, checkpoints[: i + 1])
        loaded = _load_checkpoint(workdir, step, fingerprint, state)
        train_seconds = 0.0
        if loaded is not None:
            state, record, history, spec, bases = loaded
            logging.info("[step %d] resumed from %s", step, workdir)
        else:
            if step > done:  # minibatch keys depend on the segment's start step
                t0 = time.perf_counter()
                new_params, segment, opt_state = training.train(
                    loss_fn, state["params"], x_train, y_train, optimizer=optimizer,
                    num_steps=step - done, batch_size=t.batch_size,
                    key=jax.random.fold_in(k_train, done), log_every=t.log_every,
                    opt_state=state["opt_state"], return_opt_state=True, step=train_step,
                )  # fmt: skip
                state = {"params": new_params, "opt_state": opt_state}
                history = history + [(done + s, loss) for s, loss in segment]
                train_seconds = time.perf_counter() - t0
                logging.info("[step %d] trained: loss %.4f", step, segment[-1][1])
            t0 = time.perf_counter()
            record, lam, lam_s, bases = measure(
                config, step, state["params"], loss_fn, model, data, ds, ks, random_masks,
                jax.random.fold_in(k_sketch, step), test_data,
            )  # fmt: skip
            bases = {k: None if b is None else b.astype(np.float32) for k, b in bases.items()}
            record["crystallisation"] = None
            if previous is not None:
                record["crystallisation"] = {"from_step": done} | crystallisation(
                    previous[0], _flat_params(state["params"]), previous[1], bases, ks
                )
            record["train_loss"] = history[-1][1] if history else None
            record["seconds"] = {"train": train_seconds, "measure": time.perf_counter() - t0}
            record = _keyed(record)
            _save_checkpoint(workdir, step, fingerprint, state, record, history, lam, lam_s, bases)
            spec = {"exact": np.asarray([] if lam is None else lam), "sketch": lam_s}
        previous = (_flat_params(state["params"]), bases)
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
    _plot_curves(results, workdir, name)
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


def _plot_curves(results, workdir, name) -> None:
    """overlap_vs_k.png (last checkpoint's curves; per-step magnitude curves) and
    crystallisation.png (consecutive checkpoints; skipped with one checkpoint)."""
    recs, ks = results["checkpoints"], results["ks"]
    last = recs[-1]
    main = "exact" if last["exact"] else "sketch"
    curves = {}
    for kind in ("exact", "sketch"):
        if last[kind]:
            curves[f"|θ| mask, {kind}"] = last[kind]["curve"]["overlap"]
            curves[f"best k-sparse mask, {kind}"] = last[kind]["curve"]["best_mask"]
    if last.get("test_hessian"):
        t = last["test_hessian"]
        curves[f"|θ| mask, test-subset Hessian ({t['method']})"] = t["curve"]["overlap"]
    figures.plot_overlap_vs_k(
        curves, results["num_params"], os.path.join(workdir, "overlap_vs_k.png"),
        title=f"{name}, step {last['step']}: top-k |θ| mask vs top-k |λ| eigenspace",
        per_step={r["step"]: r[main]["curve"]["overlap"] for r in recs},
    )  # fmt: skip
    later = [r for r in recs if r.get("crystallisation")]
    if not later:
        return
    cryst = [r["crystallisation"] for r in later]
    eigenspace = {
        kind: {k: [(c.get(kind) or {}).get("eigenspace_overlap", {}).get(str(k)) for c in cryst]
               for k in ks}
        for kind in ("exact", "sketch")
    }  # fmt: skip
    figures.plot_crystallisation(
        [r["step"] for r in later],
        {k: [c["mask_iou"][str(k)] for c in cryst] for k in ks},
        {k: cryst[0]["mask_iou_chance"][str(k)] for k in ks},
        eigenspace, os.path.join(workdir, "crystallisation.png"),
        title=f"{name}: crystallisation between consecutive checkpoints",
    )  # fmt: skip


# ----------------------------------------------------------------------------- size sweep


def sweep_settings(s: ml_collections.ConfigDict) -> list[tuple[tuple[int, ...], list[str]]]:
    """MLP hidden widths of a sweep config, each with the sweeps it belongs to: widths
    `s.widths` at depth `s.depth` ('width') and depths `s.depths` at width `s.width`
    ('depth'); a setting in both is run once."""
    settings: dict[tuple[int, ...], list[str]] = {}
    for w in s.widths:
        settings.setdefault((int(w),) * int(s.depth), []).append("width")
    for d in s.depths:
        settings.setdefault((int(s.width),) * int(d), []).append("depth")
    return list(settings.items())


def _setting_config(config, widths, n) -> ml_collections.ConfigDict:
    """The single-run config of one sweep setting: hidden `widths`, k = round(k_fraction n)
    (at least 1) as the only overlap.ks and the sketch's k (outer 2k, inner 4k)."""
    sub = ml_collections.ConfigDict(config.to_dict())
    k = max(1, round(config.sweep.k_fraction * n))
    del sub["sweep"]
    sub.model.widths = tuple(widths)
    sub.overlap.ks = (k,)
    sub.sketch.k, sub.sketch.outer, sub.sketch.inner = k, 0, 0
    return sub


def _setting_summary(results) -> dict:
    """What the sweep keeps of one setting's results: n, k, chance, and per checkpoint the
    overlaps (exact where computed, sketch always), best-mask bound and random masks."""
    (k,) = results["ks"]
    key = str(k)
    out = {"num_params": results["num_params"], "k": k, "chance": results["chance"][key]}
    out["checkpoints"] = []
    for r in results["checkpoints"]:
        c = {"step": r["step"], "test_accuracy": r["test_accuracy"], "train_loss": r["train_loss"]}
        for kind in ("exact", "sketch"):
            if r[kind] and key in r[kind]["overlap"]:
                c[kind] = {
                    "overlap": r[kind]["overlap"][key],
                    "best_mask": r[kind]["best_mask"][key],
                    "random_mean": r[kind]["random"][key]["mean"],
                }
        c["sketch"]["error_estimate"] = r["sketch"]["error_estimate"]
        out["checkpoints"].append(c)
    return out


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Width and depth sweep of the magnitude-mask overlap at fixed k / n (`sweep_settings`):
    one `run` per setting in workdir/mlp_<widths> (resumable), a failing setting recorded with
    its error and skipped; writes sweep.json and sweep.png. Returns the sweep.json dict."""
    common.validate(config, RULES | SWEEP_RULES, RELATIONS)
    if config.model.kind != "mlp":
        raise ValueError(f"the size sweep varies MLP widths; model.kind is {config.model.kind!r}")
    common.prepare_workdir(workdir, SWEEP_OUTPUTS)
    start = time.perf_counter()
    ds = load_data(config.data)
    entries = []
    for widths, sweeps in sweep_settings(config.sweep):
        name = "mlp_" + "-".join(map(str, widths))
        entry = {"name": name, "widths": list(widths), "sweeps": sweeps}
        t0 = time.perf_counter()
        try:
            model_cfg = ml_collections.ConfigDict(config.model.to_dict())
            model_cfg.widths = widths
            model = common.build_model(model_cfg, ds.num_classes)
            shapes = jax.eval_shape(model.init, jax.random.key(0), ds.x_train[:1])
            n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
            sub = _setting_config(config, widths, n)
            entry |= _setting_summary(run(sub, os.path.join(workdir, name)))
        except Exception as err:  # one failing setting never ends the sweep
            logging.exception("sweep setting %s failed", name)
            entry["error"] = f"{type(err).__name__}: {err}"
        entry["seconds"] = time.perf_counter() - t0
        entries.append(entry)
    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "input_shape": list(ds.x_train.shape[1:]),
        "k_fraction": config.sweep.k_fraction,
        "settings": entries,
        "failed": [e["name"] for e in entries if "error" in e],
        "seconds_total": time.perf_counter() - start,
    }
    figures.plot_size_sweep(
        [e for e in entries if "error" not in e], os.path.join(workdir, "sweep.png"),
        title=f"{ds.name} {tuple(ds.x_train.shape[1:])}, {config.model.activation} MLPs: "
        f"top-k |θ| mask vs top-k eigenspace at k = {config.sweep.k_fraction:g} n",
    )  # fmt: skip
    common.write_json(os.path.join(workdir, "sweep.json"), results)
    logging.info("wrote sweep.json and sweep.png to %s", workdir)
    return results


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The size sweep when the config has a `sweep` section (preset 'sweep'), else one run."""
    return run_sweep(config, workdir) if "sweep" in config else run(config, workdir)


if __name__ == "__main__":
    common.run_binary("mask_overlap", main)
