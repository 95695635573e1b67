"""A decoder-only GPT and a ViT (Flax Linen) whose every projection is its own parameter leaf.

Both are pre-LayerNorm transformers built from the same `Block` (causal or full multi-head
self-attention, then a GELU MLP, each in a residual branch); `layer_norm=False` drops every
LayerNorm (no 'ln_*' leaves), the setting of Ormaniec et al.'s scaling laws. Names under
'params' are fixed, so role partitions (`hessjax.analysis.transformer.role_partition`) and
the Kronecker tags (every projection is an `nn.Dense`, found by
`hessjax.curvature.kronecker_factors`) can name them:

    token_embed/embedding (V, d)         GPT token embedding
    position_embed (T, d)                learned positions (GPT: T = context; ViT: patches (+1))
    patch_embed/{kernel (p²c, d), bias}  ViT patch embedding (a Dense on flattened patches)
    cls_token (1, d)                     ViT class token (pool='cls')
    block_{i}/ln_attn/{scale, bias}      LayerNorm before attention
    block_{i}/attn/{query, key, value}/{kernel (d, d), bias (d,)}   head h: columns h·d_h ..
    block_{i}/attn/out/{kernel (d, d), bias (d,)}                   head h: rows h·d_h ..
    block_{i}/ln_mlp/{scale, bias}       LayerNorm before the MLP
    block_{i}/mlp/{fc_in (d, r·d), fc_out (r·d, d)}/{kernel, bias}
    ln_final/{scale, bias}
    unembed/kernel (d, V)                GPT output (absent when tied: logits = x @ embeddingᵀ)
    head/{kernel (d, C), bias (C,)}      ViT classifier

Shapes: the GPT maps tokens (b, T) int, T <= context, to logits (b, T, V); the ViT maps images
(b, H, W, c), (b, H, W) or flat (b, H·W) square images to logits (b, C).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
POOLS = ("mean", "cls")


def _check_dims(width: int, num_heads: int, num_layers: int, mlp_ratio: int) -> None:
    for name, value in (("width", width), ("num_heads", num_heads),
                        ("num_layers", num_layers), ("mlp_ratio", mlp_ratio)):  # fmt: skip
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Dense query/key/value/out projections (d, d).

    x (b, T, d) -> (b, T, d); causal masks position t from positions > t."""

    num_heads: int
    causal: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, t, d = x.shape
        h = self.num_heads
        dh = d // h

        def heads(name):
            return nn.Dense(d, name=name)(x).reshape(b, t, h, dh)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(dh)
        if self.causal:
            mask = jnp.tril(jnp.ones((t, t), bool))
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        mixed = jnp.einsum("bhts,bshe->bthe", weights, v).reshape(b, t, d)
        return nn.Dense(d, name="out")(mixed)


class MLPBlock(nn.Module):
    """Dense fc_in (d, r·d), GELU, Dense fc_out (r·d, d)."""

    hidden: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.gelu(nn.Dense(self.hidden, name="fc_in")(x))
        return nn.Dense(x.shape[-1], name="fc_out")(y)


def _norm(x: Array, layer_norm: bool, name: str) -> Array:
    return nn.LayerNorm(name=name)(x) if layer_norm else x


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (ln = identity
    when not layer_norm)."""

    num_heads: int
    mlp_ratio: int
    causal: bool
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        attn = SelfAttention(self.num_heads, self.causal, name="attn")
        x = x + attn(_norm(x, self.layer_norm, "ln_attn"))
        hidden = self.mlp_ratio * x.shape[-1]
        return x + MLPBlock(hidden, name="mlp")(_norm(x, self.layer_norm, "ln_mlp"))


def _blocks(
    x: Array, num_layers: int, num_heads: int, mlp_ratio: int, causal: bool, layer_norm: bool
) -> Array:
    for i in range(num_layers):
        x = Block(num_heads, mlp_ratio, causal, layer_norm, name=f"block_{i}")(x)
    return _norm(x, layer_norm, "ln_final")


class GPT(nn.Module):
    """Decoder-only transformer: tokens (b, T) int32 in [0, vocab_size), T <= context ->
    next-token logits (b, T, vocab_size). tie_embeddings: logits = x @ token_embedᵀ (no
    'unembed' leaf). layer_norm False: no LayerNorms. logits False: the final hidden states
    (b, T, width) instead, for `curvature.LMHeadLoss` (which applies the unembedding itself,
    in chunks; params from the default model, 'unembed' included, work). Initialisation:
    N(0, 0.02²) embeddings and positions, Flax defaults (LeCun normal kernels, zero biases,
    unit LayerNorm scales) elsewhere."""

    vocab_size: int
    context: int
    width: int
    num_heads: int
    num_layers: int
    mlp_ratio: int = 4
    tie_embeddings: bool = False
    layer_norm: bool = True
    logits: bool = True

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        _check_dims(self.width, self.num_heads, self.num_layers, self.mlp_ratio)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, T) integers, got shape {tokens.shape}")
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"windows of {t} tokens are longer than the context {self.context}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        init = nn.initializers.normal(0.02)
        embed = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="token_embed")
        pos = self.param("position_embed", init, (self.context, self.width))
        x = embed(tokens) + pos[:t]
        x = _blocks(x, self.num_layers, self.num_heads, self.mlp_ratio, True, self.layer_norm)
        if not self.logits:
            return x
        if self.tie_embeddings:
            return embed.attend(x)
        return nn.Dense(self.vocab_size, use_bias=False, name="unembed")(x)


class ViT(nn.Module):
    """Vision transformer: images (b, H, W, c), (b, H, W) or flat square (b, H·W) -> logits
    (b, num_classes). Non-overlapping patch_size × patch_size patches (H, W divisible by it)
    embedded by one Dense; pool 'mean' (mean over patch tokens) or 'cls' (a class token);
    layer_norm False: no LayerNorms."""

    num_classes: int
    patch_size: int
    width: int
    num_heads: int
    num_layers: int
    mlp_ratio: int = 4
    pool: str = "mean"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, images: Array) -> Array:
        _check_dims(self.width, self.num_heads, self.num_layers, self.mlp_ratio)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        x = _as_images(images)
        b, hgt, wid, c = x.shape
        p = self.patch_size
        if hgt % p or wid % p:
            raise ValueError(f"images {hgt}x{wid} are not divisible into {p}x{p} patches")
        x = x.reshape(b, hgt // p, p, wid // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = nn.Dense(self.width, name="patch_embed")(x.reshape(b, -1, p * p * c))
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
        pos = self.param("position_embed", nn.initializers.normal(0.02), x.shape[1:])
        x = _blocks(x + pos, self.num_layers, self.num_heads, self.mlp_ratio, False,
                    self.layer_norm)  # fmt: skip
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


def _as_images(x: Array) -> Array:
    """(b, H, W, c); (b, H, W) gets c = 1; flat (b, n) with n a square gets (b, √n, √n, 1)."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"flat inputs of {x.shape[1]} features are not square images")
        return x.reshape(x.shape[0], side, side, 1)
    raise ValueError(f"images must be (b, H, W, c), (b, H, W) or (b, H*W), got {x.shape}")
