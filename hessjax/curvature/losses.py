"""Per-example losses on network outputs, and the scalar mean loss built from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy: logits (b, C), integer labels (b,) -> (b,) in nats."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def mse(outputs: Array, targets: Array) -> Array:
    """Half squared error ½‖o - t‖² per example: outputs (b, C), targets (b, C) or integer
    labels (b,) (one-hot encoded) -> (b,)."""
    if targets.ndim == outputs.ndim - 1 and jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


@dataclasses.dataclass(frozen=True)
class MeanLoss:
    """loss_fn(params, (inputs, targets)) = mean over the batch of per_example_loss(outputs,
    targets). Hashable, so operators built from equal MeanLoss objects share compilations."""

    model_fn: Callable[[Any, Any], Array]
    per_example_loss: Callable[[Array, Any], Array]

    def __call__(self, params: Any, batch: tuple[Any, Any]) -> Array:
        return jnp.mean(self.per_example(params, batch))

    def per_example(self, params: Any, batch: tuple[Any, Any]) -> Array:
        """The unreduced losses, (b,) for a batch of b examples."""
        inputs, targets = batch
        return self.per_example_loss(self.model_fn(params, inputs), targets)
