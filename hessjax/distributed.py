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
    nothing moved); `Placement.operator(op)` shards an operator built on the placed arrays;
    `placed_operator(make_operator, spec, loss_fn, params, data)` does both in one call,
    `placed_batch` places one (b, ...) batch, `check_mesh_fits` rejects a mesh the batch or
    the params cannot split over before any work, and `host_orthonormal` brings solver
    eigenvectors to the host as float64, re-orthonormalised.

n that does not split evenly: arrays passed between jitted calls cannot be split unevenly,
so vectors outside the solvers stay whole (`linalg.operator.place_vectors` leaves them), while
inside every solver's jit they are constrained to the split and XLA pads the last shard; the
(m, n) basis inside the solver is split, the (n, k) eigenvectors it returns are whole.

Tested by tests/e2e/test_sharded.py, a subprocess on 8 virtual CPU devices
(`--xla_force_host_platform_device_count=8`) with "fsdp:8" and "fsdp:2,data:4" meshes:
eigsh, thick-restart eigsh and sketch_eigh eigenvalues, hutchpp traces and SLQ moments equal
the single-device ones to float32 round-off (≤ 3e-7 relative), the Lanczos basis comes back
(m, n / 8) per device, eigenvectors (n / 8, k), and the compiled Lanczos and thick-restart
HLO gathers params only, never a basis. tests/library/test_distributed.py checks data-parallel
products and eigsh, and the placement helpers, on 4 devices.

Several processes (`jax.distributed`, JAX's multi-controller runtime): call
`jax.distributed.initialize(...)` first; meshes then span `jax.devices()` of all processes.
`replicate`, `shard_params` and `shard_vector` take the same value on every process and
build only the local shards; `shard_microbatches` takes the whole data on every process and
transfers only this process's rows (`process_rows`), `shard_local_microbatches` takes only
those rows (`jax.make_array_from_process_local_data`); `to_host` gathers results split over
processes and `place_like` puts host values (a restored checkpoint) back where a target tree
lives. Tested by tests/e2e/test_multihost.py: 2 CPU processes of 2 devices, gloo collectives,
eigsh and hutchpp equal one process of 4 devices.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hessjax.linalg.operator import Operator, with_vector_sharding

PyTree = Any
FSDP = "fsdp"
DATA = "data"
AXES = (FSDP, DATA)  # the axes `place` knows: params split over "fsdp", data over all


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


def parse_mesh_spec(
    spec: str | None,
    num_devices: int,
    *,
    axis_names: tuple[str, ...] | None = None,
    exact: bool = False,
) -> dict[str, int] | None:
    """Axis sizes {name: size} of a mesh string (see `parse_mesh`) for `num_devices` devices,
    without touching any device (config validation runs it before any work). None or ""
    gives None. Raises ValueError saying what is wrong: bad syntax, a repeated axis, an axis
    not in `axis_names` (when given), more than one size -1 or omitted, sizes that need more
    devices than `num_devices` (or, if `exact`, that do not multiply to it)."""
    if spec is None or not spec.strip():
        return None
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, _, size = part.strip().partition(":")
        name = name.strip()
        if not name or name in sizes:
            raise ValueError(f"bad mesh spec {spec!r}: empty or repeated axis name")
        if axis_names is not None and name not in axis_names:
            msg = f"bad mesh spec {spec!r}: axis {name!r} is not one of {', '.join(axis_names)}"
            raise ValueError(msg)
        try:
            sizes[name] = int(size) if size.strip() else -1
        except ValueError:
            msg = f"bad mesh spec {spec!r}: size of {name!r} is not an integer"
            raise ValueError(msg) from None
        if sizes[name] < 1 and sizes[name] != -1:
            raise ValueError(f"bad mesh spec {spec!r}: size of {name!r} must be >= 1")
    free = [n for n, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"bad mesh spec {spec!r}: at most one size may be -1 or omitted")
    if free:
        known = math.prod(s for s in sizes.values() if s != -1)
        if num_devices % known:
            msg = f"mesh {spec!r}: {num_devices} devices, not divisible by {known}"
            raise ValueError(msg)
        sizes[free[0]] = num_devices // known
    total = math.prod(sizes.values())
    if total > num_devices or (exact and total != num_devices):
        raise ValueError(f"mesh {spec!r} needs {total} devices, {num_devices} available")
    return sizes


def parse_mesh(spec: str | None, *, axis_names: tuple[str, ...] | None = None) -> Mesh | None:
    """Mesh from a config string "name:size,name:size", e.g. "data:4", "fsdp:8" or
    "fsdp:2,data:4" (axes in that order); one size may be -1 (or omitted: "data") for all
    remaining devices. None or "" gives None (one device, nothing sharded). The mesh spans
    `jax.devices()`: under several processes (`jax.distributed`) every process's devices."""
    sizes = parse_mesh_spec(spec, len(jax.devices()), axis_names=axis_names)
    return None if sizes is None else _mesh(tuple(sizes.values()), tuple(sizes))


def _axes(mesh: Mesh, axes) -> tuple[str, ...]:
    axes = tuple(mesh.axis_names) if axes is None else (axes,) if isinstance(axes, str) else axes
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {missing}")
    return tuple(axes)


def _entry(axes: tuple[str, ...]):
    return axes[0] if len(axes) == 1 else axes


def _put(x, sharding: NamedSharding) -> jax.Array:
    """`jax.device_put(x, sharding)`; when the sharding spans several processes
    (`jax.distributed`), every process holds the same x and builds only the shards on its own
    devices from it (`jax.make_array_from_callback`)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _batch_sharding(mesh: Mesh, axis_name) -> tuple[NamedSharding, int]:
    axes = _axes(mesh, axis_name)
    num = math.prod(mesh.shape[a] for a in axes)
    return NamedSharding(mesh, PartitionSpec(None, _entry(axes))), num


def _check_batch(x, num: int, batch_size: int | None = None) -> None:
    b = np.shape(x)[1] if np.ndim(x) >= 2 else None
    if b is None or (batch_size or b) % num:
        raise ValueError(
            f"data leaves need shape (m, b, ...) with b divisible by {num} devices, "
            f"got {np.shape(x)}" + ("" if batch_size is None else f" (global b = {batch_size})")
        )


def process_rows(mesh: Mesh, batch_size: int, axis_name=None) -> slice:
    """The slice of the batch axis b (of `batch_size` rows, split as `shard_microbatches`
    splits it) that this process's devices hold: under `jax.distributed` each process loads
    only these rows of every (m, b, ...) leaf and passes them to `shard_local_microbatches`.
    One process: slice(0, batch_size)."""
    sharding, num = _batch_sharding(mesh, axis_name)
    if batch_size % num:
        raise ValueError(f"batch size {batch_size} is not divisible by {num} devices")
    index = sharding.addressable_devices_indices_map((1, batch_size))
    rows = sorted({idx[1].indices(batch_size)[:2] for idx in index.values()})
    lo, hi = rows[0][0], rows[-1][1]
    if sum(stop - start for start, stop in rows) != hi - lo:
        raise ValueError(f"this process's devices hold rows {rows} of b: not one contiguous slice")
    return slice(lo, hi)


def shard_local_microbatches(local_data: PyTree, mesh: Mesh, axis_name=None) -> PyTree:
    """Global (m, b, ...) arrays from each process's own rows (m, b_local, ...) of the batch
    axis, the rows `process_rows(mesh, b)` names (`jax.make_array_from_process_local_data`);
    b = b_local · number of processes. One process: the same as `shard_microbatches`."""
    sharding, num = _batch_sharding(mesh, axis_name)
    procs = len({d.process_index for d in mesh.devices.flat})

    def put(x):
        x = np.asarray(x)
        _check_batch(x, 1)
        shape = (x.shape[0], x.shape[1] * procs, *x.shape[2:])
        _check_batch(x, num, shape[1])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree_util.tree_map(put, local_data)


def shard_microbatches(data: PyTree, mesh: Mesh, axis_name: str | tuple[str, ...] | None = None):
    """Place (m, b, ...) leaves with the batch axis b split over `axis_name` (a mesh axis or a
    tuple of them; default: every axis of the mesh). Under several processes every process
    passes the whole data and transfers only its own rows (`process_rows`)."""
    sharding, num = _batch_sharding(mesh, axis_name)

    def put(x):
        _check_batch(x, num)
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        rows = process_rows(mesh, x.shape[1], axis_name)
        local = np.asarray(x[:, rows])
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree_util.tree_map(put, data)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf of `tree` (e.g. params) on all devices of `mesh` (of all processes:
    each process passes the same tree)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)


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
        return _put(x, NamedSharding(mesh, spec))

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
    return _put(x, NamedSharding(mesh, PartitionSpec(entry, *[None] * (x.ndim - 1))))


def to_host(tree: PyTree) -> PyTree:
    """Every array leaf of `tree` as a whole numpy array on every process: a plain copy when
    the process holds all of it (one process, or replicated), else gathered from all processes
    (`multihost_utils.process_allgather`, a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(get, tree)


def place_like(tree: PyTree, target: PyTree) -> PyTree:
    """`tree` (host values of the same structure, e.g. restored from a checkpoint) placed as
    `target` is: every leaf whose `target` leaf is a jax.Array of the same shape gets that
    leaf's sharding (under several processes each process, holding the whole value, builds
    only its own shards); other leaves are returned as they are."""

    def put(x, t):
        if isinstance(t, jax.Array) and np.shape(x) == t.shape:
            return _put(x, t.sharding)
        return x

    return jax.tree_util.tree_map(put, tree, target)


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


def check_mesh_fits(
    mesh: str, params: PyTree, batch_size: int, setting: str = "config.mesh"
) -> None:
    """Before heavy work: raise ValueError naming `setting` when the Hessian batch axis
    (`batch_size` rows per microbatch) does not split over the mesh's devices, or when the
    mesh asks for an FSDP split ("fsdp:f", f > 1) and no param leaf has an axis divisible by
    f (nothing would be split). Leaves left whole beside split ones are logged."""
    sizes = parse_mesh_spec(mesh, jax.device_count())
    if sizes is None:
        return
    num = math.prod(sizes.values())
    if batch_size % num:
        raise ValueError(
            f"{setting} = {mesh!r}: the Hessian batch axis ({batch_size} rows per microbatch) "
            f"does not split over its {num} devices"
        )
    f = sizes.get(FSDP, 1)
    if f == 1:
        return
    leaves = jax.tree_util.tree_leaves_with_path(params)
    whole = [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, x in leaves
        if param_spec(x.shape, f) == jax.sharding.PartitionSpec()
    ]
    if len(whole) == len(leaves):
        shapes = {jax.tree_util.keystr(p, simple=True, separator="/"): x.shape for p, x in leaves}
        raise ValueError(
            f"{setting} = {mesh!r}: no param leaf has an axis divisible by fsdp size {f}, "
            f"nothing can be split: {shapes}"
        )
    if whole:
        logging.getLogger("hessjax").info(
            "mesh %s: param leaves replicated (no axis divisible by %d): %s", mesh, f, whole
        )


def placed_operator(
    make_operator: Any, mesh: str | None, loss_fn: Any, params: PyTree, data: PyTree, **kwargs
) -> Operator:
    """make_operator(loss_fn, params, data, **kwargs) (e.g. `curvature.hessian_operator`,
    kwargs such as select=) over microbatched `data` ((m, b, ...) leaves, every process
    passing the same data) on the mesh of a mesh string (`place`): params split FSDP-style, b
    split over all devices (under several processes each transfers only its own rows), the
    operator's vectors and the solvers' bases split along n. "" or None: the plain
    single-device operator. The one code path of the binaries for a sharded Hessian."""
    placed = place(mesh or None, params, data)
    return placed.operator(make_operator(loss_fn, placed.params, placed.data, **kwargs))


def host_orthonormal(vectors: jax.Array) -> np.ndarray:
    """Solver eigenvectors (n, k), float32 and possibly sharded, as a float64 numpy array on
    every process (`to_host`), re-orthonormalised by QR with the column signs
    kept: float32 Ritz vectors are orthonormal only to round-off (max |VᵀV − I| 6e-7 at
    n = 55,050), above the float64 tolerance of the subspace overlaps. QR keeps the span of
    every leading set of columns (each top-k eigenspace); each column moves by ~1e-7."""
    q, r = np.linalg.qr(np.asarray(to_host(vectors), np.float64))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def placed_batch(mesh: str, params: PyTree, batch: PyTree) -> tuple[PyTree, PyTree]:
    """(params, batch) on the mesh of config.mesh for code that differentiates one (b, ...)
    batch itself (full-batch GD with the curvature monitor inside one jit): params split
    FSDP-style, b over all devices, as `placed_operator` places them; "" leaves both as they
    are. Every process passes the same batch and transfers only its own rows."""
    stacked = jax.tree_util.tree_map(lambda a: a[None], batch)  # (1, b, ...): one microbatch
    placed = place(mesh or None, params, stacked)
    if placed.mesh is None:
        return params, batch
    return placed.params, jax.tree_util.tree_map(lambda a: a[0], placed.data)
