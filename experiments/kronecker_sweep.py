r"""When does the Kronecker approximation E[xxᵀ] ⊗ E[M] of a dense layer's Hessian block have
the near-1 top-eigenspace overlap with the exact block that Wu et al. ("Dissecting Hessian",
arXiv 2010.04261) report? A small one-at-a-time sweep around a base MLP.

  python -m experiments.kronecker_sweep --workdir=runs/kronecker_sweep
  python -m experiments.kronecker_sweep --workdir=runs/kronecker_sweep_mnist \
      --config.sweep.datasets=mnist --config.data.dir=../shared/data/mnist

Settings: the base (config.model, config.train.steps, config.data) and, one axis at a time,
every value of sweep.widths (hidden width), sweep.steps (training length; 0 = at
initialisation), sweep.datasets (data.name) and sweep.activations. For each, every layer's
exact kernel block and Kronecker approximation (`experiments.kronecker.all_layers`) with M
exact and in Gauss-Newton form: the overlap of their top-k eigenspaces at k = 1, C, 2C, 3C,
the ratios of their top-C eigenvalues, and ‖E[x]‖²/tr E[xxᵀ].

Writes into the workdir: sweep.png, results.json (last), the trained params of each setting
(params_<tag>.ckpt) and each setting's measurements (setting_<tag>.json, reused when the same
setting is run again). A setting that fails is recorded with its error; the others go on.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from experiments import common, figures
from experiments import kronecker as kron
from hessjax import models
from hessjax.data import DATASET_NAMES

OUTPUTS = ("results.json", "sweep.png")
AXES = ("width", "steps", "dataset", "activation")
RULES = common.SHARED_RULES | {
    "train.steps": common.NONNEGATIVE_INT,  # the base may be at initialisation too
    "hessian.num_samples": common.int_at_least(2),
    "hessian.chunk_size": common.POSITIVE_INT,
    "hessian.top_k": common.NONNEGATIVE_INT,
    "hessian.dense_max_size": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.tol": common.POSITIVE,
    "sweep.widths": common.ints_at_least(1),
    "sweep.steps": common.ints_at_least(0),
    "sweep.datasets": common.subset_of(DATASET_NAMES),
    "sweep.activations": common.subset_of(sorted(models.ACTIVATIONS)),
    "sweep.near_one": common.PROBABILITY,
}
RELATIONS = (
    common.Relation(
        "model.kind", lambda c: c.model.kind == "mlp", "'mlp' (the sweep varies MLP widths)"
    ),
)


def settings(config: ml_collections.ConfigDict) -> list[dict]:
    """The base setting and the one-at-a-time variations, without repeats, in sweep order:
    dicts {width, steps, dataset, activation, axis} (axis: which value differs, 'base')."""
    base = {
        "width": int(config.model.widths[0]),
        "steps": int(config.train.steps),
        "dataset": config.data.name,
        "activation": config.model.activation,
    }
    values = {
        "width": config.sweep.widths, "steps": config.sweep.steps,
        "dataset": config.sweep.datasets, "activation": config.sweep.activations,
    }  # fmt: skip
    out = [base | {"axis": "base"}]
    for axis in AXES:
        for v in values[axis]:
            if v != base[axis]:
                out.append(base | {axis: v, "axis": axis})
    return out


def tag(setting: dict) -> str:
    return f"w{setting['width']}_s{setting['steps']}_{setting['dataset']}_{setting['activation']}"


def setting_config(config, setting: dict) -> ml_collections.ConfigDict:
    """config with the setting's width (every hidden layer), steps, data name, activation."""
    c = config.copy_and_resolve_references()
    c.model.widths = (setting["width"],) * len(config.model.widths)
    c.model.activation = setting["activation"]
    c.train.steps = max(setting["steps"], 1)
    c.data.name = setting["dataset"]
    return c


def measure(config, workdir: str, setting: dict) -> dict:
    """Train (or resume) the setting's model and measure every layer, M exact and GN."""
    c = setting_config(config, setting)
    h = c.hessian
    ds = common.load_data(c.data)
    num_classes = ds.num_classes
    top_k = int(h.top_k) or 3 * num_classes
    marks = kron.overlap_marks(num_classes, top_k)
    n = min(int(h.num_samples), len(ds.y_train))
    batch = common.hessian_data(ds.x_train, ds.y_train, n)
    trained = kron.train_model(c, workdir, tag(setting), ds, c.seed, setting["steps"],
                               c.data.to_dict())  # fmt: skip
    out = {"num_classes": num_classes, "top_k": top_k, "test_accuracy": trained.test_accuracy,
           "train_loss": trained.history[-1][1], "layers": {}}  # fmt: skip
    for form in ("hessian", "ggn"):
        eigs = kron.all_layers(trained.model, trained.params, batch, top_k, h, c.seed, form)
        for name, eig in eigs.items():
            layer = out["layers"].setdefault(name, {"mean_share": kron.mean_share(eig)})
            summary = kron.overlap_summary(eig, marks, num_classes)
            layer[form] = {
                "overlap_at": summary["overlap_exact_vs_kron_at"],
                "eigenvalues_top_c": summary["eigenvalues_top_c"],
            }
    return out


def _overlap_at_c(result: dict, form: str) -> dict[str, float]:
    c = str(result["num_classes"])
    return {n: v[form]["overlap_at"][c] for n, v in result["layers"].items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run every setting (resuming finished ones); returns the results written to
    results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    rows = []
    for setting in settings(config):
        path = os.path.join(workdir, f"setting_{tag(setting)}.json")
        fingerprint = setting_fingerprint(config, setting)
        row = {"setting": setting, "tag": tag(setting)}
        cached = load_row(path, fingerprint)
        t0 = time.perf_counter()
        if cached is not None:
            row |= cached
            logging.info("[%s] resumed from %s", tag(setting), path)
        else:
            try:
                row["result"] = measure(config, workdir, setting)
                row["seconds"] = time.perf_counter() - t0
                common.write_json(path, {"fingerprint": fingerprint, "row": row})
            except Exception as err:  # one failing setting never kills the sweep
                logging.exception("[%s] failed", tag(setting))
                row["error"] = f"{type(err).__name__}: {err}"
        if "result" in row:
            logging.info(
                "[%s] top-C overlap exact-vs-Kronecker: exact M %s, Gauss-Newton M %s; "
                "test acc %.3f", tag(setting),
                {k: round(v, 3) for k, v in _overlap_at_c(row["result"], "hessian").items()},
                {k: round(v, 3) for k, v in _overlap_at_c(row["result"], "ggn").items()},
                row["result"]["test_accuracy"],
            )  # fmt: skip
        rows.append(row)
    ok = [r for r in rows if "result" in r]
    near = config.sweep.near_one
    near_one = {
        form: [r["tag"] for r in ok if min(_overlap_at_c(r["result"], form).values()) >= near]
        for form in ("hessian", "ggn")
    }
    results = {
        "config": config.to_dict(),
        "settings": rows,
        "failed": [r["tag"] for r in rows if "error" in r],
        "near_one": near_one,
        "seconds": time.perf_counter() - start,
    }
    if ok:
        figures.plot_kronecker_sweep(
            ok, os.path.join(workdir, "sweep.png"), axes=AXES,
            title="exact layer block vs Kronecker approximation: top-C overlap per setting\n"
            f"base: MLP {tuple(config.model.widths)} {config.model.activation}, "
            f"{config.train.steps} steps, {config.data.name}",
        )  # fmt: skip
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("near-1 (>= %.2f) settings: %s; failed: %s", near, near_one, results["failed"])
    return results


def setting_fingerprint(config, setting: dict) -> str:
    """Hash of what determines a setting's measurements: its config without the sweep
    section, and the setting's values (not which axis it varies)."""
    c = setting_config(config, setting).to_dict()
    del c["sweep"]
    return common.config_hash(c | {k: v for k, v in setting.items() if k != "axis"})


def load_row(path: str, fingerprint: str) -> dict | None:
    """The cached measurements of a setting_<tag>.json written under `fingerprint`, else
    None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("fingerprint") != fingerprint:
        return None
    return {k: v for k, v in saved["row"].items() if k in ("result", "seconds")}


if __name__ == "__main__":
    common.run_binary("kronecker_sweep", run)
