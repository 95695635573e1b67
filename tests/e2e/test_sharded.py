"""Sharded solvers on 8 virtual CPU devices (FSDP params, batch-split data, vectors and Krylov
bases split along n): one subprocess runs every check of tests/e2e/sharded_checks.py, so the
8-device XLA flag and its JAX start-up stay out of the rest of the suite (which runs on 4)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from _env import ROOT, xla_flags

HERE = pathlib.Path(__file__).parent
DEVICES = 8


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(DEVICES)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("spec", ["fsdp:8", "fsdp:2,data:4"])
def test_sharded_solvers_equal_one_device_and_keep_the_basis_split(report, spec):
    n, got = report["n"], report[spec]
    assert n % DEVICES == 0
    # the subprocess asserted the tolerances; the numbers are repeated here for the record
    assert got["eigsh_rel"] < 1e-5
    assert got["hutchpp_rel"] < 1e-4 and got["slq_moment_rel"] < 1e-4
    assert tuple(got["basis_shard"]) == (30, n // DEVICES)  # (m, n / 8) per device
    assert tuple(got["eigvec_shard"]) == (n // DEVICES, 5)
    assert got["tridiag_big_all_gathers"] == []
    assert "fsdp" in got["param_shards"]["params/layers_0/kernel"]
    if spec == "fsdp:2,data:4":  # thick restart and the sketch: on the mesh with both axes
        assert got["thick_rel"] < 1e-5 and got["sketch_rel"] < 1e-5
        assert tuple(got["thick_shard"]) == (n // DEVICES, 10)
        assert got["thick_big_all_gathers"] == [] and not got["sketch_n_all_gathers"]


def test_uneven_n_runs_unsplit_and_agrees(report):
    got = report["uneven"]
    assert got["n"] % DEVICES and got["eigsh_rel"] < 1e-5
    assert tuple(got["basis_shard"]) == (30, got["n"])  # documented: uneven n is not split


def test_binaries_on_a_mesh_equal_one_device(report):
    """experiments.edge_of_stability and block_structure (layer-wise part) with
    --config.mesh=fsdp:2,data:4 give one device's numbers (the subprocess asserted < 1e-5)."""
    got = report["binaries"]
    assert set(got) == {"eos_sharpness_rel", "eos_loss_rel", "blocks_frobenius_rel",
                        "blocks_top_rel"}  # fmt: skip
    assert max(got.values()) < 1e-5, got
