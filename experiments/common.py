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
import numpy as np
from absl import app, flags, logging
from flax import serialization
from ml_collections import config_flags

from hessjax import curvature, distributed, models, training
from hessjax.data import (
    DATASET_NAMES,
    SCALINGS,
    SOURCES,
    Dataset,
    load_dataset,
    microbatches,
    rescale_inputs,
)


def run_binary(name: str, run: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
    """Define --config (default configs/<name>.py), --workdir (default runs/<name>) and the
    multi-process flags (--coordinator_address, --num_processes, --process_id, --distributed),
    join the `jax.distributed` job when asked (`initialize_distributed`), then call
    run(config, workdir). Flags are defined only here, when a module runs as the program, so
    several binaries can be imported in one process (tests) without duplicate flags."""
    config = config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(__file__), "configs", f"{name}.py")
    )
    workdir = flags.DEFINE_string("workdir", f"runs/{name}", "Where results and figures go.")
    coordinator = flags.DEFINE_string(
        "coordinator_address", None,
        "Multi-process runs (jax.distributed): host:port of process 0, the same on every "
        "process; with --num_processes and --process_id.",
    )  # fmt: skip
    num_processes = flags.DEFINE_integer(
        "num_processes", None, "Multi-process runs: number of processes in the job."
    )
    process_id = flags.DEFINE_integer(
        "process_id", None, "Multi-process runs: this process's index, 0 .. num_processes - 1."
    )
    local_ids = flags.DEFINE_list(
        "local_device_ids", None,
        "Multi-process runs: the local devices this process uses (e.g. 0,1,2,3 for one "
        "process per node of 4 GPUs under SLURM, where JAX otherwise takes SLURM_LOCALID only).",
    )  # fmt: skip
    auto = flags.DEFINE_bool(
        "distributed", False,
        "Join a multi-process job with jax.distributed.initialize(), which detects the "
        "cluster (Cloud TPU VMs of a pod slice, SLURM, Open MPI); --coordinator_address, "
        "--num_processes and --process_id, when given, override what it detects.",
    )  # fmt: skip

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            initialize_distributed(
                coordinator.value, num_processes.value, process_id.value, auto=auto.value,
                local_device_ids=local_ids.value,
            )  # fmt: skip
            run(split_string_tuples(config.value), workdir.value)
        except ConfigError as err:
            sys.exit(f"{err}")  # message on stderr, exit status 1, before any work

    app.run(main)


# ----------------------------------------------------------------------------- processes


def check_process_flags(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    auto: bool = False,
) -> bool:
    """Whether the flags ask for a multi-process job; raises ConfigError naming the flags
    when they are inconsistent: some but not all of the three without --distributed,
    --num_processes < 1, --process_id outside [0, num_processes), an address not host:port."""
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    errors = []
    if not auto and any(v is not None for v in given.values()):
        missing = [f for f, v in given.items() if v is None]
        if missing:
            errors.append(
                f"{', '.join(missing)} missing: give all of --coordinator_address, "
                "--num_processes and --process_id, or --distributed to detect the cluster"
            )
    if num_processes is not None and num_processes < 1:
        errors.append(f"--num_processes={num_processes}: must be >= 1")
    if process_id is not None and (
        process_id < 0 or (num_processes is not None and process_id >= max(num_processes, 1))
    ):
        bound = f"[0, {num_processes})" if num_processes is not None else ">= 0"
        errors.append(f"--process_id={process_id}: must be in {bound}")
    if coordinator_address is not None:
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit():
            errors.append(f"--coordinator_address={coordinator_address!r}: must be host:port")
    if errors:
        raise ConfigError("invalid multi-process flags:\n  " + "\n  ".join(errors))
    return auto or any(v is not None for v in given.values())


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    local_device_ids: Sequence[int | str] | None = None,
) -> bool:
    """Join a multi-process job (`jax.distributed.initialize`) when the flags ask for one
    (`check_process_flags`, before anything else touches JAX's backends); returns whether it
    did. `auto` with no other flags lets JAX detect the cluster from the environment: Cloud
    TPU VMs (every worker of a pod slice), SLURM (SLURM_JOB_NODELIST, SLURM_NTASKS,
    SLURM_PROCID, ...) or Open MPI. CPU collectives use gloo, so CPU-only processes (the
    tests: several local processes) can run sharded computations together."""
    if not check_process_flags(coordinator_address, num_processes, process_id, auto):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
        "local_device_ids": None
        if local_device_ids is None
        else [int(i) for i in local_device_ids],
    }
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    logging.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
    return True


def is_writer() -> bool:
    """Whether this process writes outputs: process 0 of a multi-process job (every process
    of a single-process run is process 0). `write_atomic` (hence `write_json`,
    `save_checkpoint` and the figures) and `prepare_workdir` do nothing elsewhere."""
    return jax.process_index() == 0


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
    """A check of one config value and what it demands ("a positive integer"; or a function
    of the failing value giving that text, e.g. to say what is wrong with it)."""

    test: Callable[[Any], bool]
    demand: str | Callable[[Any], str]

    def describe(self, value: Any) -> str:
        return self.demand(value) if callable(self.demand) else self.demand


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
SHARE = Rule(lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]")
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
STRING = Rule(lambda v: isinstance(v, str), "a string")

# Rules for the sections the configs share (experiments/configs/common.py and model sections).
DATA_RULES: dict[str, Rule] = {
    "data.name": one_of(*DATASET_NAMES),
    "data.dir": STRING,
    "data.source": one_of(*SOURCES),
    "data.num_samples": int_at_least(10),
    "data.seed": ANY_INT,
    "data.scaling": one_of(*SCALINGS),
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
    "model.batch_norm": BOOL,
    "model.use_bias": BOOL,
}


def mesh_problem(spec: Any) -> str | None:
    """What is wrong with a config.mesh value (None when nothing): a string "" (one device)
    or "axis:size,..." over the axes fsdp and data using every device of the job
    (`distributed.parse_mesh_spec(..., exact=True)`)."""
    if not isinstance(spec, str):
        return f"not a string but {type(spec).__name__}"
    try:
        distributed.parse_mesh_spec(
            spec, jax.device_count(), axis_names=distributed.AXES, exact=True
        )
    except ValueError as err:
        return str(err)
    return None


MESH = Rule(
    lambda v: mesh_problem(v) is None,
    lambda v: (
        f"'' (one device) or 'axis:size,...' over axes {', '.join(distributed.AXES)} "
        f"using all {jax.device_count()} devices, e.g. 'data:{jax.device_count()}' "
        f"({mesh_problem(v)})"
    ),
)


def mesh_devices(config: ml_collections.ConfigDict) -> int:
    """Number of devices config.mesh spans (1 for "")."""
    sizes = distributed.parse_mesh_spec(config.mesh, jax.device_count())
    return 1 if sizes is None else math.prod(sizes.values())


def divides_mesh(field: str) -> Relation:
    """Relation: config.<field> (a batch size) is divisible by the devices of config.mesh."""
    return Relation(
        field,
        lambda c: "mesh" not in c or field_value(c, field) % mesh_devices(c) == 0,
        "divisible by the number of devices of config.mesh (the batch axis is split over them)",
    )


# Every binary's RULES extend these (rules for fields a config lacks are skipped).
SHARED_RULES: dict[str, Rule] = (
    DATA_RULES | TRAIN_RULES | MODEL_RULES | {"seed": ANY_INT, "mesh": MESH}
)


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


def set_fields(config: ml_collections.ConfigDict, fields: dict[str, Any]) -> Any:
    """Set each dotted field of `fields` in `config` (in place, what --config.a.b=v flags do);
    returns config."""
    for field, value in fields.items():
        *sections, key = field.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[key] = value
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


# transformer binaries: attention splits the width into num_heads equal heads
WIDTH_DIVIDES_INTO_HEADS = Relation(
    "model.width", lambda c: c.model.width % c.model.num_heads == 0, "divisible by model.num_heads"
)


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
        f"config.{f} = {v!r}: must be {rules[f].describe(v)}"
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
    param_init in models.INITS, optional batch_norm and use_bias for the MLP) with
    `num_classes` outputs: an MLP of hidden `widths`, or a conv net of `widths` channels."""
    widths = tuple(int(w) for w in cfg.widths)
    kind = cfg.get("kind", "mlp")
    init = cfg.get("param_init", "lecun")  # models.INITS
    if kind == "mlp":
        return models.MLP(
            widths + (num_classes,), act=cfg.activation, param_init=init,
            batch_norm=cfg.get("batch_norm", False), use_bias=cfg.get("use_bias", True),
        )  # fmt: skip
    if kind == "conv":
        for option, default in (("batch_norm", False), ("use_bias", True)):
            if cfg.get(option, default) != default:
                raise ValueError(f"model.{option} is an option of the MLP (kind 'mlp') only")
        return models.ConvNet(widths, num_classes, act=cfg.activation, param_init=init)
    raise ValueError(f"model.kind must be 'mlp' or 'conv', got {kind!r}")


def load_data(cfg: ml_collections.ConfigDict) -> Dataset:
    """hessjax.data.load_dataset(cfg), its inputs rescaled by cfg.scaling when the config has
    that field (`hessjax.data.rescale_inputs`), logged (name, sizes, input shape, classes)."""
    ds = rescale_inputs(load_dataset(cfg), cfg.get("scaling", "none"))
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
    one, never a partial one. Only the writer process writes (`is_writer`): elsewhere this
    does nothing."""
    if not is_writer():
        return
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
    run that fails leaves only its own outputs, never a mix with an earlier run's. Only the
    writer process (`is_writer`) touches the workdir."""
    if not is_writer():
        return
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


def save_checkpoint(
    path: str, fingerprint: Any, state: Any, meta: dict | None = None, version: int | None = None
) -> None:
    """Write one checkpoint file atomically: a JSON header line {format, fingerprint
    (`config_hash`), version, num_bytes and sha256 of the state bytes, meta (JSON-able dict)},
    then `state` (a pytree of arrays, flax msgpack). version: the caller's state format (e.g.
    `experiments.continual.CHECKPOINT_VERSION`), bumped when the meaning of the state changes
    under an unchanged config, so `load_checkpoint` rejects the older files. State sharded
    over a mesh, even over several processes, is first gathered whole (`distributed.to_host`:
    a collective, so every process calls this with the same state); process 0 alone writes
    (`write_atomic`)."""
    body = serialization.to_bytes(distributed.to_host(state))
    header = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": config_hash(fingerprint),
        "version": version,
        "num_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "meta": meta or {},
    }
    write_atomic(path, json.dumps(header).encode() + b"\n" + body)


def load_checkpoint(
    path: str, fingerprint: Any, target: Any, version: int | None = None
) -> tuple[Any, dict] | None:
    """(state, meta) of a `save_checkpoint` file written under the same `fingerprint` and
    state `version`, the state restored into the structure of `target` and placed as its
    leaves are (`distributed.place_like`: a leaf of a sharded target comes back with that
    sharding). None when the file is absent, and None with a logged warning naming the file
    when it is truncated, corrupted, not a checkpoint, written under another config or in
    another state version (the warning names both versions; a file without one, written
    before versions were recorded, counts as None): the caller then recomputes (and
    overwrites) it, so stale state is never resumed and one stale file does not stop a
    sweep. Under several processes every process reads the file (the workdir must be one
    directory that all of them see) and they must agree on whether it is usable: a
    ValueError naming the file otherwise, before any of them resumes."""
    loaded = _read_checkpoint(path, fingerprint, target, version)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        found = np.asarray(multihost_utils.process_allgather(np.int32(loaded is not None)))
        if len(set(found.tolist())) > 1:
            raise ValueError(
                f"checkpoint {path}: usable for processes {np.flatnonzero(found).tolist()} "
                f"only, of {found.size}: the workdir must be one directory shared by all "
                "processes"
            )
    if loaded is None:
        return None
    return distributed.place_like(loaded[0], target), loaded[1]


def _read_checkpoint(
    path: str, fingerprint: Any, target: Any, version: int | None
) -> tuple[Any, dict] | None:
    """`load_checkpoint` of this process alone: (host state, meta) or None (warned)."""
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
        if header.get("version") != version:
            logging.warning(
                "checkpoint %s holds state version %s, this code reads version %s; recomputing it",
                path, header.get("version"), version,
            )  # fmt: skip
            return None
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
