"""Continual-learning strategies as three pure, composable pieces (optax style).

A `Strategy` is

* `init_memory(params) -> memory`: the empty memory for a params template (a NamedTuple
  with `check()` and `check_params(params)` methods, see `transforms`; None for fine-tuning);
* `remember(memory, params, data, *, key, opt_state=None) -> memory`: the memory with one
  finished task added, computed at its trained `params` on `data`, that task's samples in the
  loss's batch format with a leading microbatch axis, leaves (m, b, ...) (for the strategies
  here: (x (m, b, ...), y (m, b))); `key` for randomised solvers (Lanczos); `opt_state` for
  strategies that read what the training recorded (update-PCA);
* `transform(memory) -> optax.GradientTransformation`: chained after the base optimiser,
  `optax.chain(optax.sgd(lr), strategy.transform(memory))`; its state holds the memory.

A notebook sequence (any loss_fn(params, batch); see README "Continual learning"):

    strategy = hessian_project(loss_fn, k=20)
    memory = strategy.init_memory(params)
    for task in tasks:
        opt = optax.chain(optax.sgd(0.05), strategy.transform(memory))
        params, _ = training.train(loss_fn, params, task.x_train, task.y_train, optimizer=opt,
                                   num_steps=500, batch_size=64, key=key)
        memory = strategy.remember(memory, params, data_of(task), key=key)

Rebuilding the optimiser per task recompiles its step. To compile once, give the strategy a
fixed `capacity` (a zero-padded memory of constant shape), build the optimiser and
`training.make_train_step` once from `init_memory(params)`, and after each task write the new
memory into the optimiser state with `set_memory(opt_state, memory)` (checked). Without a
capacity, `set_memory(..., same_shapes=False)` takes the grown memory and the step compiles
once per size; that is what experiments/continual.py does (no step multiplies by padding).

Adding a strategy: write a factory returning `Strategy(name, init_memory, remember,
transform)`. Its memory is a NamedTuple state (the transform's `init` returns it: reuse
`memory_transform`, or `proximal_penalty` for a quadratic penalty with a
closed-form prox) with `check()` (values: orthonormal, finite, >= 0; raise ValueError) and
`check_params(params)` (static fit to the params). Then register it in experiments/continual.py
(`STRATEGY_BUILDERS`: one entry mapping the config to the factory's arguments, plus its config
section in `STRATEGY_SECTIONS` and experiments/configs/continual.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessjax import _checks
from hessjax.analysis import trajectory
from hessjax.continual import kron, sources
from hessjax.continual.transforms import (
    CurvaturePenaltyState,
    EwcState,
    GpmState,
    ProjectionState,
    check_positive,
    curvature_penalty,
    curvature_penalty_state,
    ewc_penalty,
    ewc_state,
    gpm_project,
    project_out,
)
from hessjax.curvature import hessian_operator, make_layout
from hessjax.curvature.kronecker import Model
from hessjax.linalg.subspace import extend_basis, pad_columns, used_columns, used_rows

Array = jax.Array
PyTree = Any
LossFn = Callable[[PyTree, Any], Array]


class Strategy(NamedTuple):
    """name; init_memory(params) -> memory; remember(memory, params, data, *, key,
    opt_state=None) -> memory; transform(memory) -> optax.GradientTransformation (chain it
    after the base optimiser). See the module docstring."""

    name: str
    init_memory: Callable[[PyTree], Any]
    remember: Callable[..., Any]
    transform: Callable[[Any], optax.GradientTransformation]


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _capacity(value: int | None) -> int | None:
    return None if value is None else _positive_int(value, "capacity")


def _samples(data: PyTree, count: int | None) -> tuple[Array, Array]:
    """The first `count` (None: all) samples of microbatched (x (m, b, ...), y (m, b)) as
    (count, ...)."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise ValueError("data must be (x (m, b, ...), y (m, b)) microbatches")
    x, y = (jnp.reshape(a, (-1,) + tuple(np.shape(a)[2:])) for a in data)
    count = x.shape[0] if count is None else count
    if count > x.shape[0]:
        raise ValueError(f"need {count} samples of the task, data has {x.shape[0]}")
    return x[:count], y[:count]


# --------------------------------------------------------------------------- fine-tuning


def finetune() -> Strategy:
    """No protection: the memory is None and the transform the identity."""
    return Strategy(
        "finetune", lambda params: None, lambda memory, params, data, **kw: None,
        lambda memory: optax.identity(),
    )  # fmt: skip


# --------------------------------------------------------------------------- projections


def _grow(memory: ProjectionState, vectors: Array, capacity: int | None) -> ProjectionState:
    """memory with span(vectors) (n, m) added to its basis, zero-padded to `capacity` rows."""
    used = used_rows(memory.rows)
    old = used.T if used.shape[0] else None
    new = extend_basis(old, vectors.astype(memory.rows.dtype)).T  # (k, n) rows
    if capacity is None:
        return ProjectionState(new)
    if new.shape[0] > capacity:
        raise ValueError(f"the protected basis needs {new.shape[0]} columns > capacity {capacity}")
    return ProjectionState(jnp.pad(new, ((0, capacity - new.shape[0]), (0, 0))))


def projection(
    name: str,
    directions: Callable[..., Array],
    capacity: int | None = None,
    extra: tuple[optax.GradientTransformation, ...] = (),
) -> Strategy:
    """A strategy that projects updates out of a growing global basis (`project_out`):
    remember adds directions(params, data, key=..., opt_state=...) (n, m) of the finished task,
    orthonormalised against the basis (`extend_basis`). capacity: a zero-padded basis of
    that many columns (fixed shape, so one compilation of a training step serves every task;
    ValueError when it would overflow), None to let it grow to exactly the columns it holds
    (a step recompiles once per new size, and multiplies by no padding: faster when the
    training steps outweigh a compilation). extra: transformations chained after the
    projection (e.g. a recorder)."""
    capacity = _capacity(capacity)

    def init_memory(params):
        layout = make_layout(params)
        return ProjectionState(jnp.zeros((capacity or 0, layout.size), layout.dtype))

    def remember(memory, params, data, *, key=None, opt_state=None):
        memory.check_params(params)
        return _grow(memory, directions(params, data, key=key, opt_state=opt_state), capacity)

    return Strategy(
        name, init_memory, remember, lambda memory: optax.chain(project_out(memory), *extra)
    )


def _hessian_top(
    loss_fn: LossFn, k: int, num_steps: int | None, tol: float | None, make_operator: Callable
) -> Callable[[PyTree, PyTree, Array], sources.Directions]:
    """(params, data, key) -> the top-k Hessian eigenpairs of loss_fn on data
    (`sources.hessian_directions` with these Lanczos settings and operator factory)."""

    def top(params, data, key):
        return sources.hessian_directions(
            loss_fn, params, data, k, key=key, num_steps=num_steps, tol=tol,
            make_operator=make_operator,
        )  # fmt: skip

    return top


@_checks.renamed(operator="make_operator")
def hessian_project(
    loss_fn: LossFn,
    k: int,
    capacity: int | None = None,
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    make_operator: Callable[..., Any] = hessian_operator,
) -> Strategy:
    """Project updates out of the top-k Hessian eigenvectors of every old task
    (`sources.hessian_directions` on `data`, Lanczos with `num_steps`, `tol`, the Hessian
    built by `make_operator(loss_fn, params, data)`)."""
    k = _positive_int(k, "k")

    top = _hessian_top(loss_fn, k, num_steps, tol, make_operator)

    def directions(params, data, *, key, opt_state):
        return top(params, data, key).vectors

    return projection("hessian_project", directions, capacity)


@_checks.renamed(operator="make_operator")
def hessian_mass_project(
    loss_fn: LossFn,
    share: float,
    max_k: int,
    capacity: int | None = None,
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    max_restarts: int = 0,
    make_operator: Callable[..., Any] = hessian_operator,
) -> Strategy:
    """Hessian projection with k chosen per task by curvature: project updates out of the
    fewest of each old task's top-`max_k` Hessian eigenvectors that hold `share` (in (0, 1])
    of their positive curvature (`kron.hessian_mass_directions`: Lanczos with `num_steps`,
    `tol`, `max_restarts` thick restarts, the Hessian built by `make_operator(loss_fn,
    params, data)` as in `hessian_project`). capacity: as in `projection` (max_k per old task always
    fits)."""
    share = kron.check_share(share)
    max_k = _positive_int(max_k, "max_k")

    def directions(params, data, *, key, opt_state):
        return kron.hessian_mass_directions(
            loss_fn, params, data, share, max_k, key=key, num_steps=num_steps, tol=tol,
            max_restarts=max_restarts, make_operator=make_operator,
        ).vectors  # fmt: skip

    return projection("hessian_mass_project", directions, capacity)


def ogd(model_fn: Callable[[PyTree, Array], Array], num_samples: int, capacity: int | None = None):
    """Orthogonal gradient descent (Farajtabar et al. 2020), OGD-GTL: project updates out of
    the true-class logit gradients of the first `num_samples` samples of each old task.
    model_fn(params, x) -> logits, hashable (e.g. a Linen `model.apply`)."""
    num_samples = _positive_int(num_samples, "num_samples")

    def directions(params, data, *, key, opt_state):
        x, y = _samples(data, num_samples)
        return sources.logit_gradients(model_fn, params, x, y)

    return projection("ogd", directions, capacity)


def weight_svd_project(k: int, capacity: int | None = None) -> Strategy:
    """Project updates out of the top-k rank-one directions u_i v_iᵀ of every kernel's SVD at
    each old task's trained params (`sources.weight_svd_directions`; data unused)."""
    k = _positive_int(k, "k")

    def directions(params, data, *, key, opt_state):
        return sources.weight_svd_directions(params, k).vectors

    return projection("weight_svd_project", directions, capacity)


def update_pca_project(
    k: int, num_records: int, every: int, capacity: int | None = None
) -> Strategy:
    """Project updates out of the top-k principal directions of each old task's applied
    updates. The transform records them (`trajectory.recording(num_records, every)` chained
    after the projection: sums of `every` consecutive updates, a ring of `num_records`), so
    `remember` needs `opt_state=` (the state trained on the task; ValueError without)."""
    k = _positive_int(k, "k")

    def directions(params, data, *, key, opt_state):
        if opt_state is None:
            raise ValueError("update_pca_project.remember needs opt_state= (the recorded updates)")
        updates = trajectory.read_snapshots(opt_state).updates
        return sources.update_pca_directions(updates, k).vectors

    extra = (trajectory.recording(num_records, every),)
    return projection("update_pca_project", directions, capacity, extra)


def gpm(
    model: nn.Module,
    threshold: float | Sequence[float],
    num_samples: int,
    threshold_increment: float = 0.0,
    fixed_shape: bool = True,
) -> Strategy:
    """Gradient projection memory (Saha et al. 2021) of a Linen `model` (params = its
    variables): each dense layer's update projected out of a basis of its inputs on the first
    `num_samples` samples of old tasks (`sources.gpm_extend`), task t's energy threshold
    min(threshold + t · threshold_increment, 0.9999); `threshold` one for all layers or one
    per dense layer in order (GPM's permuted-MNIST code: 0.95, 0.99, 0.99). fixed_shape:
    bases zero-padded to (d, d), so the memory's shape is fixed; False: (d, k) with the k
    columns they hold (no step multiplies by padding; `set_memory(..., same_shapes=False)`)."""
    num_samples = _positive_int(num_samples, "num_samples")
    thresholds = (threshold,) if isinstance(threshold, int | float) else tuple(threshold)
    if not thresholds or not all(isinstance(v, int | float) and 0 < v <= 1 for v in thresholds):
        raise ValueError(f"GPM threshold must be in (0, 1] (or one per layer), got {threshold}")

    def layer_thresholds(params, t: int) -> dict[str, float]:
        layers = list(sources.gpm_sizes(params))
        values = thresholds * len(layers) if len(thresholds) == 1 else thresholds
        if len(values) != len(layers):
            raise ValueError(
                f"GPM has {len(thresholds)} layer thresholds for {len(layers)} dense layers "
                f"({', '.join(layers)})"
            )
        return {n: min(float(v) + t * float(threshold_increment), 0.9999)
                for n, v in zip(layers, values, strict=True)}  # fmt: skip

    def init_memory(params):
        layer_thresholds(params, 0)  # a count mismatch fails before any training
        dtype = make_layout(params).dtype
        sizes = sources.gpm_sizes(params)
        bases = {n: jnp.zeros((d, d if fixed_shape else 0), dtype) for n, d in sizes.items()}
        return GpmState(bases, jnp.zeros((), jnp.int32))

    def remember(memory, params, data, *, key=None, opt_state=None):
        memory.check_params(params)
        t = int(memory.num_tasks)
        x, _ = _samples(data, num_samples)
        acts = sources.dense_inputs(model, params, x)
        used = {name: used_columns(b) for name, b in memory.layer_bases.items()}
        bases = sources.gpm_extend(
            {k: b for k, b in used.items() if b.shape[1]}, acts, layer_thresholds(params, t)
        )
        if fixed_shape:
            bases = {n: pad_columns(bases[n], b.shape[1]) for n, b in memory.layer_bases.items()}
        return GpmState(bases, jnp.asarray(t + 1, jnp.int32))

    return Strategy("gpm", init_memory, remember, gpm_project)


# ----------------------------------------------------------------------------- penalties


def ewc(loss_fn: LossFn, strength: float, learning_rate: float) -> Strategy:
    """Elastic weight consolidation: the diagonal empirical Fisher of each old task
    (`sources.fisher_diagonal` on `data`) as a proximal penalty of `strength`
    (`ewc_penalty`); learning_rate: the base optimiser's, for the proximal step."""
    check_positive(strength, "ewc strength")
    check_positive(learning_rate, "ewc learning_rate")

    def init_memory(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return EwcState(zeros, zeros)

    def remember(memory, params, data, *, key=None, opt_state=None):
        memory.check_params(params)
        return ewc_state(params, sources.fisher_diagonal(loss_fn, params, data), memory)

    return Strategy(
        "ewc", init_memory, remember, lambda memory: ewc_penalty(memory, strength, learning_rate)
    )


@_checks.renamed(operator="make_operator")
def hessian_penalty(
    loss_fn: LossFn,
    k: int,
    strength: float,
    learning_rate: float,
    capacity: int | None = None,
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    make_operator: Callable[..., Any] = hessian_operator,
) -> Strategy:
    """The low-rank Hessian penalty: each old task adds ½ Σ_i λ_i <θ − θ_t, e_i>² over its
    top-k Hessian eigenpairs (negative λ clipped to 0), merged into one orthonormal quadratic
    (`curvature_penalty_state`), applied as a proximal penalty of `strength`
    (`curvature_penalty`). capacity: zero-pad the memory to that many directions (None: grow)."""
    k = _positive_int(k, "k")
    capacity = _capacity(capacity)
    check_positive(strength, "hessian_penalty strength")
    check_positive(learning_rate, "hessian_penalty learning_rate")

    hessian_top = _hessian_top(loss_fn, k, num_steps, tol, make_operator)

    def init_memory(params):
        layout = make_layout(params)
        size = capacity or 0
        zeros = jnp.zeros((size,), layout.dtype)
        return CurvaturePenaltyState(jnp.zeros((size, layout.size), layout.dtype), zeros, zeros)

    def remember(memory, params, data, *, key, opt_state=None):
        memory.check_params(params)
        top = hessian_top(params, data, key)
        weights = jnp.maximum(top.values, 0)
        return curvature_penalty_state(params, top.vectors, weights, memory, capacity)

    return Strategy(
        "hessian_penalty", init_memory, remember,
        lambda memory: curvature_penalty(memory, strength, learning_rate),
    )  # fmt: skip


# ------------------------------------------------------------------- Kronecker-factored


def _kron_strategy(
    name: str,
    model: Model,
    per_example_loss: Callable[[Array, Any], Array],
    num_samples: int | None,
    chunk_size: int | None,
    state_of: Callable[[kron.KronMemory, PyTree], kron.KronState],
    proximal: bool,
) -> Strategy:
    """A strategy whose memory is a `kron.KronState`: remember adds the task's per-layer
    Kronecker factors to the state's summed ones (`kron.kron_remember` on the first
    `num_samples` samples of `data`, None: all) and rebuilds the state with
    state_of(factors, params); the transform is `kron.kron_transform`."""
    if num_samples is not None:
        num_samples = _positive_int(num_samples, "num_samples")

    def remember(memory, params, data, *, key=None, opt_state=None):
        if not isinstance(memory, kron.KronState):
            raise ValueError(f"{name} memory must be a KronState, got {type(memory).__name__}")
        memory.check_params(params)
        factors = kron.kron_remember(
            kron.kron_memory(memory), model, params, _samples(data, num_samples),
            per_example_loss, layers=list(memory.u_a), chunk_size=chunk_size,
        )  # fmt: skip
        return state_of(factors, params)

    return Strategy(
        name, kron.kron_identity_state, remember,
        lambda memory: kron.kron_transform(memory, proximal=proximal),
    )  # fmt: skip


def kron_project(
    model: Model,
    per_example_loss: Callable[[Array, Any], Array],
    share: float | Mapping[str, float] = 0.95,
    mode: str = "input",
    output_share: float = 1.0,
    num_samples: int | None = None,
    chunk_size: int | None = 250,
) -> Strategy:
    """Project each dense layer's update of `model` (a Linen module, or a tagged apply: see
    `kron.kron_remember`) out of
    the high-curvature eigenpairs of kron(A, G), the per-layer Kronecker factors summed over
    the old tasks (`kron.kron_projection_state`: mode "input" protects the top eigenvectors of
    A = Σ_t E[x̃x̃ᵀ] holding `share` of tr(A), "product" the pairs of largest α_i γ_j,
    "block" top-A × top-G with `output_share`; share: one value or {layer: value}).
    per_example_loss(output, target) -> (N,)
    (e.g. `curvature.cross_entropy`). Defaults: the best measured on 5-task permuted MNIST
    under plain SGD (benchmarks/README.md, continual_strategies). The memory (`kron.KronState`)
    has the fixed shapes of the params' dense layers."""
    share = kron.check_shares(share)
    mode = kron.check_mode(mode)
    output_share = kron.check_share(output_share, "output_share")
    return _kron_strategy(
        "kron_project", model, per_example_loss, num_samples, chunk_size,
        lambda factors, params: kron.kron_projection_state(factors, share, mode, output_share),
        proximal=False,
    )  # fmt: skip


def kron_prox(
    model: Model,
    per_example_loss: Callable[[Array, Any], Array],
    strength: float,
    learning_rate: float,
    num_samples: int | None = None,
    chunk_size: int | None = 250,
    share: float | None = None,
    mode: str = "mass",
) -> Strategy:
    """The online structured Laplace penalty (Ritter, Botev, Barber 2018) ½ s (θ − θ*)ᵀ
    kron(A, G⁺) / T (θ − θ*) per dense layer, anchored at the last old task's params θ*, as
    an exact proximal step (`kron.kron_prox_state`; stable for every strength s > 0);
    learning_rate: the base optimiser's η. share (None: no projection): also project out the
    eigenpairs `kron_project` with that share and `mode` protects (the penalty acts on the
    rest). Otherwise as `kron_project`."""
    strength = check_positive(strength, "kron_prox strength")
    learning_rate = check_positive(learning_rate, "kron_prox learning_rate")
    if share is not None:
        share, mode = kron.check_share(share), kron.check_mode(mode)

    def state_of(factors, params):
        proj = None if share is None else kron.kron_projection_state(factors, share, mode)
        return kron.kron_prox_state(factors, params, strength, learning_rate, proj)

    return _kron_strategy(
        "kron_prox", model, per_example_loss, num_samples, chunk_size, state_of, proximal=True
    )  # fmt: skip
