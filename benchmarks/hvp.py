"""HVP time / gradient time for an MLP and a conv net, and language-model heads, in one process.

For each model, on the same batch and in the same process, this times

  grad     jax.jit(jax.grad(loss))(params, batch)                   (the unit)
  hvp      jax.jit(lambda op, v: op.matvec(v))(op, v), op = hessjax.curvature.hessian_operator
  plain    jax.jit of jax.jvp(jax.grad(loss)) on the params pytree   (no hessjax: the floor)

and prints hvp/grad (target <= 1.7 on CPU), plain/grad and hvp/plain (hessjax's own overhead:
flat vectors, microbatch scan). Params and data are jit arguments, never closed over. Calls
are interleaved (grad, hvp, plain, hvp, plain, grad, ...) and each time is the median over
repeats after warm-up, so a slow spell on a shared machine hits all three alike.

Language-model rows (`--lm-vocabs`, e.g. 256,4096,32768): a GPT (`--lm-width`, one layer, 2
heads) on `--lm-tokens` random token ids (sequences of `--lm-context`) at each vocabulary V;
the Hessian and Gauss-Newton products of the chunked head (`curvature.LMHeadLoss`, chunks of
`--lm-chunk` tokens) against the naive ones on whole (tokens, V) logits (`MeanLoss` +
`token_cross_entropy`) and the plain gradient; per row `vocab`, `hvp_over_grad`,
`hvp_peak_bytes`, `naive_hvp_peak_bytes`, `grad_peak_bytes` (compiled executables' memory
analysis: arguments + outputs + temporaries) and `max_rel_diff` (chunked vs naive products).
Goals at V = 32,768: hvp_peak_bytes <= naive_hvp_peak_bytes / 2 and hvp/grad <= 2.5 on CPU.

    python benchmarks/hvp.py [--quick] [--out results.json]
    python benchmarks/hvp.py --models none --lm-vocabs 256,4096,32768 --out results.json
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_timed, compiled_bytes, environment, timed_interleaved, write_json

from hessjax import curvature
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import default_data_dir, load_idx_dir, microbatches
from hessjax.models import GPT, MLP, ConvNet

TARGET = 1.7
LM_TIME_TARGET, LM_MEMORY_TARGET = 2.5, 0.5  # at the largest vocabulary: hvp/grad, peak ratio


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small batch, few repeats")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--batch-size", type=int, default=None, help="samples (default 2048; quick 256)")
    p.add_argument("--microbatches", type=int, default=1, help="m: data as (m, b/m, ...)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 21; quick 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
    p.add_argument("--models", default="mlp,conv", help="subset of mlp,conv, or none")
    p.add_argument("--lm-vocabs", default="", help="language-model rows: vocabularies, e.g. "
                   "256,4096,32768 (default none)")  # fmt: skip
    p.add_argument("--lm-tokens", type=int, default=4096, help="tokens per LM product")
    p.add_argument("--lm-context", type=int, default=256, help="LM sequence length")
    p.add_argument("--lm-width", type=int, default=64, help="LM width (1 layer, 2 heads)")
    p.add_argument("--lm-chunk", type=int, default=512, help="tokens per logit chunk")
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


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def bench_lm(vocab: int, args) -> dict:
    """One language-model row: chunked vs naive Hessian and GGN products at vocabulary V."""
    key = jax.random.key(args.seed)
    seqs = args.lm_tokens // args.lm_context
    model = GPT(vocab, args.lm_context, args.lm_width, 2, 1)
    trunk = GPT(vocab, args.lm_context, args.lm_width, 2, 1, logits=False)
    rng = np.random.default_rng(args.seed)
    x, y = (jnp.asarray(rng.integers(0, vocab, (seqs, args.lm_context)), jnp.int32)
            for _ in range(2))  # fmt: skip
    params = model.init(key, x[:1])
    naive = MeanLoss(model.apply, curvature.token_cross_entropy)
    chunked = curvature.LMHeadLoss(trunk.apply, "params/unembed/kernel", args.lm_chunk)
    data = (x[None], y[None])
    ops = {
        "hvp": hessian_operator(chunked, params, data),
        "naive_hvp": hessian_operator(naive, params, data),
        "ggn": curvature.lm_head_ggn_operator(chunked, params, data),
        "naive_ggn": curvature.ggn_operator(
            model.apply, curvature.token_cross_entropy, params, data
        ),  # fmt: skip
    }
    v = jax.random.normal(jax.random.fold_in(key, 1), (ops["hvp"].size,), jnp.float32)
    calls, peaks = {}, {}
    grad_exe, _ = compile_timed(jax.grad(naive), params, (x, y))
    calls["grad"], peaks["grad"] = (grad_exe, (params, (x, y))), compiled_bytes(grad_exe)
    for name, op in ops.items():
        exe, _ = compile_timed(op_matvec, op, v)
        calls[name], peaks[name] = (exe, (op, v)), compiled_bytes(exe)
    out = {name: fn(*a) for name, (fn, a) in calls.items() if name != "grad"}
    times = timed_interleaved(calls, args.repeats, args.warmup)
    med = {k: float(np.median(t)) for k, t in times.items()}
    row = {
        "vocab": vocab, "tokens": int(x.size), "num_params": int(ops["hvp"].size),
        **{f"{k}_s": med[k] for k in calls},
        "hvp_over_grad": med["hvp"] / med["grad"],
        "naive_hvp_over_grad": med["naive_hvp"] / med["grad"],
        "ggn_over_grad": med["ggn"] / med["grad"],
        **{f"{k}_peak_bytes": peaks[k] for k in calls},
        "max_rel_diff": max(_rel(out["hvp"], out["naive_hvp"]), _rel(out["ggn"], out["naive_ggn"])),
        "times_s": times,
    }  # fmt: skip
    row["peak_ratio"] = row["hvp_peak_bytes"] / row["naive_hvp_peak_bytes"]
    return row


def print_lm(rows: list[dict]) -> None:
    head = (f"{'V':>7}{'params':>10}{'grad s':>8}{'hvp s':>8}{'naive s':>9}{'ggn s':>8}"
            f"{'hvp/grad':>9}{'hvp MiB':>9}{'naive MiB':>10}{'grad MiB':>9}{'ggn MiB':>8}"
            f"{'naive ggn':>10}{'rel diff':>9}")  # fmt: skip
    print(head)
    print("-" * len(head))
    mib = 2.0**20
    for r in rows:
        print(f"{r['vocab']:>7}{r['num_params']:>10}{r['grad_s']:>8.2f}{r['hvp_s']:>8.2f}"
              f"{r['naive_hvp_s']:>9.2f}{r['ggn_s']:>8.2f}{r['hvp_over_grad']:>9.2f}"
              f"{r['hvp_peak_bytes'] / mib:>9.0f}{r['naive_hvp_peak_bytes'] / mib:>10.0f}"
              f"{r['grad_peak_bytes'] / mib:>9.0f}{r['ggn_peak_bytes'] / mib:>8.0f}"
              f"{r['naive_ggn_peak_bytes'] / mib:>10.0f}{r['max_rel_diff']:>9.1e}")  # fmt: skip
    last = rows[-1]
    print(f"V = {last['vocab']}: peak hvp / naive {last['peak_ratio']:.2f} (goal <= "
          f"{LM_MEMORY_TARGET}), hvp / grad {last['hvp_over_grad']:.2f} (goal <= "
          f"{LM_TIME_TARGET})")  # fmt: skip


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
    for name in [] if args.models == "none" else args.models.split(","):
        label, model = models[name]
        rows.append(bench_model(label, model, x, y, args))
    lm_rows = [bench_lm(int(v), args) for v in args.lm_vocabs.split(",") if v]
    if lm_rows:
        print(
            f"language-model heads: {args.lm_tokens} tokens, chunks of {args.lm_chunk}, "
            f"GPT width {args.lm_width}, 1 layer; peaks from the compiled memory analysis"
        )
        print_lm(lm_rows)

    if rows:
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
                f"{r['hvp_compile_s']:.2f} s; |Hv - plain|/|plain| = "
                f"{r['hvp_vs_plain_rel_diff']:.1e}"
            )
    result = {
        **environment("hvp", source, args),
        "target_hvp_over_grad": TARGET,
        "results": rows,
        "lm_results": lm_rows,
        "lm_targets": {"hvp_over_grad": LM_TIME_TARGET, "peak_ratio": LM_MEMORY_TARGET},
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
