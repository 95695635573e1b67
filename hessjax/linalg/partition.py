"""Partitions of the indices of a flat vector into named, disjoint, non-empty blocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """names: (b,) block names; block_ids: (n,) int32 block of every flat index.

    Any pattern is allowed (contiguous layers, strided neurons, user labels); every block must
    hold at least one index. Build one from a network's parameters with the partitions of
    `hessjax.curvature` (by layer, by neuron, by labels) or directly with `from_ids`.
    """

    names: tuple[str, ...]
    block_ids: np.ndarray

    def __post_init__(self):
        ids = np.asarray(self.block_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"block_ids must be a non-empty 1-D integer array, got shape {ids.shape} "
                f"and dtype {ids.dtype}"
            )
        b = len(self.names)
        if b == 0:
            raise ValueError("a partition needs at least one block")
        if ids.min() < 0 or ids.max() >= b:
            raise ValueError(f"block_ids must lie in [0, {b}), got [{ids.min()}, {ids.max()}]")
        empty = np.flatnonzero(np.bincount(ids, minlength=b) == 0)
        if empty.size:
            raise ValueError(f"blocks {[self.names[i] for i in empty]} have no index")
        object.__setattr__(self, "names", tuple(str(x) for x in self.names))
        object.__setattr__(self, "block_ids", ids.astype(np.int32))

    @classmethod
    def from_ids(cls, block_ids, names: Sequence[str] | None = None) -> Partition:
        """Partition from an (n,) integer array with blocks 0..b-1 (b = max + 1, or
        len(names)); blocks are named '0', '1', ... unless `names` are given."""
        ids = np.asarray(block_ids)
        if names is None:
            if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"block_ids must be a non-empty integer array, got {ids!r}")
            names = [str(i) for i in range(int(ids.max()) + 1)]
        return cls(tuple(names), ids)

    @property
    def size(self) -> int:
        """n, the length of the partitioned vector."""
        return int(self.block_ids.size)

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """(b,) number of indices in each block."""
        return np.bincount(self.block_ids, minlength=self.num_blocks)

    def index(self, name: str) -> int:
        """Position of the block called `name`."""
        if name not in self.names:
            raise ValueError(f"no block named {name!r}; blocks are {list(self.names)}")
        return self.names.index(name)

    def indices(self, i: int) -> np.ndarray:
        """(n_i,) int32 flat positions of block i, increasing."""
        if not isinstance(i, int | np.integer) or not 0 <= i < self.num_blocks:
            raise ValueError(f"block index {i!r} out of range [0, {self.num_blocks})")
        return np.flatnonzero(self.block_ids == i).astype(np.int32)

    def check_size(self, n: int) -> None:
        """Raise unless the partition covers exactly n indices."""
        if self.size != n:
            raise ValueError(f"the partition covers {self.size} indices, the operator has {n}")


def as_partition(partition) -> Partition:
    """Check that `partition` is a `Partition` (with a hint for the old (ids, b) spelling)."""
    if not isinstance(partition, Partition):
        raise TypeError(
            f"expected a Partition, got {type(partition).__name__}; wrap block ids with "
            "linalg.Partition.from_ids(block_ids)"
        )
    return partition
