"""Cost of the curvature monitor inside training: time with / without, HVPs warm vs cold.

Model and data as the other benchmarks: the tanh MLP 784-256-128-10 (235,146 params) on MNIST
(random 28×28 images when ../shared/data/mnist is absent), Adam (lr 1e-3), minibatches of 128
drawn on device, `--steps` steps per compiled `lax.scan` chunk. The monitor
(`hessjax.monitor.curvature_monitor`) measures the top-k Hessian eigenvalues of the mean
cross-entropy on a fixed probe batch every N steps (`lax.cond` inside the scanned step, tol
1e-4). In one process this times, from the same state:

  plain      the chunk without the monitor (the unit)
  k=1        the chunk with the monitor, k = 1, warm start (v0 = previous top eigenvector)
  k=5        the same with k = 5 (v0 = sum of the previous 5 eigenvectors)

and counts the HVPs per measurement (from the monitor's ring buffer) warm-started and cold
(v0 random). Every configuration first runs one untimed warm-up chunk (compilation, and the
monitor's first, necessarily cold, measurement), then all time their next chunk from the
post-warm-up state, interleaved over `--repeats` rounds (median): the steady state of a long
training run. overhead = time(k=1 warm) / time(plain).

    python benchmarks/monitor.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import environment, timed_interleaved, write_json
from hvp import load_images

from hessjax import monitor as hm
from hessjax.curvature import MeanLoss, cross_entropy
from hessjax.models import MLP

TARGET_OVERHEAD = 1.10
TARGET_HVP_RATIO = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer steps and repeats")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--every", type=int, default=100, help="N: measure every N steps")
    p.add_argument("--steps", type=int, default=None, help="steps per chunk (default 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="training minibatch")
    p.add_argument("--probe-size", type=int, default=128, help="fixed probe batch")
    p.add_argument("--train-samples", type=int, default=10000, help="MNIST training subset")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    p.add_argument("--mlp-widths", default="256,128,10", help="MLP layer widths (input 784)")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos tolerance")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 300 if args.quick else 1000
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    return args


@functools.partial(jax.jit, static_argnames=("loss_fn", "opt", "monitor", "steps", "batch_size"))
def train_chunk(params, opt_state, mstate, key, x, y, probe, *, loss_fn, opt, monitor, steps,
                batch_size):  # fmt: skip
    """`steps` Adam steps on minibatches of (x, y); the monitor (unless None) on `probe`."""

    def step(carry, key):
        params, opt_state, mstate = carry
        idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, (x[idx], y[idx]))
        updates, opt_state = opt.update(grads, opt_state, params)
        if monitor is not None:
            mstate = monitor.update(mstate, params, probe, updates=updates, loss=loss)
        return (optax.apply_updates(params, updates), opt_state, mstate), loss

    (params, opt_state, mstate), losses = jax.lax.scan(
        step, (params, opt_state, mstate), jax.random.split(key, steps)
    )
    return params, opt_state, mstate, losses[-1]


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y, source = load_images(args.train_samples, args.seed)  # (n, 28, 28, 1); MLP flattens
    xp, yp = jnp.asarray(x[: args.probe_size]), jnp.asarray(y[: args.probe_size])
    x, y = jnp.asarray(x), jnp.asarray(y)
    widths = tuple(int(w) for w in args.mlp_widths.split(","))
    model = MLP(widths, act="tanh")
    loss_fn = MeanLoss(model.apply, cross_entropy)
    key = jax.random.key(args.seed)
    params = model.init(key, x[:2])
    num_params = sum(v.size for v in jax.tree_util.tree_leaves(params))
    opt = optax.adam(1e-3)
    capacity = args.steps // args.every + 1
    print(
        f"jax {jax.__version__} on {jax.devices()}; load average {os.getloadavg()[0]:.2f}; "
        f"data: {source}"
    )
    print(
        f"MLP 784-{'-'.join(map(str, widths))} tanh ({num_params} params), batch "
        f"{args.batch_size}, probe {args.probe_size}, N = {args.every}, {args.steps} steps/chunk"
    )

    def monitor(k, warm):
        return hm.curvature_monitor(
            loss_fn, every=args.every, k=k, capacity=capacity, tol=args.tol, warm_start=warm,
            seed=args.seed,
        )  # fmt: skip

    configs = {"plain": None}
    for k in (1, 5):
        configs[f"k={k}"] = monitor(k, True)
        configs[f"k={k} cold"] = monitor(k, False)

    # Warm-up chunk per configuration (compiles; the first measurement is cold for all).
    k_warm, k_timed = jax.random.split(jax.random.fold_in(key, 1))
    starts, calls, hvps, converged, sharpness = {}, {}, {}, {}, {}
    for name, mon in configs.items():
        mstate = mon.init(params, (xp, yp)) if mon is not None else None
        kw = dict(loss_fn=loss_fn, opt=opt, monitor=mon, steps=args.steps,
                  batch_size=args.batch_size)  # fmt: skip
        state = train_chunk(params, opt.init(params), mstate, k_warm, x, y, (xp, yp), **kw)
        p1, o1, m1, _ = jax.block_until_ready(state)
        fn = functools.partial(train_chunk, **kw)
        calls[name] = (fn, (p1, o1, m1, k_timed, x, y, (xp, yp)))
        starts[name] = (p1, o1, m1)
    if args.repeats:
        times = timed_interleaved(
            {n: c for n, c in calls.items() if " cold" not in n}, args.repeats, 0
        )
    else:
        times = {}
    # HVPs per measurement in the timed chunk (warm and cold from the same state).
    for name, (fn, a) in calls.items():
        if configs[name] is None:
            continue
        _, _, m2, _ = fn(*a)
        hm.check_finite(m2)
        log = hm.read_log(m2)
        timed_chunk = log.steps >= args.steps  # the measurements of the timed chunk only
        hvps[name] = log.hvps[timed_chunk].tolist()
        converged[name] = bool(np.all(log.converged[timed_chunk]))
        sharpness[name] = log.sharpness[timed_chunk].tolist()

    med = {n: float(np.median(t)) for n, t in times.items()}
    rows = {}
    for k in (1, 5):
        warm, cold = f"k={k}", f"k={k} cold"
        rows[k] = {
            "overhead": med[warm] / med["plain"] if med else None,
            "warm_hvps": float(np.mean(hvps[warm])),
            "cold_hvps": float(np.mean(hvps[cold])),
            "hvp_ratio": float(np.mean(hvps[cold]) / np.mean(hvps[warm])),
            "warm_converged": converged[warm],
            "cold_converged": converged[cold],
        }
    print(f"{'':<8}{'overhead':>10}{'warm HVPs':>11}{'cold HVPs':>11}{'cold/warm':>11}")
    for k, r in rows.items():
        ov = f"{r['overhead']:.3f}" if r["overhead"] is not None else "-"
        print(
            f"{'k=' + str(k):<8}{ov:>10}{r['warm_hvps']:>11.1f}{r['cold_hvps']:>11.1f}"
            f"{r['hvp_ratio']:>11.2f}"
        )
    if med:
        print("seconds per chunk (median): " + ", ".join(f"{n} {t:.3f}" for n, t in med.items()))
    print(f"sharpness (k=1 warm) along the chunk: {np.round(sharpness['k=1'], 3).tolist()}")
    ok_overhead = rows[1]["overhead"] is not None and rows[1]["overhead"] <= TARGET_OVERHEAD
    ok_hvps = rows[1]["hvp_ratio"] >= TARGET_HVP_RATIO
    print(
        f"targets: overhead (k=1) <= {TARGET_OVERHEAD}: {'ok' if ok_overhead else 'MISSED'}; "
        f"cold/warm HVPs (k=1) >= {TARGET_HVP_RATIO}: {'ok' if ok_hvps else 'MISSED'}"
    )
    result = {
        **environment("monitor", source, args),
        "num_params": int(num_params),
        "overhead": rows[1]["overhead"],
        "warm_hvps": rows[1]["warm_hvps"],
        "cold_hvps": rows[1]["cold_hvps"],
        "by_k": {str(k): r for k, r in rows.items()},
        "seconds_per_chunk": med,
        "times_s": times,
        "hvps_per_measurement": hvps,
        "sharpness": sharpness,
        "targets": {"overhead": TARGET_OVERHEAD, "cold_over_warm_hvps": TARGET_HVP_RATIO},
        "meets_targets": {"overhead": ok_overhead, "hvps": ok_hvps},
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
