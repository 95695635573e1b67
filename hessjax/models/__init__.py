"""Small flax (Linen) models used by the experiments, benchmarks and tests.

Any model works with the curvature operators once reduced to loss_fn(params, batch); these are
the defaults. `params` below is the Linen variable dict {'params': ...}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "sigmoid": nn.sigmoid,
}


def activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense layers `widths` (the last is the output size) with `act` between them.

    Inputs (b, ...) are flattened to (b, d); outputs are (b, widths[-1]).
    """

    widths: Sequence[int]
    act: str = "tanh"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, use_bias=self.use_bias)(x)
            if i < len(self.widths) - 1:
                x = activation(self.act)(x)
        return x


class ConvNet(nn.Module):
    """Conv layers (3x3 or 1D width-3 kernels, `channels`) with `act` and 2x average pooling,
    then global average pooling and a dense head of `num_outputs`.

    Inputs (b, length, c) for 1D or (b, h, w, c) for 2D; a (b, d) input is treated as
    (b, d, 1) (1D signals such as MNIST-1D).
    """

    channels: Sequence[int]
    num_outputs: int
    act: str = "relu"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim == 2:
            x = x[..., None]
        spatial = x.ndim - 2
        for c in self.channels:
            x = nn.Conv(c, (3,) * spatial)(x)
            x = activation(self.act)(x)
            x = nn.avg_pool(x, (2,) * spatial, strides=(2,) * spatial)
        x = jnp.mean(x, axis=tuple(range(1, 1 + spatial)))
        return nn.Dense(self.num_outputs)(x)


def init_params(model: nn.Module, key: Array, example_input: Array):
    """Linen variables {'params': ...} for one example batch (b, ...)."""
    return model.init(key, example_input)
