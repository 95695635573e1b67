"""Curvature of a language model's next-token loss without the whole (tokens × V) logits.

At a language-model vocabulary (V = 32k-128k) the logits of a few thousand tokens are the
largest array of a curvature product: forward-over-reverse through `hidden @ kernel` holds the
logits, the probabilities and their tangents, each (tokens, V). Here the model is split into a
trunk (params, tokens) -> hidden (b, T, d) and its unembedding kernel (d, V), a leaf of the same
params, and the loss runs over chunks of `chunk_size` tokens (`lax.scan`, each chunk
rematerialised with `jax.checkpoint`): a Hessian or Gauss-Newton product then holds one chunk's
(chunk_size, V) logits at a time, whatever the number of tokens.

    loss = LMHeadLoss(GPT(..., logits=False).apply, "params/unembed/kernel", chunk_size=512)
    H = hessian_operator(loss, params, (x, y))   # microbatched (m, b, T) tokens, as usual
    G = lm_head_ggn_operator(loss, params, (x, y))

Both equal the products of `MeanLoss(GPT(...).apply, token_cross_entropy)` to round-off
(tested against `jax.jvp(jax.grad(...))` and dense float64 oracles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from hessjax.curvature.layout import PyTree, Select, leaf_paths, make_layout
from hessjax.curvature.losses import check_token_ids
from hessjax.curvature.operators import (
    CurvatureOperator,
    CurvatureProduct,
    StreamingOperator,
    build_operator,
)

Array = jax.Array


def _check_chunk(chunk_size: int, num_tokens: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size > num_tokens or num_tokens % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must divide the {num_tokens} tokens of a "
                         "(micro)batch (b·T) and not exceed them")  # fmt: skip


def _token_weights(targets, shape: tuple[int, int], vocab: int, dtype) -> tuple[Array, Array]:
    """ids (N,) and per-token weights (N,) of `dtype` summing to 1: the token mean, or the
    mask's."""
    ids, mask = targets if isinstance(targets, tuple) else (targets, None)
    if tuple(ids.shape) != shape:
        raise ValueError(f"targets must be (b, T) = {shape} ids, got shape {tuple(ids.shape)}")
    check_token_ids(ids, vocab)
    ids = ids.reshape(-1)
    if mask is None:
        return ids, jnp.full(ids.shape, 1.0 / ids.size, dtype)
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must have the targets' shape {shape}, got {tuple(mask.shape)}")
    mask = mask.reshape(-1).astype(dtype)
    return ids, mask / jnp.sum(mask)


def _chunks(x: Array, chunk_size: int) -> Array:
    return x.reshape(x.shape[0] // chunk_size, chunk_size, *x.shape[1:])


def _check_head(hidden: Array, kernel: Array) -> tuple[int, int, int]:
    if hidden.ndim != 3:
        raise ValueError(f"hidden states must be (b, T, d), got shape {hidden.shape}")
    b, t, d = hidden.shape
    if kernel.ndim != 2 or kernel.shape[0] != d:
        raise ValueError(f"kernel must be (d, V) with d = {d}, got shape {kernel.shape}")
    return b, t, d


def chunked_token_cross_entropy(
    hidden: Array, kernel: Array, targets: Array | tuple[Array, Array], chunk_size: int
) -> Array:
    """Mean next-token cross-entropy (nats per token; only the mask's tokens when targets is
    (ids, mask)) of the logits hidden @ kernel, hidden (b, T, d), kernel (d, V), over chunks of
    `chunk_size` of the b·T tokens (it must divide them), each chunk rematerialised: gradients
    and curvature products of it hold one (chunk_size, V) logit block at a time. Equals the
    batch mean of `token_cross_entropy(hidden @ kernel, targets)`."""
    b, t, d = _check_head(hidden, kernel)
    _check_chunk(chunk_size, b * t)
    ids, weights = _token_weights(targets, (b, t), kernel.shape[1], hidden.dtype)

    @jax.checkpoint
    def chunk(w_u, h, y, w):
        z = h @ w_u
        ce = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]
        return jnp.sum(w * ce)

    def body(total, xs):
        return total + chunk(kernel, *xs), None

    xs = (_chunks(hidden.reshape(b * t, d), chunk_size), _chunks(ids, chunk_size),
          _chunks(weights, chunk_size))  # fmt: skip
    return lax.scan(body, jnp.zeros((), hidden.dtype), xs)[0]


@dataclasses.dataclass(frozen=True)
class LMHeadLoss:
    """loss(params, (tokens, targets)): the mean next-token cross-entropy of a language model
    split into trunk_fn(params, tokens) -> hidden (b, T, d) and the unembedding kernel (d, V)
    at `kernel_path` in params ('/'-joined, e.g. 'params/unembed/kernel'; transposed: the leaf
    is (V, d), a tied token embedding), over chunks of `chunk_size` tokens
    (`chunked_token_cross_entropy`). Hashable, like `MeanLoss`."""

    trunk_fn: Callable[[PyTree, Any], Array]
    kernel_path: str
    chunk_size: int
    transposed: bool = False

    def kernel(self, params: PyTree) -> Array:
        """The (d, V) unembedding kernel of params."""
        paths = leaf_paths(params)
        if self.kernel_path not in paths:
            raise ValueError(f"kernel_path {self.kernel_path!r} is not a leaf of params; "
                             f"leaves are {paths}")  # fmt: skip
        leaf = jax.tree_util.tree_leaves(params)[paths.index(self.kernel_path)]
        return leaf.T if self.transposed else leaf

    def __call__(self, params: PyTree, batch: tuple[Any, Any]) -> Array:
        tokens, targets = batch
        hidden = self.trunk_fn(params, tokens)
        return chunked_token_cross_entropy(hidden, self.kernel(params), targets, self.chunk_size)


def _head_ggn(hidden, kernel, hidden_dot, kernel_dot, targets, chunk_size):
    """Cotangents (of hidden (b, T, d), of kernel (d, V)) of Jᵀ H_out J v given the tangents of
    hidden and kernel, H_out the cross-entropy Hessian in the logits: per chunk, z' = h' W + h W',
    u = w ⊙ (p ⊙ z' − p (pᵀ z')), then (u Wᵀ, hᵀ u)."""
    b, t, d = _check_head(hidden, kernel)
    _check_chunk(chunk_size, b * t)
    ids, weights = _token_weights(targets, (b, t), kernel.shape[1], hidden.dtype)
    del ids  # the Gauss-Newton matrix of cross-entropy does not depend on the targets

    @jax.checkpoint
    def chunk(h, hd, w):
        z = h @ kernel
        p = jax.nn.softmax(z, axis=-1)
        zd = hd @ kernel + h @ kernel_dot
        u = w[:, None] * (p * zd - p * jnp.sum(p * zd, axis=-1, keepdims=True))
        return u @ kernel.T, h.T @ u

    def body(acc, xs):
        dh, dk = chunk(*xs)
        return acc + dk, dh

    xs = (
        _chunks(hidden.reshape(b * t, d), chunk_size),
        _chunks(hidden_dot.reshape(b * t, d), chunk_size),
        _chunks(weights, chunk_size),
    )
    dk, dh = lax.scan(body, jnp.zeros_like(kernel), xs)  # fmt: skip
    return dh.reshape(b, t, d), dk


@dataclasses.dataclass(frozen=True)
class LMHeadGaussNewtonProduct(CurvatureProduct):
    """v -> G v = Jᵀ H_out J v of an `LMHeadLoss`, J the Jacobian of the logits hidden @ kernel
    in the params, one (chunk_size, V) logit block at a time."""

    loss: LMHeadLoss
    layout: Any

    def per_batch(self, merge, picked, tangent, batch):
        tokens, targets = batch

        def features(p):
            full = merge(p)
            return self.loss.trunk_fn(full, tokens), self.loss.kernel(full)

        (hidden, kernel), jvp_fn = jax.linearize(features, picked)
        hidden_dot, kernel_dot = jvp_fn(tangent)
        cot = _head_ggn(hidden, kernel, hidden_dot, kernel_dot, targets, self.loss.chunk_size)
        return jax.linear_transpose(jvp_fn, picked)(cot)[0]


def lm_head_ggn_operator(
    loss: LMHeadLoss,
    params: PyTree,
    data: tuple[Any, Any] | None = None,
    *,
    batches: Iterable[tuple[Any, Any]] | Callable[[], Iterable[Any]] | None = None,
    select: Select = None,
) -> CurvatureOperator | StreamingOperator:
    """Generalised Gauss-Newton Jᵀ H_out J of an `LMHeadLoss` (J: Jacobian of the logits,
    H_out: the cross-entropy Hessian in them) without forming the whole logits; data as for
    `ggn_operator`: (tokens, targets) with a leading microbatch axis. The Hessian of the same
    loss is `hessian_operator(loss, params, data)`."""
    if not isinstance(loss, LMHeadLoss):
        raise ValueError(f"lm_head_ggn_operator needs an LMHeadLoss, got {type(loss).__name__}")
    layout = make_layout(params, select)
    return build_operator(LMHeadGaussNewtonProduct(loss, layout), loss, params, data, batches,
                          layout)  # fmt: skip
