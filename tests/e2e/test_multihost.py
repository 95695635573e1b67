"""Multi-process runs (`jax.distributed`, JAX's multi-controller runtime) on this machine:
2 local CPU processes of 2 devices each, gloo collectives, joined through a coordinator on a
free localhost port. Every subprocess has a timeout and all are killed when one fails, so a
hung collective cannot hang the suite.

  * tests/e2e/multihost_worker.py: each process loads only its rows of the Hessian batch
    (`jax.make_array_from_process_local_data`), the two compute the top eigenvalues and a
    Hutch++ trace together; both equal one process on 4 devices (the suite's own).
  * checkpoints of sharded state (experiments.common.save_checkpoint / load_checkpoint):
    params split over both processes, gathered and written by process 0, restored and
    re-placed by both in a fresh 2-process job, then trained on: the same answer as one run.
  * experiments/spectrum.py as 2 processes (--coordinator_address/--num_processes/
    --process_id): only process 0 writes, and its results.json has the eigenvalues of a
    one-process run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from _env import ROOT, xla_flags

HERE = pathlib.Path(__file__).parent
TIMEOUT = 150  # seconds for each group of processes (about 20-40 s on 2 shared cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(local_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(local_devices)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_processes(commands: list[list[str]], local_devices: int = 2) -> list[str]:
    """Start every command at once (one process each), wait for all under TIMEOUT; on a
    timeout or a failure kill every one still running. Returns their stdouts."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(local_devices),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for cmd in commands
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{err[-6000:]}"
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outs


@pytest.fixture(scope="module")
def worker_reports():
    """{spec: [report of process 0, report of process 1]} for two meshes."""
    reports = {}
    for spec in ("data:4", "fsdp:2,data:2"):
        port = free_port()
        cmd = [sys.executable, str(HERE / "multihost_worker.py"), str(port), "2"]
        outs = run_processes([[*cmd, str(i), spec] for i in range(2)])
        reports[spec] = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    return reports


@pytest.mark.parametrize("spec", ["data:4", "fsdp:2,data:2"])
def test_two_processes_equal_one(worker_reports, spec):
    sys.path.insert(0, str(HERE))
    import multihost_worker

    one = multihost_worker.compute(spec)  # this process: 4 devices, no jax.distributed
    assert one["processes"] == 1 and one["devices"] == 4
    two = worker_reports[spec]
    assert [r["process"] for r in two] == [0, 1]
    for r in two:
        assert r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
        np.testing.assert_allclose(r["eigenvalues"], one["eigenvalues"], rtol=1e-4)
        np.testing.assert_allclose(r["trace"], one["trace"], rtol=1e-4)
        assert r["eigenvectors_shape"] == [one["n"], 5]  # gathered from both processes
    # each process loaded only its own half of the 128 rows of the batch axis
    assert [r["rows"] for r in two] == [[0, 64], [64, 128]]


def test_sharded_checkpoint_written_by_two_processes_resumes(tmp_path):
    """fsdp:2,data:2 over 2 processes: 3 GD steps, checkpoint (gathered, process 0 writes),
    a fresh 2-process job restores it onto the same shardings and takes 3 more; its params
    and top eigenvalues equal 6 steps in one process on 4 devices (float32 round-off of
    reductions split differently: rtol 1e-5)."""
    sys.path.insert(0, str(HERE))
    import multihost_worker

    spec, path = "fsdp:2,data:2", str(tmp_path / "state.ckpt")
    for phase in ("save", "resume"):
        cmd = [sys.executable, str(HERE / "multihost_worker.py"), str(free_port()), "2"]
        outs = run_processes([[*cmd, str(i), spec, path, phase] for i in range(2)])
        if phase == "save":
            assert sorted(os.listdir(tmp_path)) == ["state.ckpt"]  # one file, no temporaries
    two = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    whole = multihost_worker.resumed(spec, path, "whole")
    for r in two:
        np.testing.assert_allclose(r["params_sum"], whole["params_sum"], rtol=1e-5)
        np.testing.assert_allclose(r["eigenvalues"], whole["eigenvalues"], rtol=1e-5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num_processes=2", "--process_id=3", "--coordinator_address=localhost:1"],
         "--process_id=3: must be in [0, 2)"),
        (["--num_processes=2"], "--coordinator_address, --process_id missing"),
        (["--coordinator_address=nohost", "--num_processes=1", "--process_id=0"],
         "must be host:port"),
    ],
)  # fmt: skip
def test_inconsistent_process_flags_fail_before_initialize(flags, message):
    from experiments import common

    values = {"coordinator_address": None, "num_processes": None, "process_id": None}
    for flag in flags:
        name, value = flag[2:].split("=")
        values[name] = value if name == "coordinator_address" else int(value)
    with pytest.raises(common.ConfigError, match="invalid multi-process flags") as info:
        common.initialize_distributed(**values)  # raises before jax.distributed.initialize
    assert message in str(info.value)
    assert not common.check_process_flags(None, None, None)  # no flags: one process
