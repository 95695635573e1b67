"""Block structure of a network Hessian (Dong et al. 2025; the layer-wise part of Haink 2023).

* `layerwise_top_eigenvalues`: top eigenvalue of every diagonal block H_ii, all blocks in one
  compiled Lanczos, next to the whole network's.
* `block_ratio_matrix`: r_ij = ‖H_ij‖²_F / ‖H_ii‖²_F over a partition.
* `neuron_block_ratio`, `static_force_ratios`: the mean ratio between neuron blocks of one
  layer, and Dong et al.'s static-force measurement at initialisation of f = V relu(W x).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from hessjax.curvature.blocks import Partition, layer_block_diagonal, partition_by_neuron
from hessjax.curvature.losses import MeanLoss, cross_entropy, mse
from hessjax.curvature.operators import hessian_operator
from hessjax.linalg import Operator, eigsh
from hessjax.linalg.blocks import block_eigsh, block_frobenius_sq, block_ratios
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


def neuron_block_ratio(
    op: Operator, partition: Partition, layer: str, probed: int, *, key: Array
) -> float:
    """Mean of r_ji = ‖H_ji‖²_F / ‖H_jj‖²_F over `probed` random neuron blocks j of `layer` and
    every other neuron block i of the same layer (exact norms: n_j products per probed j)."""
    members = np.array([i for i, n in enumerate(partition.names) if n.startswith(layer + "/")])
    if members.size < 2:
        raise ValueError(f"layer {layer!r} needs at least two neuron blocks, got {members.size}")
    chosen = np.sort(jax.random.choice(key, members, (min(probed, members.size),), replace=False))
    norms = block_frobenius_sq(op, partition, columns=chosen)
    r = np.asarray(block_ratios(norms.sq, norms.columns), np.float64)  # (c, b)
    others = np.isin(np.arange(partition.num_blocks), members)[None, :] & (
        np.arange(partition.num_blocks)[None, :] != chosen[:, None]
    )
    return float(r[others].mean())


def static_force_ratios(
    num_classes: int,
    loss: str,
    *,
    input_dim: int,
    width: int,
    num_samples: int,
    key: Array,
    probed: int = 4,
) -> dict[str, float]:
    """Dong et al.'s static force: at LeCun-normal initialisation of f = V relu(W x) (no bias)
    on Gaussian inputs x ~ N(0, I) with uniform random labels, the mean neuron-block ratio of
    the output layer (blocks v_c, one per class) and of the hidden layer (blocks w_i), for
    loss 'ce' (cross-entropy) or 'mse' (½‖f - onehot(y)‖²)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    init_key, x_key, y_key, probe_key = jax.random.split(key, 4)
    model = MLP((width, num_classes), act="relu", use_bias=False)
    x = jax.random.normal(x_key, (1, num_samples, input_dim))
    y = jax.random.randint(y_key, (1, num_samples), 0, num_classes)
    params = model.init(init_key, x[0])
    op = hessian_operator(MeanLoss(model.apply, LOSSES[loss]), params, (x, y))
    part = partition_by_neuron(op.layout)
    hidden_key, output_key = jax.random.split(probe_key)
    return {
        "hidden": neuron_block_ratio(op, part, "Dense_0", probed, key=hidden_key),
        "output": neuron_block_ratio(op, part, "Dense_1", probed, key=output_key),
    }


def fit_loglog_slope(x, y) -> tuple[float, float]:
    """Least-squares line log y = slope · log x + intercept; returns (slope, intercept)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("fit_loglog_slope needs >= 2 pairs of positive numbers")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


__all__ = [
    "LayerwiseSpectrum",
    "block_ratio_matrix",
    "fit_loglog_slope",
    "layerwise_top_eigenvalues",
    "neuron_block_ratio",
    "static_force_ratios",
]
