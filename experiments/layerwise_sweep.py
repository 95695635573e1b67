r"""When are the largest Hessian eigenvalues in the deeper layers? (Haink, arXiv 2311.00452:
"higher eigenvalues are concentrated more in deeper layers".)

  python -m experiments.layerwise_sweep --workdir=runs/layerwise_sweep
  python -m experiments.layerwise_sweep --workdir=runs/layerwise_sweep_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist

A one-factor-at-a-time sweep around `config.base`: for each field of `config.sweep` (depth =
number of hidden layers, width, input scaling, activation, loss, init) and each listed value,
the base setting with that field changed. Every setting trains an MLP (the same PRNG keys for
all, a paired design) and, at each step of `config.checkpoints` (0 = initialisation), measures
the top eigenvalue of every layer's diagonal Hessian block H_ll (kernel and bias of one Dense
layer, all blocks in one compiled Lanczos) and of the whole Hessian, then the depth trend
(`LayerwiseSpectrum.depth_trend`: rank correlation of the layer tops with depth, which layer is
largest, last / first).

Settings run one after another; one that fails (e.g. training diverges) is recorded with its
error and the sweep goes on. Each finished setting is stored in sweep_progress.json (keyed by
a hash of everything that determines it) and reused when the binary is run again, so an
interrupted sweep resumes. Writes layerwise_sweep.png and, last, results.json (atomically;
the previous run's copies are deleted first).
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
from hessjax import curvature, models, training
from hessjax.analysis import blocks as analysis_blocks
from hessjax.data import SCALINGS, rescale_inputs

LOSSES = {"ce": curvature.cross_entropy, "mse": curvature.mse}
FIELDS = ("depth", "width", "scaling", "activation", "loss", "param_init")
OUTPUTS = ("results.json", "layerwise_sweep.png")
PROGRESS = "sweep_progress.json"
_ACTS = tuple(sorted(models.ACTIVATIONS))

RULES = common.SHARED_RULES | {
    "base.depth": common.POSITIVE_INT,
    "base.width": common.POSITIVE_INT,
    "base.scaling": common.one_of(*SCALINGS),
    "base.activation": common.one_of(*_ACTS),
    "base.loss": common.one_of(*LOSSES),
    "base.param_init": common.one_of(*models.INITS),
    "sweep.depth": common.ints_at_least(1),
    "sweep.width": common.ints_at_least(1),
    "sweep.scaling": common.subset_of(SCALINGS),
    "sweep.activation": common.subset_of(_ACTS),
    "sweep.loss": common.subset_of(tuple(LOSSES)),
    "sweep.param_init": common.subset_of(models.INITS),
    "checkpoints": common.ints_at_least(0),
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.tol": common.POSITIVE,
}
RELATIONS = (
    common.at_most_train_samples("hessian.num_samples"),
    common.at_most("hessian.microbatch_size", "hessian.num_samples"),
    common.at_most_train_samples("train.batch_size"),
    common.Relation(
        "checkpoints",
        lambda c: (
            list(c.checkpoints) == sorted(set(c.checkpoints))
            and max(c.checkpoints) <= c.train.steps
        ),
        "strictly increasing steps, none beyond train.steps",
    ),
)


def settings(config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
    """[(name, setting)]: 'base' first, then 'field=value' for every swept value that differs
    from the base (one field changed at a time), in the order of FIELDS and of the lists."""
    base = {f: config.base[f] for f in FIELDS}
    out = [("base", base)]
    for field in FIELDS:
        values = [v for v in config.sweep[field] if v != base[field]]
        out += [(f"{field}={v}", base | {field: v}) for v in values]
    return out


def _fingerprint(config: ml_collections.ConfigDict, setting: dict) -> str:
    parts = {k: config[k].to_dict() for k in ("data", "train", "hessian")}
    return common.config_hash(
        parts | {"setting": setting, "checkpoints": list(config.checkpoints), "seed": config.seed}
    )


def run_setting(config: ml_collections.ConfigDict, setting: dict, ds, key: jax.Array) -> dict:
    """Train the MLP of `setting` on `ds` (already rescaled) and measure the layer-wise top
    eigenvalues at every checkpoint. Returns a JSON-able dict."""
    t, h = config.train, config.hessian
    init_key, train_key, eig_key = jax.random.split(key, 3)
    widths = (int(setting["width"]),) * int(setting["depth"]) + (ds.num_classes,)
    model = models.MLP(widths, act=setting["activation"], param_init=setting["param_init"])
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    params = model.init(init_key, x[:1])
    loss_fn = curvature.MeanLoss(model.apply, LOSSES[setting["loss"]])
    data = common.hessian_data(ds.x_train, ds.y_train, h.num_samples, h.microbatch_size)
    optimizer = training.make_optimizer(t.optimizer, t.learning_rate)
    opt_state = optimizer.init(params)
    records, done = [], 0
    for i, step in enumerate(int(s) for s in config.checkpoints):
        if step > done:
            params, _, opt_state = training.train(
                loss_fn, params, x, y, optimizer=optimizer, num_steps=step - done,
                batch_size=int(t.batch_size), key=jax.random.fold_in(train_key, i),
                log_every=min(int(t.log_every), step - done), opt_state=opt_state,
                return_opt_state=True,
            )  # fmt: skip
            done = step
        op = curvature.hessian_operator(loss_fn, params, data)
        part = curvature.partition_by_layer(op.layout)
        spec = analysis_blocks.layerwise_top_eigenvalues(op, part, key=eig_key, tol=h.tol)
        records.append({
            "step": step,
            "train_loss": float(loss_fn(params, (x, y))),
            "test_accuracy": float(training.accuracy(model.apply, params, ds.x_test, ds.y_test)),
            "layers": list(spec.names),
            "layer_params": [int(s) for s in spec.sizes],
            "layer_top": [float(v) for v in spec.block_top],
            "whole_top": spec.whole_top,
            "trend": spec.depth_trend(),
            "num_hvps": int(spec.num_matvecs),
        })  # fmt: skip
    return {"num_params": int(op.size), "checkpoints": records}


def _summary_line(name: str, rec: dict) -> str:
    tops = " / ".join(f"{v:.3g}" for v in rec["layer_top"])
    tr = rec["trend"]
    rho = "n/a" if tr["spearman"] is None else f"{tr['spearman']:+.2f}"
    return (f"{name:24s} step {rec['step']:5d}: layers {tops} (whole {rec['whole_top']:.3g}); "
            f"Spearman with depth {rho}, largest {rec['layers'][tr['argmax']]}")  # fmt: skip


def verdict(entries: list[dict], steps) -> list[dict]:
    """Over the settings that finished, at each checkpoint step: how many have the largest top
    eigenvalue in the output layer (the claim), how many in the first layer, how many a
    positive rank correlation of the layer tops with depth, and the median last / first."""
    out = []
    for i, step in enumerate(int(s) for s in steps):
        trends = [e["result"]["checkpoints"][i]["trend"] for e in entries if "result" in e]
        rhos = [t["spearman"] for t in trends if t["spearman"] is not None]
        ratios = [t["last_over_first"] for t in trends if t["last_over_first"] is not None]
        out.append({
            "step": step,
            "settings_measured": len(trends),
            "deepest_largest": sum(t["deepest_largest"] for t in trends),
            "first_layer_largest": sum(t["argmax"] == 0 for t in trends),
            "positive_depth_correlation": sum(r > 0 for r in rhos),
            "median_last_over_first": float(np.median(ratios)) if ratios else None,
        })  # fmt: skip
    return out


def _load_progress(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            progress = json.load(f)
        if not isinstance(progress, dict):
            raise ValueError("not a JSON object")
        return progress
    except (OSError, ValueError) as err:
        logging.warning("%s is unreadable (%s); starting the sweep afresh", path, err)
        return {}


def _figure(config, ds_name: str, entries: list[dict], workdir: str) -> None:
    done = {e["name"]: e["result"] for e in entries if "result" in e}
    panels: dict[str, dict[str, list[float]]] = {}
    base = done.get("base")
    for field in FIELDS:
        series = {}
        for value in config.sweep[field]:
            name = "base" if value == config.base[field] else f"{field}={value}"
            if name in done:
                series[f"{value}"] = done[name]["checkpoints"][-1]["layer_top"]
        if series:
            panels[f"{field} (base {config.base[field]})"] = series
    if base is not None:
        panels["training step (base)"] = {
            f"step {r['step']}": r["layer_top"] for r in base["checkpoints"]
        }
    trends = {
        name: ([r["step"] for r in res["checkpoints"]],
               [r["trend"]["spearman"] for r in res["checkpoints"]])
        for name, res in done.items()
    }  # fmt: skip
    b = config.base
    figures.plot_layerwise_sweep(
        panels, trends, os.path.join(workdir, "layerwise_sweep.png"),
        title=f"top eigenvalue of each layer block H_ll (input → output) after "
        f"{config.checkpoints[-1]} steps, {ds_name}; base: {b.depth}×{b.width} {b.activation}, "
        f"{b.loss}, {b.scaling} inputs, {b.param_init} init, {config.train.optimizer} "
        f"η={config.train.learning_rate}",
    )  # fmt: skip


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the sweep; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    todo = settings(config)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    progress_path = os.path.join(workdir, PROGRESS)
    progress = _load_progress(progress_path)
    ds = common.load_data(config.data)
    scaled = {}
    key = jax.random.key(config.seed)
    entries = []
    for name, setting in todo:
        fp = _fingerprint(config, setting)
        entry = {"name": name, "setting": setting}
        if fp in progress:
            entry |= {"result": progress[fp], "resumed": True}
            logging.info("[%s] resumed from %s", name, progress_path)
        else:
            t0 = time.perf_counter()
            try:
                if setting["scaling"] not in scaled:
                    scaled[setting["scaling"]] = rescale_inputs(ds, setting["scaling"])
                result = run_setting(config, setting, scaled[setting["scaling"]], key)
            except Exception as err:  # noqa: BLE001 - one failing setting must not end the sweep
                logging.warning("[%s] failed: %s: %s", name, type(err).__name__, err)
                entry["error"] = f"{type(err).__name__}: {err}"
            else:
                result["seconds"] = time.perf_counter() - t0
                entry["result"] = progress[fp] = result
                common.write_json(progress_path, progress)
        if "result" in entry:
            for rec in entry["result"]["checkpoints"]:
                logging.info("%s", _summary_line(name, rec))
        entries.append(entry)

    summary = verdict(entries, config.checkpoints)
    for v in summary:
        logging.info(
            "step %d, %d settings: output layer largest in %d, first layer largest in %d, "
            "positive rank correlation with depth in %d; median last/first layer top %s",
            v["step"], v["settings_measured"], v["deepest_largest"], v["first_layer_largest"],
            v["positive_depth_correlation"], v["median_last_over_first"],
        )  # fmt: skip
    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "settings": entries,
        "failed": [e["name"] for e in entries if "error" in e],
        "summary": summary,
    }
    _figure(config, ds.name, entries, workdir)
    results["seconds"] = time.perf_counter() - start
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and layerwise_sweep.png to %s (%.1f s)", workdir,
                 results["seconds"])  # fmt: skip
    return results


if __name__ == "__main__":
    common.run_binary("layerwise_sweep", run)
