r"""Continual learning: every strategy over several seeds on a task sequence, the accuracy
matrix R[i, j] (accuracy on task j after training task i) of each, and ACC / BWT /
forgetting per strategy.

  python -m experiments.continual --workdir=runs/continual            # permuted MNIST-1D
  python -m experiments.continual --workdir=runs/continual_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist  # permuted MNIST

Strategies (experiments/configs/continual.py): finetune, ewc, ogd, gpm, hessian_project,
hessian_mass_project, hessian_penalty, kron_project, kron_prox, weight_svd_project,
update_pca_project: each a `hessjax.continual.Strategy`
(STRATEGY_BUILDERS maps the config to its factory). This file only orchestrates: per strategy
one optax chain of the base optimiser and the strategy's transform of its empty memory and
one training loop (`training.make_train_step`), reused over seeds and tasks; after each task
`strategy.remember` grows the memory and `set_memory` writes it into the optimiser state.
Projection bases (and hessian_penalty's directions) grow to exactly the columns they hold:
the loop compiles once per basis size (a few per strategy, shared by the seeds), and no step
multiplies by zero padding (on permuted MNIST a padded basis cost more than the compiles).
All strategies of one seed start from the same initial params and see the same minibatches.
A strategy whose training loss becomes non-finite (or whose memory cannot be computed) is
recorded as diverged (seed, task, step) in results.json, the table and the figure's legend,
and the others run on.

Hyperparameters are chosen on validation data only. Every task has a validation split
(tasks.valid_fraction of its training pool, `hessjax.continual.tasks`), and every accuracy row
is measured on it as well as on the test split. With select.grid naming a grid of
experiments/configs/continual.py GRIDS, each strategy's grid points first run on
select.seeds (never reported; disjoint from seeds) and the point with the best mean
validation ACC is kept (`select`); then every strategy runs with its chosen configuration on
seeds, whose test accuracies are reported. select.grid = "" skips the selection phase.

Writes into the workdir: selection.json (every grid point, its validation ACC per selection
seed, the choice), accuracy_matrices.npz ({strategy: (seeds, T, T)}, test),
first_task_accuracy.png and, last, results.json (test and validation accuracy matrices,
per-seed metrics, mean ± std table, the selection, divergences, timings, the record of
trained tasks); the previous run's copies are deleted first. Also events.jsonl (appended:
one line per task started / checkpointed / diverged) and checkpoints/seed_<s>/<strategy>.ckpt
(selection runs: checkpoints/select/<strategy>_<point>/seed_<s>/<strategy>.ckpt), rewritten
atomically after each completed task (params, optimizer state with the memories, RNG, the
accuracy rows so far). A killed run restarted with
the same config and workdir resumes after the last completed task of every (seed, strategy);
a checkpoint of another config or state version (CHECKPOINT_VERSION), or a damaged one, is
reported and that run starts afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import common, figures
from experiments.configs import continual as continual_configs
from hessjax import continual as cl
from hessjax import curvature, distributed, training

OUTPUTS = ("results.json", "selection.json", "accuracy_matrices.npz", "first_task_accuracy.png")
# The state format of checkpoints/seed_<s>/<strategy>.ckpt (`common.save_checkpoint`'s
# version): bump it when a memory's meaning or layout changes under an unchanged config, so
# a run resumed with newer code recomputes the older files (a warning names the file and both
# versions) instead of loading them. None: files from before versions were recorded (e.g. a
# hessian_penalty memory from before it became one orthonormal quadratic); 2: before the
# validation split; 3: GPM bases zero-padded to (d, d).
CHECKPOINT_VERSION = 4  # 4: GPM bases (d, k) as they grow, and the validation rows

# Values used for config fields left at 0 / (): (permuted) MNIST-1D by default, MNIST / Fashion.
_SHARED_DEFAULTS: dict[str, Any] = {
    "train.steps": 1000,
    "train.log_every": 500,
    "tasks.train_size": 0,  # all training samples (MNIST-1D: 80% of data.num_samples)
    "tasks.test_size": 0,
    "ewc.strength": 100.0,
    "ogd.num_samples": 100,
    "gpm.num_samples": 300,
    "hessian.k": 50,
    "hessian.penalty_strength": 10.0,
    "hessian.max_k": 200,
    "weight_svd.k": 10,
    "update_pca.k": 50,
}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist1d": _SHARED_DEFAULTS | {"model.widths": (64, 64)},
    "mnist": _SHARED_DEFAULTS | {"model.widths": (100, 100)},
}
DATASET_DEFAULTS["fashion_mnist"] = DATASET_DEFAULTS["mnist"]


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of config with the fields left at 0 / () set from DATASET_DEFAULTS."""
    config = ml_collections.ConfigDict(config.to_dict())
    name = config.data.name
    if name not in DATASET_DEFAULTS:
        raise common.ConfigError(
            f"config.data.name = {name!r}: must be one of {', '.join(DATASET_DEFAULTS)}"
        )
    for field, value in DATASET_DEFAULTS[name].items():
        section, key = field.split(".")
        current = config[section][key]
        if current == 0 or current == () or current is None:
            config[section][key] = value
    config.strategies = common.as_tuple(config.strategies, str)
    config.seeds = common.as_tuple(config.seeds, int)
    config.model.widths = common.as_tuple(config.model.widths, int)
    config.gpm.layer_thresholds = common.as_tuple(config.gpm.layer_thresholds, float)
    config.select.seeds = common.as_tuple(config.select.seeds, int)
    return config


def _num_update_records(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(records, every) of update_pca_project: num_records windows of `every` steps."""
    steps, wanted = int(config.train.steps), int(config.update_pca.num_records)
    every = max(1, steps // wanted)
    return min(wanted, steps // every), every


# ------------------------------------------------------------------------------ strategies


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What the strategies of one run share: model and loss, the resolved config, a params
    template and the sizes derived from it."""

    model: Any
    loss_fn: curvature.MeanLoss
    config: ml_collections.ConfigDict
    params: Any  # template (shapes and dtypes only matter)
    num_tasks: int

    @property
    def num_params(self) -> int:
        return curvature.make_layout(self.params).size

    @property
    def learning_rate(self) -> float:
        return float(self.config.train.learning_rate)

    def memory_batch(self, task: cl.Task) -> tuple[jax.Array, jax.Array]:
        """The task's first memory.num_samples training pairs as (m, b, ...) microbatches."""
        m = self.config.memory
        return common.hessian_data(task.x_train, task.y_train, m.num_samples, m.microbatch_size)


def _lanczos(ctx: Context) -> dict[str, Any]:
    """The eigensolver settings every hessian_* strategy takes; the Hessian on config.mesh
    (`distributed.placed_operator`)."""
    h = ctx.config.hessian
    placed = functools.partial(
        distributed.placed_operator, curvature.hessian_operator, ctx.config.mesh
    )
    return {"num_steps": int(h.num_steps) or None, "tol": float(h.tol), "make_operator": placed}


def _hessian(ctx: Context) -> dict[str, Any]:
    """hessian_project / hessian_penalty settings."""
    return {"k": int(ctx.config.hessian.k)} | _lanczos(ctx)


def _hessian_mass_project(ctx: Context) -> cl.Strategy:
    h = ctx.config.hessian
    return cl.hessian_mass_project(ctx.loss_fn, float(h.mass_share), int(h.max_k), **_lanczos(ctx))


def _kron(ctx: Context) -> dict[str, Any]:
    """The arguments kron_project and kron_prox share."""
    return {"model": ctx.model, "per_example_loss": ctx.loss_fn.per_example_loss,
            "num_samples": int(ctx.config.kron.num_samples) or None,
            "chunk_size": int(ctx.config.memory.microbatch_size)}  # fmt: skip


def _kron_project(ctx: Context) -> cl.Strategy:
    k = ctx.config.kron
    return cl.kron_project(
        share=float(k.share), mode=str(k.mode), output_share=float(k.output_share), **_kron(ctx)
    )


def kron_prox_strength(config: ml_collections.ConfigDict) -> float:
    """kron.strength, or when it is 0 the rule η·s = 1: 1 / train.learning_rate."""
    return float(config.kron.strength) or 1.0 / float(config.train.learning_rate)


def _kron_prox(ctx: Context) -> cl.Strategy:
    k = ctx.config.kron
    return cl.kron_prox(
        strength=kron_prox_strength(ctx.config), learning_rate=ctx.learning_rate,
        share=float(k.prox_share) or None, mode=str(k.prox_mode), **_kron(ctx),
    )  # fmt: skip


def _ogd(ctx: Context) -> cl.Strategy:
    return cl.ogd(ctx.model.apply, int(ctx.config.ogd.num_samples))


def _gpm(ctx: Context) -> cl.Strategy:
    g = ctx.config.gpm
    threshold = tuple(g.layer_thresholds) or float(g.threshold)
    return cl.gpm(ctx.model, threshold, int(g.num_samples), float(g.threshold_increment),
                  fixed_shape=False)  # fmt: skip


def _weight_svd_project(ctx: Context) -> cl.Strategy:
    return cl.weight_svd_project(int(ctx.config.weight_svd.k))


def _update_pca_project(ctx: Context) -> cl.Strategy:
    return cl.update_pca_project(int(ctx.config.update_pca.k), *_num_update_records(ctx.config))


# name -> builder(ctx) -> hessjax.continual.Strategy. A new strategy is one entry here (plus
# its config section in STRATEGY_SECTIONS and experiments/configs/continual.py).
STRATEGY_BUILDERS: dict[str, Callable[[Context], cl.Strategy]] = {
    "finetune": lambda ctx: cl.finetune(),
    "ewc": lambda ctx: cl.ewc(ctx.loss_fn, float(ctx.config.ewc.strength), ctx.learning_rate),
    "ogd": _ogd,
    "gpm": _gpm,
    "hessian_project": lambda ctx: cl.hessian_project(ctx.loss_fn, **_hessian(ctx)),
    "hessian_mass_project": _hessian_mass_project,
    "hessian_penalty": lambda ctx: cl.hessian_penalty(
        ctx.loss_fn,
        strength=float(ctx.config.hessian.penalty_strength),
        learning_rate=ctx.learning_rate,
        **_hessian(ctx),
    ),  # fmt: skip
    "kron_project": _kron_project,
    "kron_prox": _kron_prox,
    "weight_svd_project": _weight_svd_project,
    "update_pca_project": _update_pca_project,
}
STRATEGY_NAMES = tuple(STRATEGY_BUILDERS)
STRATEGY_SECTIONS = {  # the config sections each strategy reads besides data/model/train/...
    "ewc": ("ewc",),
    "ogd": ("ogd",),
    "gpm": ("gpm",),
    "hessian_project": ("hessian",),
    "hessian_mass_project": ("hessian",),
    "hessian_penalty": ("hessian",),
    "kron_project": ("kron",),
    "kron_prox": ("kron",),
    "weight_svd_project": ("weight_svd",),
    "update_pca_project": ("update_pca",),
}


class Runner(NamedTuple):
    """One strategy of a run: the optimiser (base optimiser, then the strategy's transform of
    its empty memory), its training loop (compiled once per memory shape) and the memory's
    class (None for a memory-less strategy). Built once per run, reused over seeds and
    tasks."""

    strategy: cl.Strategy
    optimizer: optax.GradientTransformation
    step: training.TrainStep
    memory_cls: type | None


def make_runner(ctx: Context, name: str) -> Runner:
    strategy = STRATEGY_BUILDERS[name](ctx)
    memory = strategy.init_memory(ctx.params)
    base = training.make_optimizer(ctx.config.train.optimizer, ctx.learning_rate)
    optimizer = optax.chain(base, strategy.transform(memory))
    step = training.make_train_step(ctx.loss_fn, optimizer)
    return Runner(strategy, optimizer, step, None if memory is None else type(memory))


def make_context(config: ml_collections.ConfigDict, seq: cl.TaskSequence) -> Context:
    cfg = ml_collections.ConfigDict(config.to_dict())
    input_shape = tuple(seq.tasks[0].x_train.shape[1:])
    model = common.build_model(cfg.model, seq.num_classes)
    params = model.init(jax.random.key(0), jnp.zeros((1,) + input_shape, jnp.float32))
    distributed.check_mesh_fits(cfg.mesh, params, cfg.memory.microbatch_size)
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    return Context(model, loss_fn, cfg, params, seq.num_tasks)


# ----------------------------------------------------------------------------- checkpoints


def _fingerprint(config: ml_collections.ConfigDict, strategy: str, seed: int) -> dict:
    """Everything that determines one (seed, strategy) run's results."""
    keep = ("data", "tasks", "model", "train", "memory") + STRATEGY_SECTIONS.get(strategy, ())
    return {k: config[k].to_dict() for k in keep} | {"strategy": strategy, "seed": seed}


class _Events:
    """Append-only events.jsonl: one line per task started or checkpointed, with the run id."""

    def __init__(self, path: str, run_id: str):
        self.path, self.run_id = path, run_id

    def __call__(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "run": self.run_id, "pid": os.getpid()} | fields)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()


# ---------------------------------------------------------------------------------- running


def _evaluate(ctx: Context, params, seq: cl.TaskSequence, split: str) -> list[float]:
    """Accuracy on the `split` ('test' or 'valid') of every task of the sequence."""
    return [
        float(training.accuracy(ctx.model.apply, params, *map(jnp.asarray, t.split(split))))
        for t in seq.tasks
    ]


def _reset(runner: Runner, opt_state, params):
    """A fresh optimiser state that keeps the strategy's memory."""
    fresh = runner.optimizer.init(params)
    if runner.memory_cls is None:
        return fresh
    memory = cl.get_memory(opt_state, runner.memory_cls)  # checked when it was set
    return cl.set_memory(fresh, memory, check_values=False, same_shapes=False)


def run_strategy(
    ctx: Context,
    runner: Runner,
    seq: cl.TaskSequence,
    seed: int,
    path: str,
    events: _Events,
) -> dict:
    """Train one strategy through the task sequence (resuming from its checkpoint at `path`);
    returns {rows (T, T) test accuracy matrix as lists, valid_rows the same on the
    validation splits, trained [{task, run}], history, seconds, diverged}. When training
    diverges (a non-finite loss) or the memory cannot be computed, diverged = {task, step,
    error} and the rows from that task on are NaN; the run stops there (checkpointed as such,
    so a restart does not retry it)."""
    config, strategy = ctx.config, runner.strategy
    num_tasks = seq.num_tasks
    k_init, key = jax.random.split(jax.random.key(seed))
    params = ctx.model.init(k_init, jnp.asarray(seq.tasks[0].x_train[:1]))
    opt_state = runner.optimizer.init(params)
    fingerprint = _fingerprint(config, strategy.name, seed)
    meta = {"rows": [], "valid_rows": [], "trained": [], "history": [],
            "seconds": {"train": 0.0, "memory": 0.0}, "diverged": None}  # fmt: skip
    start = 0

    def save(t: int, event: str) -> None:
        if config.checkpoint:
            state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(key)}
            common.save_checkpoint(path, fingerprint, state, meta, version=CHECKPOINT_VERSION)
            events(event, seed=seed, strategy=strategy.name, task=t)

    if config.checkpoint:
        target = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(key)}
        loaded = common.load_checkpoint(path, fingerprint, target, version=CHECKPOINT_VERSION)
        if loaded is not None:
            state, meta = loaded
            params, opt_state = state["params"], state["opt_state"]
            key = jax.random.wrap_key_data(state["rng"])
            start = len(meta["rows"])
            logging.info("[seed %d %s] resumed after task %d", seed, strategy.name, start - 1)
    for t in range(start, num_tasks):
        task = seq.tasks[t]
        events("start", seed=seed, strategy=strategy.name, task=t)
        key, k_train, k_memory = jax.random.split(key, 3)
        if t > 0 and config.train.reset_optimizer:
            opt_state = _reset(runner, opt_state, params)
        begin = time.perf_counter()
        try:
            params, history, opt_state = training.train(
                ctx.loss_fn, params, jnp.asarray(task.x_train), jnp.asarray(task.y_train),
                optimizer=runner.optimizer, num_steps=int(config.train.steps),
                batch_size=int(config.train.batch_size), key=k_train,
                log_every=int(config.train.log_every), opt_state=opt_state,
                return_opt_state=True, step=runner.step,
            )  # fmt: skip
        except training.TrainingDiverged as e:
            failure = {"task": t, "step": e.step, "error": str(e)}
        else:
            failure = None
        meta["seconds"]["train"] += time.perf_counter() - begin
        if failure is None:
            row, valid_row = (_evaluate(ctx, params, seq, split) for split in ("test", "valid"))
            logging.info(
                "[seed %d %s] task %d: loss %.4f, accuracies %s",
                seed, strategy.name, t, history[-1][1], np.round(row, 3),
            )  # fmt: skip
            if runner.memory_cls is not None and t < num_tasks - 1:
                begin = time.perf_counter()
                try:
                    memory = strategy.remember(
                        cl.get_memory(opt_state, runner.memory_cls), params,
                        ctx.memory_batch(task), key=k_memory, opt_state=opt_state,
                    )  # fmt: skip
                    opt_state = jax.block_until_ready(
                        cl.set_memory(opt_state, memory, same_shapes=False)
                    )
                except (FloatingPointError, ValueError) as e:  # e.g. a non-finite Fisher
                    failure = {"task": t, "step": int(config.train.steps), "error": str(e)}
                meta["seconds"]["memory"] += time.perf_counter() - begin
        if failure is not None:
            logging.warning("[seed %d %s] diverged: %s", seed, strategy.name, failure)
            meta["diverged"] = failure
            for rows in (meta["rows"], meta["valid_rows"]):
                rows += [[float("nan")] * num_tasks for _ in range(t, num_tasks)]
            save(t, "diverged")
            break
        meta["rows"].append(row)
        meta["valid_rows"].append(valid_row)
        meta["history"].append(history)
        meta["trained"].append({"task": t, "run": events.run_id})
        save(t, "checkpoint")
    return meta


def mean_std(values) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof=1; 0 for one value); None for no values."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return None
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def format_table(summary: dict[str, dict]) -> str:
    """Aligned text table: strategy | ACC | BWT | forgetting as mean ± std over the seeds that
    did not diverge | diverged (seeds out of all)."""
    header = ("strategy", "ACC", "BWT", "forgetting", "diverged")

    def cell(v):
        return "—" if v is None else f"{v[0]:+.3f} ± {v[1]:.3f}"

    lines = [header] + [
        (name,) + tuple(cell(m[k]) for k in ("acc", "bwt", "forgetting"))
        + (f"{m['diverged']}/{m['seeds']}",)
        for name, m in summary.items()
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def _json_rows(matrix: np.ndarray) -> list:
    """An accuracy matrix as nested lists, NaN (rows after a divergence) as None."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(matrix)]


RULES = common.SHARED_RULES | {
    "seeds": common.ints_at_least(0),
    "strategies": common.subset_of(STRATEGY_BUILDERS),  # read at validation: extensible
    "data.name": common.one_of(*DATASET_DEFAULTS),
    "tasks.kind": common.one_of("permuted", "split"),
    "tasks.num_tasks": common.int_at_least(2),
    "tasks.pairs": common.Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and all(common.ints_at_least(0).test(p) and len(p) == 2 for p in v)
        ),
        "a tuple of (class, class) pairs (empty: (0, 1), (2, 3), ...)",
    ),
    "tasks.remap": common.BOOL,
    "tasks.train_size": common.NONNEGATIVE_INT,
    "tasks.test_size": common.NONNEGATIVE_INT,
    "tasks.valid_fraction": common.real_in(0.0, 1.0),
    "select.seeds": common.ints_at_least(0, allow_empty=True),
    "select.grid": common.Rule(  # read at validation: extensible
        lambda v: v == "" or v in continual_configs.GRIDS,
        "'' or a grid of experiments/configs/continual.py GRIDS",
    ),
    "train.reset_optimizer": common.BOOL,
    "memory.num_samples": common.POSITIVE_INT,
    "memory.microbatch_size": common.POSITIVE_INT,
    "ewc.strength": common.POSITIVE,
    "ogd.num_samples": common.POSITIVE_INT,
    "gpm.num_samples": common.POSITIVE_INT,
    "gpm.threshold": common.PROBABILITY,
    "gpm.threshold_increment": common.real_in(0.0, 1.0, closed=True),
    "gpm.layer_thresholds": common.Rule(
        lambda v: isinstance(v, tuple) and all(common.SHARE.test(x) for x in v),
        "a tuple of numbers in (0, 1], one per dense layer (empty: gpm.threshold for all)",
    ),
    "hessian.k": common.POSITIVE_INT,
    "hessian.num_steps": common.NONNEGATIVE_INT,
    "hessian.tol": common.POSITIVE,
    "hessian.penalty_strength": common.POSITIVE,
    "hessian.mass_share": common.SHARE,
    "hessian.max_k": common.POSITIVE_INT,
    "kron.share": common.SHARE,
    "kron.mode": common.one_of(*cl.kron.MODES),
    "kron.output_share": common.SHARE,
    "kron.strength": common.real_in(0.0, math.inf, closed=True),
    "kron.prox_mode": common.one_of(*cl.kron.MODES),
    "kron.prox_share": common.real_in(0.0, 1.0, closed=True),
    "kron.num_samples": common.NONNEGATIVE_INT,
    "weight_svd.k": common.POSITIVE_INT,
    "update_pca.k": common.POSITIVE_INT,
    "update_pca.num_records": common.POSITIVE_INT,
    "checkpoint": common.BOOL,
}
RELATIONS = (
    common.Relation(
        "memory.num_samples",
        lambda c: c.memory.num_samples % c.memory.microbatch_size == 0,
        "a multiple of memory.microbatch_size (the memory batch is whole microbatches)",
    ),
    common.Relation(
        "select.seeds",
        lambda c: not set(c.select.seeds) & set(c.seeds),
        "disjoint from config.seeds (a selection seed is never a reported one)",
    ),
    common.Relation(
        "select.seeds",
        lambda c: bool(c.select.seeds) or not c.select.grid,
        "non-empty when select.grid names a grid",
    ),
    common.Relation(
        "select.grid",
        lambda c: (
            not (
                c.gpm.layer_thresholds
                and "gpm" in c.strategies
                and "gpm.threshold" in continual_configs.GRIDS.get(c.select.grid, {}).get("gpm", {})
            )
        ),
        "a grid that does not vary gpm.threshold while gpm.layer_thresholds replaces it",
    ),
    *(
        common.Relation(
            f"{name}.num_samples",
            lambda c, name=name: (
                name not in c.strategies or c[name].num_samples <= c.memory.num_samples
            ),
            "at most memory.num_samples (its samples are taken from the memory batch)",
        )
        for name in ("ogd", "gpm")
    ),
    common.divides_mesh("memory.microbatch_size"),
    common.Relation(
        "kron.num_samples",
        lambda c: (
            not {"kron_project", "kron_prox"} & set(c.strategies)
            or c.kron.num_samples <= c.memory.num_samples
        ),
        "at most memory.num_samples (0: all of them)",
    ),
    common.Relation(
        "update_pca.num_records",
        lambda c: (
            "update_pca_project" not in c.strategies or _num_update_records(c)[0] > c.update_pca.k
        ),
        "enough to give update_pca.k directions (records = min(num_records, train.steps) > k)",
    ),
)


def grid_points(grid: dict[str, tuple]) -> list[dict]:
    """Every combination of a {dotted field: values} grid, in order (the last field varies
    fastest); one empty point for an empty grid."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


class Plan(NamedTuple):
    """One (strategy, configuration) to run over seeds: its context, runner and checkpoint
    folder under the workdir."""

    name: str
    ctx: Context
    runner: Runner
    folder: str


def make_plan(config, seq: cl.TaskSequence, name: str, folder: str, overrides: dict) -> Plan:
    """The Plan of strategy `name` under config with `overrides` (dotted fields) set."""
    copy = ml_collections.ConfigDict(config.to_dict())
    ctx = make_context(common.set_fields(copy, overrides), seq)
    return Plan(name, ctx, make_runner(ctx, name), folder)


def check_task_sizes(config: ml_collections.ConfigDict, seq: cl.TaskSequence) -> None:
    """Every task keeps at least train.batch_size and memory.num_samples training samples
    after its validation split, else ConfigError (before any training)."""
    fewest = min(len(t.y_train) for t in seq.tasks)
    for field in ("train.batch_size", "memory.num_samples"):
        if fewest < common.field_value(config, field):
            raise common.ConfigError(
                f"config.{field} = {common.field_value(config, field)}: must be at most the "
                f"{fewest} training samples a task keeps (tasks.train_size "
                f"{config.tasks.train_size}, tasks.valid_fraction {config.tasks.valid_fraction})"
            )


def run_plans(
    plans: list[Plan], seeds, dataset, config, workdir: str, events: _Events, known: dict
) -> list[list[dict]]:
    """run_strategy for every plan and seed (one task sequence in memory at a time, `known`
    {seed: sequence} reused); returns [[out per seed] per plan], each out with its seed."""
    outs: list[list[dict]] = [[] for _ in plans]
    for seed in seeds:
        seq = known.get(seed) or cl.task_sequence(dataset, config.tasks, int(seed))
        logging.info(
            "seed %d: %s, %d tasks of %d train / %d valid / %d test samples",
            seed, seq.name, seq.num_tasks, len(seq.tasks[0].y_train), len(seq.tasks[0].y_valid),
            len(seq.tasks[0].y_test),
        )  # fmt: skip
        for plan, done in zip(plans, outs, strict=True):
            path = os.path.join(workdir, plan.folder, f"seed_{seed}", f"{plan.name}.ckpt")
            out = run_strategy(plan.ctx, plan.runner, seq, int(seed), path, events)
            done.append(out | {"seed": int(seed)})
    return outs


def final_valid_acc(out: dict) -> float:
    """ACC on the validation splits after the last task (NaN when the run diverged)."""
    return float(np.mean(out["valid_rows"][-1]))


def select(config, dataset, seq, workdir: str, events: _Events) -> dict:
    """The selection phase: each strategy of config.strategies with a grid in
    GRIDS[config.select.grid] runs every grid point on the selection seeds; the point with
    the best mean validation ACC (a diverged seed counts as -inf; ties: the first) is
    chosen. Returns {strategy: {grid, points [{overrides, valid_acc per seed, mean}],
    chosen}}; strategies without a grid get one point, their config as it is."""
    grid = continual_configs.GRIDS[config.select.grid] if config.select.grid else {}
    plans, record, owner = [], {}, []
    for name in config.strategies:
        points = grid_points(grid.get(name, {}))
        record[name] = {"grid": {f: list(v) for f, v in grid.get(name, {}).items()},
                        "points": [{"overrides": p} for p in points]}  # fmt: skip
        if len(points) > 1:
            for i, p in enumerate(points):
                folder = os.path.join("checkpoints", "select", f"{name}_{i}")
                plans.append(make_plan(config, seq, name, folder, p))
                owner.append(record[name]["points"][i])
    if plans:
        logging.info(
            "selection on seeds %s: %s", list(config.select.seeds),
            ", ".join(f"{n} {len(r['points'])} points" for n, r in record.items()),
        )  # fmt: skip
        outs = run_plans(plans, config.select.seeds, dataset, config, workdir, events, {})
        for point, runs in zip(owner, outs, strict=True):
            accs = [final_valid_acc(o) for o in runs]
            point["valid_acc"] = [None if np.isnan(a) else a for a in accs]
            point["mean_valid_acc"] = None if np.any(np.isnan(accs)) else float(np.mean(accs))
    for name, rec in record.items():
        if len(rec["points"]) > 1:
            best = max(range(len(rec["points"])),
                       key=lambda i: rec["points"][i]["mean_valid_acc"] or -np.inf)  # fmt: skip
            logging.info("[%s] chosen on validation: %s", name, rec["points"][best]["overrides"])
        else:
            best = 0
        rec["chosen"] = rec["points"][best]["overrides"]
    return record


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the whole job; returns the results dict also written to results.json.
    First the selection phase (`select`, on config.select.seeds, validation accuracy only),
    then every strategy with its chosen configuration on config.seeds, reported on the test
    splits. A (seed, strategy) that diverges is recorded (results["diverged"], the table, the
    figure's legend) and the others run on."""
    config = resolve_config(config)
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    events = _Events(os.path.join(workdir, "events.jsonl"), run_id)
    dataset = common.load_data(config.data)
    first = cl.task_sequence(dataset, config.tasks, seed=int(config.seeds[0]))
    check_task_sizes(config, first)

    selection = select(config, dataset, first, workdir, events)
    common.write_json(os.path.join(workdir, "selection.json"), selection)
    plans = [make_plan(config, first, name, "checkpoints", selection[name]["chosen"])
             for name in config.strategies]  # fmt: skip
    ctx = plans[0].ctx
    logging.info("%d params; reported seeds %s", ctx.num_params, list(config.seeds))
    outs = run_plans(plans, config.seeds, dataset, config, workdir, events,
                     {config.seeds[0]: first})  # fmt: skip
    seq = first

    matrices: dict[str, list[np.ndarray]] = {name: [] for name in config.strategies}
    valid_matrices: dict[str, list[np.ndarray]] = {name: [] for name in config.strategies}
    per_seed: dict[str, list[dict]] = {name: [] for name in config.strategies}
    trained: list[dict] = []
    diverged: list[dict] = []
    seconds: dict[str, dict[str, float]] = {
        name: {"train": 0.0, "memory": 0.0} for name in config.strategies
    }
    for name, runs in zip(config.strategies, outs, strict=True):
        for out in runs:
            seed = out["seed"]
            r = np.asarray(out["rows"], np.float64)
            matrices[name].append(r)
            valid_matrices[name].append(np.asarray(out["valid_rows"], np.float64))
            trained += [{"seed": seed, "strategy": name} | e for e in out["trained"]]
            for k in seconds[name]:
                seconds[name][k] += out["seconds"][k]
            if out.get("diverged") is not None:
                diverged.append({"seed": seed, "strategy": name} | out["diverged"])
                nothing = dict.fromkeys(("acc", "bwt", "forgetting", "valid_acc"))
                per_seed[name].append({"seed": seed, "diverged": out["diverged"]} | nothing)
                continue
            m = cl.continual_metrics(r)
            valid = {"valid_acc": final_valid_acc(out)}
            per_seed[name].append({"seed": seed} | m._asdict() | valid)
            logging.info(
                "[seed %d %s] ACC %.4f BWT %+.4f forgetting %.4f",
                seed, name, m.acc, m.bwt, m.forgetting,
            )  # fmt: skip

    summary = {}
    for name in config.strategies:
        ok = [row for row in per_seed[name] if row["acc"] is not None]
        summary[name] = {k: mean_std([row[k] for row in ok])
                         for k in ("acc", "bwt", "forgetting", "valid_acc")}  # fmt: skip
        summary[name] |= {"seeds": len(per_seed[name]), "diverged": len(per_seed[name]) - len(ok)}
    table = format_table(summary)
    logging.info(
        "ACC / BWT / forgetting over seeds %s (mean ± std):\n%s", list(config.seeds), table
    )
    stacked = {name: np.stack(ms) for name, ms in matrices.items()}
    common.write_atomic(
        os.path.join(workdir, "accuracy_matrices.npz"), lambda f: np.savez(f, **stacked)
    )
    results = {
        "config": config.to_dict(),
        "dataset": dataset.name,
        "sequence": seq.name,
        "num_params": int(ctx.num_params),
        "seeds": [int(s) for s in config.seeds],
        "accuracy_matrices": {name: [_json_rows(m) for m in ms] for name, ms in matrices.items()},
        "validation_matrices": {
            name: [_json_rows(m) for m in ms] for name, ms in valid_matrices.items()
        },
        "selection": {
            "seeds": list(config.select.seeds),
            "grid": config.select.grid,
            "strategies": selection,
        },  # fmt: skip
        "metrics": per_seed,
        "summary": summary,
        "table": table,
        "diverged": diverged,
        "trained": trained,
        "seconds": seconds | {"total": time.perf_counter() - start},
        "run": run_id,
    }
    curves = {}
    for name, ms in stacked.items():
        label = name if not summary[name]["diverged"] else (
            f"{name} (diverged {summary[name]['diverged']}/{summary[name]['seeds']})"
        )  # fmt: skip
        curves[label] = ms[:, :, 0]
    figures.plot_first_task_accuracy(
        curves,
        os.path.join(workdir, "first_task_accuracy.png"),
        title=f"{seq.name}, {config.model.kind} {tuple(config.model.widths)}, "
        f"{len(config.seeds)} seeds",
    )
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info(
        "wrote results.json, accuracy_matrices.npz, first_task_accuracy.png to %s", workdir
    )
    return results


if __name__ == "__main__":
    common.run_binary("continual", run)
