"""Half-precision curvature products: eigenvalue error of bfloat16 / float16 params and data
against float32, on the reference MLP of the other benchmarks.

Problem: tanh MLP 784-256-128-10 (235,146 params) trained briefly in float32 with Adam, Hessian
of the mean cross-entropy on 2,048 MNIST training images (random images if ../shared/data/mnist
is absent). The same params and data are cast to bfloat16 and float16; products run in that
dtype, Lanczos vectors in float32, the tridiagonal problem in float64. Printed: the top-k
eigenvalues for each dtype, their relative error against float32, and HVP time / float32 HVP
time measured in one run.

    python benchmarks/precision.py [--quick] [--k 10] [--out results.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_timed, environment, timed_interleaved, write_json
from hvp import load_images

from hessjax import training
from hessjax.curvature import MeanLoss, cross_entropy, hessian_operator
from hessjax.data import microbatches
from hessjax.linalg import eigsh
from hessjax.models import MLP

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 256 samples, 2 repeats")
    p.add_argument("--k", type=int, default=10, help="top eigenvalues compared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def op_matvec(op, v):
    return op.matvec(v)


def main(argv=None) -> dict:
    args = parse_args(argv)
    n_samples, repeats = (256, 2) if args.quick else (2048, 5)
    x, y, source = load_images(n_samples, args.seed)
    x = x.reshape(len(x), -1)
    key = jax.random.key(args.seed)
    model = MLP((256, 128, 10), act="tanh")
    loss = MeanLoss(model.apply, cross_entropy)
    params = model.init(key, jnp.asarray(x[:1]))
    params, _ = training.train(
        loss, params, x, y, optimizer=training.make_optimizer("adam", 1e-3),
        num_steps=50 if args.quick else 200, batch_size=128, key=jax.random.fold_in(key, 1),
    )  # fmt: skip
    print(f"jax {jax.__version__} on {jax.devices()}; data: {source}")
    values, ops = {}, {}
    for name, dtype in DTYPES.items():
        p = jax.tree_util.tree_map(lambda a, d=dtype: a.astype(d), params)
        data = microbatches((jnp.asarray(x, dtype), jnp.asarray(y)), n_samples)
        ops[name] = hessian_operator(loss, p, data)
        tol = 1e-5 if name == "float32" else 1e-3
        res = eigsh(ops[name], args.k, key=jax.random.fold_in(key, 2), tol=tol)
        values[name] = np.asarray(res.eigenvalues, np.float64)
    v = jax.random.normal(jax.random.fold_in(key, 3), (ops["float32"].size,), jnp.float32)
    calls = {name: (compile_timed(op_matvec, op, v)[0], (op, v)) for name, op in ops.items()}
    times = timed_interleaved(calls, repeats, warmup=1)
    seconds = {n: float(np.median(t)) for n, t in times.items()}
    ref = values["float32"]
    errors = {n: (np.abs(values[n] - ref) / np.abs(ref)).tolist() for n in DTYPES}
    header = f"{'dtype':<10}{'max rel err':>12}{'median':>10}{'HVP time / f32':>16}"
    print(f"\n{header}  top eigenvalues")
    for name in DTYPES:
        e = np.asarray(errors[name])
        print(f"{name:<10}{e.max():>12.2e}{np.median(e):>10.2e}"
              f"{seconds[name] / seconds['float32']:>16.2f}  "
              + " ".join(f"{t:.4g}" for t in values[name]))  # fmt: skip
    result = {
        **environment("precision", source, args),
        "num_params": ops["float32"].size,
        "top_eigenvalues": {n: v.tolist() for n, v in values.items()},
        "relative_errors": errors,
        "hvp_time_s": seconds,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
