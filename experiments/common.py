"""Pieces shared by the experiment binaries: command line, model, training with resume,
Hessian data, timing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from flax import serialization
from ml_collections import config_flags

from hessjax import curvature, models, training
from hessjax.data import Dataset, load_dataset, microbatches


def run_binary(name: str, run: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
    """Define --config (default configs/<name>.py) and --workdir (default runs/<name>), then
    call run(config, workdir). Flags are defined only here, when a module runs as the program,
    so several binaries can be imported in one process (tests) without duplicate flags."""
    config = config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(__file__), "configs", f"{name}.py")
    )
    workdir = flags.DEFINE_string("workdir", f"runs/{name}", "Where results and figures go.")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run(split_string_tuples(config.value), workdir.value)

    app.run(main)


def as_tuple(value: Any, cast: Callable[[Any], Any] = str) -> tuple:
    """A tuple from a tuple/list whose string items may hold comma-separated values, or from
    one such string: ('ce,mse',) (what `--config.static.losses=ce,mse` gives for a tuple of
    strings), 'ce,mse', ('ce', 'mse') all -> ('ce', 'mse'); items cast by `cast`."""
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        parts = item.strip("()[] ").split(",") if isinstance(item, str) else [item]
        out += [cast(p.strip() if isinstance(p, str) else p) for p in parts]
    return tuple(p for p in out if p != "")


def split_string_tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with every tuple field holding strings split by `as_tuple`, in place: a
    command-line override of a tuple of strings arrives as one comma-joined item (tuples of
    numbers are parsed by ml_collections itself)."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            split_string_tuples(value)
        elif isinstance(value, tuple) and any(isinstance(v, str) for v in value):
            config[key] = as_tuple(value, str)
    return config


def build_model(cfg: ml_collections.ConfigDict, num_classes: int):
    """Flax module for a model config (kind mlp | conv, widths, activation, optional
    param_init in models.INITS) with `num_classes` outputs: an MLP of hidden `widths`, or a
    conv net of `widths` channels."""
    widths = tuple(int(w) for w in cfg.widths)
    kind = cfg.get("kind", "mlp")
    init = cfg.get("param_init", "lecun")  # models.INITS
    if kind == "mlp":
        return models.MLP(widths + (num_classes,), act=cfg.activation, param_init=init)
    if kind == "conv":
        return models.ConvNet(widths, num_classes, act=cfg.activation, param_init=init)
    raise ValueError(f"model.kind must be 'mlp' or 'conv', got {kind!r}")


def load_data(cfg: ml_collections.ConfigDict) -> Dataset:
    """hessjax.data.load_dataset(cfg), logged (name, sizes, input shape, classes)."""
    ds = load_dataset(cfg)
    logging.info(
        "data %s: %d train / %d test, input %s, %d classes",
        ds.name, len(ds.y_train), len(ds.y_test), ds.x_train.shape[1:], ds.num_classes,
    )  # fmt: skip
    return ds


def init_classifier(cfg: ml_collections.ConfigDict, ds: Dataset, key: jax.Array):
    """(model, params, loss_fn) for a model config on `ds`: `build_model` with
    ds.num_classes outputs, initialised from `key` on one training input, and the mean
    cross-entropy `curvature.MeanLoss(model.apply, cross_entropy)`. Logs the parameter count."""
    model = build_model(cfg, ds.num_classes)
    params = model.init(key, jnp.asarray(ds.x_train[:1]))
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    logging.info(
        "model %s %s: %d parameters", cfg.get("kind", "mlp"), tuple(cfg.widths), num_params
    )
    return model, params, curvature.MeanLoss(model.apply, curvature.cross_entropy)


def load_checkpoint(state_path: str, meta_path: str, fingerprint: str, target):
    """(state, meta) written by `save_checkpoint` under the same `fingerprint` (a string of
    everything that determines the result): state restored into the structure of `target`
    (flax msgpack), meta the JSON dict. None when a file is missing or the fingerprint
    differs."""
    if not (os.path.exists(state_path) and os.path.exists(meta_path)):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    if meta["fingerprint"] != fingerprint:
        return None
    with open(state_path, "rb") as f:
        return serialization.from_bytes(target, f.read()), meta


def save_checkpoint(state_path: str, meta_path: str, fingerprint: str, state, meta: dict):
    """Write `state` (a pytree, flax msgpack) and `meta` | {fingerprint} (JSON)."""
    os.makedirs(os.path.dirname(state_path) or ".", exist_ok=True)
    with open(state_path, "wb") as f:
        f.write(serialization.to_bytes(state))
    with open(meta_path, "w") as f:
        json.dump(meta | {"fingerprint": fingerprint}, f)


def train_or_resume(
    workdir: str,
    tag: str,
    fingerprint: dict,
    loss_fn,
    params,
    x,
    y,
    train_cfg: ml_collections.ConfigDict,
    key: jax.Array,
    num_steps: int | None = None,
):
    """Train with train_cfg (optimizer, learning_rate, steps, batch_size, log_every), or load
    <workdir>/params_<tag>.msgpack when it was written under the same `fingerprint` (a JSON-able
    dict of everything that determines the result). Returns (params, history)."""
    steps = int(train_cfg.steps if num_steps is None else num_steps)
    fingerprint = json.dumps(fingerprint | {"steps": steps}, sort_keys=True, default=str)
    ckpt = os.path.join(workdir, f"params_{tag}.msgpack")
    meta = os.path.join(workdir, f"params_{tag}.json")
    loaded = load_checkpoint(ckpt, meta, fingerprint, params)
    if loaded is not None:
        logging.info("[%s] resumed trained params from %s", tag, ckpt)
        return loaded[0], loaded[1]["history"]
    params, history = training.train(
        loss_fn,
        params,
        jnp.asarray(x),
        jnp.asarray(y),
        optimizer=training.make_optimizer(train_cfg.optimizer, train_cfg.learning_rate),
        num_steps=steps,
        batch_size=train_cfg.batch_size,
        key=key,
        log_every=train_cfg.log_every,
        log=lambda s, v: logging.info("[%s] train step %d/%d: loss %.4f", tag, s, steps, v),
    )
    save_checkpoint(ckpt, meta, fingerprint, params, {"history": history})
    return params, history


def hessian_data(x, y, num_samples: int, microbatch_size: int | None = None):
    """The first num_samples training pairs, as (m, b, ...) microbatches of microbatch_size
    (None: one batch (b, ...) without the microbatch axis)."""
    if num_samples > len(y):
        raise ValueError(f"Hessian num_samples {num_samples} > {len(y)} training samples")
    batch = (jnp.asarray(x[:num_samples]), jnp.asarray(y[:num_samples]))
    return batch if microbatch_size is None else microbatches(batch, microbatch_size)


def timed(label: str, fn: Callable, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), blocking on the result; logs the time."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    seconds = time.perf_counter() - start
    logging.info("%s: %.2f s", label, seconds)
    return out, seconds
