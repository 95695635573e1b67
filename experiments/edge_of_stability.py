r"""Edge of stability (Cohen et al., ICLR 2021; and for Adam, Cohen et al. 2022), watched by
the monitor.

Full-batch gradient descent (no momentum) on a fixed training subset, a tanh MLP, MSE (as
Cohen et al.) or cross-entropy, for several step sizes η. The curvature monitor
(`hessjax.monitor`) measures the sharpness (top Hessian eigenvalue of the full-batch loss)
every `eos.measure_every` steps inside the jitted training loop, warm-started from the
previous top eigenvector. Expected: the sharpness rises (progressive sharpening) until about
2/η, then hovers there while the loss keeps falling, non-monotonically.

  python -m experiments.edge_of_stability --workdir=runs/edge_of_stability
  python -m experiments.edge_of_stability --config.data.name=mnist --config.data.dir=PATH
  python -m experiments.edge_of_stability --config.eos.optimizer=adam   # full-batch Adam

Adam (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"): full-batch
Adam (`eos.adam`: β₁, β₂, ε and its own step sizes) with a second, preconditioned monitor
measuring λ_max(P⁻¹H), P = √v̂ + ε of the update just taken (`monitor.adam_preconditioner`).
Expected: it rises to (2 + 2β₁)/((1 − β₁)η) = 38/η and hovers there, while the raw sharpness
does not settle at any η-dependent value. The edge criterion then uses the preconditioned
sharpness and `eos.adam.low` / `eos.adam.high`.

Writes into the workdir: edge_of_stability.png (sharpness against step with the 2/η lines;
loss against step) and, last, results.json: `runs`, one per η, each {"learning_rate",
"optimizer", "threshold" (2/η for GD, 38/η for Adam with β₁ = 0.9), "steps" (measurement
steps), "sharpness" (raw), "preconditioned_sharpness" (Adam; [] for GD), "train_loss"
(full-batch loss at those steps), "loss_steps"/"loss_curve" (the loss at every step), "hvps",
"two_over_eta", "initial_sharpness", "final_median_sharpness" (median over the last 20 % of
the steps of the sharpness the criterion uses: raw for GD, preconditioned for Adam), "ratio"
(that median / threshold), "raw_final_median_sharpness", "at_edge"}, and "all_at_edge". The
previous run's copies are deleted first. Checkpoints eos_lr<i>.ckpt (params, optimiser and
monitor states, loss curve) are written every `eos.checkpoint_every` steps and reused by a
rerun of the same config. A loss that becomes non-finite stops the run with an error naming
η and the step; the monitor's measurements so far stay in that η's checkpoint and in
diverged.json.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import common, figures
from hessjax import curvature, distributed
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
    "eos.optimizer": common.one_of("gd", "adam"),
    "eos.adam.learning_rates": common.Rule(
        lambda v: (
            isinstance(v, tuple | list) and len(v) > 0 and all(common.POSITIVE.test(x) for x in v)
        ),
        "a non-empty tuple of step sizes > 0",
    ),
    "eos.adam.b1": common.real_in(0.0, 1.0),
    "eos.adam.b2": common.real_in(0.0, 1.0),
    "eos.adam.eps": common.POSITIVE,
    "eos.adam.low": common.real_in(0.0, 1.0),
    "eos.adam.high": common.real_in(1.0),
}
RELATIONS = (
    common.at_most_train_samples("eos.num_train"),
    common.at_most("eos.measure_every", "eos.steps"),
    common.divides_mesh("eos.num_train"),
)


def adam_hparams(e: ml_collections.ConfigDict) -> tuple[float, float, float]:
    """(β₁, β₂, ε) of the Adam runs."""
    return float(e.adam.b1), float(e.adam.b2), float(e.adam.eps)


def make_optimizer(kind: str, learning_rate, adam: tuple[float, float, float]):
    """Full-batch GD (optax.sgd, no momentum) or Adam with (β₁, β₂, ε) = adam at step size η."""
    if kind == "adam":
        b1, b2, eps = adam
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    return optax.sgd(learning_rate)


def threshold(kind: str, learning_rate: float, b1: float) -> float:
    """The stability threshold: 2/η for GD, (2 + 2β₁)/((1 − β₁)η) for Adam (Cohen et al.)."""
    return hm.adam_threshold(learning_rate, b1) if kind == "adam" else 2 / learning_rate


@functools.partial(jax.jit, static_argnames=("loss_fn", "monitors", "kind", "adam", "steps"))
def train_chunk(params, opt_state, mstates, x, y, learning_rate, *, loss_fn, monitors, kind,
                adam, steps):  # fmt: skip
    """`steps` full-batch steps of the optimiser on (x, y), the monitors (raw, and for Adam
    the preconditioned one, fed P of the update just taken) on the same batch. Returns
    (params, optimiser state, monitor states, losses (steps,) with L(θ_t) of every step)."""
    opt = make_optimizer(kind, learning_rate, adam)

    def step(carry, _):
        params, opt_state, mstates = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, (x, y))
        updates, opt_state = opt.update(grads, opt_state, params)
        new = [monitors[0].update(mstates[0], params, (x, y), updates=updates, loss=loss)]
        if len(monitors) > 1:
            pre = hm.adam_preconditioner(opt_state, b2=adam[1], eps=adam[2])
            new.append(monitors[1].update(mstates[1], params, (x, y), preconditioner=pre))
        return (optax.apply_updates(params, updates), opt_state, tuple(new)), loss

    (params, opt_state, mstates), losses = jax.lax.scan(
        step, (params, opt_state, mstates), None, length=steps
    )
    return params, opt_state, mstates, losses


def check_step_sizes(learning_rates) -> tuple[float, ...]:
    """The step sizes as floats; ValueError naming the first one that is not a finite η > 0."""
    out = []
    for lr in learning_rates:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise ValueError(f"step size must be a finite number > 0, got {lr!r}")
        out.append(float(lr))
    return tuple(out)


def train_one(config, workdir, tag, lr, params, x, y, loss_fn) -> dict:
    """Full-batch GD or Adam at step size lr with the monitor(s), resuming from
    <workdir>/<tag>.ckpt."""
    e = config.eos
    lr = check_step_sizes([lr])[0]
    kind, adam = e.optimizer, adam_hparams(e)
    limit = threshold(kind, lr, adam[0])
    settings = dict(every=e.measure_every, k=1, capacity=e.steps // e.measure_every + 1,
                    tol=e.tol, key=jax.random.key(config.seed))  # fmt: skip
    monitors = (hm.curvature_monitor(loss_fn, **settings),)
    if kind == "adam":
        monitors += (hm.curvature_monitor(loss_fn, preconditioned=True, **settings),)
    mstates = tuple(m.init(params, (x, y)) for m in monitors)
    opt_state = make_optimizer(kind, lr, adam).init(params)
    losses = np.zeros(e.steps, np.float32)
    fingerprint = {
        k: config[k].to_dict() for k in ("data", "model")
    } | {"eos": {k: v for k, v in e.to_dict().items() if k not in ("learning_rates", "adam")},
         "adam": adam if kind == "adam" else None, "lr": lr, "seed": config.seed}  # fmt: skip
    ckpt = os.path.join(workdir, f"{tag}.ckpt")
    target = {"params": params, "opt": opt_state, "monitors": mstates, "losses": losses}
    done = 0
    loaded = common.load_checkpoint(ckpt, fingerprint, target)
    if loaded is not None:
        state, meta = loaded
        params, opt_state, mstates = state["params"], state["opt"], tuple(state["monitors"])
        losses, done = np.array(state["losses"]), int(meta["done"])
        logging.info("[η=%g] resumed at step %d from %s", lr, done, ckpt)
    while done < e.steps:
        chunk = min(e.checkpoint_every, e.steps - done)
        params, opt_state, mstates, chunk_losses = train_chunk(
            params, opt_state, mstates, x, y, jnp.float32(lr), loss_fn=loss_fn,
            monitors=monitors, kind=kind, adam=adam, steps=chunk,
        )  # fmt: skip
        losses[done : done + chunk] = np.asarray(chunk_losses)
        done += chunk
        common.save_checkpoint(
            ckpt, fingerprint,
            {"params": params, "opt": opt_state, "monitors": mstates, "losses": losses},
            {"done": done},
        )  # fmt: skip
        try:
            for mstate in mstates:
                hm.check_finite(mstate)
        except hm.MonitorDivergence as err:
            log = hm.read_log(err.state)
            common.write_json(
                os.path.join(workdir, "diverged.json"),
                {"learning_rate": lr, "optimizer": kind, "step": err.step, "message": str(err),
                 "steps": log.steps.tolist(), "sharpness": _floats(log.sharpness),
                 "train_loss": _floats(log.loss)},
            )  # fmt: skip
            raise FloatingPointError(
                f"full-batch {kind} with step size {lr} diverged: {err} (measurements kept in "
                f"{ckpt} and diverged.json)"
            ) from err
        logs = [hm.read_log(m) for m in mstates]
        logging.info(
            "[η=%g] step %d/%d: loss %.5f, sharpness %.3f%s (threshold %.3f), %d HVPs",
            lr, done, e.steps, losses[done - 1], logs[0].sharpness[-1],
            f", preconditioned {logs[1].sharpness[-1]:.1f}" if len(logs) > 1 else "", limit,
            sum(int(g.hvps[-1]) for g in logs),
        )  # fmt: skip
    logs = [hm.read_log(m) for m in mstates]
    steps = logs[0].steps
    last = steps >= int(0.8 * e.steps)
    watched = logs[-1].sharpness  # what the criterion reads: preconditioned under Adam
    median = float(np.median(watched[last]))
    ratio = median / limit
    low, high = (e.adam.low, e.adam.high) if kind == "adam" else (e.low, e.high)
    return {
        "learning_rate": lr,
        "optimizer": kind,
        "threshold": limit,
        "two_over_eta": 2 / lr,
        "steps": steps.tolist(),
        "sharpness": _floats(logs[0].sharpness),
        "preconditioned_sharpness": _floats(logs[1].sharpness) if len(logs) > 1 else [],
        "train_loss": _floats(logs[0].loss),
        "hvps": sum(g.hvps for g in logs).tolist(),
        "converged": logs[-1].converged[:, 0].tolist(),
        "loss_steps": list(range(e.steps)),
        "loss_curve": _floats(losses),
        "initial_sharpness": float(watched[0]),
        "final_median_sharpness": median,
        "raw_final_median_sharpness": float(np.median(logs[0].sharpness[last])),
        "ratio": ratio,
        "starts_below": bool(watched[0] < limit),
        "at_edge": bool(watched[0] < limit and low <= ratio <= high),
    }


def _criterion(e) -> str:
    if e.optimizer == "adam":
        return (f"preconditioned sharpness λ_max(P⁻¹H) starts below (2 + 2β₁)/((1 − β₁)η) and "
                f"its median over the last 20 % of steps lies in [{e.adam.low}, {e.adam.high}] "
                "times it")  # fmt: skip
    return (f"sharpness starts below 2/η and its median over the last 20 % of steps lies in "
            f"[{e.low}, {e.high}] · 2/η")  # fmt: skip


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, np.float64)]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole job; returns the results dict that is also written to results.json."""
    common.validate(config, RULES, RELATIONS)
    e = config.eos
    learning_rates = check_step_sizes(
        e.adam.learning_rates if e.optimizer == "adam" else e.learning_rates
    )
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    ds = common.load_data(config.data)
    x = jnp.asarray(ds.x_train[: e.num_train].reshape(e.num_train, -1))
    y = jnp.asarray(ds.y_train[: e.num_train])
    model = common.build_model(config.model, ds.num_classes)
    params = model.init(jax.random.key(config.seed), x[:1])
    num_params = sum(v.size for v in jax.tree_util.tree_leaves(params))
    distributed.check_mesh_fits(config.mesh, params, e.num_train)
    params, (x, y) = distributed.placed_batch(config.mesh, params, (x, y))  # GD and monitor on it
    loss_fn = curvature.MeanLoss(model.apply, LOSSES[e.loss])
    logging.info(
        "full-batch %s on %d samples, %s loss, %d params, step sizes %s",
        e.optimizer, e.num_train, e.loss, num_params, learning_rates,
    )  # fmt: skip
    runs = []
    for i, lr in enumerate(learning_rates):
        t0 = time.perf_counter()
        r = train_one(config, workdir, f"eos_lr{i}", lr, params, x, y, loss_fn)
        r["seconds"] = time.perf_counter() - t0
        logging.info(
            "[η=%g] %ssharpness %.3f -> median %.3f over the last 20%% (threshold %.3f, "
            "ratio %.3f)", lr, "preconditioned " if e.optimizer == "adam" else "",
            r["initial_sharpness"], r["final_median_sharpness"], r["threshold"], r["ratio"],
        )  # fmt: skip
        runs.append(r)
    results = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "num_params": int(num_params),
        "num_train": int(e.num_train),
        "loss": e.loss,
        "optimizer": e.optimizer,
        "criterion": _criterion(e),
        "runs": runs,
        "all_at_edge": all(r["at_edge"] for r in runs),
        "seconds": time.perf_counter() - start,
    }
    figures.plot_edge_of_stability(
        runs,
        os.path.join(workdir, "edge_of_stability.png"),
        title=f"{ds.name} ({e.num_train} samples), tanh MLP {tuple(config.model.widths)}, "
        f"{e.loss}, full-batch {'Adam' if e.optimizer == 'adam' else 'GD'}",
    )
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and edge_of_stability.png to %s", workdir)
    return results


if __name__ == "__main__":
    common.run_binary("edge_of_stability", run)
