r"""Edge of stability (Cohen, Kaur, Li, Kolter, Talwalkar, ICLR 2021), watched by the monitor.

Full-batch gradient descent (no momentum) on a fixed training subset, a tanh MLP, MSE (as
Cohen et al.) or cross-entropy, for several step sizes η. The curvature monitor
(`hessjax.monitor`) measures the sharpness (top Hessian eigenvalue of the full-batch loss)
every `eos.measure_every` steps inside the jitted training loop, warm-started from the
previous top eigenvector. Expected: the sharpness rises (progressive sharpening) until about
2/η, then hovers there while the loss keeps falling, non-monotonically.

  python -m experiments.edge_of_stability --workdir=runs/edge_of_stability
  python -m experiments.edge_of_stability --config.data.name=mnist --config.data.dir=PATH

Writes into the workdir: edge_of_stability.png (sharpness against step with the 2/η lines;
loss against step) and, last, results.json: `runs`, one per η, each {"learning_rate",
"steps" (measurement steps), "sharpness", "train_loss" (full-batch loss at those steps),
"loss_steps"/"loss_curve" (the loss at every step), "hvps", "two_over_eta",
"initial_sharpness", "final_median_sharpness" (median over the last 20 % of the steps),
"ratio" (that median · η / 2), "at_edge"}, and "all_at_edge". The previous run's copies are
deleted first. Checkpoints eos_lr<i>.ckpt (params, monitor state and loss curve) are written
every `eos.checkpoint_every` steps and reused by a rerun of the same config. A loss that
becomes non-finite stops the run with an error naming η and the step; the monitor's
measurements so far stay in that η's checkpoint and in diverged.json.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature
from hessjax import monitor as hm

OUTPUTS = ("results.json", "edge_of_stability.png", "diverged.json")
LOSSES = {"mse": curvature.mse, "ce": curvature.cross_entropy}
RULES = common.SHARED_RULES | {
    "data.dim": common.POSITIVE_INT,
    "data.num_classes": common.int_at_least(2),
    "eos.num_train": common.int_at_least(10),
    "eos.loss": common.one_of(*LOSSES),
    "eos.learning_rates": common.Rule(
        lambda v: (
            isinstance(v, tuple | list) and len(v) > 0 and all(common.POSITIVE.test(x) for x in v)
        ),
        "a non-empty tuple of step sizes > 0",
    ),
    "eos.steps": common.int_at_least(10),
    "eos.measure_every": common.POSITIVE_INT,
    "eos.checkpoint_every": common.POSITIVE_INT,
    "eos.tol": common.PROBABILITY,
    "eos.low": common.real_in(0.0, 1.0),
    "eos.high": common.real_in(1.0),
}
RELATIONS = (
    common.at_most_train_samples("eos.num_train"),
    common.at_most("eos.measure_every", "eos.steps"),
    common.divides_mesh("eos.num_train"),
)


@functools.partial(jax.jit, static_argnames=("loss_fn", "monitor", "steps"))
def gd_chunk(params, mstate, x, y, learning_rate, *, loss_fn, monitor, steps):
    """`steps` full-batch GD steps θ ← θ − η ∇L(θ) on (x, y), the monitor on the same batch.
    Returns (params, monitor state, losses (steps,) with L(θ_t) of every step)."""

    def step(carry, _):
        params, mstate = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, (x, y))
        updates = jax.tree_util.tree_map(lambda g: -learning_rate * g, grads)
        mstate = monitor.update(mstate, params, (x, y), updates=updates, loss=loss)
        params = jax.tree_util.tree_map(jnp.add, params, updates)
        return (params, mstate), loss

    (params, mstate), losses = jax.lax.scan(step, (params, mstate), None, length=steps)
    return params, mstate, losses


def check_step_sizes(learning_rates) -> tuple[float, ...]:
    """The step sizes as floats; ValueError naming the first one that is not a finite η > 0."""
    out = []
    for lr in learning_rates:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise ValueError(f"step size must be a finite number > 0, got {lr!r}")
        out.append(float(lr))
    return tuple(out)


def train_one(config, workdir, tag, lr, params, x, y, loss_fn) -> dict:
    """Full-batch GD at step size lr with the monitor, resuming from <workdir>/<tag>.ckpt."""
    e = config.eos
    lr = check_step_sizes([lr])[0]
    monitor = hm.curvature_monitor(
        loss_fn, every=e.measure_every, k=1, capacity=e.steps // e.measure_every + 1,
        tol=e.tol, seed=config.seed,
    )  # fmt: skip
    mstate = monitor.init(params, (x, y))
    losses = np.zeros(e.steps, np.float32)
    fingerprint = {
        k: config[k].to_dict() for k in ("data", "model")
    } | {"eos": {k: v for k, v in e.to_dict().items() if k not in ("learning_rates",)},
         "lr": lr, "seed": config.seed}  # fmt: skip
    ckpt = os.path.join(workdir, f"{tag}.ckpt")
    target = {"params": params, "monitor": mstate, "losses": losses}
    done = 0
    loaded = common.load_checkpoint(ckpt, fingerprint, target)
    if loaded is not None:
        state, meta = loaded
        params, mstate, losses = state["params"], state["monitor"], np.array(state["losses"])
        done = int(meta["done"])
        logging.info("[η=%g] resumed at step %d from %s", lr, done, ckpt)
    while done < e.steps:
        chunk = min(e.checkpoint_every, e.steps - done)
        params, mstate, chunk_losses = gd_chunk(
            params, mstate, x, y, jnp.float32(lr), loss_fn=loss_fn, monitor=monitor, steps=chunk
        )
        losses[done : done + chunk] = np.asarray(chunk_losses)
        done += chunk
        common.save_checkpoint(
            ckpt, fingerprint, {"params": params, "monitor": mstate, "losses": losses},
            {"done": done},
        )  # fmt: skip
        try:
            hm.check_finite(mstate)
        except hm.MonitorDivergence as err:
            log = hm.read_log(err.state)
            common.write_json(
                os.path.join(workdir, "diverged.json"),
                {"learning_rate": lr, "step": err.step, "message": str(err),
                 "steps": log.steps.tolist(), "sharpness": _floats(log.sharpness),
                 "train_loss": _floats(log.loss)},
            )  # fmt: skip
            raise FloatingPointError(
                f"full-batch GD with step size {lr} diverged: {err} (measurements kept in "
                f"{ckpt} and diverged.json)"
            ) from err
        log = hm.read_log(mstate)
        logging.info(
            "[η=%g] step %d/%d: loss %.5f, sharpness %.3f (2/η = %.3f), %d HVPs",
            lr, done, e.steps, losses[done - 1], log.sharpness[-1], 2 / lr, log.hvps[-1],
        )  # fmt: skip
    log = hm.read_log(mstate)
    steps = log.steps
    last = steps >= int(0.8 * e.steps)
    median = float(np.median(log.sharpness[last]))
    ratio = median * lr / 2
    return {
        "learning_rate": lr,
        "two_over_eta": 2 / lr,
        "steps": steps.tolist(),
        "sharpness": _floats(log.sharpness),
        "train_loss": _floats(log.loss),
        "hvps": log.hvps.tolist(),
        "converged": log.converged[:, 0].tolist(),
        "loss_steps": list(range(e.steps)),
        "loss_curve": _floats(losses),
        "initial_sharpness": float(log.sharpness[0]),
        "final_median_sharpness": median,
        "ratio": ratio,
        "starts_below": bool(log.sharpness[0] < 2 / lr),
        "at_edge": bool(log.sharpness[0] < 2 / lr and e.low <= ratio <= e.high),
    }


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, np.float64)]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    learning_rates = check_step_sizes(config.eos.learning_rates)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    e = config.eos
    ds = common.load_data(config.data)
    x = jnp.asarray(ds.x_train[: e.num_train].reshape(e.num_train, -1))
    y = jnp.asarray(ds.y_train[: e.num_train])
    model = common.build_model(config.model, ds.num_classes)
    params = model.init(jax.random.key(config.seed), x[:1])
    num_params = sum(v.size for v in jax.tree_util.tree_leaves(params))
    common.check_mesh_fits(config.mesh, params, e.num_train)
    params, (x, y) = common.placed_batch(config.mesh, params, (x, y))  # GD and monitor on it
    loss_fn = curvature.MeanLoss(model.apply, LOSSES[e.loss])
    logging.info(
        "full-batch GD on %d samples, %s loss, %d params, step sizes %s",
        e.num_train, e.loss, num_params, learning_rates,
    )  # fmt: skip
    runs = []
    for i, lr in enumerate(learning_rates):
        t0 = time.perf_counter()
        r = train_one(config, workdir, f"eos_lr{i}", lr, params, x, y, loss_fn)
        r["seconds"] = time.perf_counter() - t0
        logging.info(
            "[η=%g] sharpness %.3f -> median %.3f over the last 20%% (2/η = %.3f, ratio %.3f)",
            lr, r["initial_sharpness"], r["final_median_sharpness"], 2 / lr, r["ratio"],
        )  # fmt: skip
        runs.append(r)
    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "num_params": int(num_params),
        "num_train": int(e.num_train),
        "loss": e.loss,
        "criterion": f"sharpness starts below 2/η and its median over the last 20 % of steps "
        f"lies in [{e.low}, {e.high}] · 2/η",
        "runs": runs,
        "all_at_edge": all(r["at_edge"] for r in runs),
        "seconds": time.perf_counter() - start,
    }
    figures.plot_edge_of_stability(
        runs,
        os.path.join(workdir, "edge_of_stability.png"),
        title=f"{ds.name} ({e.num_train} samples), tanh MLP {tuple(config.model.widths)}, "
        f"{e.loss}, full-batch GD",
    )
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and edge_of_stability.png to %s", workdir)
    return results


if __name__ == "__main__":
    common.run_binary("edge_of_stability", run)
