"""The main job end to end on a tiny config, and the README example."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tiny
from _env import ROOT
from test_checkpoints import damage_file
from test_multihost import free_port, run_processes

from experiments import spectrum


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("spectrum"))
    return workdir, spectrum.run(tiny.spectrum(), workdir)


def test_spectrum_writes_results_and_figure(tiny_run):
    workdir, results = tiny_run
    for name in ("results.json", "eigenvectors.npy", "spectrum.png", "params_spectrum.ckpt"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    top = np.asarray(saved["top_eigenvalues"])
    assert top.shape == (4,) and np.all(np.diff(top) <= 0)
    assert all(saved["top_converged"])
    assert set(saved["layer_top_eigenvalue"]) == {"Dense_0", "Dense_1"}
    # A diagonal block's top eigenvalue never exceeds the whole Hessian's (Cauchy interlacing).
    assert max(saved["layer_top_eigenvalue"].values()) <= top[0] * (1 + 1e-4)
    vectors = np.load(os.path.join(workdir, "eigenvectors.npy"))
    assert vectors.shape == (saved["num_params"], 4)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(4), atol=1e-4)
    grid, values = np.asarray(saved["density"]["grid"]), np.asarray(saved["density"]["values"])
    assert abs(np.trapezoid(values, grid) - 1) < 1e-2
    assert saved["train_history"][-1][1] < saved["train_history"][0][1]


def test_spectrum_resumes_trained_params(tiny_run):
    workdir, first = tiny_run
    again = spectrum.run(tiny.spectrum(), workdir)
    assert [list(h) for h in again["train_history"]] == [list(h) for h in first["train_history"]]
    np.testing.assert_allclose(again["top_eigenvalues"], first["top_eigenvalues"], rtol=1e-5)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    config = tiny.spectrum()
    config.mesh = "data:4"
    return spectrum.run(config, str(tmp_path_factory.mktemp("spectrum_mesh")))


def test_spectrum_on_a_mesh_equals_one_device(tiny_run, mesh_run):
    """--config.mesh=data:4 (the 4 devices conftest gives): params replicated, the Hessian
    batch split over 4 devices, vectors and bases placed on the mesh (n = 826 does not split
    evenly, so they stay whole, see hessjax.distributed); the numbers equal one device's."""
    _, first = tiny_run
    sharded = mesh_run
    np.testing.assert_allclose(sharded["top_eigenvalues"], first["top_eigenvalues"], rtol=1e-4)
    for name, value in first["layer_top_eigenvalue"].items():
        np.testing.assert_allclose(sharded["layer_top_eigenvalue"][name], value, rtol=1e-4)
    np.testing.assert_allclose(sharded["trace"]["estimate"], first["trace"]["estimate"], rtol=1e-4)


def test_spectrum_binary_as_two_processes(mesh_run, tmp_path):
    """The binary as 2 processes of 2 devices (jax.distributed, --config.mesh=data:4, layer
    blocks off) gives the one-process data:4 run's top eigenvalues and trace."""
    one = mesh_run
    overrides = {**tiny.SPECTRUM, "hessian.per_layer": False, "mesh": "data:4"}

    port = free_port()
    workdirs = [tmp_path / f"process{i}" for i in range(2)]
    run_processes([
        [sys.executable, "-m", "experiments.spectrum", f"--workdir={workdirs[i]}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
         *tiny.as_flags(overrides)]
        for i in range(2)
    ])  # fmt: skip
    # only process 0 wrote anything: results, eigenvectors, figure and checkpoint
    assert sorted(p.name for p in workdirs[0].iterdir()) == [
        "eigenvectors.npy",
        "params_spectrum.ckpt",
        "results.json",
        "spectrum.png",
    ]
    assert not workdirs[1].exists()
    saved = json.loads((workdirs[0] / "results.json").read_text())
    np.testing.assert_allclose(saved["top_eigenvalues"], one["top_eigenvalues"], rtol=1e-4)
    np.testing.assert_allclose(saved["trace"]["estimate"], one["trace"]["estimate"], rtol=1e-4)
    vectors = np.load(workdirs[0] / "eigenvectors.npy")
    assert vectors.shape == (one["num_params"], 4)


def test_readme_example_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    values = np.asarray(namespace["top"].eigenvalues)
    assert values.shape == (5,) and np.all(np.isfinite(values)) and np.all(np.diff(values) <= 0)


def test_spectrum_on_real_mnist_idx_files(tmp_path):
    from hessjax.data import default_data_dir

    data_dir = default_data_dir("mnist")
    if data_dir is None:
        pytest.skip("../shared/data/mnist is absent: no real MNIST idx files on this machine")
    c = tiny.spectrum()
    c.data.name, c.data.dir = "mnist", data_dir
    c.hessian.per_layer = False
    results = spectrum.run(c, str(tmp_path))
    assert results["dataset"] == "mnist"
    assert results["num_params"] == 784 * 16 + 16 + 16 * 10 + 10
    assert all(results["top_converged"])


@pytest.mark.parametrize(
    "binary",
    [
        "spectrum",
        "block_structure",
        "kronecker",
        "kronecker_sweep",
        "weights",
        "mask_overlap",
        "transformer",
    ],  # fmt: skip
)
def test_binaries_parse_their_flags(binary):
    """Each binary defines --config/--workdir only when run as the program (so all of them
    import into one process); --helpfull (absl exits 1 after it)
    lists the flags without doing any work."""
    import importlib

    importlib.import_module(f"experiments.{binary}")  # no DuplicateFlagError next to the others
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{binary}", "--config.seed=3", "--helpfull"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "--workdir" in out.stdout and "--config" in out.stdout


def test_a_binary_rejects_an_unknown_config_field():
    """Every binary defines --config through experiments.common.run_binary (so one binary
    suffices here; tests/e2e/test_validation.py checks each binary's config rules)."""
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.spectrum", "--config.no_such_field=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "no_such_field" in bad.stderr


def test_string_tuple_overrides_are_split():
    """--config.static.losses=ce,mse reaches the binary as ('ce,mse',); run_binary splits every
    tuple-of-strings field, nested sections included, and leaves numeric tuples alone."""
    from experiments import common
    from experiments.configs.block_structure import get_config as block_config

    c = block_config()
    c.static.losses = ("ce,mse",)
    widths = c.model.widths
    out = common.split_string_tuples(c)
    assert out.static.losses == ("ce", "mse") and out.model.widths == widths
    assert common.as_tuple("0, 2", int) == (0, 2)


def test_readme_transformer_example_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    block = next(b for b in blocks if "role_partition" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    part, tops, het = namespace["part"], namespace["tops"], namespace["het"]
    assert {"embed", "pos", "block_0/Q", "block_0/V", "unembed"} <= set(part.names)
    assert np.all(np.isfinite(np.asarray(tops.eigenvalues)))
    assert 0 <= het.mean <= 1


# ------------------------------------------------------------------- a binary end to end


@pytest.fixture
def first_run(tiny_run, tmp_path):
    """A copy of the shared tiny run's workdir, free to damage."""
    workdir = str(tmp_path / "spectrum")
    shutil.copytree(tiny_run[0], workdir)
    return workdir, tiny_run[1]


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_binary_recomputes_a_damaged_or_foreign_checkpoint(first_run, caplog, damage):
    """A truncated checkpoint (and a truncated results.json), or the checkpoint another config
    left in the workdir: the rerun warns naming the checkpoint file, retrains and writes the
    first run's results."""
    workdir, first = first_run
    ckpt, results = (os.path.join(workdir, n) for n in ("params_spectrum.ckpt", "results.json"))
    damage_file(ckpt, damage)
    if damage == "truncated":
        damage_file(results, "truncated")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = spectrum.run(tiny.spectrum(), workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(ckpt in m for m in warnings), warnings
    if damage == "foreign":
        assert any("another config" in m for m in warnings), warnings
    assert again["train_history"] == first["train_history"]
    np.testing.assert_allclose(again["top_eigenvalues"], first["top_eigenvalues"], rtol=1e-5)
    with open(results) as f:
        saved = json.load(f)
    assert saved["train_history"] == json.loads(json.dumps(first["train_history"]))
    assert saved["top_eigenvalues"] == again["top_eigenvalues"]


def test_failed_run_leaves_no_stale_results(first_run, monkeypatch, tmp_path):
    """Outputs of an earlier run are deleted when a run starts: a run failing after training
    leaves neither the old results.json nor the old figure, only its checkpoint."""
    workdir, _ = first_run
    for name in spectrum.OUTPUTS:
        assert os.path.exists(os.path.join(workdir, name)), name

    def broken(*args, **kwargs):
        raise RuntimeError("solver failed")

    monkeypatch.setattr(spectrum.linalg, "hutchpp", broken)
    with pytest.raises(RuntimeError, match="solver failed"):
        spectrum.run(tiny.spectrum(), workdir)
    left = set(os.listdir(workdir))
    assert "results.json" not in left and "spectrum.png" not in left
    assert "params_spectrum.ckpt" in left
