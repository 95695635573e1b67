"""Cost of the curvature monitor inside training: time with / without, HVPs warm vs cold.

Model and data as the other benchmarks: the tanh MLP 784-256-128-10 (235,146 params) on MNIST
(random 28×28 images when ../shared/data/mnist is absent), Adam (lr 1e-3; `--optimizer sgd`:
plain SGD, lr 0.1), minibatches of 128 drawn on device, `--steps` steps per compiled `lax.scan`
chunk. The monitor (`hessjax.monitor.curvature_monitor`, its default tol 1e-2 unless `--tol`)
measures the top-k Hessian eigenvalues of the mean cross-entropy on a fixed probe batch every N
steps (`lax.cond` inside the scanned step) at the params each step ends at
(`update(..., applied=True)`, as the optax `monitoring` transform does), without the alignment
unless named. In one process this
times, from the same state:

  plain      the chunk without the monitor (the unit)
  k=1        the chunk with the monitor, k = 1, warm start (v0 = previous top eigenvector)
  k=5        the same with k = 5 (v0 = sum of the previous 5 eigenvectors)
  k=1 idle   the monitor in the step but never measuring (every = 10^9): the cost of the cond
  k=1 align  k=1 with the alignment (the update passed to the monitor every step)

Every configuration first runs one untimed warm-up chunk (compilation, and the monitor's first,
necessarily cold, measurement); then all time their next chunk from the post-warm-up state,
interleaved round-robin (A B C D, B C D A, ...) over `--repeats` rounds, so that the load of a
shared machine hits all alike. Reported: wall-clock medians, the median over rounds of the
per-round ratio, and process CPU time (all threads; robust to being descheduled).
overhead = median wall time (k=1) / median wall time (plain).

HVPs per measurement of the timed chunk are counted (from the monitor's ring buffer)
warm-started and cold (v0 random), at the same tolerance. Their accuracy: the training of the
timed chunk is replayed without the monitor (same minibatch keys, so the same params) and, at
every measurement step, a tight reference (Lanczos to tol 1e-5, cold) gives the top-5
eigenvalues; reported are the largest errors of warm and cold relative to the sharpness, and the
overlap |<v1(t), v1(t+N)>| of consecutive reference top eigenvectors (how much the Hessian
moved between measurements, which bounds what a warm start can save), and the warm-start
residual profile: the Ritz residual / λ1 after j = 1..4 Lanczos products from the previous
point's reference top eigenvector (the monitor stops at the first j where it is <= tol).

    python benchmarks/monitor.py [--quick] [--out results.json] [--every N] [--repeats 0]
                                 [--optimizer adam|sgd]
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
from hessjax.linalg import eigsh
from hessjax.models import MLP

TARGET_OVERHEAD = 1.10
TARGET_HVP_RATIO = 2.0
REF_TOL, REF_K, REF_STEPS = 1e-5, 5, 80
PROFILE_STEPS = 4  # warm-start residual profile: Lanczos products 1..4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer steps and repeats")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--every", type=int, default=100, help="N: measure every N steps")
    p.add_argument("--steps", type=int, default=None, help="steps per chunk (default 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="training minibatch")
    p.add_argument("--probe-size", type=int, default=128, help="fixed probe batch")
    p.add_argument("--train-samples", type=int, default=10000, help="MNIST training subset")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9; quick 2)")
    p.add_argument("--mlp-widths", default="256,128,10", help="MLP layer widths (input 784)")
    p.add_argument("--tol", type=float, default=None, help="Lanczos tolerance (monitor default)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimizer")
    p.add_argument("--lr", type=float, default=None, help="learning rate (adam 1e-3, sgd 0.1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 300 if args.quick else 1000
    if args.repeats is None:
        args.repeats = 2 if args.quick else 9
    return args


@functools.partial(jax.jit, static_argnames=("loss_fn", "opt", "monitor", "batch_size", "align"))
def train_chunk(params, opt_state, mstate, keys, x, y, probe, *, loss_fn, opt, monitor,
                batch_size, align=False):  # fmt: skip
    """len(keys) optimizer steps on minibatches of (x, y); the monitor (unless None) on `probe` at
    the params each step ends at (applied=True), with the alignment when `align`."""

    def step(carry, key):
        params, opt_state, mstate = carry
        idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, (x[idx], y[idx]))
        updates, opt_state = opt.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        if monitor is not None:
            aligned = updates if align else None
            mstate = monitor.update(mstate, new, probe, updates=aligned, loss=loss, applied=True)
        return (new, opt_state, mstate), loss

    (params, opt_state, mstate), losses = jax.lax.scan(step, (params, opt_state, mstate), keys)
    return params, opt_state, mstate, losses[-1]


def references(start, keys, where, reference, **kw) -> list:
    """`reference(params, probe, key, previous)` at the params after `where` (sorted) steps of
    plain training (`train_chunk(**kw)`) from start = (params, opt_state) on the minibatch keys;
    `previous` is the result at the point before (None at the first)."""
    (params, opt_state), done, out = start, 0, []
    for i in where:
        if i > done:
            params, opt_state, _, _ = train_chunk(params, opt_state, None, keys[done:i], **kw)
            done = i
        out.append(reference(params, kw["probe"], jax.random.key(i), out[-1] if out else None))
    return out


@functools.partial(jax.jit, static_argnames=("monitor", "steps"))
def warm_residual(params, probe, v0, *, monitor, steps):
    """Ritz residual / Ritz value of the top pair after `steps` Lanczos products from v0."""
    top = eigsh(monitor.operator(params, probe), 1, key=jax.random.key(0), v0=v0, tol=None,
                num_steps=steps)  # fmt: skip
    return top.residuals[0] / top.eigenvalues[0]


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y, source = load_images(args.train_samples, args.seed)  # (n, 28, 28, 1); MLP flattens
    probe = (jnp.asarray(x[: args.probe_size]), jnp.asarray(y[: args.probe_size]))
    x, y = jnp.asarray(x), jnp.asarray(y)
    widths = tuple(int(w) for w in args.mlp_widths.split(","))
    model = MLP(widths, act="tanh")
    loss_fn = MeanLoss(model.apply, cross_entropy)
    key = jax.random.key(args.seed)
    params = model.init(key, x[:2])
    num_params = sum(v.size for v in jax.tree_util.tree_leaves(params))
    lr = args.lr or {"adam": 1e-3, "sgd": 0.1}[args.optimizer]
    opt = {"adam": optax.adam, "sgd": optax.sgd}[args.optimizer](lr)
    capacity = args.steps // args.every + 1
    tol = {} if args.tol is None else {"tol": args.tol}
    print(
        f"jax {jax.__version__} on {jax.devices()}; load average {os.getloadavg()[0]:.2f}; "
        f"data: {source}"
    )
    print(
        f"MLP 784-{'-'.join(map(str, widths))} tanh ({num_params} params), {args.optimizer} "
        f"lr {lr}, batch "
        f"{args.batch_size}, probe {args.probe_size}, N = {args.every}, {args.steps} steps/chunk"
    )

    def monitor(k, warm, every=args.every):
        return hm.curvature_monitor(
            loss_fn, every=every, k=k, capacity=capacity, warm_start=warm,
            key=jax.random.key(args.seed), **tol
        )  # fmt: skip

    configs = {"plain": None}
    for k in (1, 5):
        configs[f"k={k}"] = monitor(k, True)
        configs[f"k={k} cold"] = monitor(k, False)
    configs["k=1 idle"] = monitor(1, True, every=10**9)
    configs["k=1 align"] = monitor(1, True)
    timed_names = ["plain", "k=1", "k=5", "k=1 idle", "k=1 align"]

    # Warm-up chunk per configuration (compiles; the first measurement is cold for all).
    k_warm, k_timed = jax.random.split(jax.random.fold_in(key, 1))
    keys_warm, keys = jax.random.split(k_warm, args.steps), jax.random.split(k_timed, args.steps)
    kw = dict(x=x, y=y, probe=probe, loss_fn=loss_fn, opt=opt, batch_size=args.batch_size)
    calls, start = {}, None
    for name, mon in configs.items():
        mstate = mon.init(params, probe) if mon is not None else None
        fn = functools.partial(train_chunk, monitor=mon, align=name.endswith("align"), **kw)
        p1, o1, m1, _ = jax.block_until_ready(fn(params, opt.init(params), mstate, keys_warm))
        calls[name] = (fn, (p1, o1, m1, keys))
        start = (p1, o1)  # the same for every configuration: the monitor never alters updates
    times, cpu = {}, {}
    if args.repeats:
        times = timed_interleaved({n: calls[n] for n in timed_names}, args.repeats, 0, cpu)

    # HVPs per measurement in the timed chunk (warm and cold from the same state).
    logs = {}
    for name, (fn, a) in calls.items():
        if configs[name] is None or name in ("k=1 idle", "k=1 align"):
            continue
        _, _, m2, _ = fn(*a)
        hm.check_finite(m2)
        log = hm.read_log(m2)
        timed_chunk = log.steps > args.steps  # the measurements of the timed chunk only
        logs[name] = hm.MonitorLog(*(f[timed_chunk] for f in log))
    where = (logs["k=1"].steps - args.steps).tolist()
    ref_monitor = hm.curvature_monitor(loss_fn, k=REF_K, tol=REF_TOL, num_steps=REF_STEPS)
    measure = jax.jit(ref_monitor.measure)

    def reference(params, probe, key, previous):
        """The tight measurement, and the relative residuals after 1..PROFILE_STEPS warm
        products from the previous point's reference top eigenvector."""
        ref = measure(params, probe, key)
        if previous is None:
            return ref, None
        v0 = previous[0].eigenvectors[:, 0]
        profile = [
            float(warm_residual(params, probe, v0, monitor=configs["k=1"], steps=j))
            for j in range(1, PROFILE_STEPS + 1)
        ]
        return ref, profile

    pairs = references(start, keys, where, reference, monitor=None, **kw)
    refs, profiles = [r for r, _ in pairs], [p for _, p in pairs[1:]]
    ref_values = np.stack([np.asarray(r.eigenvalues) for r in refs])  # (m, 5) descending
    top = [np.asarray(r.eigenvectors[:, 0]) for r in refs]
    overlaps = [float(abs(a @ b)) for a, b in zip(top[:-1], top[1:], strict=True)]

    def rel_error(log, k):
        return float(np.max(np.abs(log.eigenvalues - ref_values[:, :k]) / ref_values[:, :1]))

    med = {n: float(np.median(t)) for n, t in times.items()}
    med_cpu = {n: float(np.median(t)) for n, t in cpu.items()}

    def paired(name):
        return float(np.median(np.asarray(times[name]) / np.asarray(times["plain"])))

    rows = {}
    for k in (1, 5):
        warm, cold = logs[f"k={k}"], logs[f"k={k} cold"]
        rows[k] = {
            "overhead": med[f"k={k}"] / med["plain"] if med else None,
            "overhead_paired": paired(f"k={k}") if med else None,
            "overhead_cpu": med_cpu[f"k={k}"] / med_cpu["plain"] if med else None,
            "warm_hvps": float(np.mean(warm.hvps)),
            "cold_hvps": float(np.mean(cold.hvps)),
            "hvp_ratio": float(np.mean(cold.hvps) / np.mean(warm.hvps)),
            "warm_converged": bool(np.all(warm.converged)),
            "cold_converged": bool(np.all(cold.converged)),
            "warm_max_rel_error": rel_error(warm, k),
            "cold_max_rel_error": rel_error(cold, k),
        }

    def overheads(name):
        return {
            "overhead": med[name] / med["plain"] if med else None,
            "overhead_paired": paired(name) if med else None,
            "overhead_cpu": med_cpu[name] / med_cpu["plain"] if med else None,
        }

    idle, align = overheads("k=1 idle"), overheads("k=1 align")
    print(
        f"{'':<11}{'overhead':>10}{'paired':>8}{'cpu':>7}{'warm HVPs':>11}{'cold HVPs':>11}"
        f"{'cold/warm':>11}{'warm err':>10}{'cold err':>10}"
    )

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for name, r in [(f"k={k}", rows[k]) for k in rows] + [("k=1 idle", idle), ("k=1 align", align)]:
        line = (
            f"{name:<11}{fmt(r['overhead'], '.3f'):>10}{fmt(r['overhead_paired'], '.3f'):>8}"
            f"{fmt(r['overhead_cpu'], '.3f'):>7}"
        )
        if "warm_hvps" in r:
            line += (
                f"{r['warm_hvps']:>11.1f}{r['cold_hvps']:>11.1f}{r['hvp_ratio']:>11.2f}"
                f"{r['warm_max_rel_error']:>10.1e}{r['cold_max_rel_error']:>10.1e}"
            )
        print(line)
    if med:
        print("seconds per chunk (median): " + ", ".join(f"{n} {t:.3f}" for n, t in med.items()))
    sharpness = np.round(ref_values[:, 0].astype(float), 3).tolist()
    print(f"sharpness (reference) along the chunk: {sharpness}")
    print(f"overlap of consecutive top eigenvectors: {np.round(overlaps, 3).tolist()}")
    profile = np.asarray(profiles)  # (m - 1, PROFILE_STEPS)
    print(
        "warm start from the previous reference top eigenvector: residual / λ1 after j = "
        f"1..{PROFILE_STEPS} products, median (max) over the chunk: "
        + ", ".join(f"{np.median(c):.3f} ({np.max(c):.3f})" for c in profile.T)
    )
    ok_overhead = rows[1]["overhead"] is not None and rows[1]["overhead"] <= TARGET_OVERHEAD
    ok_hvps = rows[1]["hvp_ratio"] >= TARGET_HVP_RATIO
    print(
        f"targets: overhead (k=1) <= {TARGET_OVERHEAD}: {'ok' if ok_overhead else 'MISSED'}; "
        f"cold/warm HVPs (k=1) >= {TARGET_HVP_RATIO}: {'ok' if ok_hvps else 'MISSED'}"
    )
    result = {
        **environment("monitor", source, args),
        "tol": configs["k=1"].tol,
        "num_params": int(num_params),
        "overhead": rows[1]["overhead"],
        "warm_hvps": rows[1]["warm_hvps"],
        "cold_hvps": rows[1]["cold_hvps"],
        "by_k": {str(k): r for k, r in rows.items()},
        "idle": idle,
        "align": align,
        "seconds_per_chunk": med,
        "cpu_seconds_per_chunk": med_cpu,
        "times_s": times,
        "cpu_times_s": cpu,
        "hvps_per_measurement": {n: log.hvps.tolist() for n, log in logs.items()},
        "sharpness": {n: log.sharpness.tolist() for n, log in logs.items()},
        "reference": {
            "tol": REF_TOL,
            "steps": where,
            "eigenvalues": ref_values.tolist(),
            "top_overlaps": overlaps,
            "warm_residual_profile": profile.tolist(),
        },
        "targets": {"overhead": TARGET_OVERHEAD, "cold_over_warm_hvps": TARGET_HVP_RATIO},
        "meets_targets": {"overhead": ok_overhead, "hvps": ok_hvps},
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
