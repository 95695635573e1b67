"""The headline run: top-1,000 Hessian eigenpairs of a >= 10M-parameter network.

Problem: tanh MLP 784-W-W-10 (W = 2,800: 10,066,010 params) trained briefly with Adam, Hessian
of the mean cross-entropy on `--samples` MNIST training images (../shared/data/mnist; random
28x28 images when absent), in microbatches of `--microbatch`. Methods, each in a fresh
subprocess so that its peak memory is its own (GPU: peak_bytes_in_use; CPU: VmHWM):

  restart-LA  eigsh(k, which="LA", num_steps=basis, max_restarts=R, tol): thick restart
  restart-LM  the same for the k largest |λ|
  sketch      sketch_eigh(k, outer=k, inner=2k): one pass of batched products (by |λ|)
  arpack      scipy's ARPACK (sparse.linalg.eigsh, which="LA", ncv = --arpack-ncv or basis)
              driving the same jitted HVP from the host, at --arpack-tol (default --tol). Its
              test is per pair, ||r_i|| <= tol |λ_i|: stricter than hessjax's
              ||r_i|| <= tol λ_1 below λ_1 (tol λ_1 / λ_k makes it looser everywhere)
  reference   the tighter run: eigsh(ref-k, ...) with tol=ref-tol (1e-6), a basis of
              ref-basis (3 ref-k) vectors and ref-restarts (50) restarts at most, for each
              ordering ("LA", "LM") the other methods use

Printed per method: time (including compilation), HVPs, peak memory (bytes and bytes per
parameter), converged pairs, and the relative error of its top min(k, ref-k) against the
reference; with --residuals, also every pair's true residual ‖H v − λ v‖ (k more HVPs; H is
symmetric, so an eigenvalue lies within it of λ) and the eigenvectors' max |VᵀV − I|.

    python benchmarks/scale.py --quick            # W = 256, k = 100: minutes on 2 CPU cores
    # thick restart against ARPACK on the same jitted HVP (269k params), at k = 100 and 500:
    python benchmarks/scale.py --quick --k 500 --methods restart-LA arpack reference \
        --ref-k 500 --ref-basis 1000 --out benchmarks/results/scale_arpack_cpu_k500.json
    python benchmarks/scale.py --out results.json  # the full size (an accelerator)
    # 1,000 eigenpairs of a 1.05M-parameter MLP on 2 CPU cores, all 1,000 checked (the
    # reference may run later: --methods reference --ref-orderings LA --runs-from FIRST.json):
    python benchmarks/scale.py --width 700 --methods restart-LA reference --ref-k 1000 \
        --ref-basis 2000 --ref-tol 1e-5 --ref-restarts 15 \
        --out benchmarks/results/scale_cpu_1m.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg
from _common import environment, peak_bytes, write_json
from hvp import load_images

from hessjax import training
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import microbatches
from hessjax.linalg import apply_block, eigsh, magnitude_errors, sketch_eigh
from hessjax.models import MLP

METHODS = ("reference", "restart-LA", "restart-LM", "sketch", "arpack")
# the ordering of each method
WHICH = {"restart-LA": "LA", "restart-LM": "LM", "sketch": "LM", "arpack": "LA"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="W = 256, k = 100, 512 samples")
    p.add_argument("--width", type=int, default=None, help="hidden width W (2,800)")
    p.add_argument("--k", type=int, default=None, help="eigenpairs per method (1,000)")
    p.add_argument("--basis", type=int, default=None, help="thick-restart basis (1.5 k)")
    p.add_argument("--restarts", type=int, default=30, help="thick restarts at most")
    p.add_argument("--tol", type=float, default=1e-4, help="thick-restart tolerance")
    p.add_argument("--arpack-tol", type=float, default=None, help="ARPACK's tol (--tol)")
    p.add_argument("--arpack-ncv", type=int, default=None, help="ARPACK's basis (--basis)")
    p.add_argument("--ref-k", type=int, default=100, help="eigenpairs of the tighter run")
    p.add_argument("--ref-basis", type=int, default=None, help="its basis (3 ref-k)")
    p.add_argument("--ref-tol", type=float, default=1e-6, help="its tolerance")
    p.add_argument("--ref-restarts", type=int, default=50, help="its thick restarts at most")
    p.add_argument(
        "--ref-orderings",
        nargs="+",
        choices=("LA", "LM"),
        default=None,
        help="orderings of the reference (default: those of --methods)",
    )
    p.add_argument("--runs-from", default=None, help="a previous results JSON: its runs of "
                   "methods not in --methods are reported and compared too")  # fmt: skip
    p.add_argument(
        "--residuals",
        action="store_true",
        help="restart-*: also compute every "
        "pair's residual ||H v - λ v|| (k more HVPs), a bound on its eigenvalue error",
    )
    p.add_argument("--samples", type=int, default=None, help="Hessian batch (2,048)")
    p.add_argument("--microbatch", type=int, default=None, help="(512)")
    p.add_argument("--train-steps", type=int, default=None, help="Adam steps (100)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = dict(width=2800, k=1000, samples=2048, microbatch=512, train_steps=100)
    if args.quick:  # explicit flags still win
        defaults.update(width=256, k=100, samples=512, microbatch=256, train_steps=50)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.basis = args.basis or (3 * args.k) // 2
    args.ref_basis = args.ref_basis or 3 * args.ref_k
    for name, k, m in (("", args.k, args.basis), ("ref-", args.ref_k, args.ref_basis)):
        if not 0 < k < m:
            p.error(f"need 0 < {name}k < {name}basis, got {k} and {m}")
    return args


def reference_orderings(methods: list[str]) -> list[str]:
    """The orderings ("LA", "LM") the reference must compute for the other methods (both
    when it runs alone)."""
    return sorted({WHICH[m] for m in methods if m in WHICH}) or ["LA", "LM"]


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


def pair_checks(op, values, vectors, chunk: int = 100) -> dict:
    """Per pair i: r_i = ||H v_i - λ_i v_i|| (H symmetric and ||v_i|| = 1, so an eigenvalue of H
    lies within r_i of λ_i), and the basis' loss of orthogonality max |VᵀV - I|."""
    res = []
    for i in range(0, vectors.shape[1], chunk):
        v = vectors[:, i : i + chunk]
        hv = apply_block(op, v, block_size=10)
        res.append(np.asarray(jnp.linalg.norm(hv - v * values[i : i + chunk], axis=0), np.float64))
        print(f"  residuals {i + v.shape[1]}/{vectors.shape[1]}", file=sys.stderr, flush=True)
    gram = vectors.T @ vectors
    return {
        "residual_norms": np.concatenate(res).tolist(),
        "orthogonality_error": float(jnp.max(jnp.abs(gram - jnp.eye(len(gram))))),
    }


def child(args) -> None:
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    op, _ = problem(args)
    key = jax.random.key(args.seed + 7)
    start = time.perf_counter()
    record: dict = {}
    if args.child == "reference":
        for which in args.ref_orderings or reference_orderings(args.methods):
            res = eigsh(op, args.ref_k, key=key, which=which, num_steps=args.ref_basis,
                        max_restarts=args.ref_restarts, tol=args.ref_tol,
                        progress=True)  # fmt: skip
            record[which] = np.asarray(res.eigenvalues, np.float64).tolist()
            record[f"converged_{which}"] = int(np.sum(res.converged))
            record["num_matvecs"] = record.get("num_matvecs", 0) + res.num_matvecs
    elif args.child.startswith("restart"):
        which = args.child.split("-")[1]
        res = eigsh(op, args.k, key=key, which=which, num_steps=args.basis,
                    max_restarts=args.restarts, tol=args.tol, progress=True)  # fmt: skip
        record["eigenvalues"] = np.asarray(res.eigenvalues, np.float64).tolist()
        record["converged"] = int(np.sum(res.converged))
        record["num_matvecs"] = res.num_matvecs
        if args.residuals:
            jax.block_until_ready(res.eigenvectors)
            record["seconds_before_residuals"] = time.perf_counter() - start
            record.update(pair_checks(op, res.eigenvalues, res.eigenvectors))
    elif args.child == "arpack":
        record.update(arpack_top(op, args, key))
        res = None
    else:
        res = sketch_eigh(op, args.k, key=key, outer=args.k, inner=2 * args.k, error_probes=20)
        record["eigenvalues"] = np.asarray(res.eigenvalues, np.float64).tolist()
        record["error_estimate"] = float(res.error_estimate)
        record["num_matvecs"] = res.num_matvecs
    if res is not None:
        jax.block_until_ready(res.eigenvectors)
    record["seconds"] = time.perf_counter() - start
    record["peak_bytes"], record["peak_source"] = peak_bytes()
    record["num_params"] = op.size
    print(json.dumps(record))


def arpack_top(op, args, key) -> dict:
    """Top-k (largest algebraic) by scipy's ARPACK, its matvec the operator's jitted product
    called from the host; the same start vector law as eigsh (a normal draw from `key`)."""
    num_matvecs = 0

    def matvec(v):
        nonlocal num_matvecs
        num_matvecs += 1
        return np.asarray(op @ jnp.asarray(v.reshape(-1), op.dtype))

    lin = scipy.sparse.linalg.LinearOperator(op.shape, matvec=matvec, dtype=np.dtype(op.dtype))
    v0 = np.asarray(jax.random.normal(key, (op.size,), op.dtype))
    tol = args.tol if args.arpack_tol is None else args.arpack_tol
    try:
        values, _ = scipy.sparse.linalg.eigsh(
            lin, args.k, which="LA", ncv=args.arpack_ncv or args.basis, tol=tol, v0=v0
        )  # the eigenvectors too, as eigsh returns them
        converged = args.k
    except scipy.sparse.linalg.ArpackNoConvergence as err:
        values, converged = err.eigenvalues, len(err.eigenvalues)
    values = np.sort(np.asarray(values, np.float64))[::-1]
    return {"eigenvalues": values.tolist(), "converged": converged, "num_matvecs": num_matvecs}


def run_child(method: str, argv: list[str]) -> dict:
    """Run one method in a fresh process; its progress (stderr) streams through."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", method]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        return {"failed": f"exit status {proc.returncode} (its stderr is in the log above)"}
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
    if args.runs_from:
        with open(args.runs_from) as f:
            prior = json.load(f)["runs"]
        runs = {m: r for m, r in prior.items() if m not in args.methods and "failed" not in r}
        print(f"reusing {sorted(runs)} from {args.runs_from}", flush=True)
    for method in args.methods:
        runs[method] = run_child(method, argv)
        rec = runs[method]
        if "failed" in rec:
            print(f"{method:<11} FAILED: {rec['failed'].splitlines()[-1]}", flush=True)
            continue
        n = rec["num_params"]
        peak = rec["peak_bytes"]
        conv = rec.get("converged", rec.get("converged_LA", rec.get("converged_LM", "-")))
        print(f"{method:<11} {rec['seconds']:8.1f} s {rec['num_matvecs']:6d} HVPs, {conv} "
              f"converged, peak "
              f"{peak / 2**30:7.2f} GiB ({peak / n:6.1f} B/param, {rec['peak_source']})",
              flush=True)  # fmt: skip
        if "residual_norms" in rec:
            r, lam = np.asarray(rec["residual_norms"]), np.abs(rec["eigenvalues"])
            rec["residual_over_lambda_max"] = float(np.max(r / lam))
            rec["residual_over_lambda1_max"] = float(r.max() / lam[0])
            print(f"{method:<11} all {len(r)} pairs: ||Hv - λv|| / |λ| <= "
                  f"{rec['residual_over_lambda_max']:.2e} (median {np.median(r / lam):.2e}), "
                  f"max |VᵀV - I| {rec['orthogonality_error']:.1e}", flush=True)  # fmt: skip
    ref = runs.get("reference", {})
    top = min(args.k, args.ref_k)
    for method, which in WHICH.items():
        rec = runs.get(method, {})
        if "eigenvalues" in rec and which in ref:
            got, want = np.asarray(rec["eigenvalues"][:top]), np.asarray(ref[which][:top])
            if which == "LA":
                err = np.abs(got - want) / np.abs(want)
            else:  # ranked by |λ|: compare magnitudes, signs are for the eigenspaces
                err = magnitude_errors(got, want)
            rec[f"top{top}_rel_error_max"], rec[f"top{top}_rel_error_median"] = (
                float(err.max()), float(np.median(err)))  # fmt: skip
            rec[f"top{top}_err_over_lambda1_max"] = float(np.max(np.abs(got - want)) / abs(want[0]))
            print(f"{method:<11} top {top} vs reference ({which}): max rel err {err.max():.2e}, "
                  f"median {np.median(err):.2e}")  # fmt: skip
    result = {**environment("scale", source, args), "runs": runs}
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
