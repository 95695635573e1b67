"""Layer-wise top Hessian eigenvalues: all blocks in one vmapped Lanczos vs one solve per block.

Problem: tanh MLP 784-256-128-10 (235,146 params, 3 layer blocks) trained briefly with Adam,
Hessian of the mean cross-entropy on 2,048 MNIST training images as one microbatch (MNIST-1D
and a 40-256-128-10 MLP if ../shared/data/mnist is absent). Measured in one process:

  batched     hessjax.linalg.block_eigsh with curvature.layer_block_diagonal: the 3 blocks'
              Lanczos recurrences in lockstep in one compiled loop; a step is one restricted
              product per layer
  batched-masked  the same with masked full products per block (vmapped over blocks)
  restricted  one eigsh per layer on hessian_operator(select=layer): differentiates only the
              layer's leaves (the cheapest sequential way)
  masked      one eigsh per layer on P_i H P_i with full HVPs (a full backward per block, as
              the peers do)

Each: time to solution after compilation (median), compile time, products, top eigenvalues and
their agreement. All solves use tol=1e-4 and start inside their block.

    python benchmarks/blocks.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_timed, environment, timed_interleaved, write_json

from hessjax import training
from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    hessian_operator,
    layer_block_diagonal,
    partition_by_layer,
)
from hessjax.data import default_data_dir, load_idx_dir, load_mnist1d, microbatches
from hessjax.linalg import Operator, block_eigsh, eigsh
from hessjax.models import MLP

TOL = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 512 samples, 2 repeats")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--num-samples", type=int, default=None, help="Hessian batch (default 2048)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=None, help="timed solves (default 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_samples is None:
        args.num_samples = 512 if args.quick else 2048
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    return args


def load_data(seed: int):
    directory = default_data_dir("mnist")
    if directory is not None:
        ds, source = load_idx_dir(directory), f"MNIST idx files ({directory})"
    else:
        ds, source = load_mnist1d(num_samples=10000, seed=seed), "MNIST-1D (no MNIST found)"
    x = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float32)
    return x, ds.y_train.astype(np.int32), source


def _masked_product(v, op, mask):
    return mask * op.matvec(mask * v)


def main(argv=None) -> dict:
    args = parse_args(argv)
    key = jax.random.key(args.seed)
    x, y, source = load_data(args.seed)
    model = MLP((256, 128, 10), act="tanh")
    loss = MeanLoss(model.apply, cross_entropy)
    params = model.init(key, jnp.asarray(x[:2]))
    params, _ = training.train(
        loss, params, jnp.asarray(x), jnp.asarray(y),
        optimizer=training.make_optimizer("adam", 1e-3), num_steps=args.train_steps,
        batch_size=128, key=jax.random.fold_in(key, 1),
    )  # fmt: skip
    idx = np.random.default_rng(args.seed).permutation(len(x))[: args.num_samples]
    data = microbatches((jnp.asarray(x[idx]), jnp.asarray(y[idx])), args.num_samples)
    op = hessian_operator(loss, params, data)
    part = partition_by_layer(op.layout)
    solve_key = jax.random.fold_in(key, 2)
    print(f"jax {jax.__version__} on {jax.devices()}; data: {source}")
    print(f"model: MLP {x.shape[1]}-256-128-10 tanh, {op.size:,} params, blocks {part.names}")

    masks = [jnp.asarray(part.block_ids == i, op.dtype) for i in range(part.num_blocks)]
    starts = [m * jax.random.normal(jax.random.fold_in(solve_key, i), (op.size,), op.dtype)
              for i, m in enumerate(masks)]  # fmt: skip
    restricted = [hessian_operator(loss, params, data, select=name) for name in part.names]

    def batched(o):
        diagonal = layer_block_diagonal(o, part)
        return block_eigsh(o, part, 1, key=solve_key, tol=TOL, block_diagonal=diagonal)

    def batched_masked(o):
        return block_eigsh(o, part, 1, key=solve_key, tol=TOL)

    def masked_one(o, mask, v0):
        masked = Operator(_masked_product, (o, mask), o.size, o.dtype)
        return eigsh(masked, 1, key=solve_key, v0=v0, tol=TOL)

    def restricted_one(o):
        return eigsh(o, 1, key=solve_key, tol=TOL)

    runs = {"batched": (batched, [(op,)]), "batched-masked": (batched_masked, [(op,)])}
    runs["restricted"] = (restricted_one, [(o,) for o in restricted])
    runs["masked"] = (masked_one, [(op, m, v) for m, v in zip(masks, starts, strict=True)])
    compiled, compile_s, values, matvecs = {}, {}, {}, {}
    for name, (fn, arg_list) in runs.items():
        exes, seconds = zip(*(compile_timed(fn, *a) for a in arg_list), strict=True)
        compiled[name], compile_s[name] = list(zip(exes, arg_list, strict=True)), sum(seconds)
        outs = [jax.block_until_ready(exe(*a)) for exe, a in compiled[name]]
        values[name] = np.concatenate([np.ravel(o.eigenvalues) for o in outs]).tolist()
        matvecs[name] = int(sum(np.sum(o.num_matvecs) for o in outs))

    def sequence(name):
        return lambda: [exe(*a) for exe, a in compiled[name]]

    times = timed_interleaved({n: (sequence(n), ()) for n in runs}, args.repeats, warmup=1)
    seconds = {n: float(np.median(t)) for n, t in times.items()}
    ref = np.asarray(values["batched"])
    print(f"\n{'solver':<15}{'time s':>9}{'compile s':>11}{'HVPs':>7}{'vs batched':>12}"
          f"  top eigenvalue per block")  # fmt: skip
    for name in runs:
        diff = np.max(np.abs(np.asarray(values[name]) - ref) / np.abs(ref))
        eigenvalues = " ".join(f"{v:.5g}" for v in values[name])
        print(
            f"{name:<15}{seconds[name]:>9.3f}{compile_s[name]:>11.2f}{matvecs[name]:>7}"
            f"{seconds[name] / seconds['batched']:>11.2f}x  {eigenvalues}  (max rel {diff:.0e})"
        )
    result = {
        **environment("blocks", source, args),
        "num_params": op.size,
        "blocks": list(part.names),
        "block_sizes": part.sizes.tolist(),
        "time_s": seconds,
        "times_s": times,
        "compile_s": compile_s,
        "num_matvecs": matvecs,
        "top_eigenvalues": values,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
