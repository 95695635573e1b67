"""The headline run: top-1,000 Hessian eigenpairs of a >= 10M-parameter network.

Problem: tanh MLP 784-W-W-10 (W = 2,800: 10,066,010 params) trained briefly with Adam, Hessian
of the mean cross-entropy on `--samples` MNIST training images (../shared/data/mnist; random
28x28 images when absent), in microbatches of `--microbatch`. Methods, each in a fresh
subprocess so that its peak memory is its own (GPU: peak_bytes_in_use; CPU: VmHWM):

  restart-LA  eigsh(k, which="LA", num_steps=basis, max_restarts=R, tol): thick restart
  restart-LM  the same for the k largest |λ|
  sketch      sketch_eigh(k, outer=k, inner=2k): one pass of batched products (by |λ|)
  reference   eigsh(100, "LA") and eigsh(100, "LM") with tol=1e-6 and a 300-vector basis

Printed per method: time (including compilation), HVPs, peak memory (bytes and bytes per
parameter), converged pairs, and the relative error of its top 100 against the reference.

    python benchmarks/scale.py --quick            # W = 256, k = 100: minutes on 2 CPU cores
    python benchmarks/scale.py --out results.json  # the full size (an accelerator)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import environment, peak_bytes, write_json
from hvp import load_images

from hessjax import training
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import microbatches
from hessjax.linalg import eigsh, magnitude_errors, sketch_eigh
from hessjax.models import MLP

METHODS = ("reference", "restart-LA", "restart-LM", "sketch")
TOP = 100  # eigenvalues compared with the reference


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="W = 256, k = 100, 512 samples")
    p.add_argument("--width", type=int, default=2800, help="hidden width W")
    p.add_argument("--k", type=int, default=1000, help="eigenpairs per method")
    p.add_argument("--basis", type=int, default=None, help="thick-restart basis (1.5 k)")
    p.add_argument("--restarts", type=int, default=30, help="thick restarts at most")
    p.add_argument("--tol", type=float, default=1e-4, help="thick-restart tolerance")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--microbatch", type=int, default=512)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.k, args.samples, args.microbatch = 256, 100, 512, 256
        args.train_steps = min(args.train_steps, 50)
    args.basis = args.basis or (3 * args.k) // 2
    if not 0 < args.k < args.basis:
        p.error(f"need 0 < k < basis, got k = {args.k}, basis = {args.basis}")
    return args


def problem(args):
    """Hessian operator of the trained MLP (the same in every subprocess: fixed seeds)."""
    x, y, source = load_images(args.samples, args.seed)
    x = x.reshape(len(x), -1)
    model = MLP((args.width, args.width, 10), act="tanh")
    loss = MeanLoss(model.apply, cross_entropy)
    key = jax.random.key(args.seed)
    params = model.init(key, jnp.asarray(x[:1]))
    params, _ = training.train(
        loss, params, x, y, optimizer=training.make_optimizer("adam", 1e-3),
        num_steps=args.train_steps, batch_size=128, key=jax.random.fold_in(key, 1),
    )  # fmt: skip
    data = microbatches((jnp.asarray(x), jnp.asarray(y)), args.microbatch)
    return hessian_operator(loss, params, data), source


def child(args) -> None:
    op, _ = problem(args)
    key = jax.random.key(args.seed + 7)
    start = time.perf_counter()
    record: dict = {}
    if args.child == "reference":
        for which in ("LA", "LM"):
            res = eigsh(op, TOP, key=key, which=which, num_steps=3 * TOP, max_restarts=50,
                        tol=1e-6)  # fmt: skip
            record[which] = np.asarray(res.eigenvalues, np.float64).tolist()
            record[f"converged_{which}"] = int(np.sum(res.converged))
            record["num_matvecs"] = record.get("num_matvecs", 0) + res.num_matvecs
    elif args.child.startswith("restart"):
        which = args.child.split("-")[1]
        res = eigsh(op, args.k, key=key, which=which, num_steps=args.basis,
                    max_restarts=args.restarts, tol=args.tol)  # fmt: skip
        record["eigenvalues"] = np.asarray(res.eigenvalues, np.float64).tolist()
        record["converged"] = int(np.sum(res.converged))
        record["num_matvecs"] = res.num_matvecs
    else:
        res = sketch_eigh(op, args.k, key=key, outer=args.k, inner=2 * args.k, error_probes=20)
        record["eigenvalues"] = np.asarray(res.eigenvalues, np.float64).tolist()
        record["error_estimate"] = float(res.error_estimate)
        record["num_matvecs"] = res.num_matvecs
    jax.block_until_ready(res.eigenvectors)
    record["seconds"] = time.perf_counter() - start
    record["peak_bytes"], record["peak_source"] = peak_bytes()
    record["num_params"] = op.size
    print(json.dumps(record))


def run_child(method: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", method]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"failed": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return child(args)
    _, _, source = load_images(8, args.seed)
    print(f"jax {jax.__version__} on {jax.devices()}; data: {source}; MLP 784-{args.width}-"
          f"{args.width}-10, k = {args.k}, basis {args.basis}", flush=True)  # fmt: skip
    runs = {}
    for method in args.methods:
        runs[method] = run_child(method, argv)
        rec = runs[method]
        if "failed" in rec:
            print(f"{method:<11} FAILED: {rec['failed'].splitlines()[-1]}", flush=True)
            continue
        n = rec["num_params"]
        peak = rec["peak_bytes"]
        print(f"{method:<11} {rec['seconds']:8.1f} s {rec['num_matvecs']:6d} HVPs peak "
              f"{peak / 2**30:7.2f} GiB ({peak / n:6.1f} B/param, {rec['peak_source']})",
              flush=True)  # fmt: skip
    ref = runs.get("reference", {})
    if "LA" in ref:
        for method, which in (("restart-LA", "LA"), ("restart-LM", "LM"), ("sketch", "LM")):
            rec = runs.get(method, {})
            if "eigenvalues" not in rec:
                continue
            got, want = np.asarray(rec["eigenvalues"][:TOP]), np.asarray(ref[which])
            if which == "LA":
                err = np.abs(got - want) / np.abs(want)
            else:  # ranked by |λ|: compare magnitudes, signs are for the eigenspaces
                err = magnitude_errors(got, want)
            rec[f"top{TOP}_rel_error_max"], rec[f"top{TOP}_rel_error_median"] = (
                float(err.max()), float(np.median(err)))  # fmt: skip
            print(f"{method:<11} top {TOP} vs reference ({which}): max rel err {err.max():.2e}, "
                  f"median {np.median(err):.2e}")  # fmt: skip
    result = {**environment("scale", source, args), "runs": runs}
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
