"""Data-parallel placement: a 1-D device mesh, microbatched data sharded on the batch axis.

With params replicated and data sharded this way, the jitted curvature products run under
GSPMD: each device differentiates its slice of every microbatch and XLA inserts the reduction
of the mean loss, so results equal the single-device ones to round-off
(tests/test_distributed.py checks products and eigsh on 4 virtual CPU devices).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

PyTree = Any


def data_mesh(num_devices: int | None = None, axis_name: str = "data") -> Mesh:
    """1-D mesh over the first `num_devices` devices (all by default), with an Auto axis so
    that jitted products on sharded data need no explicit sharding annotations."""
    devices = jax.devices()
    num = len(devices) if num_devices is None else num_devices
    if not 1 <= num <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return jax.make_mesh((num,), (axis_name,), axis_types=(AxisType.Auto,), devices=devices[:num])


def shard_microbatches(data: PyTree, mesh: Mesh, axis_name: str = "data") -> PyTree:
    """Place (m, b, ...) leaves with the batch axis b split over `axis_name`."""
    num = mesh.shape[axis_name]

    def put(x):
        if x.ndim < 2 or x.shape[1] % num:
            raise ValueError(
                f"data leaves need shape (m, b, ...) with b divisible by {num} devices, "
                f"got {x.shape}"
            )
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, axis_name)))

    return jax.tree_util.tree_map(put, data)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf of `tree` (e.g. params) on all devices of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
