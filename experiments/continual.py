r"""Continual learning: every strategy over several seeds on a task sequence, the accuracy
matrix R[i, j] (accuracy on task j after training task i) of each, and ACC / BWT /
forgetting per strategy.

  python -m experiments.continual --workdir=runs/continual            # permuted MNIST-1D
  python -m experiments.continual --workdir=runs/continual_mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist  # permuted MNIST

Strategies (experiments/configs/continual.py): finetune, ewc, ogd, gpm, hessian_project,
hessian_penalty, weight_svd_project, update_pca_project; each is an optax chain of the base
optimiser and a `hessjax.continual` transformation whose memory (protected basis, penalty,
Fisher) lives in the optimiser state and grows after each task from that task's data.
All strategies of one seed start from the same initial params and see the same minibatches.

Writes into the workdir: accuracy_matrices.npz ({strategy: (seeds, T, T)}),
first_task_accuracy.png and, last, results.json (accuracy matrices, per-seed metrics,
mean ± std table, timings, the record of trained tasks); the previous run's copies are deleted
first. Also events.jsonl (appended: one line per task started / checkpointed) and
checkpoints/seed_<s>/<strategy>.ckpt, rewritten atomically after each completed task (params,
optimizer state with the memories, RNG, the accuracy rows so far). A killed run restarted with
the same config and workdir resumes after the last completed task of every (seed, strategy);
a checkpoint of another config, or a damaged one, is reported and that run starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import common, figures
from hessjax import continual as cl
from hessjax import curvature, distributed, linalg, training
from hessjax.analysis import trajectory

OUTPUTS = ("results.json", "accuracy_matrices.npz", "first_task_accuracy.png")

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
    return config


def _num_update_records(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(records, every) of update_pca_project: num_records windows of `every` steps."""
    steps, wanted = int(config.train.steps), int(config.update_pca.num_records)
    every = max(1, steps // wanted)
    return min(wanted, steps // every), every


# ------------------------------------------------------------------------------ strategies


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What the strategies of one run share: model and loss (hashable, so compilations are
    reused), the resolved config, a params template and the sizes derived from it."""

    model: Any
    loss_fn: curvature.MeanLoss
    config: ml_collections.ConfigDict
    params: Any  # template (shapes and dtypes only matter)
    num_tasks: int

    @property
    def num_params(self) -> int:
        return curvature.make_layout(self.params).size

    def memory_batch(self, task: cl.Task) -> tuple[jax.Array, jax.Array]:
        """The task's first memory.num_samples training pairs as (m, b, ...) microbatches."""
        m = self.config.memory
        return common.hessian_data(task.x_train, task.y_train, m.num_samples, m.microbatch_size)


@dataclasses.dataclass(frozen=True, eq=False)
class Strategy:
    """optimizer: the whole optax chain (built once, so its compilation is reused over tasks
    and seeds); memory_fields: its state fields that carry over tasks (kept when the optimiser
    is reset); remember(ctx, opt_state, params, task, t, key) -> opt_state with task t added
    to the memory (None: no memory)."""

    name: str
    optimizer: optax.GradientTransformation
    memory_fields: tuple[str, ...] = ()
    remember: Callable[..., Any] | None = None


def _base(ctx: Context) -> optax.GradientTransformation:
    return training.make_optimizer(ctx.config.train.optimizer, ctx.config.train.learning_rate)


def _get(state, field: str):
    return optax.tree_utils.tree_get(state, field)


def _set(state, **fields):
    return optax.tree_utils.tree_set(state, **fields)


def _projection(ctx: Context, name: str, capacity: int, directions, extra=()) -> Strategy:
    """Base optimiser, then `project_out` of a zero-padded (n, capacity) basis that grows by
    directions(ctx, opt_state, params, task, key) (n, m) after each task."""
    zeros = jnp.zeros((ctx.num_params, capacity), jnp.float32)
    tx = optax.chain(_base(ctx), cl.project_out(zeros), *extra)

    def remember(ctx, opt_state, params, task, t, key):
        used = cl.used_columns(_get(opt_state, "basis"))
        vectors = directions(ctx, opt_state, params, task, key)
        new = cl.extend_basis(used if used.shape[1] else None, vectors)
        if new.shape[1] > capacity:  # cannot happen with the capacities below
            raise RuntimeError(f"{name}: basis of {new.shape[1]} > capacity {capacity}")
        logging.info("%s: protected basis %d -> %d", name, used.shape[1], new.shape[1])
        return _set(opt_state, basis=cl.pad_columns(new, capacity))

    return Strategy(name, tx, ("basis",), remember)


def _hessian_top(ctx: Context, params, task: cl.Task, key) -> cl.Directions:
    """`cl.hessian_directions` with the Hessian on config.mesh (`common.placed_hessian`); the
    directions come back whole to this process (`distributed.to_host`)."""
    h = ctx.config.hessian
    op = common.placed_hessian(ctx.config.mesh, ctx.loss_fn, params, ctx.memory_batch(task))
    top = linalg.eigsh(
        op, int(h.k), key=key, which="LA", num_steps=int(h.num_steps) or None, tol=float(h.tol)
    )
    d = cl.Directions(*map(jnp.asarray, distributed.to_host((top.eigenvectors, top.eigenvalues))))
    values = np.asarray(d.values)
    logging.info("top-%d Hessian eigenvalues %.4g .. %.4g", values.size, values[0], values[-1])
    return d


def _finetune(ctx: Context) -> Strategy:
    return Strategy("finetune", _base(ctx))


def _ewc(ctx: Context) -> Strategy:
    zeros = jax.tree_util.tree_map(jnp.zeros_like, ctx.params)
    penalty = cl.ewc_penalty(cl.EwcState(zeros, zeros), strength=float(ctx.config.ewc.strength))

    def remember(ctx, opt_state, params, task, t, key):
        fisher = cl.fisher_diagonal(ctx.loss_fn, params, ctx.memory_batch(task))
        old = cl.EwcState(_get(opt_state, "precision"), _get(opt_state, "weighted_anchor"))
        new = cl.ewc_state(params, fisher, previous=old)
        return _set(opt_state, precision=new.precision, weighted_anchor=new.weighted_anchor)

    tx = optax.chain(penalty, _base(ctx))
    return Strategy("ewc", tx, ("precision", "weighted_anchor"), remember)


def _ogd(ctx: Context) -> Strategy:
    m = int(ctx.config.ogd.num_samples)

    def directions(ctx, opt_state, params, task, key):  # true-class logit gradients (OGD-GTL)
        return cl.logit_gradients(ctx.model.apply, params, task.x_train[:m], task.y_train[:m])

    return _projection(ctx, "ogd", m * (ctx.num_tasks - 1), directions)


def _gpm(ctx: Context) -> Strategy:
    g = ctx.config.gpm
    rows = {name: x.shape[1] for name, x in _dense_inputs_shapes(ctx).items()}
    tx = optax.chain(
        _base(ctx),
        cl.gpm_project({name: jnp.zeros((d, d), jnp.float32) for name, d in rows.items()}),
    )

    def remember(ctx, opt_state, params, task, t, key):
        padded = _get(opt_state, "layer_bases")
        used = {name: cl.used_columns(b) for name, b in padded.items()}
        threshold = min(float(g.threshold) + t * float(g.threshold_increment), 0.9999)
        acts = cl.dense_inputs(ctx.model, params, jnp.asarray(task.x_train[: int(g.num_samples)]))
        bases = cl.gpm_extend({k: b for k, b in used.items() if b.shape[1]}, acts, threshold)
        logging.info(
            "gpm: threshold %.4f, basis sizes %s", threshold,
            {name: int(b.shape[1]) for name, b in bases.items()},
        )  # fmt: skip
        new = {name: cl.pad_columns(bases[name], padded[name].shape[1]) for name in padded}
        return _set(opt_state, layer_bases=new)

    return Strategy("gpm", tx, ("layer_bases",), remember)


def _dense_inputs_shapes(ctx: Context) -> dict[str, Any]:
    x = jnp.zeros((1,) + tuple(ctx.config.input_shape), jnp.float32)
    return jax.eval_shape(lambda p, x: cl.dense_inputs(ctx.model, p, x), ctx.params, x)


def _hessian_project(ctx: Context) -> Strategy:
    def directions(ctx, opt_state, params, task, key):
        return _hessian_top(ctx, params, task, key).vectors

    return _projection(
        ctx, "hessian_project", int(ctx.config.hessian.k) * (ctx.num_tasks - 1), directions
    )


def _hessian_penalty(ctx: Context) -> Strategy:
    h = ctx.config.hessian
    k, n = int(h.k), ctx.num_params
    capacity = k * (ctx.num_tasks - 1)
    zeros = cl.CurvaturePenaltyState(
        jnp.zeros((n, capacity), jnp.float32),
        jnp.zeros((capacity,), jnp.float32),
        jnp.zeros((capacity,), jnp.float32),
    )
    tx = optax.chain(cl.curvature_penalty(zeros, strength=float(h.penalty_strength)), _base(ctx))

    def remember(ctx, opt_state, params, task, t, key):
        d = _hessian_top(ctx, params, task, key)
        new = cl.curvature_penalty_state(params, d.vectors, jnp.maximum(d.values, 0))
        slots = slice(t * k, (t + 1) * k)  # one block of k directions per old task
        return _set(
            opt_state,
            directions=_get(opt_state, "directions").at[:, slots].set(new.directions),
            weights=_get(opt_state, "weights").at[slots].set(new.weights),
            targets=_get(opt_state, "targets").at[slots].set(new.targets),
        )

    return Strategy("hessian_penalty", tx, ("directions", "weights", "targets"), remember)


def _weight_svd_project(ctx: Context) -> Strategy:
    k = int(ctx.config.weight_svd.k)
    per_task = cl.weight_svd_directions(ctx.params, k).vectors.shape[1]  # Σ_layers min(k, rank)

    def directions(ctx, opt_state, params, task, key):
        return cl.weight_svd_directions(params, k).vectors

    return _projection(ctx, "weight_svd_project", per_task * (ctx.num_tasks - 1), directions)


def _update_pca_project(ctx: Context) -> Strategy:
    k = int(ctx.config.update_pca.k)
    num_records, every = _num_update_records(ctx.config)

    def directions(ctx, opt_state, params, task, key):
        # the last num_records applied updates of this task (the recorder is reset with the
        # optimiser at each task; without reset_optimizer the ring holds the latest ones)
        updates = trajectory.read_snapshots(opt_state).updates
        return cl.update_pca_directions(updates, k).vectors

    extra = (trajectory.recording(num_records, every),)
    return _projection(ctx, "update_pca_project", k * (ctx.num_tasks - 1), directions, extra)


STRATEGY_BUILDERS: dict[str, Callable[[Context], Strategy]] = {
    "finetune": _finetune,
    "ewc": _ewc,
    "ogd": _ogd,
    "gpm": _gpm,
    "hessian_project": _hessian_project,
    "hessian_penalty": _hessian_penalty,
    "weight_svd_project": _weight_svd_project,
    "update_pca_project": _update_pca_project,
}
STRATEGY_NAMES = tuple(STRATEGY_BUILDERS)
STRATEGY_SECTIONS = {  # the config sections each strategy reads besides data/model/train/...
    "ewc": ("ewc",),
    "ogd": ("ogd",),
    "gpm": ("gpm",),
    "hessian_project": ("hessian",),
    "hessian_penalty": ("hessian",),
    "weight_svd_project": ("weight_svd",),
    "update_pca_project": ("update_pca",),
}

# Contexts and strategies by resolved config, so runs in one process (tests, notebooks) reuse
# the same optimiser objects and therefore the compiled training loops.
_CACHE: dict[str, tuple[Context, dict[str, Strategy]]] = {}


def _setup(config: ml_collections.ConfigDict, seq: cl.TaskSequence):
    input_shape = tuple(seq.tasks[0].x_train.shape[1:])
    cache_key = json.dumps(
        [config.to_dict(), input_shape, seq.num_classes, seq.num_tasks], sort_keys=True, default=str
    )
    if cache_key not in _CACHE:
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.input_shape = input_shape
        model = common.build_model(cfg.model, seq.num_classes)
        params = model.init(jax.random.key(0), jnp.zeros((1,) + input_shape, jnp.float32))
        common.check_mesh_fits(cfg.mesh, params, cfg.memory.microbatch_size)
        loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
        ctx = Context(model, loss_fn, cfg, params, seq.num_tasks)
        strategies = {name: STRATEGY_BUILDERS[name](ctx) for name in config.strategies}
        _CACHE.clear()  # keep one config's optimisers (their zero memories) alive at a time
        _CACHE[cache_key] = (ctx, strategies)
    return _CACHE[cache_key]


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


def _evaluate(ctx: Context, params, seq: cl.TaskSequence) -> list[float]:
    """Test accuracy on every task of the sequence."""
    return [
        float(
            training.accuracy(ctx.model.apply, params, jnp.asarray(t.x_test), jnp.asarray(t.y_test))
        )
        for t in seq.tasks
    ]


def _reset(strategy: Strategy, opt_state, params):
    """A fresh optimiser state that keeps the strategy's memory."""
    fresh = strategy.optimizer.init(params)
    if not strategy.memory_fields:
        return fresh
    return _set(fresh, **{f: _get(opt_state, f) for f in strategy.memory_fields})


def run_strategy(
    ctx: Context,
    strategy: Strategy,
    seq: cl.TaskSequence,
    seed: int,
    workdir: str,
    events: _Events,
) -> dict:
    """Train `strategy` through the task sequence (resuming from its last checkpoint); returns
    {rows (T, T) accuracy matrix as lists, trained [{task, run}], history, seconds}."""
    config = ctx.config
    num_tasks = seq.num_tasks
    k_init, key = jax.random.split(jax.random.key(seed))
    params = ctx.model.init(k_init, jnp.asarray(seq.tasks[0].x_train[:1]))
    opt_state = strategy.optimizer.init(params)
    fingerprint = _fingerprint(config, strategy.name, seed)
    meta = {"rows": [], "trained": [], "history": [], "seconds": {"train": 0.0, "memory": 0.0}}
    start = 0
    path = os.path.join(workdir, "checkpoints", f"seed_{seed}", f"{strategy.name}.ckpt")
    if config.checkpoint:
        target = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(key)}
        loaded = common.load_checkpoint(path, fingerprint, target)
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
            opt_state = _reset(strategy, opt_state, params)
        begin = time.perf_counter()
        params, history, opt_state = training.train(
            ctx.loss_fn, params, jnp.asarray(task.x_train), jnp.asarray(task.y_train),
            optimizer=strategy.optimizer, num_steps=int(config.train.steps),
            batch_size=int(config.train.batch_size), key=k_train,
            log_every=int(config.train.log_every), opt_state=opt_state, return_opt_state=True,
        )  # fmt: skip
        meta["seconds"]["train"] += time.perf_counter() - begin
        row = _evaluate(ctx, params, seq)
        logging.info(
            "[seed %d %s] task %d: loss %.4f, accuracies %s",
            seed, strategy.name, t, history[-1][1], np.round(row, 3),
        )  # fmt: skip
        if strategy.remember is not None and t < num_tasks - 1:
            begin = time.perf_counter()
            opt_state = jax.block_until_ready(
                strategy.remember(ctx, opt_state, params, task, t, k_memory)
            )
            meta["seconds"]["memory"] += time.perf_counter() - begin
        meta["rows"].append(row)
        meta["history"].append(history)
        meta["trained"].append({"task": t, "run": events.run_id})
        if config.checkpoint:
            state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(key)}
            common.save_checkpoint(path, fingerprint, state, meta)
            events("checkpoint", seed=seed, strategy=strategy.name, task=t)
    return meta


def _mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def format_table(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Aligned text table: strategy | ACC | BWT | forgetting as mean ± std."""
    header = ("strategy", "ACC", "BWT", "forgetting")
    lines = [header] + [
        (name,) + tuple(f"{m[k][0]:+.3f} ± {m[k][1]:.3f}" for k in ("acc", "bwt", "forgetting"))
        for name, m in summary.items()
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


RULES = common.SHARED_RULES | {
    "seeds": common.ints_at_least(0),
    "strategies": common.subset_of(STRATEGY_NAMES),
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
    "train.reset_optimizer": common.BOOL,
    "memory.num_samples": common.POSITIVE_INT,
    "memory.microbatch_size": common.POSITIVE_INT,
    "ewc.strength": common.POSITIVE,
    "ogd.num_samples": common.POSITIVE_INT,
    "gpm.num_samples": common.POSITIVE_INT,
    "gpm.threshold": common.PROBABILITY,
    "gpm.threshold_increment": common.real_in(0.0, 1.0, closed=True),
    "hessian.k": common.POSITIVE_INT,
    "hessian.num_steps": common.NONNEGATIVE_INT,
    "hessian.tol": common.POSITIVE,
    "hessian.penalty_strength": common.POSITIVE,
    "weight_svd.k": common.POSITIVE_INT,
    "update_pca.k": common.POSITIVE_INT,
    "update_pca.num_records": common.POSITIVE_INT,
    "checkpoint": common.BOOL,
}
RELATIONS = (
    common.at_most("memory.microbatch_size", "memory.num_samples"),
    common.divides_mesh("memory.microbatch_size"),
    common.Relation(
        "update_pca.num_records",
        lambda c: (
            "update_pca_project" not in c.strategies or _num_update_records(c)[0] > c.update_pca.k
        ),
        "enough to give update_pca.k directions (records = min(num_records, train.steps) > k)",
    ),
)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the whole job; returns the results dict also written to results.json."""
    config = resolve_config(config)
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    events = _Events(os.path.join(workdir, "events.jsonl"), run_id)
    dataset = common.load_data(config.data)

    matrices: dict[str, list[np.ndarray]] = {name: [] for name in config.strategies}
    per_seed: dict[str, list[dict]] = {name: [] for name in config.strategies}
    trained: list[dict] = []
    seconds: dict[str, dict[str, float]] = {
        name: {"train": 0.0, "memory": 0.0} for name in config.strategies
    }
    ctx = None
    for seed in config.seeds:
        seq = cl.task_sequence(dataset, config.tasks, seed=int(seed))
        ctx, strategies = _setup(config, seq)
        logging.info(
            "seed %d: %s, %d tasks of %d train / %d test samples, %d params",
            seed, seq.name, seq.num_tasks, len(seq.tasks[0].y_train), len(seq.tasks[0].y_test),
            ctx.num_params,
        )  # fmt: skip
        for name in config.strategies:
            out = run_strategy(ctx, strategies[name], seq, int(seed), workdir, events)
            r = np.asarray(out["rows"])
            matrices[name].append(r)
            m = cl.continual_metrics(r)
            per_seed[name].append({"seed": int(seed)} | m._asdict())
            trained += [{"seed": int(seed), "strategy": name} | e for e in out["trained"]]
            for k in seconds[name]:
                seconds[name][k] += out["seconds"][k]
            logging.info(
                "[seed %d %s] ACC %.4f BWT %+.4f forgetting %.4f",
                seed,
                name,
                m.acc,
                m.bwt,
                m.forgetting,
            )

    summary = {
        name: {
            k: _mean_std([row[k] for row in per_seed[name]]) for k in ("acc", "bwt", "forgetting")
        }
        for name in config.strategies
    }
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
        "accuracy_matrices": {name: [m.tolist() for m in ms] for name, ms in matrices.items()},
        "metrics": per_seed,
        "summary": summary,
        "table": table,
        "trained": trained,
        "seconds": seconds | {"total": time.perf_counter() - start},
        "run": run_id,
    }
    curves = {name: np.stack(ms)[:, :, 0] for name, ms in matrices.items()}
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
