"""Per-example losses on network outputs, and the scalar mean loss built from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks

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


def check_token_ids(ids: Array, vocab: int) -> None:
    """ValueError when concrete ids (any shape) leave [0, vocab); checked on the host, so also
    for ids closed over inside a `jit`; traced ids are not checked."""
    if _checks.is_concrete(ids) and ids.size:
        host = np.asarray(ids)
        if int(host.min()) < 0 or int(host.max()) >= vocab:
            raise ValueError(
                f"target ids must lie in [0, {vocab}), got [{int(host.min())}, {int(host.max())}]"
            )


def token_cross_entropy(logits: Array, targets: Array | tuple[Array, Array]) -> Array:
    """Next-token cross-entropy of a language model, per sequence: logits (b, T, V), targets
    (b, T) integer ids or a tuple (ids (b, T), mask (b, T)) whose 0 entries (padding) do not
    count -> (b,) in nats per token.

    Sequence n gets Σ_t mask_nt ce_nt / (Σ mask / b), so the mean over the batch is the mean
    over its counted tokens (the LM loss) and the per-sequence terms are what
    `empirical_fisher_operator` takes as examples. Called on concrete arrays it raises a
    ValueError for ids outside [0, V) and for a mask with no tokens; under a trace (inside an
    operator) check the data first (`hessjax.data.check_token_batch`)."""
    ids, mask = targets if isinstance(targets, tuple) else (targets, None)
    if logits.ndim != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits (b, T, V) and targets (b, T), got {logits.shape} and {ids.shape}"
        )
    check_token_ids(ids, logits.shape[-1])
    ce = cross_entropy(logits, ids)
    if mask is None:
        return jnp.mean(ce, axis=1)
    if mask.shape != ids.shape:
        raise ValueError(f"mask must have the targets' shape {ids.shape}, got {mask.shape}")
    mask = mask.astype(ce.dtype)
    count = jnp.sum(mask)
    if _checks.is_concrete(count) and not float(count) > 0:
        raise ValueError("the mask selects no token: every target is padding")
    return jnp.sum(mask * ce, axis=1) * (ids.shape[0] / count)


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
