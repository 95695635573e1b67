r"""Kronecker structure of dense and conv layer Hessians (Wu et al., "Dissecting Hessian",
arXiv 2010.04261).

  python -m experiments.kronecker --workdir=runs/kronecker
  python -m experiments.kronecker --workdir=runs/kronecker_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist
  python -m experiments.kronecker --workdir=runs/kronecker_conv --config.model.kind=conv \
      --config.model.widths=8,16 --config.batch_norm.enabled=False

Trains a model (model A: an MLP, or a ConvNet with model.kind=conv) and, from another seed on
the same data, a second one (model B). For every dense and conv layer of A: the top-K
eigenpairs of the exact kernel Hessian block H = E[Σ_pq P_p P_qᵀ ⊗ M_pq] (dense
`exact_and_factors` + eigh for small layers, else `eigsh` of the matrix-free
`hessian_operator(select='<layer>/kernel')`) and of its Kronecker approximation
E[Σ_p P_p P_pᵀ] ⊗ E[M] (`kron_eigh`; for Dense layers E[xxᵀ] ⊗ E[M]), their overlap for
k = 1 .. K (K = 3C by default) and their top-C eigenvalues, the low rank of the top
eigenvectors reshaped to the kernel and the alignment of their input side with E[x], and the
number of outliers; the same with M in Gauss-Newton form (the layer block of the GGN and its
Kronecker approximation, hessian.gauss_newton), at initialisation (hessian.at_init), and for
the same MLP trained with batch norm toggled (batch_norm.enabled). For every layer, the
overlap of A's and B's top-k eigenspaces. Then, on Gaussian mixtures with C = 2, 5, 10, 20
classes, the number of outliers of each layer's Hessian top spectrum vs C.

Writes into the workdir: overlap_vs_k.png, exact_vs_kron.png (overlaps and eigenvalues, both
forms of M), cross_seed_overlap.png, batch_norm.png, outliers_vs_classes.png and, last,
results.json (the previous run's copies are deleted first), and the checkpoint
params_<tag>.ckpt of each trained model (reused when the same data/model/train config is run
again). See experiments/kronecker_sweep.py for the conditions under which the overlap is
near 1.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature, distributed, linalg, models, training
from hessjax.analysis import kronecker as kron_analysis
from hessjax.data import gaussian_mixture, microbatches
from hessjax.data.dataset import Dataset

OUTPUTS = (
    "results.json", "overlap_vs_k.png", "exact_vs_kron.png", "cross_seed_overlap.png",
    "batch_norm.png", "outliers_vs_classes.png",
)  # fmt: skip
RULES = common.SHARED_RULES | {
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.chunk_size": common.POSITIVE_INT,
    "hessian.top_k": common.NONNEGATIVE_INT,
    "hessian.dense_max_size": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.tol": common.POSITIVE,
    "hessian.num_lowrank": common.POSITIVE_INT,
    "hessian.at_init": common.BOOL,
    "hessian.gauss_newton": common.BOOL,
    "batch_norm.enabled": common.BOOL,
    "cross_seed.enabled": common.BOOL,
    "cross_seed.offset": common.Rule(
        lambda v: common.ANY_INT.test(v) and v != 0, "a nonzero integer"
    ),
    "outliers.enabled": common.BOOL,
    "outliers.num_classes": common.ints_at_least(2),
    "outliers.num_samples": common.int_at_least(2),
    "outliers.dim": common.POSITIVE_INT,
    "outliers.separation": common.POSITIVE,
    "outliers.steps": common.POSITIVE_INT,
    "outliers.top_factor": common.POSITIVE_INT,
    "outliers.min_top": common.POSITIVE_INT,
    "outliers.rel_floor": common.PROBABILITY,
}
RELATIONS = (
    common.at_most_train_samples("hessian.num_samples"),
    common.divides_mesh("hessian.microbatch_size"),
    common.Relation(
        "train.batch_size",
        lambda c: (
            c.train.batch_size
            <= min(common.num_train_samples(c.data), round(0.8 * c.outliers.num_samples))
        ),
        "at most the number of training samples (of data and of the outlier mixtures)",
    ),
    common.Relation(
        "model.kind",
        lambda c: c.model.kind == "mlp" or not (c.model.batch_norm or c.batch_norm.enabled),
        "'mlp' while model.batch_norm or batch_norm.enabled is True (batch norm is an option "
        "of the MLP only)",
    ),
)


class LayerEigen(NamedTuple):
    """Top-K eigenpairs of one dense or conv kernel's Hessian (or Gauss-Newton) block and of
    its Kronecker approximation. exact_values (K,), exact_vectors (in*out, K); kron_values
    (K,), kron_vectors (in*out, K); factors: the KroneckerFactors; method: 'dense' or 'eigsh';
    positions: output positions per sample (1 for Dense, P for Conv, where in_dim is
    J = prod(window)·in)."""

    in_dim: int
    out_dim: int
    exact_values: np.ndarray
    exact_vectors: np.ndarray
    kron_values: np.ndarray
    kron_vectors: np.ndarray
    factors: curvature.KroneckerFactors
    method: str
    positions: int


def kernel_shape(params: Any, layer: str) -> tuple[int, int]:
    """(J, out) of a layer's kernel in a Linen variable dict: (in, out) for Dense, J =
    prod(window)·in for Conv."""
    kernel = functools.reduce(lambda t, k: t[k], ("params", *layer.split("/"), "kernel"), params)
    return math.prod(kernel.shape[:-1]), kernel.shape[-1]


class Trained(NamedTuple):
    """A trained model: the module, its initial and trained variables, the training history
    [(step, loss), ...] and the test accuracy."""

    model: Any
    init_params: Any
    params: Any
    history: list
    test_accuracy: float


def train_model(config, workdir, tag, ds: Dataset, seed: int, steps: int, data_fp) -> Trained:
    """Init (seed) and train the model of config.model on ds, or resume it from the workdir;
    steps = 0 keeps the initial params. Checks first that the model has dense or conv layers
    (`curvature.layer_names`). A model with batch norm trains on batch statistics and ends
    with the population statistics of the training set (`models.set_batch_statistics`)."""
    model = common.build_model(config.model, ds.num_classes)
    k_init, k_train = jax.random.split(jax.random.key(seed))
    init_params = model.init(k_init, jnp.asarray(ds.x_train[:1]))
    curvature.layer_names(model, init_params, jnp.asarray(ds.x_train[:1]))  # clear error early
    bn = bool(config.model.get("batch_norm", False))
    forward = functools.partial(models.train_mode_apply, model) if bn else model.apply
    loss_fn = curvature.MeanLoss(forward, curvature.cross_entropy)
    fingerprint = {"data": data_fp, "model": config.model.to_dict(),
                   "train": config.train.to_dict(), "seed": seed}  # fmt: skip
    if steps == 0:
        params, history = init_params, [(0, float(loss_fn(init_params, (
            jnp.asarray(ds.x_train[:2000]), jnp.asarray(ds.y_train[:2000])))))]  # fmt: skip
    else:
        params, history = common.train_or_resume(
            workdir, tag, fingerprint, loss_fn, init_params, ds.x_train, ds.y_train,
            config.train, k_train, num_steps=steps,
        )  # fmt: skip
    if bn:
        params = models.set_batch_statistics(model, params, jnp.asarray(ds.x_train))
    acc = float(training.accuracy(model.apply, params, ds.x_test, ds.y_test))
    logging.info("[%s] final train loss %.4f, test accuracy %.4f", tag, history[-1][1], acc)
    return Trained(model, init_params, params, history, acc)


def layer_eigen(
    model,
    params,
    batch,
    layer: str,
    k: int,
    h,
    key,
    curvature_kind: str = "hessian",
    mesh: str = "",
) -> LayerEigen:
    """Top-k eigenpairs of the exact kernel block of `layer` (of the Hessian, or of the
    Gauss-Newton matrix for curvature_kind='ggn') and of its Kronecker approximation (with the
    same form of M) over batch = (x (N, ...), y (N,)); the eigsh path's Hessian operator on
    `mesh` (config.mesh; the Gauss-Newton operator stays on one device)."""
    in_dim, out_dim = kernel_shape(params, layer)
    n = in_dim * out_dim
    if not 1 <= k < n:
        raise ValueError(f"top_k={k} must be in [1, {n}) for layer {layer} ({in_dim}x{out_dim})")
    chunk = min(int(h.chunk_size), len(batch[1]))
    ce = curvature.cross_entropy
    if n <= h.dense_max_size:
        block, factors = curvature.exact_and_factors(
            model, params, batch, ce, layer, chunk_size=chunk, curvature=curvature_kind
        )
        values, vectors = np.linalg.eigh(np.asarray(block, np.float64))
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
        method = "dense"
    else:
        data = microbatches(batch, min(int(h.microbatch_size), len(batch[1])))
        select = f"{layer}/kernel"
        if curvature_kind == "ggn":
            op = curvature.ggn_operator(model.apply, ce, params, data, select=select)
        else:
            distributed.check_mesh_fits(mesh, params, data[1].shape[1])
            loss_fn = curvature.MeanLoss(model.apply, ce)
            op = distributed.placed_operator(
                curvature.hessian_operator, mesh, loss_fn, params, data, select=select
            )
        res = linalg.eigsh(op, k, key=key, tol=h.tol)
        if not bool(np.all(res.converged)):
            logging.warning("[%s] eigsh: %d of %d pairs unconverged", layer,
                            int(np.sum(~np.asarray(res.converged))), k)  # fmt: skip
        values = np.asarray(res.eigenvalues, np.float64)
        vectors = distributed.host_orthonormal(res.eigenvectors)
        method = "eigsh"
        factors = curvature.kronecker_factors(
            model, params, batch, ce, layer, chunk_size=chunk, curvature=curvature_kind
        )
    kron = curvature.kron_eigh(factors, k)
    patches = jax.eval_shape(
        lambda v, x: curvature.layer_patches(model, v, x, layer), params, batch[0]
    )
    return LayerEigen(
        in_dim=int(in_dim),
        out_dim=int(out_dim),
        exact_values=values,
        exact_vectors=vectors,
        kron_values=np.asarray(kron.eigenvalues, np.float64),
        kron_vectors=np.asarray(kron.eigenvectors, np.float64),
        factors=factors,
        method=method,
        positions=int(patches.shape[1]),
    )


def all_layers(
    model, params, batch, k: int, h, seed: int, curvature_kind="hessian", mesh: str = ""
) -> dict:
    """layer -> `layer_eigen` for every dense/conv layer of the model, in call order, with
    min(k, J*out - 1) eigenpairs for a layer of at most k kernel entries."""
    key = jax.random.key(seed)
    names = curvature.layer_names(model, params, batch[0][:1])
    return {
        name: layer_eigen(
            model,
            params,
            batch,
            name,
            min(k, math.prod(kernel_shape(params, name)) - 1),
            h,
            jax.random.fold_in(key, i),
            curvature_kind,
            mesh,
        )  # fmt: skip
        for i, name in enumerate(names)
    }


def eigenvalue_comparison(eig: LayerEigen, num: int) -> dict:
    """Exact vs Kronecker top eigenvalues: the first `num` of each and their ratios
    λ_i(Kronecker) / λ_i(exact), and the relative error of their sums."""
    ex, kr = eig.exact_values[:num], eig.kron_values[:num]
    return {
        "exact": _rounded(ex, 6),
        "kron": _rounded(kr, 6),
        "ratio": _rounded(kr / ex, 4),
        "sum_rel_error": round(float(abs(kr.sum() - ex.sum()) / abs(ex.sum())), 4),
    }


def _rounded(values, digits=4) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values).ravel()]


def overlap_summary(eig: LayerEigen, marks: list[int], num_classes: int) -> dict:
    """Overlap exact vs Kronecker for k = 1 .. K and at the `marks` up to K, and the top-C
    eigenvalues of both (`eigenvalue_comparison`)."""
    curve = kron_analysis.exact_vs_kronecker_overlap(eig.exact_vectors, eig.kron_vectors)
    return {
        "overlap_exact_vs_kron": curve.as_dict(),
        "overlap_exact_vs_kron_at": {str(k): curve.at(k) for k in marks if k <= curve.ks[-1]},
        "eigenvalues_top_c": eigenvalue_comparison(eig, num_classes),
    }


def mean_share(eig: LayerEigen) -> float:
    """‖E[P]‖² / tr E[P Pᵀ] (per position): near 1 when the mean input dominates its second
    moment, so that A's top eigenvector is E[P]/‖E[P]‖."""
    x_mean = np.asarray(eig.factors.x_mean, np.float64)
    trace = np.trace(np.asarray(eig.factors.a, np.float64)) / eig.positions
    return float(x_mean @ x_mean / trace)


def analyse_layer(
    eig: LayerEigen, marks: list[int], num_lowrank: int, rel_floor: float, num_classes: int
) -> dict:
    """Per-layer results: overlap exact vs Kronecker for k = 1 .. K (and at the `marks`), exact
    vs Kronecker top-C eigenvalues, low rank of the top `num_lowrank` eigenvectors, outliers,
    and how much E[x] dominates E[xxᵀ]."""
    top_k = eig.exact_values.shape[0]
    n_low = min(num_lowrank, top_k)
    low = kron_analysis.eigenvector_low_rank(
        eig.exact_vectors[:, :n_low], eig.in_dim, eig.out_dim, eig.factors.x_mean
    )
    a = np.asarray(eig.factors.a, np.float64)
    x_mean = np.asarray(eig.factors.x_mean, np.float64)
    a_top = np.linalg.eigh(a)[1][:, -1]
    exact_out = kron_analysis.count_outliers(eig.exact_values, rel_floor=rel_floor)
    kron_out = kron_analysis.count_outliers(eig.kron_values, rel_floor=rel_floor)
    return {
        "shape": [eig.in_dim, eig.out_dim],
        "positions": eig.positions,
        "num_params": eig.in_dim * eig.out_dim,
        "method": eig.method,
        "exact_eigenvalues": _rounded(eig.exact_values, 6),
        "kron_eigenvalues": _rounded(eig.kron_values, 6),
        **overlap_summary(eig, marks, num_classes),
        "low_rank": {
            "num_vectors": n_low,
            "top_share": low.top_share.tolist(),
            "mean_alignment": low.mean_alignment.tolist(),
            "alignment_chance": low.alignment_chance,
        },
        # E[x] dominates E[xxᵀ] when ‖E[x]‖² / tr E[xxᵀ] is near 1; then A's top eigenvector
        # is E[x]/‖E[x]‖ and the top Kronecker eigenvectors are E[x] ⊗ w_j.
        "mean_share_of_second_moment": mean_share(eig),
        "a_top_mean_alignment": float(abs(a_top @ x_mean) / np.linalg.norm(x_mean)),
        "outliers_exact": {"count": exact_out.count, "gap": exact_out.gap},
        "outliers_kron": {"count": kron_out.count, "gap": kron_out.gap},
    }


def _log_layer(layer: str, r: dict) -> None:
    at = r["overlap_exact_vs_kron_at"]
    logging.info(
        "[%s %s, %s] exact-vs-Kronecker overlap %s; σ₁² share %s; |cos(u₁, E[x])| %s "
        "(chance %.3f); ‖E[x]‖²/tr E[xxᵀ] %.3f; outliers exact %d (gap %.1f), Kronecker %d",
        layer, "x".join(map(str, r["shape"])), r["method"],
        {k: round(v, 3) for k, v in at.items()},
        _rounded(r["low_rank"]["top_share"], 3), _rounded(r["low_rank"]["mean_alignment"], 3),
        r["low_rank"]["alignment_chance"], r["mean_share_of_second_moment"],
        r["outliers_exact"]["count"], r["outliers_exact"]["gap"], r["outliers_kron"]["count"],
    )  # fmt: skip


def outliers_vs_classes(config, workdir) -> dict:
    """Train one model per number of classes C on a Gaussian mixture and count the outliers
    of each layer's exact Hessian top spectrum (top max(top_factor·C, min_top) eigenvalues)."""
    o, h = config.outliers, config.hessian
    rows = []
    for c in o.num_classes:
        c = int(c)
        ds = gaussian_mixture(
            num_samples=o.num_samples, dim=o.dim, num_classes=c, separation=o.separation,
            seed=config.data.seed,
        )  # fmt: skip
        data_fp = {"gaussian_mixture": o.to_dict() | {"C": c, "seed": config.data.seed}}
        trained = train_model(config, workdir, f"mixture_C{c}", ds, config.seed, o.steps, data_fp)
        model, params, acc = trained.model, trained.params, trained.test_accuracy
        batch = common.hessian_data(ds.x_train, ds.y_train, min(h.num_samples, len(ds.y_train)))
        row = {
            "num_classes": c,
            "test_accuracy": acc,
            "train_loss": trained.history[-1][1],
            "layers": {},
        }
        for i, layer in enumerate(curvature.layer_names(model, params, batch[0][:1])):
            in_dim, out_dim = kernel_shape(params, layer)
            k = min(max(o.top_factor * c, o.min_top), in_dim * out_dim - 1)
            eig = layer_eigen(
                model, params, batch, layer, k, h, jax.random.key(1000 * c + i),
                mesh=config.mesh,
            )  # fmt: skip
            ex = kron_analysis.count_outliers(eig.exact_values, rel_floor=o.rel_floor)
            kr = kron_analysis.count_outliers(eig.kron_values, rel_floor=o.rel_floor)
            row["layers"][layer] = {
                "top_k": k,
                "exact_count": ex.count,
                "exact_gap": ex.gap,
                "kron_count": kr.count,
                "kron_gap": kr.gap,
                "exact_eigenvalues": _rounded(eig.exact_values, 6),
            }
        logging.info(
            "[mixture C=%d] test acc %.3f; outliers (exact, Kronecker) per layer: %s", c, acc,
            {n: (v["exact_count"], v["kron_count"]) for n, v in row["layers"].items()},
        )  # fmt: skip
        rows.append(row)
    return {"config": o.to_dict(), "runs": rows}


def overlap_marks(num_classes: int, top_k: int) -> list[int]:
    """The dimensions reported in the log and under '..._at': 1, C, 2C, 3C (those <= K)."""
    return sorted({k for k in (1, num_classes, 2 * num_classes, 3 * num_classes) if k <= top_k})


def cross_seed(eig_a: dict, eig_b: dict, all_marks: list[int]) -> dict:
    """Per layer: overlap vs k of model A's and model B's top eigenspaces (exact blocks and
    Kronecker approximations), and |cos| between their mean layer inputs."""
    out = {}
    for name, a in eig_a.items():
        b = eig_b[name]
        marks = [k for k in all_marks if k <= len(a.exact_values)]
        curve = kron_analysis.cross_model_overlap(a.exact_vectors, b.exact_vectors)
        kron_curve = kron_analysis.cross_model_overlap(a.kron_vectors, b.kron_vectors)
        xa, xb = (np.asarray(e.factors.x_mean, np.float64) for e in (a, b))
        out[name] = {
            "exact": curve.as_dict(),
            "exact_at": {str(k): curve.at(k) for k in marks},
            "chance_at": {str(k): float(curve.chance[k - 1]) for k in marks},
            "kron": kron_curve.as_dict(),
            # top eigenspaces ≈ E[x] ⊗ S: hidden units are not matched between the models, so
            # the overlap is limited by cos²(E[x]_A, E[x]_B) (1 for the first layer)
            "mean_input_cos": float(abs(xa @ xb) / (np.linalg.norm(xa) * np.linalg.norm(xb))),
        }
        logging.info(
            "[%s] cross-seed overlap at k=%s: %s (chance %s); Kronecker %s; "
            "|cos(E[x]_A, E[x]_B)| %.3f",
            name, marks, [round(curve.at(k), 3) for k in marks],
            [round(float(curve.chance[k - 1]), 4) for k in marks],
            [round(kron_curve.at(k), 3) for k in marks], out[name]["mean_input_cos"],
        )  # fmt: skip
    return out


def _with_model(config, **updates) -> ml_collections.ConfigDict:
    """A copy of config with config.model fields replaced."""
    out = config.copy_and_resolve_references()
    for key, value in updates.items():
        out.model[key] = value
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    h = config.hessian
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    ds = common.load_data(config.data)
    num_classes = ds.num_classes
    top_k = int(h.top_k) or 3 * num_classes
    marks = overlap_marks(num_classes, top_k)
    data_fp = config.data.to_dict()
    batch = common.hessian_data(ds.x_train, ds.y_train, h.num_samples)

    def layers_of(params, seed, kind="hessian"):
        return all_layers(model, params, batch, top_k, h, seed, kind, config.mesh)

    t0 = time.perf_counter()
    a = train_model(config, workdir, "seed_a", ds, config.seed, config.train.steps, data_fp)
    model = a.model
    seconds["train_a"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    eig_a = layers_of(a.params, config.seed)
    layers = list(eig_a)
    per_layer = {}
    for name in layers:
        per_layer[name] = analyse_layer(
            eig_a[name], marks, h.num_lowrank, config.outliers.rel_floor, num_classes
        )
        _log_layer(name, per_layer[name])
    seconds["layers"] = time.perf_counter() - t0

    if h.gauss_newton:
        # the same comparison with M in its Gauss-Newton form (the layer block of the GGN)
        t0 = time.perf_counter()
        for name, eig in layers_of(a.params, config.seed, "ggn").items():
            vs_hessian = kron_analysis.exact_vs_kronecker_overlap(
                eig_a[name].exact_vectors, eig.exact_vectors
            )
            per_layer[name]["ggn"] = {
                **overlap_summary(eig, marks, num_classes),
                "exact_eigenvalues": _rounded(eig.exact_values, 6),
                "kron_eigenvalues": _rounded(eig.kron_values, 6),
                "exact_hessian_vs_exact_ggn_at": {
                    str(k): vs_hessian.at(k) for k in marks if k <= vs_hessian.ks[-1]
                },
            }
            logging.info(
                "[%s, Gauss-Newton M] exact-vs-Kronecker overlap %s; top-C eigenvalue ratios "
                "Kronecker/exact %s", name,
                {k: round(v, 3) for k, v in per_layer[name]["ggn"]["overlap_exact_vs_kron_at"]
                 .items()},
                per_layer[name]["ggn"]["eigenvalues_top_c"]["ratio"],
            )  # fmt: skip
        seconds["gauss_newton"] = time.perf_counter() - t0

    at_init = {}
    if h.at_init:
        # Baseline: the same comparison at initialisation, where the logits are small, p_n
        # varies little between samples, M_n ≈ E[M] and the Kronecker form is nearly exact.
        t0 = time.perf_counter()
        for name, eig in layers_of(a.init_params, config.seed).items():
            at_init[name] = {
                **overlap_summary(eig, marks, num_classes),
                "exact_eigenvalues": _rounded(eig.exact_values, 6),
            }
            logging.info(
                "[%s at init] exact-vs-Kronecker overlap %s", name,
                {k: round(v, 3) for k, v in at_init[name]["overlap_exact_vs_kron_at"].items()},
            )  # fmt: skip
        seconds["at_init"] = time.perf_counter() - t0

    cross, seed_b = {}, None
    if config.cross_seed.enabled:
        seed_b = config.seed + int(config.cross_seed.offset)
        t0 = time.perf_counter()
        b = train_model(config, workdir, "seed_b", ds, seed_b, config.train.steps, data_fp)
        cross = cross_seed(eig_a, layers_of(b.params, seed_b), marks)
        cross["model_b"] = {
            "seed": seed_b,
            "test_accuracy": b.test_accuracy,
            "train_history": b.history,
        }
        seconds["cross_seed"] = time.perf_counter() - t0

    batch_norm = None
    if config.batch_norm.enabled:
        # the same net and training with batch norm toggled (Wu et al.: the structure weakens)
        t0 = time.perf_counter()
        bn = not config.model.batch_norm
        other = train_model(
            _with_model(config, batch_norm=bn), workdir, f"seed_a_bn{int(bn)}", ds, config.seed,
            config.train.steps, data_fp,
        )  # fmt: skip
        eig_o = all_layers(
            other.model, other.params, batch, top_k, h, config.seed, mesh=config.mesh
        )
        batch_norm = {"batch_norm": bn, "test_accuracy": other.test_accuracy,
                      "train_history": other.history, "layers": {}}  # fmt: skip
        for name, eig in eig_o.items():
            batch_norm["layers"][name] = {
                **overlap_summary(eig, marks, num_classes),
                "mean_share_of_second_moment": mean_share(eig),
            }
            logging.info(
                "[%s, batch_norm=%s] exact-vs-Kronecker overlap %s (batch_norm=%s: %s); "
                "‖E[x]‖²/tr E[xxᵀ] %.3f", name, bn,
                {k: round(v, 3) for k, v in batch_norm["layers"][name]["overlap_exact_vs_kron_at"]
                 .items()},
                not bn,
                {k: round(v, 3) for k, v in per_layer[name]["overlap_exact_vs_kron_at"].items()},
                batch_norm["layers"][name]["mean_share_of_second_moment"],
            )  # fmt: skip
        seconds["batch_norm"] = time.perf_counter() - t0

    outliers = None
    if config.outliers.enabled:
        t0 = time.perf_counter()
        outliers = outliers_vs_classes(config, workdir)
        seconds["outliers"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start

    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "num_classes": num_classes,
        "top_k": top_k,
        "hessian_samples": int(h.num_samples),
        "train_history": a.history,
        "test_accuracy": a.test_accuracy,
        "layers": per_layer,
        "layers_at_init": at_init,
        "cross_seed": cross,
        "batch_norm": batch_norm,
        "outliers_vs_classes": outliers,
        "seconds": seconds,
    }
    kind = "MLP" if config.model.kind == "mlp" else "ConvNet"
    bn_text = " + batch norm" if config.model.batch_norm else ""
    title = (f"{ds.name}, {kind} {tuple(config.model.widths)}+{num_classes} "
             f"{config.model.activation}{bn_text}")  # fmt: skip
    figures.plot_overlap_curves(
        {n: per_layer[n]["overlap_exact_vs_kron"] for n in layers},
        os.path.join(workdir, "overlap_vs_k.png"),
        title=f"exact layer Hessian vs Kronecker approximation\n{title}",
        marks=(num_classes, 2 * num_classes),
        reference={n: v["overlap_exact_vs_kron"] for n, v in at_init.items()},
        reference_label="at init",
    )
    forms = {"exact M": {n: per_layer[n] for n in layers}}
    if h.gauss_newton:
        forms["Gauss-Newton M"] = {n: per_layer[n]["ggn"] for n in layers}
    figures.plot_exact_vs_kron(
        forms, os.path.join(workdir, "exact_vs_kron.png"),
        title=f"exact layer block vs Kronecker approximation: overlap and eigenvalues\n{title}",
        marks=(num_classes,),
    )  # fmt: skip
    if cross:
        figures.plot_overlap_curves(
            {n: cross[n]["exact"] for n in layers},
            os.path.join(workdir, "cross_seed_overlap.png"),
            title=f"top layer-Hessian eigenspaces, seed {config.seed} vs seed {seed_b}\n{title}",
            marks=(num_classes, 2 * num_classes),
        )
    if batch_norm is not None:
        with_bn, without = (
            (batch_norm["layers"], per_layer) if batch_norm["batch_norm"]
            else (per_layer, batch_norm["layers"])
        )  # fmt: skip
        figures.plot_overlap_curves(
            {n: v["overlap_exact_vs_kron"] for n, v in with_bn.items()},
            os.path.join(workdir, "batch_norm.png"),
            title=f"exact vs Kronecker with batch norm (solid), without (dashed)\n{title}",
            marks=(num_classes, 2 * num_classes),
            reference={n: v["overlap_exact_vs_kron"] for n, v in without.items()},
            reference_label="without batch norm",
        )
    if outliers is not None:
        figures.plot_outliers_vs_classes(
            outliers["runs"],
            os.path.join(workdir, "outliers_vs_classes.png"),
            title=f"Gaussian mixtures (dim {config.outliers.dim}), "
            f"MLP {tuple(config.model.widths)}+C {config.model.activation}",
        )
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and figures to %s (%.1f s)", workdir, seconds["total"])
    return results


if __name__ == "__main__":
    common.run_binary("kronecker", run)
