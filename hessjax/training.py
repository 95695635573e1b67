"""A minimal jitted training loop for the experiments: optax, minibatches drawn on device,
`log_every` steps per compiled `lax.scan` chunk so progress can be logged between chunks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "num_steps", "batch_size"))
def _train_chunk(params, opt_state, key, x, y, *, loss_fn, optimizer, num_steps, batch_size):
    def step(carry, key):
        params, opt_state = carry
        idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, (x[idx], y[idx]))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), jax.random.split(key, num_steps)
    )
    return params, opt_state, jnp.mean(losses)


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
) -> tuple[PyTree, list[tuple[int, float]]] | tuple[PyTree, list[tuple[int, float]], PyTree]:
    """Train for `num_steps` minibatch steps on (x (N, ...), y (N,)).

    Returns the final params and the history [(step, mean loss over the last chunk), ...];
    `log(step, loss)` is called after every chunk of `log_every` steps. To train in segments
    (measuring between them) without resetting the optimizer, pass the previous segment's
    `opt_state` (default: optimizer.init(params)) and set `return_opt_state` to get
    (params, history, opt_state).
    """
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} training samples")
    if opt_state is None:
        opt_state = optimizer.init(params)
    history: list[tuple[int, float]] = []
    done = 0
    while done < num_steps:
        chunk = min(log_every, num_steps - done)
        key, sub = jax.random.split(key)
        params, opt_state, loss = _train_chunk(
            params, opt_state, sub, x, y,
            loss_fn=loss_fn, optimizer=optimizer, num_steps=chunk, batch_size=batch_size,
        )  # fmt: skip
        done += chunk
        loss = float(loss)
        if not jnp.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {done}")
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
