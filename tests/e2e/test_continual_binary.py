"""experiments/continual.py end to end in JAX's default float32: forgetting, kill and resume, a
diverging strategy, flags, and the README continual example."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny
from _env import ROOT

from hessjax import continual as cl


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from experiments import continual

    workdir = str(tmp_path_factory.mktemp("continual_ref"))
    return workdir, continual.run(tiny.continual(), workdir)


def test_hessian_projection_forgets_less_than_finetuning(reference):
    workdir, results = reference
    per_seed = {
        name: np.array([m["forgetting"] for m in results["metrics"][name]])
        for name in ("finetune", "hessian_project")
    }
    gap = per_seed["finetune"] - per_seed["hessian_project"]
    assert np.all(gap > 0), per_seed
    assert gap.mean() > 0.03, per_seed
    for name in ("results.json", "accuracy_matrices.npz", "first_task_accuracy.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    matrices = np.load(os.path.join(workdir, "accuracy_matrices.npz"))
    assert matrices["finetune"].shape == (3, 3, 3)
    assert "hessian_project" in results["table"] and "±" in results["table"]
    # checkpoints carry the binary's state version (a file of another version is recomputed:
    # tests/e2e/test_checkpoints.py)
    from experiments import continual

    ckpt = os.path.join(workdir, "checkpoints", "seed_0", "hessian_project.ckpt")
    header = json.loads(open(ckpt, "rb").read().partition(b"\n")[0])
    assert header["version"] == continual.CHECKPOINT_VERSION


def test_kill_and_resume_gives_the_uninterrupted_result(reference, tmp_path):
    from experiments import continual

    _, want = reference
    workdir = str(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}  # float32, as here
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.continual", f"--workdir={workdir}",
         *tiny.as_flags(tiny.CONTINUAL)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # kill it mid-run, right after seed 0's hessian_project has checkpointed task 0 (so the
    # restart must restore a non-empty protected basis from the optimiser state)
    events_path = os.path.join(workdir, "events.jsonl")
    target = {"event": "checkpoint", "seed": 0, "strategy": "hessian_project", "task": 0}

    def reached():
        if not os.path.exists(events_path):
            return False
        with open(events_path) as f:
            lines = [json.loads(line) for line in f if line.endswith("\n")]
        return any(target.items() <= e.items() for e in lines)

    deadline = time.time() + 300
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate()[1]
    assert alive and reached(), err[-3000:]
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    got = continual.run(tiny.continual(), workdir)  # restart
    assert got["accuracy_matrices"] == want["accuracy_matrices"]

    with open(os.path.join(workdir, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    runs = list(dict.fromkeys(e["run"] for e in events))
    assert len(runs) == 2
    saved_first = {(e["seed"], e["strategy"], e["task"]) for e in events
                   if e["run"] == runs[0] and e["event"] == "checkpoint"}  # fmt: skip
    started_again = {(e["seed"], e["strategy"], e["task"]) for e in events
                     if e["run"] == runs[1] and e["event"] == "start"}  # fmt: skip
    assert {(0, "finetune", t) for t in range(3)} | {(0, "hessian_project", 0)} <= saved_first
    assert not saved_first & started_again  # no completed task was trained again
    trained = [(e["seed"], e["strategy"], e["task"]) for e in got["trained"]]
    assert len(trained) == len(set(trained)) == 3 * 2 * 3  # none lost, none twice
    by = {(e["seed"], e["strategy"], e["task"]): e["run"] for e in got["trained"]}
    assert by[(0, "hessian_project", 0)] == runs[0] and by[(2, "hessian_project", 2)] == runs[1]


class _Count(NamedTuple):
    """A toy memory: the number of tasks remembered."""

    n: jax.Array

    def check(self) -> None:
        pass

    def check_params(self, params) -> None:
        pass


def _broken() -> cl.Strategy:
    """Multiplies every update by 1e30 once a task is remembered, so training diverges at
    task 1 (a whole strategy in a few lines: how a new one is added)."""

    def transform(memory):
        def update(updates, state, params=None):
            scale = jnp.where(state.n > 0, 1e30, 1.0)
            return jax.tree_util.tree_map(lambda u: u * scale, updates), state

        return optax.GradientTransformation(lambda params: memory, update)

    return cl.Strategy(
        "broken", lambda params: _Count(jnp.zeros((), jnp.int32)),
        lambda memory, params, data, **kw: _Count(memory.n + 1), transform,
    )  # fmt: skip


def test_a_diverging_strategy_is_recorded_and_the_others_run_on(tmp_path, monkeypatch):
    from experiments import continual

    monkeypatch.setitem(continual.STRATEGY_BUILDERS, "broken", lambda ctx: _broken())
    c = tiny.continual()
    c.seeds, c.strategies = (0,), ("finetune", "broken")
    c.data.num_samples, c.train.steps, c.train.log_every = 1000, 20, 10
    c.memory.num_samples, c.memory.microbatch_size = 100, 50
    workdir = str(tmp_path)
    got = continual.run(c, workdir)
    assert got["diverged"] == [
        {
            "seed": 0,
            "strategy": "broken",
            "task": 1,
            "step": 10,
            "error": got["diverged"][0]["error"],
        }
    ]
    assert "not finite" in got["diverged"][0]["error"] or "nan" in got["diverged"][0]["error"]
    broken = got["accuracy_matrices"]["broken"][0]
    assert all(v is not None for v in broken[0]) and broken[1] == broken[2] == [None] * 3
    assert np.all(np.isfinite(got["accuracy_matrices"]["finetune"][0]))
    assert got["summary"]["broken"]["diverged"] == 1 and got["summary"]["broken"]["acc"] is None
    assert got["summary"]["finetune"]["diverged"] == 0
    row = next(line for line in got["table"].splitlines() if line.startswith("broken"))
    assert "—" in row and "1/1" in row
    assert os.path.getsize(os.path.join(workdir, "first_task_accuracy.png")) > 0
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["diverged"] == got["diverged"]  # strict JSON: no NaN
    again = continual.run(c, workdir)  # resumes: the divergence is not retried
    assert again["diverged"] == got["diverged"]
    with open(os.path.join(workdir, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    second = [e for e in events if e["run"] == again["run"] and e["event"] == "start"]
    assert not second


def test_selection_picks_the_best_validation_point_on_unreported_seeds(tmp_path, monkeypatch):
    """select.grid runs every grid point on select.seeds, chooses by validation ACC, records
    all points (results.json and selection.json), and the reported run uses the choice."""
    from experiments import common, continual
    from experiments.configs import continual as configs

    grid = {"hessian_project": {"hessian.k": (1, 60)}}
    monkeypatch.setitem(configs.GRIDS, "tiny_test", grid)
    config = common.set_fields(tiny.continual(), {
        "seeds": (0,), "select.seeds": (7,), "select.grid": "tiny_test", "tasks.num_tasks": 2,
        "train.steps": 200})  # fmt: skip
    results = continual.run(config, str(tmp_path))
    record = results["selection"]["strategies"]
    points = record["hessian_project"]["points"]
    assert [p["overrides"] for p in points] == [{"hessian.k": 1}, {"hessian.k": 60}]
    means = [p["mean_valid_acc"] for p in points]
    assert all(len(p["valid_acc"]) == 1 and 0 < p["valid_acc"][0] <= 1 for p in points)
    assert record["hessian_project"]["chosen"] == points[int(np.argmax(means))]["overrides"]
    assert record["finetune"] == {"grid": {}, "points": [{"overrides": {}}], "chosen": {}}
    with open(tmp_path / "selection.json") as f:
        assert json.load(f) == record
    assert (tmp_path / "checkpoints/select/hessian_project_1/seed_7/hessian_project.ckpt").exists()
    assert not (tmp_path / "checkpoints/seed_7").exists()  # selection seeds are never reported
    assert [m["seed"] for m in results["metrics"]["hessian_project"]] == [0]
    assert np.shape(results["validation_matrices"]["finetune"]) == (1, 2, 2)
    # the reported checkpoint's fingerprint is that of the chosen configuration
    chosen = common.set_fields(
        continual.resolve_config(config), record["hessian_project"]["chosen"]
    )
    ckpt = tmp_path / "checkpoints/seed_0/hessian_project.ckpt"
    header = json.loads(ckpt.read_bytes().partition(b"\n")[0])
    assert header["fingerprint"] == common.config_hash(
        continual._fingerprint(chosen, "hessian_project", 0)
    )


def test_gpm_pmnist_preset_in_small(tmp_path):
    """The gpm_pmnist preset (GPM's protocol) on 3 tasks of 600 MNIST images, 150 steps:
    runs end to end with its bias-free model, global standardisation and per-layer GPM
    thresholds, and GPM forgets less than fine-tuning."""
    from experiments import common, continual
    from experiments.configs import continual as configs
    from hessjax.data import default_data_dir

    data_dir = default_data_dir("mnist")
    if data_dir is None:
        pytest.skip("../shared/data/mnist is absent: no real MNIST idx files on this machine")
    config = common.set_fields(configs.get_config("gpm_pmnist"), {
        "data.dir": data_dir, "seeds": (0,), "strategies": ("finetune", "gpm"),
        "tasks.num_tasks": 3, "tasks.train_size": 600, "tasks.test_size": 300,
        "train.steps": 150, "train.log_every": 150, "train.learning_rate": 0.05,
        "memory.num_samples": 300, "memory.microbatch_size": 150})  # fmt: skip
    with pytest.raises(common.ConfigError, match="memory.num_samples = 1050: must be at "
                       "most the 600 training samples a task keeps"):  # fmt: skip
        continual.run(common.set_fields(config.copy_and_resolve_references(),
                                        {"memory.num_samples": 1050}), str(tmp_path))  # fmt: skip
    results = continual.run(config, str(tmp_path))
    assert results["num_params"] == 784 * 100 + 100 * 100 + 100 * 10  # no biases
    metrics = {name: results["metrics"][name][0] for name in ("finetune", "gpm")}
    assert metrics["gpm"]["forgetting"] < 0.5 * metrics["finetune"]["forgetting"], metrics
    assert np.shape(results["validation_matrices"]["gpm"]) == (1, 3, 3)


def test_readme_continual_example_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (block,) = [b for b in blocks if "strategy.remember" in b]
    assert len(block.strip().splitlines()) <= 22
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    rows = np.asarray(namespace["rows"])
    assert rows.shape == (3, 3) and np.all(np.isfinite(rows))
    assert np.all(np.diag(rows) > 0.3)  # each task learnt (chance 0.1; measured 0.42 - 0.49)
    assert namespace["memory"].basis.shape[1] == 30  # 10 directions per task


def test_binary_parses_flags_and_rejects_unknown_strategy(tmp_path):
    from experiments import continual

    c = tiny.continual()
    c.strategies = ("finetune", "nope")
    with pytest.raises(ValueError, match="nope"):
        continual.run(c, str(tmp_path))
    for field, value in (("share", 1.5), ("share", 0.0), ("strength", -1.0), ("mode", "diag")):
        c = tiny.continual()
        c.strategies, c.kron[field] = ("kron_project",), value
        with pytest.raises(ValueError, match=f"kron.{field}"):
            continual.run(c, str(tmp_path))
    # tuple fields from the command line arrive as ("a,b",): split into ("a", "b")
    for given in (("finetune,gpm",), ("finetune, gpm",), ("finetune", "gpm")):
        c.strategies, c.seeds = given, ("0,2",)
        resolved = continual.resolve_config(c)
        assert resolved.strategies == ("finetune", "gpm") and resolved.seeds == (0, 2)


def test_binary_runs_kron_project_and_it_forgets_less(tmp_path):
    """kron_project through experiments/continual.py on the tiny run's shapes (seed 0).
    Measured on 2 CPU cores (seeds 0, 1): forgetting finetune 0.053, 0.075; kron_project
    0.010, 0.014."""
    from experiments import continual

    c = tiny.continual()
    c.seeds, c.strategies = (0,), ("finetune", "kron_project")
    got = continual.run(c, str(tmp_path))
    forget = {name: got["metrics"][name][0]["forgetting"] for name in c.strategies}
    assert forget["kron_project"] < forget["finetune"] - 0.02, forget
    r = np.asarray(got["accuracy_matrices"]["kron_project"][0])
    assert r.shape == (3, 3) and np.all(np.isfinite(r)) and np.all(np.diag(r) > 0.2)
    assert not got["diverged"]


@pytest.mark.slow
def test_every_strategy_runs_and_the_baselines_forget_less(tmp_path):
    """Every strategy on a short permuted MNIST-1D run (one seed, 3 tasks): finite
    (3, 3) accuracy matrices; EWC, OGD and GPM forget less than fine-tuning (measured on 2
    CPU cores: finetune 0.08, EWC 0.04, OGD 0.04, GPM 0.00)."""
    from experiments import continual

    c = tiny.continual()
    c.seeds, c.strategies = (0,), continual.STRATEGY_NAMES
    c.train.steps, c.hessian.k, c.hessian.max_k = 200, 10, 10
    c.update_pca.k, c.update_pca.num_records = 10, 20
    got = continual.run(c, str(tmp_path))
    forget = {name: got["metrics"][name][0]["forgetting"] for name in continual.STRATEGY_NAMES}
    for name in continual.STRATEGY_NAMES:
        r = np.asarray(got["accuracy_matrices"][name][0])
        assert r.shape == (3, 3) and np.all(np.isfinite(r)), name
    for name in ("ewc", "ogd", "gpm"):
        assert forget[name] < forget["finetune"], forget
