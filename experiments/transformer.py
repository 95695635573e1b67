r"""The Hessian of a transformer by role, over training.

  python -m experiments.transformer                                 # GPT on bytes, no files
  python -m experiments.transformer --config.data.source=shared     # the fixed corpus
  python -m experiments.transformer --config=experiments/configs/transformer.py:vit  # MNIST

Trains the model with Adam and, at every step of `config.checkpoints`, measures on a fixed
Hessian batch: the whole-network top-k (Lanczos), the top eigenvalues of every role block
(token embedding, positions, per layer Q, K, V, O, MLP in/out, LayerNorm scales and biases,
unembedding: `analysis.transformer.role_partition`, one compiled `block_eigsh`; with
hessian.head_k > 0 also every attention head's Q, K, V and O block), block-wise
SLQ densities and their heterogeneity (mean pairwise JS distance, Zhang et al. 2024), the
Frobenius norms of the Q/K/V/O diagonal blocks (Ormaniec et al. 2025), exact-vs-Kronecker
top-k overlaps of the projections with tokens as samples (Wu et al.), the layer-wise vs
whole-network top eigenvalue (Haink) and the overlap of the top-|θ| mask with the top-k
eigenspace (Fernandez et al.); after training also the preconditioned sharpness λ_max(P⁻¹H)
of the checkpoint's Adam state beside 38/η (Cohen et al. 2022), and with train.monitor_every
= N > 0 the same quantity every N steps during training, from a preconditioned curvature
monitor inside the jitted Adam step on that step's minibatch. At initialisation it also
measures the heterogeneity of the models in `config.compare` (MLP, ConvNet, ViT on MNIST) for
the comparison across architectures.

Writes into the workdir: results.json (keys `blocks`, `heterogeneity` and, with head_k,
`heads` of the last checkpoint, `checkpoints` with every measurement, `compare`),
block_spectra.png, heterogeneity.png, qkvo_norms.png, with head_k head_spectra.png and, with
train.monitor_every, `adam_sharpness` in results.json and adam_sharpness.png.
Resumable: the trained state (params and Adam state) of every checkpoint and every finished
measurement are stored (`state_<step>.ckpt`, `measure_<step>.json`, keyed by the config), so
a rerun of the same config continues where the last one stopped.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import common, figures
from hessjax import curvature, data, distributed, linalg, models, training
from hessjax import monitor as hm
from hessjax.analysis import blocks as analysis_blocks
from hessjax.analysis import transformer as tr

COMPARED = ("mlp", "conv", "vit")
OUTPUTS = ("results.json", "block_spectra.png", "heterogeneity.png", "qkvo_norms.png",
           "head_spectra.png", "adam_sharpness.png")  # fmt: skip
RULES = {
    "seed": common.NONNEGATIVE_INT,
    "data.source": common.STRING,
    "data.dir": common.STRING,
    "data.context": common.int_at_least(2),
    "data.max_bytes": common.POSITIVE_INT,
    "data.train_windows": common.POSITIVE_INT,
    "model.kind": common.one_of("gpt", "vit"),
    "model.width": common.POSITIVE_INT,
    "model.num_heads": common.POSITIVE_INT,
    "model.num_layers": common.POSITIVE_INT,
    "model.mlp_ratio": common.POSITIVE_INT,
    "model.tie_embeddings": common.BOOL,
    "model.patch_size": common.POSITIVE_INT,
    "model.pool": common.one_of(*models.transformer.POOLS),
    "train.learning_rate": common.POSITIVE,
    "train.batch_size": common.POSITIVE_INT,
    "train.log_every": common.POSITIVE_INT,
    "train.monitor_every": common.NONNEGATIVE_INT,
    "checkpoints": common.ints_at_least(0),
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.top_k": common.POSITIVE_INT,
    "hessian.block_k": common.POSITIVE_INT,
    "hessian.head_k": common.NONNEGATIVE_INT,
    "hessian.tol": common.PROBABILITY,
    "hessian.slq_probes": common.POSITIVE_INT,
    "hessian.slq_steps": common.POSITIVE_INT,
    "hessian.sigma_ratio": common.POSITIVE,
    "hessian.norm_probes": common.NONNEGATIVE_INT,
    "hessian.kron_samples": common.POSITIVE_INT,
    "hessian.kron_k": common.POSITIVE_INT,
    "hessian.kron_layers": common.one_of("first", "all", "none"),
    "compare": common.Rule(
        lambda v: v == () or common.subset_of(COMPARED).test(v),
        f"() or distinct names from {', '.join(COMPARED)}",
    ),
}
RELATIONS = (
    common.Relation(
        "hessian.microbatch_size",
        lambda c: c.hessian.num_samples % c.hessian.microbatch_size == 0,
        "a divisor of hessian.num_samples",
    ),
    common.WIDTH_DIVIDES_INTO_HEADS,
)
ATTENTION = ("Q", "K", "V", "O")
MEASURE_VERSION = 3  # bump when a measurement's meaning changes: stored ones are recomputed


# ----------------------------------------------------------------------------- problem


def _problem(config):
    """(model, loss_fn, train (x, y), valid (x, y), hessian batch (x, y), data name)."""
    key = jax.random.key(config.seed)
    m, d = config.model, config.data
    if m.kind == "gpt":
        text = data.load_text(d.source, max_bytes=d.max_bytes)
        model = models.GPT(
            data.BYTE_VOCAB, d.context, m.width, m.num_heads, m.num_layers, m.mlp_ratio,
            m.tie_embeddings,
        )  # fmt: skip
        train = data.windows(text.train, d.train_windows, d.context, config.seed)
        valid = data.windows(text.valid, 512, d.context, config.seed + 1)
        batch = data.windows(text.train, config.hessian.num_samples, d.context, config.seed + 2)
        for b in (train, valid, batch):
            data.check_token_batch(b, data.BYTE_VOCAB, d.context)
        loss = curvature.MeanLoss(model.apply, curvature.token_cross_entropy)
        name = text.name
    else:
        ds = _mnist(d.dir)
        model = models.ViT(ds.num_classes, m.patch_size, m.width, m.num_heads, m.num_layers,
                           m.mlp_ratio, m.pool)  # fmt: skip
        train, valid = (ds.x_train, ds.y_train), (ds.x_test[:2000], ds.y_test[:2000])
        batch = data.class_balanced_subset(
            ds.x_train, ds.y_train, config.hessian.num_samples // ds.num_classes or 1,
            seed=config.seed,
        )  # fmt: skip
        loss = curvature.MeanLoss(model.apply, curvature.cross_entropy)
        name = ds.name
    params = model.init(key, jnp.asarray(train[0][:1]))
    return model, loss, train, valid, batch, name, params


def _mnist(directory: str):
    directory = directory or data.default_data_dir("mnist")
    if not directory:
        raise ValueError(
            "MNIST is needed here: set --config.data.dir (../shared/data/mnist absent)"
        )
    return data.load_dataset(ml_collections.ConfigDict({"name": "mnist", "dir": directory,
                                                        "source": "idx"}))  # fmt: skip


def _microbatched(batch, size):
    return data.microbatches(tuple(jnp.asarray(a) for a in batch), size)


# ----------------------------------------------------------------------------- measurements


def _kron_layers(model, params, x, which: str) -> list[str]:
    names = curvature.layer_names(model, params, jnp.asarray(x[:1]))
    if which == "none":
        return []
    if which == "all":
        return names
    keep = [n for n in names if n.startswith("block_0/")]
    return keep + [n for n in names if n in ("unembed", "head")]


def _block_tops(label: str, op, part, k: int, key, tol: float) -> tuple[dict, float]:
    """({block: {size, top_eigenvalues}}, seconds) of every block of `part` by one
    `block_eigsh`, k capped below the smallest block's size."""
    k = min(k, int(part.sizes.min()) - 1)
    res, seconds = common.timed(label, linalg.block_eigsh, op, part, k, key=key, tol=tol)
    tops = {
        name: {"size": int(size), "top_eigenvalues": np.asarray(vals).tolist()}
        for name, size, vals in zip(part.names, part.sizes, res.eigenvalues, strict=True)
    }
    return tops, seconds


def measure(config, model, loss_fn, params, batch, key, opt_state=None) -> dict:
    """Every quantity of one checkpoint (JSON-ready), from library functions; with the Adam
    state of a trained checkpoint also the preconditioned sharpness λ_max(P⁻¹H) (Cohen et al.
    2022) beside its full-batch threshold 38/η (stochastic training: reported, not asserted)."""
    h = config.hessian
    k_top, k_blocks, k_slq, k_norm, k_kron = jax.random.split(key, 5)
    op = curvature.hessian_operator(loss_fn, params, _microbatched(batch, h.microbatch_size))
    part = tr.role_partition(op.layout)
    out: dict = {"num_params": int(op.size)}

    top, out["seconds_top"] = common.timed("whole-network top-k", linalg.eigsh, op, h.top_k,
                                           key=k_top, tol=h.tol)  # fmt: skip
    out["top_eigenvalues"] = np.asarray(top.eigenvalues).tolist()
    out["top_hvps"] = int(top.num_matvecs)
    adam = None if opt_state is None else training.find_state(opt_state, optax.ScaleByAdamState)
    if adam is not None and int(adam.count) > 0:
        pre = hm.adam_preconditioner(opt_state)
        scaled = linalg.diagonal_congruence(op, jax.lax.rsqrt(op.ravel(pre)))
        p_top, out["seconds_preconditioned"] = common.timed(
            "preconditioned sharpness", linalg.eigsh, scaled, 1, key=k_top, tol=h.tol
        )
        out["preconditioned_sharpness"] = float(p_top.eigenvalues[0])
        out["adam_threshold"] = hm.adam_threshold(config.train.learning_rate)

    # Masked block products (one vmapped full product per block) rather than restricted ones
    # (tr.role_block_diagonal): one small compilation instead of one per block, which
    # dominates at these sizes (e.g. 180 s against ~15 s for the 25 blocks of the default).
    out["blocks"], out["seconds_blocks"] = _block_tops(
        "role-block top eigenvalues", op, part, h.block_k, k_blocks, h.tol
    )
    if h.head_k:
        heads = tr.role_partition(op.layout, num_heads=config.model.num_heads)
        every, out["seconds_heads"] = _block_tops(
            "per-head top eigenvalues", op, heads, h.head_k, k_blocks, h.tol
        )
        out["heads"] = {name: rec for name, rec in every.items() if "/head_" in name}

    (quad, het), out["seconds_slq"] = common.timed(
        "block densities (SLQ)", tr.block_spectra_heterogeneity, op, part,
        num_probes=h.slq_probes, num_steps=h.slq_steps, key=k_slq, sigma_ratio=h.sigma_ratio,
    )  # fmt: skip
    out["heterogeneity"] = _heterogeneity_json(het)
    logging.info("heterogeneity (mean JS distance over %d blocks): %.3f", len(het.names), het.mean)

    names = [n for n in part.names if n.rsplit("/", 1)[-1] in ATTENTION]
    if names:
        norms, out["seconds_norms"] = common.timed(
            "Q/K/V/O block norms", tr.diagonal_block_norms, op, part, names,
            num_probes=h.norm_probes or None, key=k_norm,
        )  # fmt: skip
        out["qkvo_norms"] = norms.as_dict()

    layers = _kron_layers(model, params, batch[0], h.kron_layers)
    if layers:
        sub = tuple(jnp.asarray(a[: h.kron_samples]) for a in batch)
        per_example = loss_fn.per_example_loss
        kron, out["seconds_kronecker"] = common.timed(
            "exact vs Kronecker", tr.kronecker_overlaps, model, params, sub, per_example, layers,
            k=h.kron_k, key=k_kron, chunk_size=1,
        )  # fmt: skip
        out["kronecker"] = {
            r.layer: {"size": r.size, "exact_top": r.exact_top.tolist(),
                      "kron_top": r.kron_top.tolist(), **r.curve.as_dict()}
            for r in kron
        }  # fmt: skip

    layer_part = curvature.partition_by_layer(op.layout)
    lw, out["seconds_layerwise"] = common.timed(
        "layer-wise tops", linalg.block_eigsh, op, layer_part, 1, key=k_top, tol=h.tol
    )
    lw = analysis_blocks.LayerwiseSpectrum(
        layer_part.names, layer_part.sizes, np.asarray(lw.eigenvalues[:, 0], np.float64),
        float(top.eigenvalues[0]), int(lw.num_matvecs) + int(top.num_matvecs),
    )  # fmt: skip
    out["layerwise"] = {"rows": lw.as_rows(), "depth_trend": lw.depth_trend()}

    theta = np.asarray(op.layout.ravel(params))
    vectors = distributed.host_orthonormal(top.eigenvectors)
    out["mask_overlap"] = linalg.mask_overlap_curve(theta, vectors).as_dict()
    out["density"] = {n: d.tolist() for n, d in zip(het.names, het.densities, strict=True)}
    out["density_grid"] = het.grid.tolist()
    out["density_scale"] = het.scale
    return out


def _heterogeneity_json(het: tr.BlockHeterogeneity) -> dict:
    return {"mean_js_distance": het.mean, "noise_floor": het.noise_floor,
            "between_halves": het.between_halves, "scale": het.scale, "names": list(het.names),
            "distances": np.round(het.distances, 6).tolist()}  # fmt: skip


def compare_models(config, key) -> dict:
    """Heterogeneity at initialisation of the models in config.compare on MNIST (layer
    blocks for the MLP and ConvNet, role blocks for the ViT); {} when MNIST is absent."""
    if not config.compare:
        return {}
    directory = config.data.dir or data.default_data_dir("mnist")
    if not directory:
        logging.warning("compare skipped: ../shared/data/mnist is absent")
        return {"skipped": "../shared/data/mnist is absent"}
    ds = _mnist(directory)
    x, y = data.class_balanced_subset(ds.x_train, ds.y_train, 10, seed=config.seed)
    h, out = config.hessian, {}
    built = {
        "mlp": models.MLP((64, 64, 10), act="relu"),
        "conv": models.ConvNet((8, 16), 10),
        "vit": models.ViT(10, 7, 32, 2, 2),
    }
    for i, kind in enumerate(config.compare):
        model = built[kind]
        images = x.reshape(-1, 28, 28, 1) if kind == "conv" else x
        params = model.init(jax.random.fold_in(key, i), jnp.asarray(images[:1]))
        loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
        op = curvature.hessian_operator(loss_fn, params, _microbatched((images, y), 50))
        part = (tr.role_partition(op.layout) if kind == "vit"
                else curvature.partition_by_layer(op.layout))  # fmt: skip
        _, het = tr.block_spectra_heterogeneity(
            op, part, num_probes=h.slq_probes, num_steps=h.slq_steps, key=key,
            sigma_ratio=h.sigma_ratio,
        )  # fmt: skip
        logging.info("%s at init: %d params, heterogeneity %.3f", kind, op.size, het.mean)
        out[kind] = {"num_params": int(op.size), **_heterogeneity_json(het)}
    return out


# ----------------------------------------------------------------------------- the run


def _fingerprint(config) -> dict:
    keep = ("seed", "data", "model", "train")
    return {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]) for k in keep}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train, measure at every checkpoint (resuming what a previous run of the same config
    finished), write results.json and the figures; returns the results dict."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    model, loss_fn, train, valid, batch, name, params = _problem(config)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    logging.info("%s on %s: %d parameters", config.model.kind, name, num_params)
    optimizer = training.make_optimizer("adam", config.train.learning_rate)
    monitor = _adam_monitor(config, loss_fn, key=jax.random.key(config.seed + 1))
    pre = hm.adam_preconditioner if monitor is not None else None
    step_fn = training.make_train_step(loss_fn, optimizer, monitor, pre)
    state = {"params": params, "opt_state": step_fn.init(params)}
    base = _fingerprint(config)
    hessian_fp = base | {"hessian": config.hessian.to_dict(), "version": MEASURE_VERSION}
    key = jax.random.key(config.seed)
    x_train, y_train = (jnp.asarray(a) for a in train)
    valid_loss = jax.jit(loss_fn)

    rows, done = [], 0
    for step in sorted(set(int(s) for s in config.checkpoints)):
        ckpt = os.path.join(workdir, f"state_{step}.ckpt")
        loaded = common.load_checkpoint(ckpt, base | {"step": step}, state)
        if loaded is not None:
            state, done = loaded[0], step
            logging.info("resumed the trained state at step %d", step)
        elif step > done:
            p, _, o = training.train(
                loss_fn, state["params"], x_train, y_train, optimizer=optimizer,
                num_steps=step - done, batch_size=config.train.batch_size,
                key=jax.random.fold_in(key, step), log_every=config.train.log_every,
                log=lambda s, v, d=done: logging.info("train step %d: loss %.4f", d + s, v),
                opt_state=state["opt_state"], return_opt_state=True, step=step_fn,
                monitor=monitor, preconditioner=pre,
            )  # fmt: skip
            state, done = {"params": p, "opt_state": o}, step
            common.save_checkpoint(ckpt, base | {"step": step}, state)
        adam_state = state["opt_state"][0] if monitor is not None else state["opt_state"]
        rows.append(_measured(workdir, step, hessian_fp, config, model, loss_fn, state["params"],
                              batch, valid, valid_loss, key, adam_state))  # fmt: skip
    compare = compare_models(config, jax.random.fold_in(key, 7))
    last = rows[-1]
    results = {
        "config": config.to_dict(),
        "data": name,
        "model": config.model.kind,
        "num_params": int(num_params),
        "blocks": last["blocks"],
        "heterogeneity": last["heterogeneity"],
        "heads": last.get("heads"),
        "checkpoints": rows,
        "compare": compare,
        "adam_sharpness": None,
        "seconds_total": time.perf_counter() - start,
    }
    if monitor is not None:
        log = hm.read_log(state["opt_state"][1])
        results["adam_sharpness"] = {
            "steps": log.steps.tolist(),
            "preconditioned_sharpness": log.sharpness.tolist(),
            "threshold": hm.adam_threshold(config.train.learning_rate),
            "every": config.train.monitor_every,
        }
    title = f"{config.model.kind} on {name}, {num_params:,} params"
    figures.plot_role_block_spectra(last["density_grid"], last["density"], last["density_scale"],
                                    os.path.join(workdir, "block_spectra.png"),
                                    title=f"{title}, step {last['step']}")  # fmt: skip
    by_model = {f"{config.model.kind} (step {r['step']})": r["heterogeneity"] for r in rows}
    by_model |= {f"{k} (init)": v for k, v in compare.items() if k != "skipped"}
    figures.plot_heterogeneity(by_model, last["heterogeneity"],
                               os.path.join(workdir, "heterogeneity.png"), title=title)  # fmt: skip
    if "qkvo_norms" in last:
        figures.plot_qkvo_norms([r["step"] for r in rows], [r["qkvo_norms"] for r in rows],
                                os.path.join(workdir, "qkvo_norms.png"), title=title)  # fmt: skip
    if "heads" in last:
        figures.plot_head_spectra(last["heads"], os.path.join(workdir, "head_spectra.png"),
                                  title=f"{title}, step {last['step']}")  # fmt: skip
    if monitor is not None:
        adam = results["adam_sharpness"]
        figures.plot_adam_sharpness(adam["steps"], adam["preconditioned_sharpness"],
                                    adam["threshold"], os.path.join(workdir, "adam_sharpness.png"),
                                    title=title)  # fmt: skip
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and figures to %s (%.0f s)", workdir,
                 results["seconds_total"])  # fmt: skip
    return results


def _adam_monitor(config, loss_fn, key) -> hm.Monitor | None:
    """The preconditioned monitor riding in the Adam step (None when train.monitor_every = 0):
    λ_max(P⁻¹H) of the step's minibatch every N steps, to 1 % (the monitor's default tol)."""
    every = config.train.monitor_every
    if not every:
        return None
    capacity = max(config.checkpoints) // every + 1
    return hm.curvature_monitor(loss_fn, every=every, capacity=capacity, key=key,
                                preconditioned=True)  # fmt: skip


def _measured(workdir, step, fingerprint, config, model, loss_fn, params, batch, valid,
              valid_loss, key, opt_state=None) -> dict:  # fmt: skip
    """The measurement of `step`, from measure_<step>.json when written under the same
    config, else computed and stored (atomically)."""
    path = os.path.join(workdir, f"measure_{step}.json")
    tag = common.config_hash(fingerprint | {"step": step})
    if os.path.exists(path):
        try:
            with open(path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") == tag:
                logging.info("step %d: reusing %s", step, path)
                return stored["row"]
        except (OSError, ValueError) as err:
            logging.warning("%s is unreadable (%s); measuring again", path, err)
    logging.info("step %d: measuring", step)
    vx, vy = (jnp.asarray(a) for a in valid)
    row = {"step": step, "valid_loss": float(valid_loss(params, (vx, vy)))}
    row |= measure(config, model, loss_fn, params, batch, jax.random.fold_in(key, 1000 + step),
                   opt_state)  # fmt: skip
    logging.info("step %d: valid loss %.4f, top eigenvalue %.4f", step, row["valid_loss"],
                 row["top_eigenvalues"][0])  # fmt: skip
    common.write_json(path, {"fingerprint": tag, "row": row})
    return row


if __name__ == "__main__":
    common.run_binary("transformer", run)
