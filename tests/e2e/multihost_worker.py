"""One process of the multi-process checks of tests/e2e/test_multihost.py (`jax.distributed` on
local CPU processes):

  python tests/e2e/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID MESH [CHECKPOINT PHASE]

Joins the job (gloo CPU collectives), loads only its own rows of the Hessian batch
(`distributed.process_rows` + `shard_local_microbatches`, i.e.
`jax.make_array_from_process_local_data`), places the params FSDP-style on the global mesh,
computes the top-k Hessian eigenvalues together with the other processes, and prints one JSON
line (eigenvalues, hutchpp trace, its process index, devices, the rows it loaded).
NUM_PROCESSES = 1 runs the same problem in one process without `jax.distributed`.

With CHECKPOINT and PHASE (`resumed`): PHASE "save" takes STEPS gradient-descent steps on the
sharded params and writes them with `experiments.common.save_checkpoint` (gathered; process 0
writes); "resume" restores them into sharded params (`load_checkpoint`, re-placed), checks
the shardings, takes STEPS more and reports the top eigenvalues there; "whole" takes 2 STEPS
in one go (the answer the two phases must give).
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.pop("JAX_ENABLE_X64", None)

import json  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def problem():
    """16-32-4 tanh MLP (n = 676) on 256 Gaussian-mixture samples, 2 microbatches of 128."""
    from hessjax.curvature import MeanLoss, cross_entropy
    from hessjax.data import gaussian_mixture

    ds = gaussian_mixture(num_samples=320, dim=16, num_classes=4)
    x = np.asarray(ds.x_train[:256], np.float32).reshape(2, 128, 16)
    y = np.asarray(ds.y_train[:256]).reshape(2, 128)
    model = nn.Sequential([nn.Dense(32), jnp.tanh, nn.Dense(4)])
    params = model.init(jax.random.key(0), jnp.asarray(x[0]))
    return MeanLoss(model.apply, cross_entropy), params, (x, y)


def compute(spec: str) -> dict:
    """Top-5 eigenvalues and a Hutch++ trace on the mesh `spec` over every process's devices,
    each process loading only its own rows of the batch."""
    from hessjax import distributed
    from hessjax.curvature import hessian_operator
    from hessjax.linalg import eigsh, hutchpp

    loss_fn, params, (x, y) = problem()
    mesh = distributed.parse_mesh(spec)
    rows = distributed.process_rows(mesh, x.shape[1])
    local = (x[:, rows], y[:, rows])  # this process's rows only
    data = distributed.shard_local_microbatches(local, mesh)
    params = distributed.shard_params(params, mesh)
    op = distributed.shard_operator(hessian_operator(loss_fn, params, data), mesh)
    top = eigsh(op, 5, key=jax.random.key(1), tol=1e-6)
    trace = hutchpp(op, 30, key=jax.random.key(2))
    host = distributed.to_host(top)
    out = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "rows": [rows.start, rows.stop],
        "n": op.size,
        "eigenvalues": np.asarray(host.eigenvalues).tolist(),
        "eigenvectors_shape": list(np.shape(host.eigenvectors)),
        "trace": float(distributed.to_host(trace.estimate)),
    }
    return out


STEPS = 3


def resumed(spec: str, path: str, phase: str) -> dict:
    """GD on the placed problem of `compute`, split at a checkpoint (see the module doc)."""
    from experiments import common
    from hessjax import distributed
    from hessjax.curvature import hessian_operator
    from hessjax.linalg import eigsh

    loss_fn, params, (x, y) = problem()
    mesh = distributed.parse_mesh(spec)
    rows = distributed.process_rows(mesh, x.shape[1])
    data = distributed.shard_local_microbatches((x[:, rows], y[:, rows]), mesh)
    params = distributed.shard_params(params, mesh)
    descend = jax.jit(
        lambda p, d, n: jax.lax.fori_loop(
            0, n, lambda _, p: jax.tree_util.tree_map(
                lambda w, g: w - 0.5 * g, p, jax.grad(loss_fn)(p, (d[0][0], d[1][0]))
            ), p,
        ),
        static_argnums=2,
    )  # fmt: skip
    fingerprint = {"problem": "multihost_worker", "steps": STEPS}
    if phase == "save":
        params = descend(params, data, STEPS)
        common.save_checkpoint(path, fingerprint, {"params": params}, {"steps": STEPS})
        return {"process": jax.process_index()}
    if phase == "resume":
        target = {"params": params}  # the initial params: their placement is what counts
        state, meta = common.load_checkpoint(path, fingerprint, target)
        shardings = jax.tree_util.tree_map(lambda a: a.sharding, (state, target))
        assert shardings[0] == shardings[1], shardings
        params = descend(state["params"], data, STEPS)
    else:
        params = descend(params, data, 2 * STEPS)
    op = distributed.shard_operator(hessian_operator(loss_fn, params, data), mesh)
    top = eigsh(op, 5, key=jax.random.key(1), tol=1e-6)
    return {
        "process": jax.process_index(),
        "eigenvalues": np.asarray(distributed.to_host(top.eigenvalues)).tolist(),
        "params_sum": float(sum(np.sum(v) for v in jax.tree_util.tree_leaves(
            distributed.to_host(params)))),
    }  # fmt: skip


def main(port: str, num_processes: str, process_id: str, spec: str, *checkpoint: str) -> None:
    num, pid = int(num_processes), int(process_id)
    if num > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=num, process_id=pid)
    out = resumed(spec, *checkpoint) if checkpoint else compute(spec)
    print(json.dumps(out), flush=True)
    if num > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
