"""Many Hessian eigenpairs (k = 100, 500) of a 200k-parameter MLP: Lanczos vs thick-restart
Lanczos vs the single-pass sketch, time, HVPs and accuracy against a long Lanczos reference.

Problem: tanh MLP 784-256-10 (203,530 params) on 28×28 MNIST pixels in [0, 1] (MNIST-1D and a
40-1024-160-10 MLP, 207,594 params, if the MNIST files are absent), trained briefly with Adam
(`hessjax.training.train`), Hessian of the mean cross-entropy on 500 class-balanced training
samples, float32. Eigenpairs are ranked by |λ| everywhere (`which="LM"`, as the sketch ranks).

  reference  one Lanczos run, full reorthogonalisation, tol=None, --ref-steps (1,500) steps,
             float32: its top max(k) Ritz pairs, checked with true residuals ‖Hx − λx‖ (one
             batched product per pair), reported relative to |λ| and to max|λ|
  lanczos    eigsh(op, k, which="LM") with the library default Krylov size m = 2k + 20, tol
             1e-4 checked every m // 40 steps (each check is an (m, m) tridiagonal eigh: at
             m ~ 1000 checking every step costs more than the products)
  restart    eigsh(op, k, which="LM", num_steps=1.5k, max_restarts=R, tol 1e-4): bounded basis
  sketch     sketch_eigh(op, k, outer, inner, error_probes=20): one batched pass; its
             a-posteriori estimate of ‖H − Ĥ_k‖_F/‖H‖_F against an independent estimate of the
             same quantity from --truth-probes (200) fresh Gaussian probes (the true value needs
             ‖H‖_F, which is not computable at this n)

For each: wall time of one call (compilation included: one call per shape), HVPs
(num_matvecs), max relative error of the top-10 and of all k eigenvalues (and the median),
overlap ‖V_kᵀ V_ref,k‖²_F / k of the top-10 and top-k eigenspaces with the reference.

    python benchmarks/sketch.py [--quick] [--out benchmarks/results/sketch_cpu.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import environment, write_json

from hessjax import training
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import (
    class_balanced_subset,
    default_data_dir,
    load_idx_dir,
    load_mnist1d,
    microbatches,
)
from hessjax.linalg import apply_block, eigsh, magnitude_errors, sketch_eigh, subspace_overlap
from hessjax.models import MLP


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: k = 20, 60, short reference")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--ks", default=None, help="eigenpair counts (default 100,500)")
    p.add_argument("--num-samples", type=int, default=500, help="Hessian samples (class-balanced)")
    p.add_argument("--train-steps", type=int, default=200, help="Adam steps (lr 1e-3, batch 128)")
    p.add_argument("--ref-steps", type=int, default=None, help="reference Krylov size (1500)")
    p.add_argument("--restart-factor", type=float, default=1.5, help="thick restart basis / k")
    p.add_argument("--max-restarts", type=int, default=40)
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos tol (library default)")
    p.add_argument(
        "--check-every", type=int, default=None, help="plain Lanczos check period (m // 40)"
    )
    p.add_argument("--outer", default=None, help="sketch outer sizes per k (default 2k)")
    p.add_argument("--inner", default=None, help="sketch inner sizes (default 4k; 3k for k >= 500)")
    p.add_argument("--error-probes", type=int, default=20)
    p.add_argument("--truth-probes", type=int, default=200)
    p.add_argument("--block-size", type=int, default=250, help="products per vmapped block")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.ks is None:
        args.ks = "20,60" if args.quick else "100,500"
    ks = [int(k) for k in args.ks.split(",")]
    if args.ref_steps is None:
        args.ref_steps = 300 if args.quick else 1500
    args.outer = args.outer or ",".join(str(2 * k) for k in ks)
    # 4k for the core sketch, 3k at k = 500 to bound memory (n · (28 outer + 20 inner) bytes).
    args.inner = args.inner or ",".join(str(3 * k if k >= 500 else 4 * k) for k in ks)
    return args


# ----------------------------------------------------------------------------- problem


def load_problem(args):
    """(operator, description) of the benchmark's Hessian."""
    directory = default_data_dir("mnist")
    if directory is not None:
        ds = load_idx_dir(directory)
        source, widths = f"MNIST idx files ({directory})", (256, 10)
    else:
        ds = load_mnist1d(num_samples=10000, seed=args.seed)
        source, widths = "MNIST-1D (load_mnist1d; ../shared/data/mnist absent)", (1024, 160, 10)
    x = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float32)
    y = ds.y_train.astype(np.int32)
    model = MLP(widths, act="tanh")
    params = model.init(jax.random.key(args.seed), jnp.asarray(x[:1]))
    loss = MeanLoss(model.apply, cross_entropy)
    optimizer = training.make_optimizer("adam", 1e-3)
    params, history = training.train(
        loss, params, jnp.asarray(x), jnp.asarray(y), optimizer=optimizer,
        num_steps=args.train_steps, batch_size=128, key=jax.random.key(args.seed + 1),
    )  # fmt: skip
    hx, hy = class_balanced_subset(x, y, args.num_samples // ds.num_classes, seed=args.seed)
    op = hessian_operator(loss, params, microbatches((jnp.asarray(hx), jnp.asarray(hy)), len(hy)))
    info = {
        "data": source,
        "model": f"MLP {x.shape[1]}-{'-'.join(map(str, widths))} tanh",
        "num_params": int(op.size),
        "hessian_samples": len(hy),
        "train_loss": float(history[-1][1]) if history else None,
    }
    return op, info


# ----------------------------------------------------------------------------- accuracy


def by_magnitude(values, vectors) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    order = np.argsort(-np.abs(values), kind="stable")
    return values[order], np.asarray(vectors)[:, order]


def accuracy(values, vectors, ref_values, ref_vectors) -> dict:
    """Relative eigenvalue errors and eigenspace overlaps of k pairs (ranked by |λ|) against
    the reference's top k (eigenvalues compared with `magnitude_rel_error`)."""
    k = len(values)
    top = min(10, k)
    return {
        "top10_max_rel_error": float(magnitude_errors(values[:top], ref_values[:top]).max()),
        "all_max_rel_error": float((rel := magnitude_errors(values, ref_values[:k])).max()),
        "all_median_rel_error": float(np.median(rel)),
        "overlap_top10": float(subspace_overlap(vectors[:, :top], ref_vectors[:, :top])),
        "overlap_all": float(subspace_overlap(vectors, ref_vectors[:, :k])),  # float32
    }


def true_residuals(op, values, vectors, block_size: int) -> np.ndarray:
    """‖H x_i − λ_i x_i‖ (k,) with k batched products."""
    hv = np.asarray(apply_block(op, jnp.asarray(vectors, op.dtype), block_size), np.float64)
    return np.linalg.norm(hv - vectors * values[None, :], axis=0)


def frobenius_error_from_probes(op, values, vectors, key, probes: int, block_size: int) -> dict:
    """Independent estimate of ‖H − V Λ Vᵀ‖_F / ‖H‖_F from `probes` Gaussian probes (ratio of
    the mean squared norms, standard error by the delta method)."""
    g = jax.random.normal(key, (op.size, probes), op.dtype)
    hg = np.asarray(apply_block(op, g, block_size), np.float64)
    g = np.asarray(g, np.float64)
    resid = hg - vectors @ (values[:, None] * (vectors.T @ g))
    e, a = np.sum(resid**2, 0), np.sum(hg**2, 0)
    ratio = e.mean() / a.mean()
    cov = np.cov(np.stack([e, a]))
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (probes * a.mean() ** 2)
    rel = float(np.sqrt(ratio))
    return {"value": rel, "stderr": float(np.sqrt(max(var, 0.0)) / (2 * rel)), "probes": probes}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    outers = [int(v) for v in args.outer.split(",")]
    inners = [int(v) for v in args.inner.split(",")]
    key = jax.random.key(args.seed)
    op, info = load_problem(args)
    n = op.size
    print(f"{info['model']}, {n:,} params, Hessian on {info['hessian_samples']} samples; "
          f"data: {info['data']}")  # fmt: skip
    result = environment("sketch", info["data"], args) | {"problem": info, "rows": []}

    kmax = max(ks)
    ref, seconds = timed(
        eigsh, op, kmax, key=jax.random.fold_in(key, 0), which="LM", num_steps=args.ref_steps,
        tol=None,
    )  # fmt: skip
    ref_values, ref_vectors = by_magnitude(ref.eigenvalues, ref.eigenvectors)
    resid = true_residuals(op, ref_values, ref_vectors, args.block_size)
    lmax = float(np.abs(ref_values[0]))
    result["reference"] = {
        "method": f"eigsh which=LM tol=None num_steps={args.ref_steps}, float32",
        "seconds": seconds,
        "num_matvecs": int(ref.num_matvecs),
        "eigenvalues": ref_values[:kmax].tolist(),
        "residuals": resid[:kmax].tolist(),
        "eigenvalue_at_k": {k: float(ref_values[k - 1]) for k in ks},
        "max_residual_over_lmax": {k: float(resid[:k].max() / lmax) for k in ks},
        "max_residual_over_abs_lambda": {
            k: float(np.max(resid[:k] / np.abs(ref_values[:k]))) for k in ks
        },
    }
    print(f"reference ({args.ref_steps} Lanczos steps, {seconds:.0f} s): top |λ| "
          f"{np.round(ref_values[:3], 4)}, λ_k {result['reference']['eigenvalue_at_k']}, "
          f"max ‖Hx−λx‖/|λ| {result['reference']['max_residual_over_abs_lambda']}")  # fmt: skip

    for k, outer, inner in zip(ks, outers, inners, strict=True):
        k_key = jax.random.fold_in(key, k)
        runs = {}
        m = min(n, max(2 * k + 20, k + 40))  # default_num_steps
        every = args.check_every or max(1, m // 40)  # each check is an (m, m) eigh
        out, s = timed(eigsh, op, k, key=k_key, which="LM", tol=args.tol, check_every=every)
        runs[f"lanczos m={m} check={every}"] = (out, s, out.num_matvecs)
        m = int(round(args.restart_factor * k))
        out, s = timed(
            eigsh, op, k, key=k_key, which="LM", tol=args.tol, num_steps=m,
            max_restarts=args.max_restarts,
        )  # fmt: skip
        runs[f"restart m={m}"] = (out, s, out.num_matvecs)
        peak = n * (28 * outer + 20 * inner + 8 * k)
        print(f"k={k}: sketch outer={outer} inner={inner}, peak memory ≈ {peak / 1e9:.1f} GB")
        sk, s = timed(
            sketch_eigh, op, k, key=k_key, outer=outer, inner=inner,
            error_probes=args.error_probes, block_size=args.block_size,
        )  # fmt: skip
        runs[f"sketch o={outer} i={inner}"] = (sk, s, sk.num_matvecs)
        for name, (out, s, hvps) in runs.items():
            values, vectors = by_magnitude(out.eigenvalues, out.eigenvectors)
            row = {"k": k, "method": name, "seconds": s, "num_matvecs": int(hvps)}
            row["eigenvalues"] = values.tolist()
            row |= accuracy(values, vectors, ref_values, ref_vectors)
            if hasattr(out, "converged"):
                row["converged"] = int(np.sum(out.converged))
            if name.startswith("sketch"):
                row["error_estimate"] = float(out.error_estimate)
                row["error_stderr"] = float(out.error_stderr)
                row["error_independent"] = frobenius_error_from_probes(
                    op, values, vectors.astype(np.float64), jax.random.fold_in(k_key, 1),
                    args.truth_probes, args.block_size,
                )  # fmt: skip
            result["rows"].append(row)
            print_row(row)
            write_json(result, args.out)  # after every row: a partial run keeps its numbers
        del runs, sk, out
    return result


def print_row(r: dict) -> None:
    extra = ""
    if "error_estimate" in r:
        ind = r["error_independent"]
        extra = (
            f"  ‖H−Ĥ‖/‖H‖ estimate {r['error_estimate']:.4f} ± {r['error_stderr']:.4f}"
            f" vs {ind['probes']} probes {ind['value']:.4f} ± {ind['stderr']:.4f}"
        )
    if "converged" in r:
        extra = f"  converged {r['converged']}/{r['k']}"
    print(f"  k={r['k']:4d} {r['method']:24s} {r['seconds']:8.1f} s {r['num_matvecs']:6d} HVPs"
          f"  top-10 err {r['top10_max_rel_error']:.1e}  all-k err max {r['all_max_rel_error']:.1e}"
          f" median {r['all_median_rel_error']:.1e}  overlap top-10 {r['overlap_top10']:.4f}"
          f" top-k {r['overlap_all']:.4f}{extra}")  # fmt: skip


if __name__ == "__main__":
    main()
