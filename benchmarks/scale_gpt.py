"""Top-20 Hessian eigenpairs of a >= 10M-parameter GPT on a CPU box (the transformer `scale.py`).

Problem: hessjax.models.GPT(vocab 256, context 256, width 384, 6 heads, 6 layers: about 10.9M
params) at initialisation (seed 0; optionally `--train-steps` of Adam, lr 3e-4, batch 8), Hessian
of the mean next-token cross-entropy on `--sequences` byte windows of the fixed corpus
../shared/data/python_stdlib/ (this interpreter's stdlib when absent), in microbatches of
`--microbatch` sequences. Methods, each in a fresh subprocess so that its peak memory (VmHWM on
CPU) is its own:

  restart    eigsh(k, "LA", num_steps=basis (2k), max_restarts=R, tol=1e-3): thick restart
  reference  the same with tol=1e-5 and num_steps=ref-basis (3k): the tighter run

Printed: the time of one HVP (after warm-up, in the parent) and the run time it implies; per
method the time (including compilation), HVPs, peak memory (bytes and per parameter), converged
pairs; the error of the restart run's top k against the reference; and the largest Lanczos
basis (rows) that 20 GB holds for this n.

    python benchmarks/scale_gpt.py --quick     # width 64, k 5: ~1 min, no JSON unless --out
    nice -n 5 python benchmarks/scale_gpt.py   # full size -> benchmarks/results/scale_gpt_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_timed, environment, peak_bytes, timed_interleaved, write_json
from hvp import op_matvec

from hessjax import training
from hessjax.curvature import MeanLoss, hessian_operator, token_cross_entropy
from hessjax.data import load_text, microbatches, windows
from hessjax.linalg import eigsh
from hessjax.models import GPT

METHODS = ("restart", "reference")
MEMORY_BUDGET = 20e9  # bytes for a float32 Lanczos basis
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "scale_gpt_cpu.json")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="width 64, 2 layers, context 64, k 5")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--k", type=int, default=20, help="eigenpairs (largest algebraic)")
    p.add_argument("--basis", type=int, default=None, help="restart basis (default 2k)")
    p.add_argument("--ref-basis", type=int, default=None, help="reference basis (default 3k)")
    p.add_argument("--restarts", type=int, default=10, help="thick restarts at most (R)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--ref-tol", type=float, default=1e-5)
    p.add_argument("--sequences", type=int, default=8, help="windows in the Hessian's data")
    p.add_argument("--microbatch", type=int, default=4, help="sequences per microbatch")
    p.add_argument("--train-steps", type=int, default=0, help="Adam steps before measuring")
    p.add_argument("--hvp-repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT}; quick: none)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--params-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.heads, args.layers, args.context, args.k = 64, 4, 2, 64, 5
    elif args.out is None:
        args.out = DEFAULT_OUT
    args.basis = args.basis or 2 * args.k
    args.ref_basis = args.ref_basis or 3 * args.k
    return args


def corpus():
    """(training bytes, source): the fixed shared corpus, else this interpreter's stdlib."""
    try:
        text, source = load_text("shared"), "shared"
    except ValueError:
        text, source = load_text("stdlib"), "stdlib"
    return text.train, f"{source}: {text.name}"


def problem(args):
    """(Hessian operator, model, source); the same in every subprocess (fixed seeds, or the
    parent's trained params from --params-file)."""
    tokens, source = corpus()
    model = GPT(256, args.context, args.width, args.heads, args.layers)
    loss = MeanLoss(model.apply, token_cross_entropy)
    x, y = windows(tokens, args.sequences, args.context, args.seed)
    if args.params_file:
        with open(args.params_file, "rb") as f:
            params = pickle.load(f)
    else:
        params = model.init(jax.random.key(args.seed), jnp.asarray(x[:1]))
    if args.train_steps and not args.params_file:
        tx, ty = windows(tokens, 4096, args.context, args.seed + 1)
        params, hist = training.train(
            loss, params, jnp.asarray(tx), jnp.asarray(ty),
            optimizer=training.make_optimizer("adam", 3e-4), num_steps=args.train_steps,
            batch_size=8, key=jax.random.fold_in(jax.random.key(args.seed), 1),
        )  # fmt: skip
        print(f"trained {args.train_steps} Adam steps: loss {hist[-1][1]:.3f}", flush=True)
    data = microbatches((jnp.asarray(x), jnp.asarray(y)), args.microbatch)
    return hessian_operator(loss, params, data), params, source


def solver_args(args, method: str) -> dict:
    if method == "restart":
        return dict(num_steps=args.basis, tol=args.tol)
    return dict(num_steps=args.ref_basis, tol=args.ref_tol)


def max_matvecs(k: int, m: int, restarts: int) -> int:
    """Products of a thick restart that runs out of restarts: m, then m - keep per cycle."""
    return m + restarts * (m - (k + (m - k) // 2))


def child(args) -> None:
    op, _, _ = problem(args)
    start = time.perf_counter()
    res = eigsh(op, args.k, key=jax.random.key(args.seed + 7), which="LA",
                max_restarts=args.restarts, **solver_args(args, args.child))  # fmt: skip
    jax.block_until_ready(res.eigenvectors)
    seconds = time.perf_counter() - start
    peak, peak_source = peak_bytes()
    print(json.dumps({
        "seconds": seconds, "num_matvecs": int(res.num_matvecs),
        "converged": int(np.sum(res.converged)), "peak_bytes": peak, "peak_source": peak_source,
        "peak_bytes_per_param": peak / op.size, "num_params": op.size,
        "eigenvalues": np.asarray(res.eigenvalues, np.float64).tolist(),
        "residuals": np.asarray(res.residuals, np.float64).tolist(),
        **solver_args(args, args.child), "max_restarts": args.restarts,
    }))  # fmt: skip


def run_child(method: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", method]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"failed": proc.stderr[-3000:] or f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_hvp(op, args) -> dict:
    v = jax.random.normal(jax.random.key(args.seed + 3), (op.size,), op.dtype)
    exe, compile_s = compile_timed(op_matvec, op, v)
    times = timed_interleaved({"hvp": (exe, (op, v))}, repeats=args.hvp_repeats, warmup=1)
    return {"compile_seconds": compile_s, "seconds_median": float(np.median(times["hvp"])),
            "seconds_all": times["hvp"]}  # fmt: skip


def compare(got, ref) -> dict:
    got, ref = np.asarray(got), np.asarray(ref)
    diff = np.abs(got - ref)
    scaled = diff / np.abs(ref[0])
    return {"max_err_over_lambda1": float(scaled.max()),
            "median_err_over_lambda1": float(np.median(scaled)),
            "per_eigenvalue_rel_error": (diff / np.abs(ref)).tolist()}  # fmt: skip


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return child(args)
    op, params, source = problem(args)
    n = op.size
    tokens = args.sequences * args.context
    print(f"jax {jax.__version__} on {jax.devices()}; data: {source}; GPT width {args.width}, "
          f"{args.heads} heads, {args.layers} layers, context {args.context}: {n:,} params; "
          f"{args.sequences} sequences ({tokens:,} tokens) in microbatches of "
          f"{args.microbatch}; k = {args.k}", flush=True)  # fmt: skip
    hvp = one_hvp(op, args)
    worst = sum(max_matvecs(args.k, solver_args(args, m)["num_steps"], args.restarts)
                for m in args.methods)  # fmt: skip
    print(f"one HVP: {hvp['seconds_median']:.3f} s (median of {args.hvp_repeats}; compile "
          f"{hvp['compile_seconds']:.1f} s); at most {worst} HVPs in all: <= "
          f"{worst * hvp['seconds_median'] / 60:.1f} min of products", flush=True)  # fmt: skip
    rows = int(MEMORY_BUDGET // (4 * n))
    result = {**environment("scale_gpt", source, args), "num_params": n, "tokens": tokens,
              "one_hvp": hvp, "basis_rows_in_20GB": rows, "k_in_20GB": int(rows / 1.5),
              "runs": {}}  # fmt: skip
    child_argv = list(argv)
    if args.train_steps:
        fd, path = tempfile.mkstemp(suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(jax.device_get(params), f)
        child_argv += ["--params-file", path]
    del op, params
    for method in args.methods:
        rec = result["runs"][method] = run_child(method, child_argv)
        if "failed" in rec:
            print(f"{method:<10} FAILED: {rec['failed'].strip().splitlines()[-1]}", flush=True)
        write_json(result, args.out)  # after every method: partial results survive
    if args.train_steps:
        os.remove(path)
    runs = result["runs"]
    if all("eigenvalues" in runs.get(m, {}) for m in METHODS):
        runs["restart"]["vs_reference"] = compare(runs["restart"]["eigenvalues"],
                                                  runs["reference"]["eigenvalues"])  # fmt: skip
    print(f"\n{'method':<10} {'time s':>8} {'HVPs':>5} {'peak GiB':>9} {'B/param':>8} "
          f"{'conv':>5}  {'λ1':>10} {'λk':>10}")  # fmt: skip
    for method, rec in runs.items():
        if "failed" in rec:
            continue
        ev = rec["eigenvalues"]
        print(f"{method:<10} {rec['seconds']:8.1f} {rec['num_matvecs']:5d} "
              f"{rec['peak_bytes'] / 2**30:9.2f} {rec['peak_bytes_per_param']:8.1f} "
              f"{rec['converged']:>2}/{args.k:<2}  {ev[0]:10.4g} {ev[-1]:10.4g}")  # fmt: skip
    if "vs_reference" in runs.get("restart", {}):
        cmp = runs["restart"]["vs_reference"]
        print(f"restart vs reference, |λ - λ_ref| / |λ_ref_1|: max "
              f"{cmp['max_err_over_lambda1']:.2e}, median {cmp['median_err_over_lambda1']:.2e}; "
              "per eigenvalue |λ - λ_ref| / |λ_ref|: "
              + " ".join(f"{e:.1e}" for e in cmp["per_eigenvalue_rel_error"]))  # fmt: skip
    for method, rec in runs.items():
        if "eigenvalues" in rec:
            print(f"{method} eigenvalues: " + " ".join(f"{e:.5g}" for e in rec["eigenvalues"]))
    print(f"one HVP {hvp['seconds_median']:.3f} s; a 20 GB float32 basis holds {rows:,} rows "
          f"of n = {n:,} (k ≈ {int(rows / 1.5):,} at a basis of 1.5 k)")  # fmt: skip
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
