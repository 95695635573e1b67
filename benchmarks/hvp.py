"""HVP time / gradient time for an MLP and a conv net, measured in one process.

For each model, on the same batch and in the same process, this times

  grad     jax.jit(jax.grad(loss))(params, batch)                   (the unit)
  hvp      jax.jit(lambda op, v: op.matvec(v))(op, v), op = hessjax.curvature.hessian_operator
  plain    jax.jit of jax.jvp(jax.grad(loss)) on the params pytree   (no hessjax: the floor)

and prints hvp/grad (target <= 1.7 on CPU), plain/grad and hvp/plain (hessjax's own overhead:
flat vectors, microbatch scan). Params and data are jit arguments, never closed over. Calls
are interleaved (grad, hvp, plain, hvp, plain, grad, ...) and each time is the median over
repeats after warm-up, so a slow spell on a shared machine hits all three alike.

    python benchmarks/hvp.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_timed, environment, timed_interleaved, write_json

from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import default_data_dir, load_idx_dir, microbatches
from hessjax.models import MLP, ConvNet

TARGET = 1.7


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small batch, few repeats")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--batch-size", type=int, default=None, help="samples (default 2048; quick 256)")
    p.add_argument("--microbatches", type=int, default=1, help="m: data as (m, b/m, ...)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 21; quick 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
    p.add_argument("--models", default="mlp,conv", help="comma-separated subset of mlp,conv")
    p.add_argument("--mlp-widths", default="256,128,10", help="MLP layer widths (input 784)")
    p.add_argument("--conv-channels", default="8,16", help="ConvNet channels (3x3, 2x pool)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 256 if args.quick else 2048
    if args.repeats is None:
        args.repeats = 5 if args.quick else 21
    return args


def load_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """n MNIST training images (n, 28, 28, 1) and labels, or random images if MNIST is absent."""
    directory = default_data_dir("mnist")
    if directory is not None:
        ds = load_idx_dir(directory)
        idx = np.random.default_rng(seed).permutation(len(ds.x_train))[:n]
        return ds.x_train[idx].reshape(n, 28, 28, 1), ds.y_train[idx], f"MNIST ({directory})"
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32), "random 28x28x1 images (no MNIST found)"


def plain_hvp(loss, params, batch, tangent):
    """Forward-over-reverse HVP on the params pytree, without hessjax."""
    return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (tangent,))[1]


def op_matvec(op, v):
    return op.matvec(v)


def bench_model(name: str, model, x, y, args) -> dict:
    key = jax.random.key(args.seed)
    params = model.init(key, jnp.asarray(x[:2]))
    loss = MeanLoss(model.apply, cross_entropy)
    batch = (jnp.asarray(x), jnp.asarray(y))
    data = microbatches(batch, args.batch_size // args.microbatches)
    op = hessian_operator(loss, params, data)
    v = jax.random.normal(jax.random.fold_in(key, 1), (op.size,), op.dtype)
    tangent = op.unravel(v)

    grad_exe, grad_compile = compile_timed(jax.grad(loss), params, batch)
    hvp_exe, hvp_compile = compile_timed(op_matvec, op, v)
    plain_exe, _ = compile_timed(lambda p, b, t: plain_hvp(loss, p, b, t), params, batch, tangent)

    # Correctness guard: the operator's product equals the plain pytree HVP.
    hv = hvp_exe(op, v)
    ref = op.ravel(plain_exe(params, batch, tangent))
    rel_diff = float(jnp.linalg.norm(hv - ref) / jnp.linalg.norm(ref))

    calls = {
        "grad": (grad_exe, (params, batch)),
        "hvp": (hvp_exe, (op, v)),
        "plain": (plain_exe, (params, batch, tangent)),
    }
    times = timed_interleaved(calls, args.repeats, args.warmup)
    med = {k: float(np.median(t)) for k, t in times.items()}
    return {
        "model": name,
        "num_params": int(op.size),
        "grad_s": med["grad"],
        "hvp_s": med["hvp"],
        "plain_hvp_s": med["plain"],
        "hvp_over_grad": med["hvp"] / med["grad"],
        "plain_over_grad": med["plain"] / med["grad"],
        "hvp_over_plain": med["hvp"] / med["plain"],
        "grad_compile_s": grad_compile,
        "hvp_compile_s": hvp_compile,
        "hvp_vs_plain_rel_diff": rel_diff,
        "times_s": times,
        "meets_target": med["hvp"] / med["grad"] <= TARGET,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch_size % args.microbatches:
        raise SystemExit("--batch-size must be a multiple of --microbatches")
    x, y, source = load_images(args.batch_size, args.seed)
    widths = tuple(int(w) for w in args.mlp_widths.split(","))
    channels = tuple(int(c) for c in args.conv_channels.split(","))
    models = {
        "mlp": (f"MLP 784-{'-'.join(map(str, widths))} tanh", MLP(widths, act="tanh")),
        "conv": (f"ConvNet {'-'.join(map(str, channels))} relu", ConvNet(channels, 10)),
    }
    print(
        f"jax {jax.__version__} on {jax.devices()}; load average {os.getloadavg()[0]:.2f}; "
        f"data: {source}"
    )
    print(
        f"batch {args.batch_size} as {args.microbatches} microbatch(es), float32, "
        f"median of {args.repeats} interleaved calls after {args.warmup} warm-up"
    )
    rows = []
    for name in args.models.split(","):
        label, model = models[name]
        rows.append(bench_model(label, model, x, y, args))

    header = (
        f"{'model':<24}{'params':>9}{'grad ms':>10}{'hvp ms':>10}{'plain ms':>10}"
        f"{'hvp/grad':>10}{'plain/grad':>12}{'hvp/plain':>11}  target"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ok = "ok" if r["meets_target"] else "MISSED"
        print(
            f"{r['model']:<24}{r['num_params']:>9}{1e3 * r['grad_s']:>10.2f}"
            f"{1e3 * r['hvp_s']:>10.2f}{1e3 * r['plain_hvp_s']:>10.2f}"
            f"{r['hvp_over_grad']:>10.2f}{r['plain_over_grad']:>12.2f}"
            f"{r['hvp_over_plain']:>11.2f}  <= {TARGET} {ok}"
        )
    for r in rows:
        print(
            f"{r['model']}: compile grad {r['grad_compile_s']:.2f} s, hvp "
            f"{r['hvp_compile_s']:.2f} s; |Hv - plain|/|plain| = {r['hvp_vs_plain_rel_diff']:.1e}"
        )
    result = {
        **environment("hvp", source, args),
        "target_hvp_over_grad": TARGET,
        "results": rows,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
