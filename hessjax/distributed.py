"""Placement on a device mesh: params sharded FSDP-style, data along the batch axis, flat
vectors and Krylov bases along n. One code path: the solvers are one `jit` each with the
operator as argument, and GSPMD partitions them from where the inputs live.

Meshes (every axis `AxisType.Auto`: explicit axes raise ShardingTypeError on jitted HVPs):
`data_mesh(d)` (1-D "data"), `fsdp_mesh(d)` (1-D "fsdp"), `model_data_mesh(f, d)` (2-D
("fsdp", "data")), or `parse_mesh("fsdp:2,data:4")` from a config string.

Placement:
  * `shard_params(params, mesh)`: every leaf split along its largest axis divisible by the
    "fsdp" axis size (replicated when none is, or when the mesh has no "fsdp" axis).
  * `shard_microbatches(data, mesh)`: (m, b, ...) leaves with b split over the batch axes (by
    default every axis of the mesh: each device differentiates its own slice of the batch,
    as in FSDP; XLA inserts the reductions).
  * `shard_operator(op, mesh)`: the operator's flat (n,) vectors split along n over every
    device (`vector_sharding(mesh)`); its products, and the start and probe vectors of
    `eigsh` (thick restart included), `lanczos_tridiag`, `slq`, `hutchinson`, `hutchpp` and
    the test matrices' products of `sketch_eigh`, are then constrained to it, so no device
    holds a whole (m, n) basis: each holds (m, n / devices).
  * `place(spec, params, data)`: all of the above from a config-like spec (None: one device,
    nothing moved); `Placement.operator(op)` shards an operator built on the placed arrays.

n that does not split evenly: arrays passed between jitted calls cannot be split unevenly,
so vectors outside the solvers stay whole (`linalg.operator.place_vectors` leaves them), while
inside every solver's jit they are constrained to the split and XLA pads the last shard; the
(m, n) basis inside the solver is split, the (n, k) eigenvectors it returns are whole.

Tested by tests/test_sharded.py, a subprocess on 8 virtual CPU devices
(`--xla_force_host_platform_device_count=8`) with "fsdp:8" and "fsdp:2,data:4" meshes:
eigsh, thick-restart eigsh and sketch_eigh eigenvalues, hutchpp traces and SLQ moments equal
the single-device ones to float32 round-off (≤ 3e-7 relative), the Lanczos basis comes back
(m, n / 8) per device, eigenvectors (n / 8, k), and the compiled Lanczos and thick-restart
HLO gathers params only, never a basis. tests/test_distributed.py checks data-parallel
products and eigsh, and the placement helpers, on 4 devices. Multi-host (untested): call
`jax.distributed.initialize()` first; the meshes span `jax.devices()` of all processes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hessjax.linalg.operator import Operator, with_vector_sharding

PyTree = Any
FSDP = "fsdp"
DATA = "data"


def _mesh(sizes: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    devices = jax.devices()
    total = math.prod(sizes)
    if any(s < 1 for s in sizes) or total > len(devices):
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs {total} devices, "
            f"{len(devices)} available"
        )
    return jax.make_mesh(
        sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices[:total]
    )


def data_mesh(num_devices: int | None = None, axis_name: str = DATA) -> Mesh:
    """1-D mesh over the first `num_devices` devices (all by default), with an Auto axis so
    that jitted products on sharded data need no explicit sharding annotations."""
    devices = jax.devices()
    num = len(devices) if num_devices is None else num_devices
    if not 1 <= num <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return _mesh((num,), (axis_name,))


def fsdp_mesh(num_devices: int | None = None, axis_name: str = FSDP) -> Mesh:
    """1-D FSDP mesh: params, data and vectors all split over the same `num_devices`."""
    return data_mesh(num_devices, axis_name)


def model_data_mesh(num_model: int, num_data: int) -> Mesh:
    """2-D mesh ("fsdp", "data") of num_model · num_data devices: params split over "fsdp",
    data over both axes (by default), vectors over both."""
    return _mesh((num_model, num_data), (FSDP, DATA))


def parse_mesh(spec: str | None) -> Mesh | None:
    """Mesh from a config string "name:size,name:size", e.g. "data:4", "fsdp:8" or
    "fsdp:2,data:4" (axes in that order); one size may be -1 (or omitted: "data") for all
    remaining devices. None or "" gives None (one device, nothing sharded)."""
    if spec is None or not spec.strip():
        return None
    names, sizes = [], []
    for part in spec.split(","):
        name, _, size = part.strip().partition(":")
        if not name or name in names:
            raise ValueError(f"bad mesh spec {spec!r}: empty or repeated axis name")
        try:
            sizes.append(int(size) if size.strip() else -1)
        except ValueError:
            msg = f"bad mesh spec {spec!r}: size of {name!r} is not an integer"
            raise ValueError(msg) from None
        names.append(name)
    if sizes.count(-1) > 1:
        raise ValueError(f"bad mesh spec {spec!r}: at most one size may be -1 or omitted")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(jax.devices()) % known:
            msg = f"mesh {spec!r}: {len(jax.devices())} devices, not divisible by {known}"
            raise ValueError(msg)
        sizes[sizes.index(-1)] = len(jax.devices()) // known
    return _mesh(tuple(sizes), tuple(names))


def _axes(mesh: Mesh, axes) -> tuple[str, ...]:
    axes = tuple(mesh.axis_names) if axes is None else (axes,) if isinstance(axes, str) else axes
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {missing}")
    return tuple(axes)


def _entry(axes: tuple[str, ...]):
    return axes[0] if len(axes) == 1 else axes


def shard_microbatches(data: PyTree, mesh: Mesh, axis_name: str | tuple[str, ...] | None = None):
    """Place (m, b, ...) leaves with the batch axis b split over `axis_name` (a mesh axis or a
    tuple of them; default: every axis of the mesh)."""
    axes = _axes(mesh, axis_name)
    num = math.prod(mesh.shape[a] for a in axes)
    sharding = NamedSharding(mesh, PartitionSpec(None, _entry(axes)))

    def put(x):
        if x.ndim < 2 or x.shape[1] % num:
            raise ValueError(
                f"data leaves need shape (m, b, ...) with b divisible by {num} devices, "
                f"got {x.shape}"
            )
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(put, data)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf of `tree` (e.g. params) on all devices of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def param_spec(shape: tuple[int, ...], num: int, axis_name: str = FSDP) -> PartitionSpec:
    """FSDP spec of one leaf: split its largest axis divisible by `num` (the first such axis
    among equals) over `axis_name`; replicated (PartitionSpec()) when no axis divides."""
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if num > 1 and shape[i] % num == 0:
            return PartitionSpec(*[axis_name if j == i else None for j in range(len(shape))])
    return PartitionSpec()


def shard_params(params: PyTree, mesh: Mesh, axis_name: str = FSDP) -> PyTree:
    """FSDP placement: every leaf split along its largest axis divisible by the size of mesh
    axis `axis_name` and replicated over the other axes; leaves with no such axis (and every
    leaf when the mesh has no `axis_name` axis) are replicated."""
    num = mesh.shape.get(axis_name, 1)

    def put(x):
        spec = param_spec(np.shape(x), num, axis_name)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, params)


def vector_sharding(mesh: Mesh, axis_name: str | tuple[str, ...] | None = None) -> NamedSharding:
    """Layout of flat (n,) vectors: n split over `axis_name` (default every mesh axis, so a
    Krylov basis (m, n) costs m · n / devices per device)."""
    return NamedSharding(mesh, PartitionSpec(_entry(_axes(mesh, axis_name))))


def shard_operator(op: Operator, mesh: Mesh, axis_name=None) -> Operator:
    """`op` with its flat vectors split as `vector_sharding(mesh, axis_name)`: the solvers then
    keep start vectors, probes and bases split along n (see `linalg.with_vector_sharding`)."""
    return with_vector_sharding(op, vector_sharding(mesh, axis_name))


def shard_vector(x: jax.Array, mesh: Mesh, axis_name=None) -> jax.Array:
    """Put x (n, ...) with n split as `vector_sharding` (n must split evenly)."""
    entry = vector_sharding(mesh, axis_name).spec[0]
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(entry, *[None] * (x.ndim - 1))))


class Placement(NamedTuple):
    """mesh: None for one device; params and data placed on it."""

    mesh: Mesh | None
    params: PyTree
    data: PyTree

    def operator(self, op: Operator) -> Operator:
        """`op` (built on these params and data) with its vectors split over the mesh."""
        return op if self.mesh is None else shard_operator(op, self.mesh)


def place(
    spec: str | Mesh | None, params: PyTree, data: PyTree | None = None, *, axis_name: str = FSDP
) -> Placement:
    """Placement from a config value, for the binaries: `spec` a mesh string (see
    `parse_mesh`: "data:4", "fsdp:8", "fsdp:2,data:4"), a Mesh, or None (single device:
    params and data returned as they are). Params are split FSDP-style over `axis_name` (if
    the mesh has it, else replicated), data leaves (m, b, ...) over every mesh axis.

        placed = distributed.place(config.mesh, params, (x, y))
        op = placed.operator(hessian_operator(loss_fn, placed.params, placed.data))
        eigsh(op, k, key=key)  # basis split along n over the mesh
    """
    mesh = parse_mesh(spec) if spec is None or isinstance(spec, str) else spec
    if mesh is None:
        return Placement(None, params, data)
    data = None if data is None else shard_microbatches(data, mesh)
    return Placement(mesh, shard_params(params, mesh, axis_name), data)
