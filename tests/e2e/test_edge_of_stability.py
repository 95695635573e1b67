"""experiments/edge_of_stability.py end to end (GD and Adam), and the README monitor example."""

import json
import os

import numpy as np
import pytest
import tiny
from _env import ROOT


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from experiments import edge_of_stability

    workdir = str(tmp_path_factory.mktemp("eos"))
    return workdir, edge_of_stability.run(tiny.edge_of_stability(), workdir)


def test_binary_writes_results_and_figure(small_run):
    workdir, results = small_run
    for name in ("results.json", "edge_of_stability.png", "eos_lr0.ckpt", "eos_lr1.ckpt"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert [r["learning_rate"] for r in saved["runs"]] == [0.2, 0.4]
    for r in saved["runs"]:
        assert r["steps"] == [0, 10, 20, 30, 40, 50]
        assert len(r["sharpness"]) == len(r["train_loss"]) == 6
        assert len(r["loss_curve"]) == 60 and np.all(np.isfinite(r["sharpness"]))
        np.testing.assert_allclose(r["train_loss"], np.asarray(r["loss_curve"])[::10], rtol=1e-5)


def test_binary_resumes(small_run):
    from experiments import edge_of_stability

    workdir, first = small_run
    again = edge_of_stability.run(
        tiny.edge_of_stability(), workdir
    )  # every chunk from its checkpoint
    for a, b in zip(first["runs"], again["runs"], strict=True):
        assert a["sharpness"] == b["sharpness"] and a["loss_curve"] == b["loss_curve"]


def test_binary_adam_records_both_sharpnesses_and_resumes(tmp_path):
    from experiments import edge_of_stability

    c = tiny.edge_of_stability()
    c.eos.optimizer = "adam"
    c.eos.adam.learning_rates = (1e-3,)
    results = edge_of_stability.run(c, str(tmp_path))
    (run,) = results["runs"]
    assert run["optimizer"] == "adam" and results["optimizer"] == "adam"
    assert run["threshold"] == pytest.approx(38 / 1e-3)
    assert len(run["preconditioned_sharpness"]) == len(run["sharpness"]) == len(run["steps"])
    # P⁻¹ scales the curvature up by orders of magnitude (√v̂ ≪ 1 on this problem)
    assert min(run["preconditioned_sharpness"]) > 10 * max(run["sharpness"])
    assert run["final_median_sharpness"] == pytest.approx(
        np.median(np.asarray(run["preconditioned_sharpness"])[np.asarray(run["steps"]) >= 48])
    )
    assert os.path.getsize(tmp_path / "edge_of_stability.png") > 0
    again = edge_of_stability.run(c, str(tmp_path))  # from the checkpoint: the same numbers
    assert again["runs"][0]["preconditioned_sharpness"] == run["preconditioned_sharpness"]


def test_binary_rejects_bad_step_size(tmp_path):
    from experiments import common, edge_of_stability

    c = tiny.edge_of_stability()
    c.eos.learning_rates = (0.1, 0.0)
    with pytest.raises(common.ConfigError, match=r"eos.learning_rates = \(0.1, 0.0\)"):
        edge_of_stability.run(c, str(tmp_path))


def test_binary_reports_divergence(tmp_path):
    from experiments import edge_of_stability

    c = tiny.edge_of_stability()
    c.eos.learning_rates = (50.0,)
    with pytest.raises(FloatingPointError, match=r"step size 50.0 diverged: .* at step \d+"):
        edge_of_stability.run(c, str(tmp_path))
    with open(tmp_path / "diverged.json") as f:
        assert json.load(f)["steps"][0] == 0  # the measurements before the divergence kept


def _edge_config(steps):
    from experiments.configs.edge_of_stability import get_config

    c = get_config()
    c.eos.steps = steps
    return c


def _assert_at_edge(results):
    for r in results["runs"]:
        assert r["sharpness"][0] < 2 / r["learning_rate"], r["learning_rate"]
        assert 0.9 <= r["ratio"] <= 1.2, (r["learning_rate"], r["ratio"])


def test_edge_of_stability_small(tmp_path):
    """A CI-sized run: the default problem, two step sizes, 1,000 steps."""
    from experiments import edge_of_stability

    c = _edge_config(1000)
    c.eos.learning_rates = (0.2, 0.4)
    _assert_at_edge(edge_of_stability.run(c, str(tmp_path)))


@pytest.mark.slow
def test_edge_of_stability_default(tmp_path):
    """The default run (three step sizes, 3,000 steps, about a minute on 2 cores)."""
    from experiments import edge_of_stability

    results = edge_of_stability.run(_edge_config(3000), str(tmp_path))
    _assert_at_edge(results)
    assert results["all_at_edge"]


def test_readme_monitor_example_runs():
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # the notebook cell it continues
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    log = namespace["log"]
    assert log.steps.tolist() == [100, 200, 300] and np.all(log.sharpness > 0)
    assert log.converged.all() and np.all(log.hvps > 0)
