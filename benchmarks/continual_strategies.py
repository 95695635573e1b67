r"""Kronecker-factored and curvature-mass continual-learning strategies against GPM and
fine-tuning on 5-task permuted MNIST (MLP 784-100-100-10) or split MNIST (5 pairs, shared
2-way head), several seeds; prints the ACC / BWT table (mean ± std) and writes JSON.

  PYTHONPATH=$PWD python benchmarks/continual_strategies.py --protocol=sgd --seeds=0,1,2
  PYTHONPATH=$PWD python benchmarks/continual_strategies.py --protocol=adam --seeds=0,1,2
  PYTHONPATH=$PWD python benchmarks/continual_strategies.py --protocol=sgd --tasks=split

Protocols (as experiments/continual.py with its MNIST defaults):
  sgd:  plain SGD lr 0.05, batch 64, 157 steps per task, 10,000 train / 2,000 test per task
        (split MNIST: all of each pair's test samples);
  adam: Adam lr 1e-3, batch 64, 1000 steps per task, all train / test samples.
Memories (Kronecker factors, Hessian) use each task's first 1000 training samples, GPM 300.
Seeds, initialisations, task permutations and minibatches follow experiments/continual.py,
so its finetune / gpm numbers are reproduced. The optimiser state is reset at each task, the
memory kept.

Strategies, `name` or `name:key=value,...`:
  finetune; gpm:threshold=0.97,samples=300 (threshold + 0.003 t at task t);
  kron_project:mode=product|input|block|mass,share=0.99,output_share=1,pre=0 — projection
    out of the protected eigenpairs of the summed per-layer Kronecker factors
    (`hessjax.continual.kron`); share=0.97/0.995/0.995: one share per dense layer, in order;
    pre=1: also project the gradient before the base optimiser (`around`);
  kron_prox:strength=1e3,share=0,mode=mass — proximal online structured Laplace penalty
    (share > 0: on the directions a kron_project of that share and mode leaves free);
  hessian_mass:share=0.9,max_k=200 — global Hessian projection, k per task by curvature mass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import environment  # noqa: E402
from experiments.common import write_json  # noqa: E402  (atomic)
from experiments.continual import mean_std  # noqa: E402
from hessjax import continual as cl  # noqa: E402
from hessjax import curvature, linalg, models, training  # noqa: E402
from hessjax.continual import kron  # noqa: E402
from hessjax.data import load_dataset, microbatches  # noqa: E402

PROTOCOLS = {
    "sgd": {"optimizer": "sgd", "lr": 0.05, "steps": 157, "train_size": 10000, "test_size": 2000},
    "adam": {"optimizer": "adam", "lr": 1e-3, "steps": 1000, "train_size": 0, "test_size": 0},
}
BATCH, MEMORY_SAMPLES, MICROBATCH, GPM_SAMPLES = 64, 1000, 250, 300
DEFAULTS = {
    "gpm": {"threshold": 0.97, "samples": GPM_SAMPLES},
    "kron_project": {"mode": "product", "share": 0.99, "output_share": 1.0, "pre": 0},
    "kron_prox": {"strength": 1e3, "share": 0.0, "mode": "mass"},
    "hessian_mass": {"share": 0.9, "max_k": 200},
}


def parse_strategy(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    opts = dict(DEFAULTS.get(name, {}))
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        if k not in opts:
            raise ValueError(f"strategy {name!r} has no option {k!r} (options {sorted(opts)})")
        opts[k] = (
            tuple(float(x) for x in v.split("/")) if k == "share" and "/" in v
            else type(opts[k])(v)
        )  # fmt: skip
    if name not in ("finetune", *DEFAULTS):
        raise ValueError(f"unknown strategy {name!r}")
    return name, opts


def around(inner, outer) -> optax.GradientTransformation:
    """outer ∘ inner ∘ outer with one outer state: the base optimiser sees projected
    gradients, and its update is projected again (exact)."""

    def init(params):
        return outer.init(params), inner.init(params)

    def update(g, state, params=None):
        so, si = state
        u, _ = outer.update(g, so, params)
        u, si = inner.update(u, si, params)
        u, _ = outer.update(u, so, params)
        return u, (so, si)

    return optax.GradientTransformation(init, update)


class Runner:
    """One strategy: optimizer (built once), memory_fields, remember(opt_state, params, task,
    t, key) -> opt_state with task t added (None: no memory)."""

    def __init__(self, name, opts, model, loss_fn, params, base, lr):
        self.name, self.opts, self.model, self.loss_fn = name, opts, model, loss_fn
        self.layers = cl.dense_layers(params)
        self.remember, self.memory_fields = None, ()
        if name == "finetune":
            self.optimizer = base
        elif name == "gpm":
            shapes = jax.eval_shape(
                lambda p: cl.dense_inputs(model, p, jnp.zeros((1, 784), jnp.float32)), params
            )
            zeros = {k: jnp.zeros((v.shape[1],) * 2, jnp.float32) for k, v in shapes.items()}
            self.optimizer = optax.chain(base, cl.gpm_project(zeros))
            self.memory_fields, self.remember = ("layer_bases",), self._gpm
        elif name in ("kron_project", "kron_prox"):
            ce = curvature.cross_entropy
            if name == "kron_project":
                share = opts["share"]
                if isinstance(share, tuple):  # one share per dense layer, in order
                    if len(share) != len(self.layers):
                        raise ValueError(f"share {share}: one per layer {self.layers}")
                    share = dict(zip(self.layers, share, strict=True))
                self.strategy = cl.kron_project(
                    model, ce, share, opts["mode"], opts["output_share"],
                    chunk_size=MICROBATCH,
                )  # fmt: skip
            else:
                self.strategy = cl.kron_prox(
                    model, ce, opts["strength"], lr, chunk_size=MICROBATCH,
                    share=opts["share"] or None, mode=opts["mode"],
                )  # fmt: skip
            memory = self.strategy.init_memory(params)
            if opts.get("pre"):
                self.optimizer = around(base, self.strategy.transform(memory))
            else:
                self.optimizer = optax.chain(base, self.strategy.transform(memory))
            self.memory_fields, self.remember = cl.KronState._fields, self._kron
        else:  # hessian_mass
            n = curvature.make_layout(params).size
            self.capacity = opts["max_k"] * 4
            self.optimizer = optax.chain(base, cl.project_out(jnp.zeros((n, self.capacity))))
            self.memory_fields, self.remember = ("rows",), self._hessian
        self.log: list[dict] = []

    def reset(self, opt_state, params):
        fresh = self.optimizer.init(params)
        get = optax.tree_utils.tree_get
        fields = {f: get(opt_state, f) for f in self.memory_fields}
        return optax.tree_utils.tree_set(fresh, **fields) if fields else fresh

    def _gpm(self, opt_state, params, task, t, key):
        padded = optax.tree_utils.tree_get(opt_state, "layer_bases")
        used = {k: linalg.used_columns(b) for k, b in padded.items()}
        thr = min(self.opts["threshold"] + 0.003 * t, 0.9999)
        x = jnp.asarray(task.x_train[: self.opts["samples"]])
        acts = cl.dense_inputs(self.model, params, x)
        bases = cl.gpm_extend({k: b for k, b in used.items() if b.shape[1]}, acts, thr)
        self.log.append({"task": t, "basis": {k: int(b.shape[1]) for k, b in bases.items()}})
        new = {k: linalg.pad_columns(bases[k], padded[k].shape[1]) for k in padded}
        return optax.tree_utils.tree_set(opt_state, layer_bases=new)

    def _kron(self, opt_state, params, task, t, key):
        batch = (
            jnp.asarray(task.x_train[:MEMORY_SAMPLES]),
            jnp.asarray(task.y_train[:MEMORY_SAMPLES]),
        )
        memory = cl.get_memory(opt_state, cl.KronState)
        st = self.strategy.remember(memory, params, microbatches(batch, MICROBATCH))
        if self.name == "kron_project":
            kept = {k: int(np.sum(np.asarray(s) == 0)) for k, s in st.scale.items()}
            self.log.append({"task": t, "protected": kept})
        return cl.set_memory(opt_state, st)

    def _hessian(self, opt_state, params, task, t, key):
        data = microbatches(
            (
                jnp.asarray(task.x_train[:MEMORY_SAMPLES]),
                jnp.asarray(task.y_train[:MEMORY_SAMPLES]),
            ),
            MICROBATCH,
        )
        d = kron.hessian_mass_directions(
            self.loss_fn, params, data, self.opts["share"], self.opts["max_k"], key=key,
            num_steps=min(2 * self.opts["max_k"] + 20, 600),
        )  # fmt: skip
        used = linalg.used_rows(optax.tree_utils.tree_get(opt_state, "rows"))
        new = linalg.extend_basis(used.T if used.shape[0] else None, d.vectors)
        self.log.append({"task": t, "k": int(d.vectors.shape[1]), "basis": int(new.shape[1])})
        return optax.tree_utils.tree_set(opt_state, rows=linalg.pad_columns(new, self.capacity).T)


def run_one(runner, model, loss_fn, seq, seed, proto) -> np.ndarray:
    k_init, key = jax.random.split(jax.random.key(seed))
    params = model.init(k_init, jnp.asarray(seq.tasks[0].x_train[:1]))
    opt_state = runner.optimizer.init(params)
    rows = []
    for t, task in enumerate(seq.tasks):
        key, k_train, k_memory = jax.random.split(key, 3)
        if t > 0:
            opt_state = runner.reset(opt_state, params)
        params, hist, opt_state = training.train(
            loss_fn, params, jnp.asarray(task.x_train), jnp.asarray(task.y_train),
            optimizer=runner.optimizer, num_steps=proto["steps"], batch_size=BATCH, key=k_train,
            log_every=proto["steps"], opt_state=opt_state, return_opt_state=True,
        )  # fmt: skip
        acc = [training.accuracy(model.apply, params, s.x_test, s.y_test) for s in seq.tasks]
        rows.append([float(a) for a in acc])
        print(f"  [{runner.name} seed {seed}] task {t}: {np.round(rows[-1], 3)}", flush=True)
        if runner.remember is not None and t < seq.num_tasks - 1:
            opt_state = runner.remember(opt_state, params, task, t, k_memory)
    return np.asarray(rows)


def run_strategy(name, opts, dataset, tasks_cfg, seeds, proto) -> dict:
    """Accuracy matrices, metrics (per seed and mean ± std), memory logs of one strategy."""
    mats, logs, begin = [], [], time.perf_counter()
    runner = None
    for seed in seeds:
        seq = cl.task_sequence(dataset, tasks_cfg, seed=seed)
        if runner is None:  # one optimiser object for all seeds: one compilation
            model = models.MLP((100, 100, seq.num_classes), act="relu")
            loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
            params = model.init(jax.random.key(0), jnp.zeros((1, 784), jnp.float32))
            base = training.make_optimizer(proto["optimizer"], proto["lr"])
            runner = Runner(name, opts, model, loss_fn, params, base, proto["lr"])
        runner.memory, runner.log = None, []
        mats.append(run_one(runner, model, loss_fn, seq, seed, proto))
        logs.append(runner.log)
    metrics = [cl.continual_metrics(r)._asdict() for r in mats]
    summary = {k: mean_std([m[k] for m in metrics]) for k in ("acc", "bwt", "forgetting")}
    return {"summary": summary, "metrics": metrics, "memory_log": logs,
            "accuracy_matrices": [r.tolist() for r in mats],
            "seconds": time.perf_counter() - begin}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="sgd")
    p.add_argument("--tasks", choices=("permuted", "split"), default="permuted")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--strategies", default="finetune;gpm;kron_project;kron_prox",
        help="';'-separated strategy specs",
    )  # fmt: skip
    p.add_argument(
        "--data_dir", default=os.path.join(os.path.dirname(__file__), "../../shared/data/mnist")
    )
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    proto = PROTOCOLS[args.protocol]
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [parse_strategy(s) for s in args.strategies.split(";") if s]
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"no MNIST idx files at {args.data_dir}")
    dataset = load_dataset({"name": "mnist", "dir": args.data_dir, "source": "idx"})
    # split: every test sample of the pair (the smallest pair, (8, 9), has 1,983 < 2,000)
    test_size = proto["test_size"] if args.tasks == "permuted" else 0
    tasks_cfg = {"kind": args.tasks, "num_tasks": 5, "train_size": proto["train_size"],
                 "test_size": test_size}  # fmt: skip
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"continual_{args.tasks}_{args.protocol}.json"
    )
    results = {}
    for spec, (name, opts) in zip(args.strategies.split(";"), specs, strict=True):
        try:
            results[spec] = run_strategy(name, opts, dataset, tasks_cfg, seeds, proto)
        except Exception as err:  # record it; the other strategies run on
            results[spec] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{spec}: FAILED {results[spec]['error']}", flush=True)
            continue
        summary = results[spec]["summary"]
        print(f"{spec}: ACC {summary['acc'][0]:.3f} ± {summary['acc'][1]:.3f}  "
              f"BWT {summary['bwt'][0]:+.3f} ± {summary['bwt'][1]:.3f}  "
              f"({results[spec]['seconds']:.0f} s)", flush=True)  # fmt: skip
        write_json(out, {"env": environment("continual_strategies", "mnist", args),
                         "protocol": proto, "results": results})  # fmt: skip
    print(f"\n{args.tasks} MNIST, {args.protocol} protocol, seeds {seeds}")
    print(f"{'strategy':48s} {'ACC':>15s} {'BWT':>16s}")
    for spec, r in results.items():
        if "error" in r:
            print(f"{spec:48s} failed: {r['error']}")
            continue
        (a, sa), (b, sb) = r["summary"]["acc"], r["summary"]["bwt"]
        print(f"{spec:48s} {a:.3f} ± {sa:.3f}   {b:+.3f} ± {sb:.3f}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
