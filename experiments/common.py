"""Pieces shared by the experiment binaries: command line, model, training with resume,
checkpoints and atomic writes, Hessian data, timing.

Outputs: every file a binary writes (results, arrays, figures, checkpoints) is written
atomically by `write_atomic` (a temporary file in the same directory, fsync, `os.replace`), so
a killed run never leaves a partial file. `prepare_workdir` deletes the binary's previous
results and figures when it starts and each binary writes results.json last: a workdir holds
one run's outputs, complete when results.json exists, never a mix of two runs. Checkpoints
(`save_checkpoint`) are kept across runs: each records the hash of the config that produced it
and a SHA-256 of its state, and one that is truncated, corrupted or of another config is
reported with a warning and recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from flax import serialization
from ml_collections import config_flags

from hessjax import curvature, models, training
from hessjax.data import DATASET_NAMES, SOURCES, Dataset, load_dataset, microbatches


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
        try:
            run(split_string_tuples(config.value), workdir.value)
        except ConfigError as err:
            sys.exit(f"{err}")  # message on stderr, exit status 1, before any work

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


# ----------------------------------------------------------------------------- validation


class ConfigError(ValueError):
    """Invalid config fields; the message names each field and its value."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check of one config value and what it demands ("a positive integer")."""

    test: Callable[[Any], bool]
    demand: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_at_least(low: int) -> Rule:
    """An integer >= low."""
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def real_in(low: float, high: float = math.inf, closed: bool = False) -> Rule:
    """A finite number in (low, high) ([low, high] if closed)."""
    inside = (lambda v: low <= v <= high) if closed else (lambda v: low < v < high)
    brackets = "[]" if closed else "()"
    return Rule(
        lambda v: _is_real(v) and inside(v), f"a number in {brackets[0]}{low}, {high}{brackets[1]}"
    )


def one_of(*choices: Any) -> Rule:
    """One of `choices`."""
    return Rule(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def ints_at_least(low: int, allow_empty: bool = False) -> Rule:
    """A tuple of integers >= low (non-empty unless allow_empty)."""
    return Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and (allow_empty or len(v) > 0)
            and all(_is_int(x) and x >= low for x in v)
        ),
        f"a {'' if allow_empty else 'non-empty '}tuple of integers >= {low}",
    )


def subset_of(choices: Sequence[str]) -> Rule:
    """A non-empty tuple of distinct items of `choices`."""
    return Rule(
        lambda v: isinstance(v, tuple | list) and 0 < len(v) == len(set(v)) <= len(choices)
        and set(v) <= set(choices),
        f"a non-empty tuple of distinct names from {', '.join(choices)}",
    )  # fmt: skip


POSITIVE_INT = int_at_least(1)
NONNEGATIVE_INT = int_at_least(0)
ANY_INT = Rule(_is_int, "an integer")
POSITIVE = real_in(0.0)
PROBABILITY = real_in(0.0, 1.0)
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
STRING = Rule(lambda v: isinstance(v, str), "a string")

# Rules for the sections the configs share (experiments/configs/common.py and model sections).
DATA_RULES: dict[str, Rule] = {
    "data.name": one_of(*DATASET_NAMES),
    "data.dir": STRING,
    "data.source": one_of(*SOURCES),
    "data.num_samples": int_at_least(10),
    "data.seed": ANY_INT,
}
TRAIN_RULES: dict[str, Rule] = {
    "train.optimizer": one_of("adam", "sgd"),
    "train.learning_rate": POSITIVE,
    "train.steps": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.log_every": POSITIVE_INT,
}
MODEL_RULES: dict[str, Rule] = {
    "model.kind": one_of("mlp", "conv"),
    "model.widths": ints_at_least(1),
    "model.activation": one_of(*sorted(models.ACTIVATIONS)),
    "model.param_init": one_of(*models.INITS),
}


# Every binary's RULES extend these (rules for fields a config lacks are skipped).
SHARED_RULES: dict[str, Rule] = DATA_RULES | TRAIN_RULES | MODEL_RULES | {"seed": ANY_INT}


@dataclasses.dataclass(frozen=True)
class Relation:
    """A check across fields: test(config) must hold; reported under `field`."""

    field: str
    test: Callable[[ml_collections.ConfigDict], bool]
    demand: str


def field_value(config: ml_collections.ConfigDict, field: str) -> Any:
    """config's value at a dotted `field` ('hessian.num_samples')."""
    for key in field.split("."):
        config = config[key]
    return config


def at_most(
    field: str, bound: str | Callable[[ml_collections.ConfigDict], int], what: str = ""
) -> Relation:
    """Relation config.<field> <= bound: another dotted field, or bound(config) described by
    `what`."""
    if isinstance(bound, str):
        what, other = what or bound, bound
        bound = lambda c: field_value(c, other)  # noqa: E731
    return Relation(field, lambda c: field_value(c, field) <= bound(c), f"at most {what}")


def at_most_train_samples(field: str, data: Callable = lambda c: c.data) -> Relation:
    """Relation config.<field> <= `num_train_samples(data(config))`."""
    return at_most(field, lambda c: num_train_samples(data(c)), "the number of training samples")


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def validate(
    config: ml_collections.ConfigDict,
    rules: dict[str, Rule],
    relations: Sequence[Relation] = (),
) -> None:
    """Check every field of `config` against `rules` (dotted field -> Rule; rules for absent
    fields are skipped, a field without a rule is an error), then, when all pass, the
    `relations`. Raises ConfigError listing each failing field with its value."""
    values = _leaves(config)
    errors = [
        f"config.{f} = {values[f]!r} has no validation rule" for f in values if f not in rules
    ]
    errors += [
        f"config.{f} = {v!r}: must be {rules[f].demand}"
        for f, v in values.items()
        if f in rules and not rules[f].test(v)
    ]
    if not errors:
        errors = [
            f"config.{r.field} = {values[r.field]!r}: must be {r.demand}"
            for r in relations
            if not r.test(config)
        ]
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def num_train_samples(data: ml_collections.ConfigDict) -> int:
    """Training samples of a data config without loading it: the generators' 80 % split of
    num_samples (mnist1d keeps 10·⌊num_samples / 10⌋), 60,000 for (Fashion-)MNIST."""
    if data.name == "mnist1d":
        return int(10 * (data.num_samples // 10) * 0.8)
    if data.name == "gaussian_mixture":
        return round(data.num_samples * 0.8)
    return 60000


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


def write_atomic(path: str, data: bytes | Callable[[BinaryIO], Any]) -> None:
    """Write `data` (bytes, or a function writing to a binary file object, e.g.
    `lambda f: np.save(f, x)`) to `path` atomically: a temporary file in the same directory,
    flushed and fsynced, then `os.replace`d over `path`. Readers see the old file or the new
    one, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (`write_atomic`)."""
    write_atomic(path, json.dumps(obj, indent=1).encode())


def prepare_workdir(workdir: str, outputs: Sequence[str]) -> None:
    """Create `workdir` and delete the previous run's `outputs` (file names in it), so that a
    run that fails leaves only its own outputs, never a mix with an earlier run's."""
    os.makedirs(workdir, exist_ok=True)
    for name in outputs:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, name))


CHECKPOINT_FORMAT = "hessjax-experiments-checkpoint-1"


def config_hash(fingerprint: Any) -> str:
    """SHA-256 (hex) of the sorted-key JSON of `fingerprint` (a JSON-able value holding
    everything that determines a result)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(path: str, fingerprint: Any, state: Any, meta: dict | None = None) -> None:
    """Write one checkpoint file atomically: a JSON header line {format, fingerprint
    (`config_hash`), num_bytes and sha256 of the state bytes, meta (JSON-able dict)}, then
    `state` (a pytree of arrays, flax msgpack)."""
    body = serialization.to_bytes(state)
    header = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": config_hash(fingerprint),
        "num_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "meta": meta or {},
    }
    write_atomic(path, json.dumps(header).encode() + b"\n" + body)


def load_checkpoint(path: str, fingerprint: Any, target: Any) -> tuple[Any, dict] | None:
    """(state, meta) of a `save_checkpoint` file written under the same `fingerprint`, the
    state restored into the structure of `target`. None when the file is absent, and None
    with a logged warning naming the file when it is truncated, corrupted, not a checkpoint
    or written under another config: the caller then recomputes (and overwrites) it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            head, newline, body = f.read().partition(b"\n")
        header = json.loads(head)
        if not newline or not isinstance(header, dict):
            raise ValueError("no checkpoint header")
        if header.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, not {CHECKPOINT_FORMAT!r}")
        if header["fingerprint"] != config_hash(fingerprint):
            logging.warning("checkpoint %s was written under another config; recomputing", path)
            return None
        if len(body) != header["num_bytes"]:
            raise ValueError(f"truncated: {len(body)} of {header['num_bytes']} state bytes")
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise ValueError("corrupted: SHA-256 of the state differs from the recorded one")
        state = serialization.from_bytes(target, body)
    except (OSError, ValueError, KeyError, TypeError) as err:
        logging.warning("checkpoint %s is unreadable (%s); recomputing it", path, err)
        return None
    return state, header["meta"]


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
    the checkpoint <workdir>/params_<tag>.ckpt when it was written under the same `fingerprint`
    (a JSON-able dict of everything that determines the result). Returns (params, history)."""
    steps = int(train_cfg.steps if num_steps is None else num_steps)
    fingerprint = fingerprint | {"steps": steps}
    ckpt = os.path.join(workdir, f"params_{tag}.ckpt")
    loaded = load_checkpoint(ckpt, fingerprint, params)
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
    save_checkpoint(ckpt, fingerprint, params, {"history": history})
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
