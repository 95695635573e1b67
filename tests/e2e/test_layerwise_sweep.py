"""Tests for experiments/layerwise_sweep.py (layer-wise top eigenvalues over a one-factor
sweep, Haink 2023), `LayerwiseSpectrum.depth_trend` and `hessjax.data.rescale_inputs`: a tiny
sweep on MNIST-1D (JAX's default float32), its resume, a failing setting, bad sweep lists."""

import json
import os

import numpy as np
import pytest
import tiny

from experiments import common
from experiments import layerwise_sweep as sweep
from hessjax.analysis.blocks import LayerwiseSpectrum
from hessjax.data import Dataset, rescale_inputs


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("layerwise_sweep"))
    return workdir, sweep.run(tiny.layerwise_sweep(), workdir)


def test_sweep_writes_results_figure_and_progress(tiny_sweep):
    workdir, results = tiny_sweep
    for name in ("results.json", "layerwise_sweep.png", sweep.PROGRESS):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert [e["name"] for e in saved["settings"]] == ["base", "depth=2"]
    assert saved["failed"] == []
    for entry in saved["settings"]:
        depth = entry["setting"]["depth"]
        recs = entry["result"]["checkpoints"]
        assert [r["step"] for r in recs] == [0, 40]
        for r in recs:
            assert r["layers"] == [f"Dense_{i}" for i in range(depth + 1)]
            top = np.asarray(r["layer_top"])
            assert np.all(top > 0)
            # Cauchy interlacing: a diagonal block's top eigenvalue never exceeds the whole
            # Hessian's (up to the Lanczos tolerance)
            assert top.max() <= r["whole_top"] * (1 + 1e-3)
            assert r["trend"]["argmax"] == int(np.argmax(top))
    (base,) = [e for e in saved["settings"] if e["name"] == "base"]
    assert base["result"]["num_params"] == 40 * 8 + 8 + 8 * 10 + 10
    summary = saved["summary"]
    assert [v["step"] for v in summary] == [0, 40]
    last = [e["result"]["checkpoints"][-1]["trend"] for e in saved["settings"]]
    assert summary[-1]["settings_measured"] == 2
    assert summary[-1]["deepest_largest"] == sum(t["deepest_largest"] for t in last)


def test_sweep_resumes_and_survives_a_failing_setting(tiny_sweep, monkeypatch):
    """Rerun after the last setting's progress was lost (as if killed before it finished),
    with that setting now failing: the first is resumed, not rerun; the failure is recorded
    and results.json still written."""
    workdir, first = tiny_sweep

    def flaky(config, setting, ds, key):
        if setting["depth"] == 2:
            raise FloatingPointError("training loss became nan at step 7")
        raise AssertionError("finished settings must be resumed, not rerun")

    monkeypatch.setattr(sweep, "run_setting", flaky)
    config = tiny.layerwise_sweep()
    progress_path = os.path.join(workdir, sweep.PROGRESS)
    with open(progress_path) as f:
        progress = json.load(f)
    del progress[sweep._fingerprint(config, sweep.settings(config)[-1][1])]
    common.write_json(progress_path, progress)
    again = sweep.run(config, workdir)
    assert again["failed"] == ["depth=2"]
    failed = again["settings"][-1]
    assert "FloatingPointError" in failed["error"] and "result" not in failed
    resumed = again["settings"][0]
    assert resumed["resumed"] and resumed["result"] == first["settings"][0]["result"]
    assert again["summary"][-1]["settings_measured"] == 1
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["failed"] == ["depth=2"]


@pytest.mark.parametrize(
    "field, value",
    [("sweep.depth", ()), ("sweep.loss", ()), ("sweep.scaling", ("raw",)), ("checkpoints", (5, 0))],
)
def test_bad_sweep_lists_fail_before_any_work(tmp_path, field, value):
    config = tiny.layerwise_sweep()
    section, name = field.split(".") if "." in field else (None, field)
    (config[section] if section else config)[name] = value
    workdir = str(tmp_path / "never")
    with pytest.raises(common.ConfigError, match=f"config.{field}"):
        sweep.run(config, workdir)
    assert not os.path.exists(workdir)


def test_settings_vary_one_field_at_a_time():
    config = tiny.layerwise_sweep()
    names = [name for name, _ in sweep.settings(config)]
    assert names == ["base", "depth=2"]
    config.sweep.loss = ("mse", "ce")
    config.sweep.width = (4, 8, 16)
    assert [name for name, _ in sweep.settings(config)] == [
        "base",
        "depth=2",
        "width=4",
        "width=16",
        "loss=mse",
    ]
    base = dict(sweep.settings(config)[0][1])
    for _, setting in sweep.settings(config)[1:]:
        assert sum(setting[f] != base[f] for f in sweep.FIELDS) == 1


def test_depth_trend():
    def trend(tops):
        n = len(tops)
        return LayerwiseSpectrum(tuple(map(str, range(n))), np.ones(n), np.asarray(tops), 0.0, 0)

    up = trend([0.1, 0.5, 2.0]).depth_trend()
    assert up == {"spearman": pytest.approx(1.0), "argmax": 2, "deepest_largest": True,
                  "last_over_first": pytest.approx(20.0)}  # fmt: skip
    down = trend([9.75, 1.86, 0.963]).depth_trend()
    assert down["spearman"] == pytest.approx(-1.0) and down["argmax"] == 0
    assert not down["deepest_largest"]
    assert trend([3.0, 1.0, 2.0]).depth_trend()["spearman"] == pytest.approx(-0.5)
    assert trend([1.0, 1.0, 2.0]).depth_trend()["spearman"] is None  # ties
    with pytest.raises(ValueError, match="at least one block"):
        trend([]).depth_trend()


def test_rescale_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    x[:, 3] = 7.0  # a constant feature
    xt = rng.normal(size=(10, 4)).astype(np.float32)
    ds = Dataset(x, np.zeros(50, np.int32), xt, np.zeros(10, np.int32), 2, "toy")
    assert rescale_inputs(ds, "none") is ds
    unit = rescale_inputs(ds, "unit")
    assert unit.x_train.min() == 0.0 and unit.x_train.max() == pytest.approx(1.0)
    np.testing.assert_allclose(unit.x_test, (xt - x.min()) / (x.max() - x.min()), rtol=1e-5)
    std = rescale_inputs(ds, "standard")
    np.testing.assert_allclose(std.x_train[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std.x_train[:, :3].std(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(std.x_train[:, 3], 0.0)  # centred, not divided by 0
    mean, sd = x[:, :3].astype(np.float64).mean(0), x[:, :3].astype(np.float64).std(0)
    np.testing.assert_allclose(std.x_test[:, :3], (xt[:, :3] - mean) / sd, rtol=1e-5)
    assert std.x_train.dtype == np.float32
    glob = rescale_inputs(ds, "global")
    assert glob.x_train.mean() == pytest.approx(0.0, abs=1e-5)
    assert glob.x_train.std() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(glob.x_test, (xt - x.mean()) / x.std(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'raw'"):
        rescale_inputs(ds, "raw")
    const = ds._replace(x_train=np.ones_like(x))
    with pytest.raises(ValueError, match="constant"):
        rescale_inputs(const, "unit")
