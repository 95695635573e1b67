r"""Block structure of network Hessians (Dong et al. 2025; layer-wise part of Haink 2023).

  python -m experiments.block_structure --workdir=runs/block_structure
  python -m experiments.block_structure --workdir=runs/block_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist

Three parts, each switched by config.<part>.enabled:
  a. static force: at initialisation of f = V relu(W x), the mean neuron-block ratio
     r = ‖H_ij‖²_F / ‖H_ii‖²_F of the output and hidden layers vs the number of classes C, for
     cross-entropy and MSE, with log-log slopes (theory: CE output -2, hidden -1; MSE output
     blocks exactly 0).
  b. dynamic force: the same net trained on a Gaussian mixture; at checkpoints the loss and the
     layer-block norms ‖H_WV‖_F, ‖H_WW‖_F, ‖H_VV‖_F (exact, or Gaussian estimates with
     standard errors) — the cross-layer block shrinks as the loss falls.
  c. layer-wise structure of a trained MLP (config.data): the layer block-ratio matrix and
     each layer's top eigenvalue beside the whole network's.

Writes into the workdir the figures of the enabled parts (static_force.png,
dynamic_force.png, block_ratios.png, layerwise_top.png) and, last, results.json; the previous
run's copies are deleted first. params_layerwise.ckpt (part c's trained params) is reused when
the same data/model/train config is run again.
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
from hessjax import curvature, models, training
from hessjax.analysis import blocks as analysis_blocks
from hessjax.data import gaussian_mixture
from hessjax.linalg import block_frobenius_sq, block_ratios

LOSSES = {"ce": curvature.cross_entropy, "mse": curvature.mse}
OUTPUTS = (
    "results.json", "static_force.png", "dynamic_force.png", "block_ratios.png",
    "layerwise_top.png",
)  # fmt: skip
NORMS = ("exact", "estimate", "auto")
_MIXTURE_TRAIN = "the mixture's training samples (80 % of dynamic.num_samples)"


def _mixture_train(c: ml_collections.ConfigDict) -> int:
    return round(0.8 * c.dynamic.num_samples)


RULES = common.SHARED_RULES | {
    "static.enabled": common.BOOL,
    "static.num_classes": common.Rule(
        lambda v: common.ints_at_least(2).test(v) and len(v) >= 2,
        "a tuple of >= 2 class counts, each >= 2 (for a slope)",
    ),
    "static.losses": common.subset_of(("ce", "mse")),
    "static.input_dim": common.POSITIVE_INT,
    "static.width": common.POSITIVE_INT,
    "static.num_samples": common.POSITIVE_INT,
    "static.probed": common.POSITIVE_INT,
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
RELATIONS = (
    common.at_most("dynamic.hessian_samples", _mixture_train, _MIXTURE_TRAIN),
    common.at_most("dynamic.batch_size", _mixture_train, _MIXTURE_TRAIN),
    common.at_most("dynamic.microbatch_size", "dynamic.hessian_samples"),
    common.at_most_train_samples("layerwise.hessian_samples"),
    common.at_most("layerwise.microbatch_size", "layerwise.hessian_samples"),
    common.at_most_train_samples("train.batch_size"),
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


def _layer_norms(loss_fn, params, data, num_probes, key, mesh: str = "") -> dict:
    """‖H_ij‖_F of the layer blocks W = Dense_0, V = Dense_1 (and standard errors), the
    Hessian on `mesh` (config.mesh)."""
    op = common.placed_hessian(mesh, loss_fn, params, data)
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
    common.check_mesh_fits(mesh, params, cfg.microbatch_size, "config.mesh (dynamic)")
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

    optimizer = training.make_optimizer(cfg.optimizer, cfg.learning_rate)
    opt_state = optimizer.init(params)
    records, done = [], 0
    for i, step in enumerate(_checkpoints(cfg.steps, cfg.num_checkpoints, cfg.spacing)):
        if step > done:
            params, _, opt_state = training.train(
                loss_fn, params, x, y, optimizer=optimizer, num_steps=step - done,
                batch_size=cfg.batch_size, key=jax.random.fold_in(train_key, i),
                log_every=step - done, opt_state=opt_state, return_opt_state=True,
            )  # fmt: skip
            done = step
        rec = {
            "step": step,
            "loss": float(eval_loss(params, hess_batch)),
            "train_loss": float(eval_loss(params, (x, y))),
            "test_accuracy": float(training.accuracy(model.apply, params, ds.x_test, ds.y_test)),
        }
        rec |= _layer_norms(
            loss_fn, params, data, num_probes, jax.random.fold_in(probe_key, i), mesh
        )
        records.append(rec)
        logging.info(
            "dynamic step %d/%d: loss %.4f, ‖H_WV‖_F %.4g, ‖H_WW‖_F %.4g, ‖H_VV‖_F %.4g, "
            "‖H_WV‖²/‖H_WW‖² %.4g",
            step, cfg.steps, rec["loss"], rec["norm_WV"], rec["norm_WW"], rec["norm_VV"],
            rec["ratio_WV_WW"],
        )  # fmt: skip
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
    common.check_mesh_fits(config.mesh, params, cfg.microbatch_size, "config.mesh (layerwise)")
    fingerprint = {k: config[k].to_dict() for k in ("data", "model", "train")}
    params, history = common.train_or_resume(
        workdir, "layerwise", fingerprint | {"seed": config.seed}, loss_fn, params,
        ds.x_train, ds.y_train, config.train, train_key,
    )  # fmt: skip
    test_acc = float(training.accuracy(model.apply, params, ds.x_test, ds.y_test))
    logging.info("layer-wise: test accuracy %.4f", test_acc)

    data = common.hessian_data(ds.x_train, ds.y_train, cfg.hessian_samples, cfg.microbatch_size)
    op = common.placed_hessian(config.mesh, loss_fn, params, data)
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


# ----------------------------------------------------------------------------- driver


def _static_figure(res: dict, cfg: ml_collections.ConfigDict, workdir: str) -> None:
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
        os.path.join(workdir, "static_force.png"),
        title=f"static force at init: f = V relu(W x), d={cfg.input_dim}, width={cfg.width}, "
        f"{cfg.num_samples} samples, {cfg.probed} probed neurons",
    )


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
    static_key, dynamic_key, layer_key = jax.random.split(jax.random.key(config.seed), 3)
    results: dict = {"config": config.to_dict(), "seconds": {}}
    start = time.perf_counter()
    parts = [
        ("static", lambda: static_force(config.static, static_key), _static_figure),
        ("dynamic", lambda: dynamic_force(config.dynamic, config.seed, dynamic_key, config.mesh),
         _dynamic_figure),
        ("layerwise", lambda: layerwise(config, workdir, layer_key), _layerwise_figures),
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
