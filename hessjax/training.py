"""A minimal jitted training loop for the experiments: optax, minibatches drawn on device,
`log_every` steps per compiled `lax.scan` chunk so progress can be logged between chunks.
`make_train_step(loss_fn, optimizer)` compiles the loop for one loss and optimizer (closed
over, not static jit arguments); `train` runs it and stops on a non-finite loss. A curvature
monitor (`hessjax.monitor`) can ride inside the scanned step, measuring on each minibatch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
PyTree = Any


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """'adam' or 'sgd' (plain) at a constant learning rate."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite: `step` is the end of the first chunk of
    `log_every` steps whose mean loss (`loss`) was not finite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training loss became {loss} at step {step}")
        self.step, self.loss = step, loss


class TrainStep(NamedTuple):
    """A compiled training loop for one (loss_fn, optimizer): `run(params, opt_state, key, x,
    y, num_steps=..., batch_size=...) -> (params, opt_state, mean loss)` takes `num_steps`
    minibatch steps (batch_size samples drawn uniformly from x (N, ...), y (N,)) in one
    `lax.scan`; with a monitor, opt_state is the pair (optimizer state, MonitorState). Its
    compilations live on `run` (one per shape and num_steps / batch_size), so
    keeping the TrainStep keeps them; nothing is cached at module level."""

    loss_fn: Callable[[PyTree, tuple[Array, Array]], Array]
    optimizer: optax.GradientTransformation
    run: Callable[..., tuple[PyTree, PyTree, Array]]
    monitor: Any = None

    def init(self, params: PyTree) -> PyTree:
        """The opt_state `run` starts from: optimizer.init(params), paired with
        monitor.init(params) when the step carries a monitor."""
        opt_state = self.optimizer.init(params)
        return opt_state if self.monitor is None else (opt_state, self.monitor.init(params))


def make_train_step(
    loss_fn: Callable[[PyTree, tuple[Array, Array]], Array],
    optimizer: optax.GradientTransformation,
    monitor: Any = None,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
) -> TrainStep:
    """The `TrainStep` of loss_fn(params, (x, y)) -> scalar and an optax optimizer. Neither is
    a jit argument: both are closed over by the jitted loop (the optimizer's state, e.g. a
    continual-learning memory, is an argument), so any optimizer object works, hashable or
    not, and building a new one never hits a stale compilation.

    monitor: a `hessjax.monitor.Monitor`, updated after every step on that step's minibatch at
    the params the step ends at (`applied=True`: step s + 1 is recorded); opt_state is then
    (optimizer state, MonitorState), e.g. `(optimizer.init(p), monitor.init(p))`.
    preconditioner: opt_state -> P (params-shaped), required for a preconditioned monitor and
    taken after the update, e.g. `monitor.adam_preconditioner` for λ_max(P⁻¹H) under Adam.
    """
    if monitor is not None and monitor.preconditioned and preconditioner is None:
        raise ValueError("a preconditioned monitor needs preconditioner= (opt_state -> P, "
                         "e.g. hessjax.monitor.adam_preconditioner)")  # fmt: skip
    if preconditioner is not None and (monitor is None or not monitor.preconditioned):
        raise ValueError("preconditioner= is only for a preconditioned monitor")

    @functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"))
    def run(params, opt_state, key, x, y, *, num_steps: int, batch_size: int):
        def step(carry, key):
            params, state = carry
            opt_state, mstate = state if monitor is not None else (state, None)
            idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
            batch = (x[idx], y[idx])
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if monitor is None:
                return (params, opt_state), loss
            pre = None if preconditioner is None else preconditioner(opt_state)
            mstate = monitor.update(
                mstate, params, batch, loss=loss, applied=True, preconditioner=pre
            )
            return (params, (opt_state, mstate)), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), jax.random.split(key, num_steps)
        )
        return params, opt_state, jnp.mean(losses)

    return TrainStep(loss_fn, optimizer, run, monitor)


def train(
    loss_fn: Callable[[PyTree, tuple[Array, Array]], Array],
    params: PyTree,
    x: Array,
    y: Array,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int,
    key: Array,
    log_every: int = 100,
    log: Callable[[int, float], None] | None = None,
    opt_state: PyTree | None = None,
    return_opt_state: bool = False,
    step: TrainStep | None = None,
    monitor: Any = None,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
) -> tuple[PyTree, list[tuple[int, float]]] | tuple[PyTree, list[tuple[int, float]], PyTree]:
    """Train for `num_steps` minibatch steps on (x (N, ...), y (N,)).

    Returns the final params and the history [(step, mean loss over the last chunk), ...];
    `log(step, loss)` is called after every chunk of `log_every` steps. To train in segments
    (measuring between them) without resetting the optimizer, pass the previous segment's
    `opt_state` (default: optimizer.init(params)) and set `return_opt_state` to get
    (params, history, opt_state). `step`: `make_train_step(loss_fn, optimizer)` of these very
    objects, to reuse its compilation over calls (default: a new one, compiled in this call).
    monitor, preconditioner: a curvature monitor inside the step (see `make_train_step`);
    opt_state is then (optimizer state, MonitorState), read its measurements with
    `hessjax.monitor.read_log(opt_state[1])`.

    Raises TrainingDiverged (a FloatingPointError) naming the step when a chunk's mean loss
    is not finite.
    """
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} training samples")
    if step is None:
        step = make_train_step(loss_fn, optimizer, monitor, preconditioner)
    elif step.loss_fn is not loss_fn or step.optimizer is not optimizer:
        raise ValueError("step was made from another loss_fn or optimizer than those passed")
    elif step.monitor is not monitor:
        raise ValueError("step was made with another monitor than the one passed")
    if opt_state is None:
        opt_state = step.init(params)
    history: list[tuple[int, float]] = []
    done = 0
    while done < num_steps:
        chunk = min(log_every, num_steps - done)
        key, sub = jax.random.split(key)
        params, opt_state, loss = step.run(
            params, opt_state, sub, x, y, num_steps=chunk, batch_size=batch_size
        )
        done += chunk
        loss = float(loss)
        if not np.isfinite(loss):
            raise TrainingDiverged(done, loss)
        history.append((done, loss))
        if log is not None:
            log(done, loss)
    return (params, history, opt_state) if return_opt_state else (params, history)


@functools.partial(jax.jit, static_argnames=("model_fn",))
def accuracy(model_fn: Callable[[PyTree, Array], Array], params: PyTree, x: Array, y: Array):
    """Fraction () of argmax(model_fn(params, x)) == y."""
    return jnp.mean(jnp.argmax(model_fn(params, x), axis=-1) == y)


def find_state(tree: PyTree, cls: type):
    """The one instance of `cls` (a NamedTuple state) inside a pytree, e.g. an optax chain's
    opt_state, or `tree` itself when it is one; ValueError unless exactly one is found."""
    found = [
        x for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, cls))
        if isinstance(x, cls)
    ]  # fmt: skip
    if len(found) != 1:
        raise ValueError(f"expected exactly one {cls.__name__} in the tree, found {len(found)}")
    return found[0]
