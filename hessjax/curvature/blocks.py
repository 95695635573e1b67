"""Partitions of the (selected) parameters into blocks: by layer, by neuron, or by labels.

They build a `linalg.Partition` (every entry of an operator's flat vector gets a block id) from
the operator's `layout`, so the generic block tools of `hessjax.linalg.blocks` (block
operators, batched block eigenpairs, block Frobenius norms) apply to network parameters.
`layer_block_diagonal` gives the block-diagonal part of a curvature operator with restricted
(cheaper) products when blocks are whole leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from hessjax._arrays import concat
from hessjax.curvature.layout import ParamLayout, PyTree
from hessjax.curvature.operators import CurvatureOperator
from hessjax.linalg.operator import vector_sharding, with_vector_sharding
from hessjax.linalg.partition import Partition

Array = jax.Array


def _selected(layout: ParamLayout) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (p, s) for p, s, on in zip(layout.paths, layout.shapes, layout.selected, strict=True) if on
    ]


def _strip(path: str, skip: Sequence[str]) -> list[str]:
    parts = path.split("/")
    while parts and parts[0] in skip:
        parts = parts[1:]
    return parts


def _from_leaf_labels(layout: ParamLayout, leaf_labels: list[np.ndarray]) -> Partition:
    """Partition from one array of string labels per selected leaf (its shape), names in order
    of first appearance in the flat vector."""
    flat = np.concatenate([np.asarray(x).ravel() for x in leaf_labels])
    names, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return Partition(tuple(str(names[i]) for i in order), rank[inverse].astype(np.int32))


def partition_by_layer(
    layout: ParamLayout, depth: int = 1, skip: Sequence[str] = ("params",)
) -> Partition:
    """One block per module: leaves grouped by the first `depth` path components after the
    leading `skip` components ('params/Dense_0/kernel' -> 'Dense_0' for a Linen model)."""
    labels = []
    for path, shape in _selected(layout):
        name = "/".join(_strip(path, skip)[:depth])
        labels.append(np.full(shape, name, dtype=object))
    return _from_leaf_labels(layout, labels)


def partition_by_neuron(layout: ParamLayout, skip: Sequence[str] = ("params",)) -> Partition:
    """One block per output unit of every dense kernel (Dong et al.'s neuron blocks).

    A Linen `Dense` kernel (in, out): unit j's block is kernel[:, j] (its incoming weights, the
    row w_j of W in z = W x) plus bias[j] when the module has a bias; named 'Dense_0/3'. Leaves
    that are neither a 2-D kernel nor its bias (e.g. conv kernels) form one block per leaf.
    """
    selected = _selected(layout)
    kernels = {"/".join(_strip(p, skip)[:-1]): s for p, s in selected if p.endswith("kernel")}
    labels = []
    for path, shape in selected:
        parts = _strip(path, skip)
        module = "/".join(parts[:-1])
        if parts[-1] == "kernel" and len(shape) == 2:
            units = np.broadcast_to(np.arange(shape[1]), shape)
        elif parts[-1] == "bias" and len(kernels.get(module, ())) == 2 and len(shape) == 1:
            units = np.arange(shape[0])
        else:
            labels.append(np.full(shape, "/".join(parts), dtype=object))
            continue
        labels.append(np.vectorize(lambda u, m=module: f"{m}/{u}", otypes=[object])(units))
    return _from_leaf_labels(layout, labels)


def partition_from_labels(layout: ParamLayout, labels: PyTree) -> Partition:
    """User-supplied blocks: `labels` is a params-shaped pytree whose leaves are label arrays
    (ints or strings, broadcastable to the leaf's shape; a scalar labels the whole leaf).
    Only the selected leaves are used; block names are the labels as strings."""
    leaves = layout.treedef.flatten_up_to(labels)
    out = []
    for leaf, path, shape, on in zip(
        leaves, layout.paths, layout.shapes, layout.selected, strict=True
    ):
        if not on:
            continue
        try:
            arr = np.broadcast_to(np.asarray(leaf), shape)
        except ValueError as err:
            raise ValueError(f"labels of {path!r} do not broadcast to {shape}") from err
        out.append(arr.astype(str).astype(object))
    return _from_leaf_labels(layout, out)


@dataclasses.dataclass(frozen=True)
class _BlockDiagonalProduct:
    """v -> Σ_i P_i H P_i v with one restricted product per block (differentiating only w.r.t.
    the block's leaves). leaves: (start, stop, block) of every selected leaf in flat order;
    static slices, no gathers."""

    parts: tuple
    leaves: tuple[tuple[int, int, int], ...]

    def __call__(self, v: Array, params: PyTree, data: PyTree) -> Array:
        pieces = {}
        for i, part in enumerate(self.parts):
            mine = [(a, e) for a, e, b in self.leaves if b == i]
            out = part(concat([v[a:e] for a, e in mine]), params, data)
            offsets = np.cumsum([0] + [e - a for a, e in mine])
            for (a, _), lo, hi in zip(mine, offsets[:-1], offsets[1:], strict=True):
                pieces[a] = out[lo:hi]
        return concat([pieces[a] for a, _, _ in self.leaves])


def layer_block_diagonal(op: CurvatureOperator, partition: Partition) -> CurvatureOperator:
    """The block-diagonal part D = Σ_i P_i H P_i of a curvature operator for a partition whose
    blocks are unions of whole leaves (e.g. `partition_by_layer`), computed with restricted
    products: block i's product differentiates only w.r.t. block i's leaves, so it is cheaper
    than a masked full product. For `linalg.block_eigsh(..., block_diagonal=D)`. An operator
    with a declared vector layout (`linalg.with_vector_sharding`, e.g. from
    `distributed.shard_operator`) gives a D with the same layout."""
    if not isinstance(op, CurvatureOperator):
        raise ValueError("layer_block_diagonal needs an in-memory CurvatureOperator (data=)")
    sharding = vector_sharding(op)
    if sharding is not None:
        inner = layer_block_diagonal(with_vector_sharding(op, None), partition)
        return with_vector_sharding(inner, sharding)
    layout = op.layout
    shapes = zip(layout.shapes, layout.selected, strict=True)
    sizes = [int(np.prod(s)) if on else 0 for s, on in shapes]
    starts = np.cumsum([0] + sizes[:-1])
    leaf_block = []
    for path, start, size in zip(layout.paths, starts, sizes, strict=True):
        ids = np.unique(partition.block_ids[start : start + size])
        if ids.size > 1:
            raise ValueError(
                f"leaf {path!r} is split over blocks {ids.tolist()}: blocks must be unions of "
                "whole leaves (use linalg.block_diagonal_operator)"
            )
        leaf_block.append(int(ids[0]) if ids.size else -1)
    parts = []
    for i in range(partition.num_blocks):
        selected = tuple(b == i for b in leaf_block)
        block_layout = dataclasses.replace(layout, selected=selected)
        parts.append(dataclasses.replace(op.product, layout=block_layout))
    leaves = tuple(
        (int(a), int(a + n), b) for a, n, b in zip(starts, sizes, leaf_block, strict=True) if n
    )
    product = _BlockDiagonalProduct(tuple(parts), leaves)
    return CurvatureOperator(product, op.args, op.size, op.dtype, layout)
