"""Small flax (Linen) models used by the experiments, benchmarks and tests: MLP, ConvNet, and
the transformers GPT and ViT (`hessjax.models.transformer`).

Any model works with the curvature operators once reduced to loss_fn(params, batch); these are
the defaults. `params` below is the Linen variable dict {'params': ...}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hessjax.models.transformer import GPT as GPT
from hessjax.models.transformer import ViT as ViT

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "sigmoid": nn.sigmoid,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function named `name` (a key of `ACTIVATIONS`); ValueError otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


INITS = ("lecun", "fan_in_uniform")


def symmetric_uniform(bound: float) -> Callable:
    """Initializer drawing U(-bound, bound) entries (any shape)."""

    def init(key: Array, shape, dtype=jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def layer_inits(init: str, fan_in: int) -> dict[str, Callable]:
    """kernel_init/bias_init keyword arguments of a Dense or Conv layer with `fan_in` inputs
    per output unit: 'lecun' = flax's defaults (LeCun-normal kernel, zero bias);
    'fan_in_uniform' = U(±1/√fan_in) for kernel and bias (PyTorch's nn.Linear/nn.Conv
    default, used by Fernandez et al. 2025)."""
    if init == "lecun":
        return {}
    if init == "fan_in_uniform":
        u = symmetric_uniform(1.0 / float(fan_in) ** 0.5)
        return {"kernel_init": u, "bias_init": u}
    raise ValueError(f"unknown init {init!r}; choose from {INITS}")


class MLP(nn.Module):
    """Dense layers `widths` (the last is the output size) with `act` between them.

    Inputs (b, ...) are flattened to (b, d); outputs are (b, widths[-1]). `param_init`: one of
    `INITS` (see `layer_inits`). batch_norm: an `nn.BatchNorm` after every hidden Dense layer
    (before `act`), normalising with the batch's statistics when called with train=True and
    with the stored ones (collection 'batch_stats') otherwise; a train-mode call with
    mutable=['batch_stats'] stores that batch's statistics (momentum 0), see
    `set_batch_statistics`.
    """

    widths: Sequence[int]
    act: str = "tanh"
    use_bias: bool = True
    param_init: str = "lecun"
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.widths):
            inits = layer_inits(self.param_init, x.shape[-1])
            x = nn.Dense(width, use_bias=self.use_bias, **inits)(x)
            if i < len(self.widths) - 1:
                if self.batch_norm:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.0)(x)
                x = activation(self.act)(x)
        return x


def train_mode_apply(model: nn.Module, variables, x: Array) -> Array:
    """model.apply(variables, x, train=True) for a model with batch norm (batch statistics;
    the updated 'batch_stats' are dropped): the forward pass to train with, e.g. under
    `functools.partial(train_mode_apply, model)`."""
    return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]


def set_batch_statistics(model: nn.Module, variables, x: Array):
    """`variables` with their 'batch_stats' replaced by the batch-norm statistics of x
    (N, ...) (a train-mode pass; the population statistics when x is the training set)."""
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return {**variables, **state}


class ConvNet(nn.Module):
    """Conv layers (3x3 or 1D width-3 kernels, `channels`) with `act` and 2x average pooling,
    then global average pooling and a dense head of `num_outputs`.

    Inputs (b, length, c) for 1D or (b, h, w, c) for 2D; a (b, d) input is treated as
    (b, d, 1) (1D signals such as MNIST-1D). `param_init`: one of `INITS` (see `layer_inits`).
    """

    channels: Sequence[int]
    num_outputs: int
    act: str = "relu"
    param_init: str = "lecun"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim == 2:
            x = x[..., None]
        spatial = x.ndim - 2
        for c in self.channels:
            inits = layer_inits(self.param_init, 3**spatial * x.shape[-1])
            x = nn.Conv(c, (3,) * spatial, **inits)(x)
            x = activation(self.act)(x)
            x = nn.avg_pool(x, (2,) * spatial, strides=(2,) * spatial)
        x = jnp.mean(x, axis=tuple(range(1, 1 + spatial)))
        return nn.Dense(self.num_outputs, **layer_inits(self.param_init, x.shape[-1]))(x)


def init_params(model: nn.Module, key: Array, example_input: Array):
    """Linen variables {'params': ...} for one example batch (b, ...)."""
    return model.init(key, example_input)
