r"""Block structure of network Hessians (Dong et al. 2025; layer-wise part of Haink 2023).

  python -m experiments.block_structure --workdir=runs/block_structure
  python -m experiments.block_structure --workdir=runs/block_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist
  python -m experiments.block_structure --workdir=runs/block_paper \
      --config=experiments/configs/block_structure.py:paper   # the authors' sizes (slow)

Parts, each switched by config.<part>.enabled:
  a. static: at initialisation of f = V relu(W x), the mean neuron-block ratio
     r = ‖H_ij‖²_F / ‖H_ii‖²_F of the output and hidden layers vs the number of classes C, for
     cross-entropy and MSE, with log-log slopes (theory: CE output -2, hidden -1; MSE output
     blocks exactly 0).
  b. dynamic: the same net trained on a Gaussian mixture; at checkpoints the loss and the
     layer-block norms ‖H_WV‖_F, ‖H_WW‖_F, ‖H_VV‖_F (exact, or Gaussian estimates with
     standard errors) — the cross-layer block shrinks as the loss falls.
  c. layerwise: layer-wise structure of a trained MLP (config.data): the layer block-ratio
     matrix and each layer's top eigenvalue beside the whole network's.
  d. large_c: part a's ratios for C up to 32,768 (language-model vocabularies), matrix-free:
     only the probed neuron blocks' columns are computed (n_j products each).
  e. spectra: for f = V x and f = V relu(W x) at initialisation, the eigenvalues of diagonal
     neuron blocks H_jj and the singular values of off-diagonal ones H_ij of the same layer, per
     C (the distributions the paper compares), and the slope of their scale ratio vs C.
  f. heatmap: the dense |H| of both models, neuron blocks made contiguous, block grid drawn, at
     initialisation and after training; the share of ‖H‖²_F in the diagonal neuron and layer
     blocks.
  g. neuron_dynamic: f = V relu(W x) trained on config.data (MNIST-1D offline, MNIST with
     --config.data.*): part a's neuron-block ratios at checkpoints (the dynamic force at the
     neuron level).

Writes into the workdir the figures of the enabled parts (static_force.png,
dynamic_force.png, block_ratios.png, layerwise_top.png, large_c.png, block_spectra.png,
hessian_heatmap.png with its pooled images hessian_heatmap.npz, neuron_dynamic.png) and, last,
results.json; the previous run's copies are deleted first. params_layerwise.ckpt (part c's
trained params) is reused when the same data/model/train config is run again. A failing C of
part e is recorded as {"error": ...} and the sweep goes on.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature, distributed, models, training
from hessjax.analysis import blocks as analysis_blocks
from hessjax.data import gaussian_mixture
from hessjax.linalg import block_frobenius_sq, block_ratios, to_dense

LOSSES = {"ce": curvature.cross_entropy, "mse": curvature.mse}
OUTPUTS = (
    "results.json", "static_force.png", "dynamic_force.png", "block_ratios.png",
    "layerwise_top.png", "large_c.png", "block_spectra.png", "hessian_heatmap.png",
    "hessian_heatmap.npz", "neuron_dynamic.png",
)  # fmt: skip
NORMS = ("exact", "estimate", "auto")
_MIXTURE_TRAIN = "the mixture's training samples (80 % of dynamic.num_samples)"


def _mixture_train(c: ml_collections.ConfigDict) -> int:
    return round(0.8 * c.dynamic.num_samples)


def _static_rules(part: str) -> dict[str, common.Rule]:
    """Rules of a static-force sweep section (static, large_c)."""
    return {
        f"{part}.enabled": common.BOOL,
        f"{part}.num_classes": common.Rule(
            lambda v: common.ints_at_least(2).test(v) and len(v) >= 2,
            "a tuple of >= 2 class counts, each >= 2 (for a slope)",
        ),
        f"{part}.losses": common.subset_of(("ce", "mse")),
        f"{part}.input_dim": common.int_at_least(2),
        f"{part}.width": common.int_at_least(2),
        f"{part}.num_samples": common.POSITIVE_INT,
        f"{part}.probed": common.POSITIVE_INT,
        f"{part}.block_size": common.NONNEGATIVE_INT,
        f"{part}.microbatch_size": common.NONNEGATIVE_INT,
        f"{part}.param_init": common.one_of(*models.INITS),
    }


_SETUP_RULES = {  # the static setup of parts spectra and heatmap
    "loss": common.one_of("ce", "mse"),
    "models": common.subset_of(analysis_blocks.MODEL_KINDS),
    "input_dim": common.int_at_least(2),
    "width": common.int_at_least(2),
    "num_samples": common.POSITIVE_INT,
    "param_init": common.one_of(*models.INITS),
    "block_size": common.NONNEGATIVE_INT,
    "enabled": common.BOOL,
}

RULES = (
    common.SHARED_RULES
    | _static_rules("static")
    | _static_rules("large_c")
    | {f"spectra.{k}": r for k, r in _SETUP_RULES.items()}
    | {f"heatmap.{k}": r for k, r in _SETUP_RULES.items()}
    | {
        "spectra.num_classes": common.ints_at_least(2),
        "spectra.probed": common.POSITIVE_INT,
        "spectra.bins": common.int_at_least(2),
        "heatmap.num_classes": common.int_at_least(2),
        "heatmap.optimizer": common.one_of("adam", "sgd"),
        "heatmap.learning_rate": common.POSITIVE,
        "heatmap.steps": common.POSITIVE_INT,
        "heatmap.batch_size": common.POSITIVE_INT,
        "heatmap.max_pixels": common.int_at_least(16),
        "heatmap.max_params": common.POSITIVE_INT,
        "heatmap.vmax_fraction": common.real_in(0.0, 1.0, closed=True),
        "neuron_dynamic.enabled": common.BOOL,
        "neuron_dynamic.loss": common.one_of("ce", "mse"),
        "neuron_dynamic.width": common.int_at_least(2),
        "neuron_dynamic.optimizer": common.one_of("adam", "sgd"),
        "neuron_dynamic.learning_rate": common.POSITIVE,
        "neuron_dynamic.steps": common.POSITIVE_INT,
        "neuron_dynamic.batch_size": common.POSITIVE_INT,
        "neuron_dynamic.num_checkpoints": common.int_at_least(2),
        "neuron_dynamic.spacing": common.one_of("log", "linear"),
        "neuron_dynamic.hessian_samples": common.POSITIVE_INT,
        "neuron_dynamic.microbatch_size": common.POSITIVE_INT,
        "neuron_dynamic.probed": common.POSITIVE_INT,
        "neuron_dynamic.block_size": common.NONNEGATIVE_INT,
    }
    | {
        "dynamic.enabled": common.BOOL,
        "dynamic.loss": common.one_of("ce", "mse"),
        "dynamic.num_classes": common.int_at_least(2),
        "dynamic.dim": common.POSITIVE_INT,
        "dynamic.width": common.POSITIVE_INT,
        "dynamic.num_samples": common.int_at_least(2),
        "dynamic.separation": common.POSITIVE,
        "dynamic.optimizer": common.one_of("adam", "sgd"),
        "dynamic.learning_rate": common.POSITIVE,
        "dynamic.steps": common.POSITIVE_INT,
        "dynamic.batch_size": common.POSITIVE_INT,
        "dynamic.num_checkpoints": common.int_at_least(2),
        "dynamic.spacing": common.one_of("log", "linear"),
        "dynamic.hessian_samples": common.POSITIVE_INT,
        "dynamic.microbatch_size": common.POSITIVE_INT,
        "dynamic.norms": common.one_of(*NORMS),
        "dynamic.exact_max_params": common.POSITIVE_INT,
        "dynamic.num_probes": common.int_at_least(2),
        "layerwise.enabled": common.BOOL,
        "layerwise.hessian_samples": common.POSITIVE_INT,
        "layerwise.microbatch_size": common.POSITIVE_INT,
        "layerwise.norms": common.one_of(*NORMS),
        "layerwise.exact_max_params": common.POSITIVE_INT,
        "layerwise.num_probes": common.int_at_least(2),
        "layerwise.tol": common.POSITIVE,
    }
)


def _divides_samples(part: str) -> common.Relation:
    """Relation: <part>.microbatch_size is 0 (one batch) or divides <part>.num_samples."""
    mb = lambda c: c[part].microbatch_size  # noqa: E731
    return common.Relation(
        f"{part}.microbatch_size",
        lambda c: mb(c) == 0 or c[part].num_samples % mb(c) == 0,
        f"0 or a divisor of {part}.num_samples",
    )


RELATIONS = (
    _divides_samples("static"),
    _divides_samples("large_c"),
    common.at_most("dynamic.hessian_samples", _mixture_train, _MIXTURE_TRAIN),
    common.at_most("dynamic.batch_size", _mixture_train, _MIXTURE_TRAIN),
    common.at_most("dynamic.microbatch_size", "dynamic.hessian_samples"),
    common.at_most_train_samples("layerwise.hessian_samples"),
    common.at_most("layerwise.microbatch_size", "layerwise.hessian_samples"),
    common.at_most_train_samples("train.batch_size"),
    common.at_most("heatmap.batch_size", "heatmap.num_samples"),
    common.at_most_train_samples("neuron_dynamic.hessian_samples"),
    common.at_most("neuron_dynamic.microbatch_size", "neuron_dynamic.hessian_samples"),
    common.at_most_train_samples("neuron_dynamic.batch_size"),
    common.divides_mesh("dynamic.microbatch_size"),
    common.divides_mesh("layerwise.microbatch_size"),
)
THEORY_SLOPES = {"ce": {"output": -2.0, "hidden": -1.0}, "mse": {"output": "exactly zero"}}


def _num_probes(cfg: ml_collections.ConfigDict, n: int) -> int | None:
    """None (exact block norms, n products) or the number of Gaussian probes per block."""
    if cfg.norms == "exact":
        return None
    if cfg.norms == "estimate":
        return int(cfg.num_probes)
    if cfg.norms == "auto":
        return None if n <= cfg.exact_max_params else int(cfg.num_probes)
    raise ValueError(f"norms must be 'exact', 'estimate' or 'auto', got {cfg.norms!r}")


def _check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")


# ----------------------------------------------------------------------------- a. static force


def static_force(cfg: ml_collections.ConfigDict, key: jax.Array) -> dict:
    """Ratios r[loss][block] over cfg.num_classes and their log-log slopes.

    The same key is used for every C and loss (a paired design): W and the probed hidden
    neurons are then the same across C, so the slope is not blurred by the draw of W."""
    cs = [int(c) for c in cfg.num_classes]
    if len(cs) < 2:
        raise ValueError(f"static.num_classes needs >= 2 values for a slope, got {cs}")
    ratios: dict[str, dict[str, list[float]]] = {}
    for loss in cfg.losses:
        _check_loss(loss)
        ratios[loss] = {"output": [], "hidden": []}
        for c in cs:
            r = analysis_blocks.static_force_ratios(
                c, loss, input_dim=cfg.input_dim, width=cfg.width,
                num_samples=cfg.num_samples, key=key, probed=cfg.probed,
                block_size=cfg.block_size or None, param_init=cfg.param_init,
                microbatch_size=cfg.microbatch_size or None,
            )  # fmt: skip
            for block in ("output", "hidden"):
                ratios[loss][block].append(float(r[block]))
            logging.info(
                "static force %s C=%d: r_output %.4g, r_hidden %.4g",
                loss, c, r["output"], r["hidden"],
            )  # fmt: skip
    slopes: dict[str, dict] = {}
    for loss, per_block in ratios.items():
        slopes[loss] = {}
        for block, r in per_block.items():
            r = np.asarray(r)
            if np.all(r == 0):
                slopes[loss][block] = "exactly zero"
            elif np.any(r <= 0):
                slopes[loss][block] = "not fitted (some ratios are 0)"
            else:
                slope, intercept = analysis_blocks.fit_loglog_slope(cs, r)
                slopes[loss][block] = {"slope": slope, "intercept": intercept}
            fitted = slopes[loss][block]
            logging.info(
                "static force %s %s: %s", loss, block,
                f"slope {fitted['slope']:.3f}" if isinstance(fitted, dict) else fitted,
            )  # fmt: skip
    return {"num_classes": cs, "ratios": ratios, "slopes": slopes, "theory": THEORY_SLOPES}


# ----------------------------------------------------------------------------- b. dynamic force


def _checkpoints(steps: int, num: int, spacing: str) -> list[int]:
    """Sorted distinct steps in [0, steps], including 0 and `steps`."""
    if num < 2 or steps < 1:
        raise ValueError(f"need num_checkpoints >= 2 and steps >= 1, got {num} and {steps}")
    if spacing == "linear":
        points = np.linspace(0, steps, num)
    elif spacing == "log":
        points = np.concatenate([[0], np.geomspace(1, steps, num - 1)])
    else:
        raise ValueError(f"spacing must be 'linear' or 'log', got {spacing!r}")
    return sorted({int(round(p)) for p in points})


def _train_in_segments(loss_fn, params, x, y, cfg: ml_collections.ConfigDict, key, measure):
    """Train with cfg (optimizer, learning_rate, steps, batch_size, num_checkpoints, spacing)
    without resetting the optimizer, calling measure(i, step, params) -> dict at every
    checkpoint (`_checkpoints`, step 0 first); returns the list of those dicts."""
    optimizer = training.make_optimizer(cfg.optimizer, cfg.learning_rate)
    train_step = training.make_train_step(loss_fn, optimizer)  # compiled once, all segments
    opt_state = optimizer.init(params)
    records, done = [], 0
    for i, step in enumerate(_checkpoints(cfg.steps, cfg.num_checkpoints, cfg.spacing)):
        if step > done:
            params, _, opt_state = training.train(
                loss_fn, params, x, y, optimizer=optimizer, num_steps=step - done,
                batch_size=cfg.batch_size, key=jax.random.fold_in(key, i),
                log_every=step - done, opt_state=opt_state, return_opt_state=True,
                step=train_step,
            )  # fmt: skip
            done = step
        records.append(measure(i, step, params))
    return records


def _layer_norms(loss_fn, params, data, num_probes, key, mesh: str = "") -> dict:
    """‖H_ij‖_F of the layer blocks W = Dense_0, V = Dense_1 (and standard errors), the
    Hessian on `mesh` (config.mesh)."""
    op = distributed.placed_operator(curvature.hessian_operator, mesh, loss_fn, params, data)

    part = curvature.partition_by_layer(op.layout)
    w, v = part.index("Dense_0"), part.index("Dense_1")
    norms = block_frobenius_sq(op, part, num_probes=num_probes, key=key)
    sq, se = np.asarray(norms.sq, np.float64), np.asarray(norms.stderr, np.float64)
    out = {"num_hvps": int(norms.num_matvecs)}
    for name, (i, j) in {"WV": (w, v), "WW": (w, w), "VV": (v, v)}.items():
        out[f"norm_{name}"] = float(np.sqrt(sq[i, j]))
        # delta method: se(√s) = se(s) / (2√s)
        out[f"norm_{name}_stderr"] = float(se[i, j] / (2 * np.sqrt(sq[i, j])))
    for name, den in {"WW": (w, w), "VV": (v, v)}.items():
        ratio = sq[w, v] / sq[den]
        rel = np.hypot(se[w, v] / sq[w, v], se[den] / sq[den])  # errors taken as independent
        out[f"ratio_WV_{name}"] = float(ratio)
        out[f"ratio_WV_{name}_stderr"] = float(ratio * rel)
    return out


def dynamic_force(
    cfg: ml_collections.ConfigDict, seed: int, key: jax.Array, mesh: str = ""
) -> dict:
    """Train f = V relu(W x) on a Gaussian mixture in segments; measure between them (the
    Hessian on `mesh`, config.mesh)."""
    _check_loss(cfg.loss)
    init_key, train_key, probe_key = jax.random.split(key, 3)
    ds = gaussian_mixture(
        num_samples=cfg.num_samples, dim=cfg.dim, num_classes=cfg.num_classes,
        separation=cfg.separation, seed=seed,
    )  # fmt: skip
    model = models.MLP((cfg.width, cfg.num_classes), act="relu", use_bias=False)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    params = model.init(init_key, x[:1])
    distributed.check_mesh_fits(mesh, params, cfg.microbatch_size, "config.mesh (dynamic)")
    loss_fn = curvature.MeanLoss(model.apply, LOSSES[cfg.loss])
    eval_loss = jax.jit(loss_fn)  # params and data are arguments
    data = common.hessian_data(ds.x_train, ds.y_train, cfg.hessian_samples, cfg.microbatch_size)
    hess_batch = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), data)
    num_params = sum(a.size for a in jax.tree_util.tree_leaves(params))
    num_probes = _num_probes(cfg, num_params)
    logging.info(
        "dynamic force: %s, %d params, %s block norms over %d samples",
        cfg.loss, num_params,
        "exact" if num_probes is None else f"{num_probes}-probe estimated",
        cfg.hessian_samples,
    )  # fmt: skip

    def measure(i, step, params):
        rec = {
            "step": step,
            "loss": float(eval_loss(params, hess_batch)),
            "train_loss": float(eval_loss(params, (x, y))),
            "test_accuracy": float(training.accuracy(model.apply, params, ds.x_test, ds.y_test)),
        }
        rec |= _layer_norms(
            loss_fn, params, data, num_probes, jax.random.fold_in(probe_key, i), mesh
        )
        logging.info(
            "dynamic step %d/%d: loss %.4f, ‖H_WV‖_F %.4g, ‖H_WW‖_F %.4g, ‖H_VV‖_F %.4g, "
            "‖H_WV‖²/‖H_WW‖² %.4g",
            step, cfg.steps, rec["loss"], rec["norm_WV"], rec["norm_WW"], rec["norm_VV"],
            rec["ratio_WV_WW"],
        )  # fmt: skip
        return rec

    records = _train_in_segments(loss_fn, params, x, y, cfg, train_key, measure)
    return {
        "dataset": ds.name,
        "num_params": int(num_params),
        "norms": "exact" if num_probes is None else "estimate",
        "num_probes": num_probes,
        "checkpoints": records,
    }


# ----------------------------------------------------------------------------- c. layer-wise


def _table(rows: list[dict]) -> str:
    """Aligned text table of LayerwiseSpectrum.as_rows() with the ratio to the whole network."""
    whole = rows[-1]["top_eigenvalue"]
    cells = [("block", "params", "top eigenvalue", "/ whole")] + [
        (r["block"], str(r["params"]), f"{r['top_eigenvalue']:.6g}",
         f"{r['top_eigenvalue'] / whole:.3f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[k]) for row in cells) for k in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if k == 0 else c.rjust(w)
            for k, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def layerwise(config: ml_collections.ConfigDict, workdir: str, key: jax.Array) -> dict:
    """Train an MLP on config.data, then its layer block ratios and layer-wise top eigenvalues."""
    cfg = config.layerwise
    init_key, train_key, probe_key, eig_key = jax.random.split(key, 4)
    ds = common.load_data(config.data)
    model, params, loss_fn = common.init_classifier(config.model, ds, init_key)
    distributed.check_mesh_fits(config.mesh, params, cfg.microbatch_size, "config.mesh (layerwise)")
    fingerprint = {k: config[k].to_dict() for k in ("data", "model", "train")}
    params, history = common.train_or_resume(
        workdir, "layerwise", fingerprint | {"seed": config.seed}, loss_fn, params,
        ds.x_train, ds.y_train, config.train, train_key,
    )  # fmt: skip
    test_acc = float(training.accuracy(model.apply, params, ds.x_test, ds.y_test))
    logging.info("layer-wise: test accuracy %.4f", test_acc)

    data = common.hessian_data(ds.x_train, ds.y_train, cfg.hessian_samples, cfg.microbatch_size)
    op = distributed.placed_operator(curvature.hessian_operator, config.mesh, loss_fn, params, data)
    part = curvature.partition_by_layer(op.layout)
    num_probes = _num_probes(cfg, op.size)
    norms = block_frobenius_sq(op, part, num_probes=num_probes, key=probe_key)
    ratios = np.asarray(block_ratios(norms.sq), np.float64)
    logging.info(
        "layer-wise: block ratios r_ij = ‖H_ij‖²/‖H_ii‖² (%s, %d HVPs):\n%s",
        "exact" if num_probes is None else f"{num_probes}-probe estimate",
        norms.num_matvecs,
        np.array2string(ratios, precision=4),
    )  # fmt: skip

    spectrum = analysis_blocks.layerwise_top_eigenvalues(op, part, key=eig_key, tol=cfg.tol)
    rows = spectrum.as_rows()
    logging.info(
        "layer-wise vs whole-network top eigenvalues (%d HVPs):\n%s",
        spectrum.num_matvecs, _table(rows),
    )  # fmt: skip
    return {
        "dataset": ds.name,
        "model": config.model.to_dict(),
        "num_params": int(op.size),
        "train_history": history,
        "test_accuracy": test_acc,
        "hessian_samples": int(cfg.hessian_samples),
        "block_names": list(part.names),
        "block_sizes": [int(s) for s in part.sizes],
        "norms": "exact" if num_probes is None else "estimate",
        "block_frobenius_sq": np.asarray(norms.sq, np.float64).tolist(),
        "block_frobenius_sq_stderr": np.asarray(norms.stderr, np.float64).tolist(),
        "block_ratios": ratios.tolist(),
        "top_eigenvalues": rows,
        "num_hvps": {"norms": int(norms.num_matvecs), "eigenvalues": spectrum.num_matvecs},
    }


# ----------------------------------------------------------------------------- d. block spectra


def _guarded(label: str, compute):
    """compute() or, when it raises, {'error': message} (logged): one failing setting of a
    sweep is recorded and the sweep goes on."""
    try:
        return compute()
    except Exception as err:  # noqa: BLE001 - record any failure of one setting, keep going
        logging.exception("%s failed", label)
        return {"error": f"{type(err).__name__}: {err}"}


def _setup(cfg: ml_collections.ConfigDict, num_classes: int, model: str, key: jax.Array):
    return analysis_blocks.static_problem(
        num_classes, cfg.loss, input_dim=cfg.input_dim, width=cfg.width,
        num_samples=cfg.num_samples, key=key, model=model, param_init=cfg.param_init,
    )  # fmt: skip


def _fit_or_none(cs, values) -> dict | None:
    pairs = [(c, v) for c, v in zip(cs, values, strict=True) if v is not None and v > 0]
    if len(pairs) < 2:
        return None
    slope, intercept = analysis_blocks.fit_loglog_slope(*zip(*pairs, strict=True))
    return {"slope": slope, "intercept": intercept}


def block_spectra(cfg: ml_collections.ConfigDict, key: jax.Array) -> dict:
    """Per model ('linear' f = V x, 'nn' f = V relu(W x)), neuron-block layer and C at
    initialisation: eigenvalues of `probed` diagonal blocks and singular values of as many
    off-diagonal blocks of the same layer, and the scale ratio mean σ(H_ij) / mean |λ(H_jj)|
    with its log-log slope against C (same key for every C: a paired design)."""
    cs = [int(c) for c in cfg.num_classes]
    out: dict = {"num_classes": cs, "models": {}, "slopes": {}}
    for model in cfg.models:
        layers = analysis_blocks.MODEL_LAYERS[model]
        out["models"][model] = {layer: [] for layer in layers}
        for c in cs:

            def one(c=c, model=model, layers=layers):
                problem, probe_key = _setup(cfg, c, model, key)
                res = {}
                for k, (layer, name) in enumerate(layers.items()):
                    sp = analysis_blocks.neuron_block_spectra(
                        problem.op, problem.partition, name, cfg.probed,
                        key=jax.random.fold_in(probe_key, k), block_size=cfg.block_size or None,
                    )  # fmt: skip
                    diag, off = np.abs(sp.diagonal), sp.off_diagonal
                    res[layer] = {
                        "num_classes": c,
                        "num_params": int(problem.op.size),
                        "num_hvps": int(sp.num_matvecs),
                        "pairs": sp.pairs.tolist(),
                        "diagonal_eigenvalues": sp.diagonal.tolist(),
                        "off_diagonal_singular_values": off.tolist(),
                        "mean_abs_diagonal": float(diag.mean()),
                        "mean_off_diagonal": float(off.mean()),
                        "scale_ratio": float(off.mean() / diag.mean()),
                    }
                    logging.info(
                        "spectra %s %s C=%d: mean |eig H_ii| %.4g, mean sv H_ij %.4g (ratio %.4g)",
                        model, layer, c, diag.mean(), off.mean(), off.mean() / diag.mean(),
                    )  # fmt: skip
                return res

            res = _guarded(f"spectra {model} C={c}", one)
            for layer in layers:
                out["models"][model][layer].append(res.get(layer, res))
        out["slopes"][model] = {
            layer: _fit_or_none(cs, [r.get("scale_ratio") for r in recs])
            for layer, recs in out["models"][model].items()
        }
    return out


def _spectra_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    panels = {
        f"{model} {layer}": {
            r["num_classes"]: {
                "diagonal": r["diagonal_eigenvalues"],
                "off_diagonal": r["off_diagonal_singular_values"],
            }
            for r in recs
            if "error" not in r
        }
        for model, per_layer in res["models"].items()
        for layer, recs in per_layer.items()
    }
    figures.plot_block_spectra(
        panels, os.path.join(workdir, "block_spectra.png"), bins=cfg.bins,
        title=f"neuron blocks at init ({cfg.loss}): eigenvalues of H_ii vs singular values of "
        f"H_ij, d={cfg.input_dim}, width={cfg.width}, {cfg.num_samples} Gaussian samples",
    )  # fmt: skip


# ----------------------------------------------------------------------------- e. heatmaps


def _max_pool(a: np.ndarray, max_pixels: int) -> tuple[np.ndarray, int]:
    """(a max-pooled by an integer factor f so that it has <= max_pixels rows, f)."""
    f = max(1, -(-a.shape[0] // max_pixels))
    m = -(-a.shape[0] // f) * f
    padded = np.zeros((m, m), a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return padded.reshape(m // f, f, m // f, f).max(axis=(1, 3)), f


def heatmaps(cfg: ml_collections.ConfigDict, workdir: str, key: jax.Array) -> dict:
    """Dense Hessian of each model at initialisation and after training (full-batch or
    minibatch, cfg.optimizer) on its Gaussian inputs and random labels, its rows and columns
    ordered so that neuron blocks are contiguous; the share of ‖H‖²_F inside diagonal neuron
    blocks and inside diagonal layer blocks. |H| (max-pooled to <= cfg.max_pixels) goes to
    hessian_heatmap.npz for the figure."""
    init_key, train_key = jax.random.split(key)
    out, images = {}, {}
    for m, model in enumerate(cfg.models):
        problem, _ = _setup(cfg, cfg.num_classes, model, jax.random.fold_in(init_key, m))
        if problem.op.size > cfg.max_params:
            raise ValueError(
                f"heatmap of {model}: {problem.op.size} params > heatmap.max_params "
                f"{cfg.max_params} (the dense Hessian is formed)"
            )
        x, y = (a[0] for a in problem.data)
        trained, history = training.train(
            problem.loss_fn, problem.params, x, y,
            optimizer=training.make_optimizer(cfg.optimizer, cfg.learning_rate),
            num_steps=cfg.steps, batch_size=cfg.batch_size,
            key=jax.random.fold_in(train_key, m), log_every=cfg.steps,
        )  # fmt: skip
        order, bounds = analysis_blocks.neuron_block_order(problem.partition)
        layers = curvature.partition_by_layer(problem.op.layout)
        out[model] = {"num_params": int(problem.op.size), "train_history": history}
        for stage, params in (("init", problem.params), ("trained", trained)):
            op = curvature.hessian_operator(problem.loss_fn, params, problem.data)
            dense = np.asarray(to_dense(op, cfg.block_size or None), np.float64)
            image, factor = _max_pool(np.abs(dense[np.ix_(order, order)]), cfg.max_pixels)
            images[f"{model}/{stage}"] = image.astype(np.float32)
            images[f"{model}/bounds"] = bounds / factor
            rec = {
                "loss": float(problem.loss_fn(params, (x, y))),
                "neuron_diagonal_mass": analysis_blocks.diagonal_mass_fraction(
                    dense, problem.partition
                ),
                "layer_diagonal_mass": analysis_blocks.diagonal_mass_fraction(dense, layers),
                "pool_factor": int(factor),
            }
            out[model][stage] = rec
            logging.info(
                "heatmap %s %s: loss %.4f, ‖H‖² share in diagonal neuron blocks %.4f, "
                "in diagonal layer blocks %.4f",
                model, stage, rec["loss"], rec["neuron_diagonal_mass"],
                rec["layer_diagonal_mass"],
            )  # fmt: skip
    common.write_atomic(
        os.path.join(workdir, "hessian_heatmap.npz"), lambda f: np.savez(f, **images)
    )
    return out


def _heatmap_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    with np.load(os.path.join(workdir, "hessian_heatmap.npz")) as z:
        mats = {m: {s: z[f"{m}/{s}"] for s in ("init", "trained")} for m in cfg.models}
        bounds = {m: z[f"{m}/bounds"] for m in cfg.models}
    figures.plot_hessian_heatmaps(
        mats, bounds, os.path.join(workdir, "hessian_heatmap.png"),
        vmax_fraction=cfg.vmax_fraction,
        title=f"|H| with the neuron-block grid ({cfg.loss}, C={cfg.num_classes}, "
        f"d={cfg.input_dim}, width={cfg.width}; trained {cfg.steps} {cfg.optimizer} steps)",
    )  # fmt: skip


# ----------------------------------------------------------------------------- f. neuron dynamic


def neuron_dynamic(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
    """Train f = V relu(W x) (no bias) on config.data in segments; at every checkpoint the
    static-force measure, the mean neuron-block ratio r of the hidden and the output layer
    (the same probed blocks throughout), on the Hessian of cfg.hessian_samples training
    samples."""
    cfg = config.neuron_dynamic
    _check_loss(cfg.loss)
    init_key, train_key, probe_key = jax.random.split(key, 3)
    ds = common.load_data(config.data)
    model = models.MLP((cfg.width, ds.num_classes), act="relu", use_bias=False)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    params = model.init(init_key, x[:1])
    loss_fn = curvature.MeanLoss(model.apply, LOSSES[cfg.loss])
    eval_loss = jax.jit(loss_fn)
    data = common.hessian_data(ds.x_train, ds.y_train, cfg.hessian_samples, cfg.microbatch_size)
    hess_batch = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), data)
    layers = analysis_blocks.MODEL_LAYERS["nn"]

    def measure(i, step, params):
        op = curvature.hessian_operator(loss_fn, params, data)
        part = curvature.partition_by_neuron(op.layout)
        rec = {
            "step": step,
            "loss": float(eval_loss(params, hess_batch)),
            "test_accuracy": float(training.accuracy(model.apply, params, ds.x_test, ds.y_test)),
        }
        for k, (layer, name) in enumerate(layers.items()):
            rec[f"r_{layer}"] = analysis_blocks.neuron_block_ratio(
                op, part, name, cfg.probed, key=jax.random.fold_in(probe_key, k),
                block_size=cfg.block_size or None,
            )  # fmt: skip
        logging.info(
            "neuron dynamic step %d/%d: loss %.4f, r_hidden %.4g, r_output %.4g",
            step, cfg.steps, rec["loss"], rec["r_hidden"], rec["r_output"],
        )  # fmt: skip
        return rec

    records = _train_in_segments(loss_fn, params, x, y, cfg, train_key, measure)
    first, last = records[0], records[-1]
    return {
        "dataset": ds.name,
        "num_classes": int(ds.num_classes),
        "num_params": int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
        "checkpoints": records,
        "change": {f"r_{layer}": last[f"r_{layer}"] / first[f"r_{layer}"] for layer in layers},
    }


def _neuron_dynamic_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    recs = res["checkpoints"]
    layers = analysis_blocks.MODEL_LAYERS["nn"]
    series = {f"r {layer}": [r[f"r_{layer}"] for r in recs] for layer in layers}
    figures.plot_dynamic_force(
        [r["step"] for r in recs], [r["loss"] for r in recs], series,
        os.path.join(workdir, "neuron_dynamic.png"), cross="r hidden",
        ylabel="mean ‖H_ij‖²_F / ‖H_jj‖²_F", panel_title="neuron-block ratios (same layer)",
        title=f"dynamic force at the neuron level: {res['dataset']}, f = V relu(W x), width "
        f"{cfg.width}, {cfg.loss}, {cfg.optimizer} lr {cfg.learning_rate}",
    )  # fmt: skip


# ----------------------------------------------------------------------------- driver


def _static_figure(
    res: dict, cfg: ml_collections.ConfigDict, workdir: str, name: str = "static_force.png"
) -> None:
    fits = {
        loss: {b: (f["slope"], f["intercept"]) if isinstance(f, dict) else None
               for b, f in per_block.items()}
        for loss, per_block in res["slopes"].items()
    }  # fmt: skip
    figures.plot_static_force(
        res["num_classes"],
        res["ratios"],
        fits,
        {"output": -2.0, "hidden": -1.0},
        os.path.join(workdir, name),
        title=f"static force at init: f = V relu(W x), d={cfg.input_dim}, width={cfg.width}, "
        f"{cfg.num_samples} samples, {cfg.probed} probed neurons, {cfg.param_init} init",
    )


def _large_c_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    _static_figure(res, cfg, workdir, "large_c.png")


def _dynamic_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    recs = res["checkpoints"]
    labels = {"WV": "‖H_WV‖_F", "WW": "‖H_WW‖_F", "VV": "‖H_VV‖_F"}

    def series(suffix):
        return {lab: [r[f"norm_{k}{suffix}"] for r in recs] for k, lab in labels.items()}

    figures.plot_dynamic_force(
        [r["step"] for r in recs],
        [r["loss"] for r in recs],
        series(""),
        os.path.join(workdir, "dynamic_force.png"),
        cross=labels["WV"],
        stderr=None if res["norms"] == "exact" else series("_stderr"),
        title=f"dynamic force: {cfg.loss}, {cfg.optimizer} lr {cfg.learning_rate}, Gaussian "
        f"mixture C={cfg.num_classes}, d={cfg.dim}, width={cfg.width} ({res['norms']} norms)",
    )


def _layerwise_figures(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
    m = res["model"]
    arch = f"{res['dataset']}, {m['kind']} {tuple(m['widths'])} {m['activation']}"
    figures.plot_block_ratios(
        res["block_ratios"],
        res["block_names"],
        os.path.join(workdir, "block_ratios.png"),
        title=f"{arch}: log10 ‖H_ij‖²_F / ‖H_ii‖²_F ({res['norms']})",
    )
    blocks, whole = res["top_eigenvalues"][:-1], res["top_eigenvalues"][-1]
    figures.plot_layerwise_top(
        [r["block"] for r in blocks],
        [r["top_eigenvalue"] for r in blocks],
        whole["top_eigenvalue"],
        os.path.join(workdir, "layerwise_top.png"),
        title=f"{arch}, test acc {res['test_accuracy']:.3f}",
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the enabled parts; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    keys = jax.random.split(jax.random.key(config.seed), 7)
    static_key, dynamic_key, layer_key, large_key, spectra_key, heatmap_key, neuron_key = keys
    results: dict = {"config": config.to_dict(), "seconds": {}}
    start = time.perf_counter()
    parts = [
        ("static", lambda: static_force(config.static, static_key), _static_figure),
        ("dynamic", lambda: dynamic_force(config.dynamic, config.seed, dynamic_key, config.mesh),
         _dynamic_figure),
        ("layerwise", lambda: layerwise(config, workdir, layer_key), _layerwise_figures),
        ("large_c", lambda: static_force(config.large_c, large_key), _large_c_figure),
        ("spectra", lambda: block_spectra(config.spectra, spectra_key), _spectra_figure),
        ("heatmap", lambda: heatmaps(config.heatmap, workdir, heatmap_key), _heatmap_figure),
        ("neuron_dynamic", lambda: neuron_dynamic(config, neuron_key), _neuron_dynamic_figure),
    ]  # fmt: skip
    for name, compute, figure in parts:
        if not config[name].enabled:
            continue
        t = time.perf_counter()
        results[name] = compute()
        figure(results[name], config[name], workdir)
        results["seconds"][name] = time.perf_counter() - t
        logging.info("part %s done in %.1f s", name, results["seconds"][name])

    results["seconds"]["total"] = time.perf_counter() - start
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info(
        "wrote results.json and figures to %s (%.1f s)", workdir, results["seconds"]["total"]
    )
    return results


if __name__ == "__main__":
    common.run_binary("block_structure", run)
