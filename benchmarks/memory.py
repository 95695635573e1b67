"""Peak memory of the many-eigenpair solvers in bytes per parameter per column.

Every measurement runs in a fresh subprocess (`--child`), on a cheap diagonal operator
(A v = d * v, float32), so that the solver's own arrays dominate: `dense_operator` would be
O(n²). Nothing is subtracted: the peak is taken at two sizes n (the same sketch or basis
size) and the slope (peak(n₂) − peak(n₁)) / (n₂ − n₁) is divided by the number of columns.
What does not grow with n (the Python process, XLA, compiled code) drops out.

  sketch   sketch_eigh(op, k = outer / 2, outer, inner, block_size): bytes / param / outer column
  restart  eigsh(op, k, num_steps=m, max_restarts=R, tol=1e-10): thick restart, a (m, n)
           basis; bytes / param / basis vector (R restarts are run, tol is not met)
  eigsh    eigsh(op, k, num_steps=m, tol=None): plain Lanczos, m steps; bytes / param / basis
           vector

Peak memory: on CPU the peak resident set of the child (VmHWM of /proc/self/status, else
ru_maxrss); on a GPU `jax.devices()[0].memory_stats()['peak_bytes_in_use']`. Beside it,
`compiled`: arguments + outputs + temporaries of the solver's one compiled jit (XLA's buffer
assignment, `compile().memory_analysis()`), the same slope with no allocator, compiler or
page-touching in it. VmHWM slopes are only as good as the allocator lets them be: glibc's
dynamic mmap threshold keeps freed n-sized temporaries in the heap (thick restart 6.33 B/param
/basis vector; 4.60 with MALLOC_MMAP_THRESHOLD_=131072 in the child's environment, below the
compiled 6.12, as the smaller size's peak then overlaps the compiler's).

    python benchmarks/memory.py [--quick] [--out benchmarks/results/memory_cpu.json]
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

from hessjax.linalg import Operator, eigsh, sketch_eigh
from hessjax.linalg import lanczos as lanczos_mod
from hessjax.linalg import sketch as sketch_mod


def _diag_product(v, d):
    return d * v


def diagonal_operator(n: int) -> Operator:
    """A = diag(d), d evenly spread over [1, 2] (clustered: thick restart does not converge
    in a few cycles, so every cycle runs)."""
    d = jnp.linspace(1.0, 2.0, n, dtype=jnp.float32)
    return Operator(_diag_product, (d,), n, np.dtype(np.float32))


def compiled_bytes(op: Operator, args) -> int:
    """Arguments + outputs + temporaries of the solver's compiled jit for `args` (the calls
    of `child`, lowered again with the same static arguments)."""
    key = jax.random.key(0)
    v0 = jax.ShapeDtypeStruct((op.size,), op.dtype)
    if args.child == "sketch":
        block = min(sketch_mod.DEFAULT_BLOCK_SIZE if args.block_size is None else args.block_size,
                    args.inner)  # fmt: skip
        lowered = sketch_mod._sketch.lower(
            op, key, args.outer // 2, args.outer, args.inner, "gaussian", block, 0
        )
    elif args.child == "restart":
        keep = args.k + (args.m - args.k) // 2
        lowered = lanczos_mod._eigsh_restarted.lower(
            op, v0, key, args.k, "LA", args.m, keep, args.restarts, 1e-10, 1
        )
    else:
        lowered = lanczos_mod._eigsh_traced.lower(op, v0, key, args.k, "LA", args.m, None, 1)
    mem = lowered.compile().memory_analysis()
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


def child(args) -> None:
    op = diagonal_operator(args.n)
    key = jax.random.key(0)
    start = time.perf_counter()
    if args.child == "sketch":
        res = sketch_eigh(op, args.outer // 2, key=key, outer=args.outer, inner=args.inner,
                          block_size=args.block_size)  # fmt: skip
        out = res.eigenvalues
    elif args.child == "restart":
        res = eigsh(op, args.k, key=key, num_steps=args.m, max_restarts=args.restarts, tol=1e-10)
        out = res.eigenvalues
    else:
        res = eigsh(op, args.k, key=key, num_steps=args.m, tol=None)
        out = res.eigenvalues
    jax.block_until_ready((out, res.eigenvectors))
    seconds = time.perf_counter() - start
    peak, source = peak_bytes()
    print(json.dumps({"peak_bytes": peak, "source": source, "seconds": seconds,
                      "num_matvecs": int(res.num_matvecs),
                      "compiled_bytes": compiled_bytes(op, args)}))  # fmt: skip


def run_child(method: str, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--n", str(n),
           "--outer", str(args.outer), "--inner", str(args.inner), "--m", str(args.m),
           "--k", str(args.k), "--restarts", str(args.restarts)]  # fmt: skip
    if args.block_size:
        cmd += ["--block-size", str(args.block_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} at n = {n} failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["n"] = n
    print(f"  {method:8s} n = {n:>10,d}: peak {rec['peak_bytes'] / 2**20:9.1f} MiB "
          f"({rec['source']}), compiled {rec['compiled_bytes'] / 2**20:9.1f} MiB, "
          f"{rec['seconds']:.1f} s", flush=True)  # fmt: skip
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=["sketch", "restart", "eigsh"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs=2, default=[500_000, 1_000_000])
    p.add_argument("--outer", type=int, default=200)
    p.add_argument("--inner", type=int, default=400)
    p.add_argument("--block-size", type=int, default=None,
                   help="sketch_eigh block_size (default: the library's)")  # fmt: skip
    p.add_argument("--m", type=int, default=100, help="Krylov basis size of eigsh")
    p.add_argument("--k", type=int, default=50, help="eigenpairs of eigsh")
    p.add_argument("--restarts", type=int, default=2, help="thick restarts run")
    p.add_argument("--methods", nargs="+", default=["sketch", "restart", "eigsh"])
    p.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.sizes, args.outer, args.inner, args.m, args.k = [200_000, 400_000], 40, 80, 40, 20
    n1, n2 = args.sizes
    env = environment("memory", "diagonal operator A v = d * v, float32", args)
    env["cpu_count"] = os.cpu_count()
    env["device"] = str(jax.devices()[0].device_kind)
    result = {"environment": env, "methods": {}}
    print(f"jax {jax.__version__} on {jax.devices()[0]} ({os.cpu_count()} CPUs); sizes {n1:,d}"
          f" and {n2:,d}")  # fmt: skip
    for method in args.methods:
        recs = [run_child(method, n, args) for n in (n1, n2)]
        columns = args.outer if method == "sketch" else args.m
        slope = (recs[1]["peak_bytes"] - recs[0]["peak_bytes"]) / (n2 - n1)
        per_col = slope / columns
        compiled = (recs[1]["compiled_bytes"] - recs[0]["compiled_bytes"]) / (n2 - n1) / columns
        unit = "outer column" if method == "sketch" else "basis vector"
        print(f"{method}: {slope:.1f} bytes / param = {per_col:.2f} bytes / param / {unit} "
              f"(compiled jit: {compiled:.2f})")  # fmt: skip
        result["methods"][method] = {
            "runs": recs,
            "columns": columns,
            "bytes_per_param": slope,
            "bytes_per_param_per_column": per_col,
            "compiled_bytes_per_param_per_column": compiled,
            "column": unit,
        }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
