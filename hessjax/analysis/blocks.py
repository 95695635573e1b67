"""Block structure of a network Hessian (Dong et al. 2025; the layer-wise part of Haink 2023).

* `layerwise_top_eigenvalues`: top eigenvalue of every diagonal block H_ii, all blocks in one
  compiled Lanczos, next to the whole network's.
* `block_ratio_matrix`: r_ij = ‖H_ij‖²_F / ‖H_ii‖²_F over a partition.
* `neuron_block_ratio`, `static_force_ratios`: the mean ratio between neuron blocks of one
  layer, and Dong et al.'s static-force measurement at initialisation of f = V relu(W x).
* `static_problem`: that setup (or the linear model f = V x) as an operator and a neuron
  partition; `neuron_block_spectra`: eigenvalues of diagonal and singular values of
  off-diagonal neuron blocks of one layer (the distributions Dong et al. compare as C grows).
* `neuron_block_order`, `diagonal_mass_fraction`: for heatmaps of a dense Hessian with its
  block grid, and the share of ‖H‖²_F inside the diagonal blocks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from hessjax.curvature.blocks import Partition, layer_block_diagonal, partition_by_neuron
from hessjax.curvature.losses import MeanLoss, cross_entropy, mse
from hessjax.curvature.operators import hessian_operator
from hessjax.linalg import Operator, eigsh
from hessjax.linalg.blocks import (
    block_eigsh,
    block_frobenius_sq,
    block_ratios,
    block_spectra,
    dense_block_frobenius_sq,
)
from hessjax.models import MLP

Array = jax.Array
LOSSES = {"ce": cross_entropy, "mse": mse}


class LayerwiseSpectrum(NamedTuple):
    """names (b,), sizes (b,) parameters per block, block_top (b,) top eigenvalue of H_ii,
    whole_top: top eigenvalue of H, num_matvecs: products spent (blocks + whole)."""

    names: tuple[str, ...]
    sizes: np.ndarray
    block_top: np.ndarray
    whole_top: float
    num_matvecs: int

    def depth_trend(self) -> dict:
        """How the blocks' top eigenvalues change with depth (blocks in input → output order):
        spearman: rank correlation of block_top with the block index (+1: strictly growing
        with depth; None for fewer than 2 blocks or tied tops); argmax: index of the
        largest; deepest_largest: whether the last (output) block has the largest;
        last_over_first: block_top[-1] / block_top[0]."""
        top = np.asarray(self.block_top, np.float64)
        if top.size == 0:
            raise ValueError("depth_trend needs at least one block")
        rho = None
        if top.size >= 2 and np.unique(top).size == top.size:  # no ties: ranks are argsorts
            rho = float(np.corrcoef(np.arange(top.size), np.argsort(np.argsort(top)))[0, 1])
        argmax = int(np.argmax(top))
        return {
            "spearman": rho,
            "argmax": argmax,
            "deepest_largest": argmax == top.size - 1,
            "last_over_first": float(top[-1] / top[0]) if top[0] != 0 else None,
        }

    def as_rows(self) -> list[dict]:
        """One dict per block and a last row for the whole network (for JSON and tables)."""
        rows = [
            {"block": n, "params": int(s), "top_eigenvalue": float(t)}
            for n, s, t in zip(self.names, self.sizes, self.block_top, strict=True)
        ]
        total = int(np.sum(self.sizes))
        return rows + [
            {"block": "whole network", "params": total, "top_eigenvalue": self.whole_top}
        ]


def layerwise_top_eigenvalues(
    op: Operator, partition: Partition, *, key: Array, tol: float | None = 1e-4
) -> LayerwiseSpectrum:
    """Top eigenvalue of each diagonal block (all blocks in one compiled Lanczos; restricted
    products per block when blocks are whole leaves, as layers are) and of the whole operator."""
    block_key, whole_key = jax.random.split(key)
    try:
        diagonal = layer_block_diagonal(op, partition)
    except ValueError:  # blocks split leaves (neurons): masked full products
        diagonal = None
    blocks = block_eigsh(
        op, partition, 1, key=block_key, tol=tol,
        block_diagonal=diagonal,
    )  # fmt: skip
    whole = eigsh(op, 1, key=whole_key, tol=tol)
    return LayerwiseSpectrum(
        names=partition.names,
        sizes=partition.sizes,
        block_top=np.asarray(blocks.eigenvalues[:, 0], np.float64),
        whole_top=float(whole.eigenvalues[0]),
        num_matvecs=blocks.num_matvecs + whole.num_matvecs,
    )


def block_ratio_matrix(
    op: Operator, partition: Partition, *, num_probes: int | None = None, key: Array | None = None
) -> np.ndarray:
    """(b, b) r_ij = ‖H_ij‖²_F / ‖H_ii‖²_F; exact with num_probes None (n products), else a
    Gaussian-probe estimate (b · num_probes products)."""
    norms = block_frobenius_sq(op, partition, num_probes=num_probes, key=key)
    return np.asarray(block_ratios(norms.sq), np.float64)


def _layer_members(partition: Partition, layer: str) -> np.ndarray:
    """Indices of the neuron blocks 'layer/<unit>' of `layer` (at least two)."""
    members = np.array([i for i, n in enumerate(partition.names) if n.startswith(layer + "/")])
    if members.size < 2:
        raise ValueError(f"layer {layer!r} needs at least two neuron blocks, got {members.size}")
    return members


def neuron_block_ratio(
    op: Operator,
    partition: Partition,
    layer: str,
    probed: int,
    *,
    key: Array,
    block_size: int | None = None,
) -> float:
    """Mean of r_ji = ‖H_ji‖²_F / ‖H_jj‖²_F over `probed` random neuron blocks j of `layer` and
    every other neuron block i of the same layer (exact norms: n_j products per probed j,
    `block_size` at a time)."""
    members = _layer_members(partition, layer)
    chosen = np.sort(jax.random.choice(key, members, (min(probed, members.size),), replace=False))
    norms = block_frobenius_sq(op, partition, columns=chosen, block_size=block_size)
    r = np.asarray(block_ratios(norms.sq, norms.columns), np.float64)  # (c, b)
    others = np.isin(np.arange(partition.num_blocks), members)[None, :] & (
        np.arange(partition.num_blocks)[None, :] != chosen[:, None]
    )
    return float(r[others].mean())


class NeuronSpectra(NamedTuple):
    """Pooled spectra of `probed` neuron blocks of one layer: diagonal (probed · n_j,)
    eigenvalues of the H_jj, off_diagonal (probed · n_j,) singular values of H_ij (i a random
    other block of the layer for each j), pairs (2 · probed, 2) the (i, j) used (diagonal
    pairs first), num_matvecs: products spent."""

    diagonal: np.ndarray
    off_diagonal: np.ndarray
    pairs: np.ndarray
    num_matvecs: int


def neuron_block_spectra(
    op: Operator,
    partition: Partition,
    layer: str,
    probed: int,
    *,
    key: Array,
    block_size: int | None = None,
) -> NeuronSpectra:
    """Eigenvalues of `probed` random diagonal neuron blocks H_jj of `layer` and singular values
    of one off-diagonal block H_ij of the same layer per j (exact, `linalg.block_spectra`:
    n_j products per probed j; the full Hessian is never formed)."""
    members = _layer_members(partition, layer)
    pick_key, other_key = jax.random.split(key)
    chosen = np.asarray(
        jax.random.choice(pick_key, members, (min(probed, members.size),), replace=False)
    )
    # for each j, a uniformly random other member: shift by 1 .. len - 1 positions
    where = np.searchsorted(members, chosen)
    shift = np.asarray(jax.random.randint(other_key, chosen.shape, 1, members.size))
    others = members[(where + shift) % members.size]
    pairs = np.concatenate([np.stack([chosen, chosen], 1), np.stack([others, chosen], 1)])
    spectra = block_spectra(op, partition, pairs, block_size=block_size)
    k = chosen.size
    return NeuronSpectra(
        diagonal=np.concatenate(spectra.values[:k]),
        off_diagonal=np.concatenate(spectra.values[k:]),
        pairs=spectra.pairs,
        num_matvecs=spectra.num_matvecs,
    )


MODEL_KINDS = ("linear", "nn")
"""Dong et al.'s static models: f = V x (linear) and f = V relu(W x) (nn)."""
MODEL_LAYERS = {"linear": {"output": "Dense_0"}, "nn": {"hidden": "Dense_0", "output": "Dense_1"}}
"""The neuron-block layers of each static model: role -> Linen module name."""


class StaticProblem(NamedTuple):
    """Dong et al.'s setup at initialisation: the model, its params, the mean loss, the data
    ((1, N, d) Gaussian inputs, (1, N) uniform labels: one microbatch), the Hessian operator and
    its neuron partition (`partition_by_neuron`)."""

    model: MLP
    params: dict
    loss_fn: MeanLoss
    data: tuple[Array, Array]
    op: Operator
    partition: Partition


def static_model(kind: str, num_classes: int, width: int, param_init: str = "lecun") -> MLP:
    """f = V x ('linear', V: C × d) or f = V relu(W x) ('nn', W: width × d), no biases."""
    if kind == "linear":
        return MLP((num_classes,), use_bias=False, param_init=param_init)
    if kind == "nn":
        return MLP((width, num_classes), act="relu", use_bias=False, param_init=param_init)
    raise ValueError(f"model must be one of {MODEL_KINDS}, got {kind!r}")


def static_problem(
    num_classes: int,
    loss: str,
    *,
    input_dim: int,
    width: int,
    num_samples: int,
    key: Array,
    model: str = "nn",
    param_init: str = "lecun",
    microbatch_size: int | None = None,
) -> tuple[StaticProblem, Array]:
    """(problem, probe_key): `static_model` at initialisation (param_init 'lecun' or
    'fan_in_uniform', PyTorch's default as in the authors' code) on x ~ N(0, I_d) with uniform
    random labels, for loss 'ce' or 'mse'; probe_key is left for choosing probed blocks.

    problem.data is (x (m, b, d), y (m, b)): one microbatch of all num_samples (m = 1) by
    default, or m = num_samples / microbatch_size of them (the same samples; products then
    hold only b × num_classes logits at a time, which bounds memory at large C)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    mb = num_samples if microbatch_size is None else microbatch_size
    if not (isinstance(mb, int) and mb > 0 and num_samples % mb == 0):
        raise ValueError(
            f"microbatch_size must be a positive divisor of num_samples {num_samples}, "
            f"got {microbatch_size!r}"
        )
    net = static_model(model, num_classes, width, param_init)
    init_key, x_key, y_key, probe_key = jax.random.split(key, 4)
    m = num_samples // mb
    x = jax.random.normal(x_key, (1, num_samples, input_dim)).reshape(m, mb, input_dim)
    y = jax.random.randint(y_key, (1, num_samples), 0, num_classes).reshape(m, mb)
    params = net.init(init_key, x[0])
    params = jax.tree_util.tree_map(lambda p: p.astype(x.dtype), params)  # float64 under x64
    loss_fn = MeanLoss(net.apply, LOSSES[loss])
    op = hessian_operator(loss_fn, params, (x, y))
    problem = StaticProblem(net, params, loss_fn, (x, y), op, partition_by_neuron(op.layout))
    return problem, probe_key


def static_force_ratios(
    num_classes: int,
    loss: str,
    *,
    input_dim: int,
    width: int,
    num_samples: int,
    key: Array,
    probed: int = 4,
    block_size: int | None = None,
    param_init: str = "lecun",
    microbatch_size: int | None = None,
) -> dict[str, float]:
    """Dong et al.'s static force: at initialisation (`static_problem`) of f = V relu(W x) (no bias)
    on Gaussian inputs x ~ N(0, I) with uniform random labels, the mean neuron-block ratio of
    the output layer (blocks v_c, one per class) and of the hidden layer (blocks w_i), for
    loss 'ce' (cross-entropy) or 'mse' (½‖f - onehot(y)‖²). Matrix-free: probed · (d + width)
    Hessian-vector products, `block_size` at a time, over the samples in microbatches of
    `microbatch_size` (both bound memory at large C: a product holds about
    block_size · microbatch_size · C logits and their derivatives)."""
    problem, probe_key = static_problem(
        num_classes, loss, input_dim=input_dim, width=width, num_samples=num_samples, key=key,
        param_init=param_init, microbatch_size=microbatch_size,
    )  # fmt: skip
    hidden_key, output_key = jax.random.split(probe_key)
    ratio = functools.partial(
        neuron_block_ratio, problem.op, problem.partition, probed=probed, block_size=block_size
    )
    return {
        "hidden": ratio("Dense_0", key=hidden_key),
        "output": ratio("Dense_1", key=output_key),
    }


def neuron_block_order(partition: Partition) -> tuple[np.ndarray, np.ndarray]:
    """(order (n,), bounds (b + 1,)): the flat indices sorted by block (stable), so that
    `H[order][:, order]` has every block contiguous (neuron blocks of a Dense kernel are
    strided in the flat vector), and the block boundaries in that order."""
    order = np.argsort(partition.block_ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(partition.sizes)])
    return order, bounds


def diagonal_mass_fraction(matrix, partition: Partition) -> float:
    """Σ_i ‖H_ii‖²_F / ‖H‖²_F of a dense (n, n) matrix: 1 for a block-diagonal matrix."""
    sq = np.asarray(dense_block_frobenius_sq(matrix, partition), np.float64)
    return float(np.trace(sq) / sq.sum())


def fit_loglog_slope(x, y) -> tuple[float, float]:
    """Least-squares line log y = slope · log x + intercept; returns (slope, intercept)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("fit_loglog_slope needs >= 2 pairs of positive numbers")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


__all__ = [
    "MODEL_KINDS",
    "MODEL_LAYERS",
    "LayerwiseSpectrum",
    "NeuronSpectra",
    "StaticProblem",
    "block_ratio_matrix",
    "diagonal_mass_fraction",
    "fit_loglog_slope",
    "layerwise_top_eigenvalues",
    "neuron_block_order",
    "neuron_block_ratio",
    "neuron_block_spectra",
    "static_force_ratios",
    "static_model",
    "static_problem",
]
