r"""Main job: train a small network, then compute its Hessian spectrum.

  python -m experiments.spectrum --workdir=runs/spectrum
  python -m experiments.spectrum --workdir=runs/mnist \
      --config.data.name=mnist --config.data.dir=../shared/data/mnist
  python -m experiments.spectrum --config.mesh=data:4 --config.hessian.microbatch_size=200
  python -m experiments.spectrum --coordinator_address=HOST:PORT --num_processes=2 \
      --process_id=0 --config.mesh=data:8   # and --process_id=1 on the other host

With --config.mesh the trained params and the Hessian data are placed on the mesh
(`distributed.placed_operator`): every Hessian product, Lanczos basis and probe is split over the
devices. Under several processes (`jax.distributed`, see BUILD.md) every process trains the
same small network (replicated), transfers only its rows of the Hessian batch, and process 0
alone writes the outputs.

Writes into the workdir: eigenvectors.npy ((n, k) flat, params leaf order), spectrum.png and,
last, results.json (eigenvalues, residuals, per-layer top eigenvalues, trace, density,
timings); the previous run's copies are deleted first. params_spectrum.ckpt (the trained
params) is reused when the same data/model/train config is run again.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature, distributed, linalg, training

OUTPUTS = ("results.json", "eigenvectors.npy", "spectrum.png")
RULES = common.SHARED_RULES | {
    "hessian.num_samples": common.POSITIVE_INT,
    "hessian.microbatch_size": common.POSITIVE_INT,
    "hessian.top_k": common.POSITIVE_INT,
    "hessian.num_steps": common.NONNEGATIVE_INT,
    "hessian.tol": common.POSITIVE,
    "hessian.per_layer": common.BOOL,
    "hessian.trace_matvecs": common.Rule(
        lambda v: common.POSITIVE_INT.test(v) and v % 3 == 0, "a positive multiple of 3"
    ),
    "hessian.slq_probes": common.POSITIVE_INT,
    "hessian.slq_steps": common.POSITIVE_INT,
    "hessian.sigma_ratio": common.POSITIVE,
}
RELATIONS = (
    common.at_most_train_samples("hessian.num_samples"),
    common.at_most("hessian.microbatch_size", "hessian.num_samples"),
    common.Relation(
        "hessian.num_steps",
        lambda c: c.hessian.num_steps == 0 or c.hessian.num_steps >= c.hessian.top_k,
        "0 (default) or at least hessian.top_k",
    ),
    common.at_most_train_samples("train.batch_size"),
    common.divides_mesh("hessian.microbatch_size"),
)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    h = config.hessian
    key = jax.random.key(config.seed)
    k_init, k_train, k_eig, k_trace, k_slq = jax.random.split(key, 5)
    start = time.perf_counter()

    ds = common.load_data(config.data)
    model, params, loss_fn = common.init_classifier(config.model, ds, k_init)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    distributed.check_mesh_fits(config.mesh, params, h.microbatch_size)

    fingerprint = {k: config[k].to_dict() for k in ("data", "model", "train")}
    (params, history), train_seconds = common.timed(
        "training", common.train_or_resume, workdir, "spectrum",
        fingerprint | {"seed": config.seed}, loss_fn, params, ds.x_train, ds.y_train,
        config.train, k_train,
    )  # fmt: skip
    test_acc = float(training.accuracy(model.apply, params, ds.x_test, ds.y_test))
    logging.info("test accuracy %.4f", test_acc)

    data = common.hessian_data(ds.x_train, ds.y_train, h.num_samples, h.microbatch_size)
    op = distributed.placed_operator(curvature.hessian_operator, config.mesh, loss_fn, params, data)
    num_steps = h.num_steps or linalg.default_num_steps(h.top_k, op.size)
    logging.info(
        "Hessian over %d samples (%d microbatches): top-%d eigenpairs, <= %d Lanczos steps",
        h.num_samples, data[1].shape[0], h.top_k, num_steps,
    )  # fmt: skip
    top, eig_seconds = common.timed(
        "top eigenpairs", linalg.eigsh, op, h.top_k, key=k_eig, num_steps=num_steps, tol=h.tol
    )
    logging.info("top eigenvalues %s (%d HVPs)", np.round(top.eigenvalues, 4), top.num_matvecs)
    vectors = distributed.to_host(top.eigenvectors)  # gathered when split over processes
    common.write_atomic(os.path.join(workdir, "eigenvectors.npy"), lambda f: np.save(f, vectors))

    layer_top: dict[str, float] = {}
    if h.per_layer:  # all layer blocks H_ll in one compiled Lanczos, restricted products
        part = curvature.partition_by_layer(op.layout)
        blocks, _ = common.timed(
            "per-layer top eigenvalues",
            linalg.block_eigsh,
            op,
            part,
            1,
            key=k_eig,
            tol=h.tol,
            block_diagonal=curvature.layer_block_diagonal(op, part),
        )
        for name, size, value in zip(part.names, part.sizes, blocks.eigenvalues[:, 0], strict=True):
            layer_top[name] = float(value)
            logging.info("layer %s (%d params): top eigenvalue %.4f", name, size, value)

    trace, trace_seconds = common.timed(
        "trace (Hutch++)", linalg.hutchpp, op, h.trace_matvecs, key=k_trace
    )
    logging.info("trace %.4f ± %.4f", trace.estimate, trace.stderr)

    quad, slq_seconds = common.timed(
        "spectral density (SLQ)",
        linalg.slq,
        op,
        num_probes=h.slq_probes,
        num_steps=min(h.slq_steps, op.size),
        key=k_slq,
    )
    grid, density = linalg.density_on_grid(quad, sigma_ratio=h.sigma_ratio)

    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "num_params": int(num_params),
        "train_history": history,
        "test_accuracy": test_acc,
        "hessian_samples": int(h.num_samples),
        "top_eigenvalues": np.asarray(top.eigenvalues).tolist(),
        "top_residuals": np.asarray(top.residuals).tolist(),
        "top_converged": np.asarray(top.converged).tolist(),
        "num_hvps": int(top.num_matvecs),
        "layer_top_eigenvalue": layer_top,
        "trace": {"estimate": float(trace.estimate), "stderr": float(trace.stderr)},
        "slq_moments": {"mean": float(quad.moment(1)), "second": float(quad.moment(2))},
        "density": {"grid": np.asarray(grid).tolist(), "values": np.asarray(density).tolist()},
        "seconds": {
            "train": train_seconds,
            "top_eigenpairs": eig_seconds,
            "trace": trace_seconds,
            "slq": slq_seconds,
            "total": time.perf_counter() - start,
        },
    }
    figures.plot_spectrum(
        grid,
        density,
        top.eigenvalues,
        layer_top,
        os.path.join(workdir, "spectrum.png"),
        title=f"{ds.name}, {config.model.kind} {tuple(config.model.widths)}, "
        f"{num_params} params, test acc {test_acc:.3f}",
    )
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json, eigenvectors.npy and spectrum.png to %s", workdir)
    return results


if __name__ == "__main__":
    common.run_binary("spectrum", run)
