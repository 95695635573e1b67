"""Shared by the example-notebook tests (tests/e2e/test_notebooks_*.py, two files so that the
two xdist workers share the notebook runs): `examples/execute.py`, a small-size run that
returns the notebook's `results` dict, and the checks on each notebook's values."""

import importlib.util
import json
import os

import nbformat
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
_spec = importlib.util.spec_from_file_location("execute", os.path.join(EXAMPLES, "execute.py"))
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(EXAMPLES, name), as_version=4)


def run_small(name: str, cwd: str) -> dict:
    """Execute the notebook at HESSJAX_EXAMPLE_SIZE=small in a fresh kernel; its `results`."""
    nb = read(name)
    nb.cells.append(nbformat.v4.new_code_cell("import json; print(json.dumps(results))"))
    execute.execute(nb, "small", timeout=600, cwd=cwd)
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return json.loads(out)


def _check_spectrum(r):
    top = np.asarray(r["top"])
    assert np.all(np.diff(top) <= 1e-6)  # descending
    np.testing.assert_allclose(top, r["dense_top"], rtol=1e-4, atol=1e-5 * abs(top[0]))
    # Cauchy interlacing: no layer block's top eigenvalue exceeds the whole Hessian's
    assert max(r["layer_top"].values()) <= top[0] * (1 + 1e-4)
    assert abs(r["trace"] - r["dense_trace"]) <= 5 * r["trace_stderr"]
    assert r["density_mass"] == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(r["share_rows"], 1.0, rtol=1e-4)  # unit eigenvectors


def _check_monitor(r):
    for lr, steps in r["gd_steps"].items():
        assert steps == list(range(10, 61, 10)), lr
        assert all(np.isfinite(r["gd_sharpness"][lr])) and min(r["gd_sharpness"][lr]) > 0
    assert r["monitor_last"] == pytest.approx(r["separate_solve"], rel=2e-3)
    assert r["adam_steps"] == [20, 40, 60] and min(r["adam_sharpness"]) > 0


def _check_structure(r):
    # Dong et al.: both neuron-block ratios fall with C, the output layer's about as 1/C²
    assert r["slopes"]["output"] < -1.5 and r["slopes"]["hidden"] < -1.0
    exact, kron = np.asarray(r["exact_top"]), np.asarray(r["kron_top"])
    assert np.all(np.diff(exact) <= 1e-6) and np.all(np.diff(kron) <= 1e-6) and kron[0] > 0
    overlap, chance = np.asarray(r["overlap"]), np.asarray(r["chance"])
    assert np.all((overlap >= -1e-9) & (overlap <= 1 + 1e-6)) and overlap[0] > 10 * chance[0]
    assert sum(r["block_sizes"]) == r["num_params"]  # the role blocks cover the GPT
    assert max(r["block_top"].values()) <= r["whole_top"] * (1 + 1e-3)  # interlacing
    assert 0 <= r["heterogeneity"] <= 1


def _check_continual(r):
    for name, matrices in r["test_matrices"].items():
        for i, m in enumerate(np.asarray(matrices)):
            assert m.shape == (2, 2) and np.all((m >= 0) & (m <= 1)), name
            # ACC is the final row's mean, BWT the change on the old task since it was learned
            assert r["summary"][name]["acc"][i] == pytest.approx(m[-1].mean())
            assert r["summary"][name]["bwt"][i] == pytest.approx(m[-1, 0] - m[0, 0])


CHECKS = {
    "01_spectrum.ipynb": _check_spectrum,
    "02_structure.ipynb": _check_structure,
    "03_monitor.ipynb": _check_monitor,
    "04_continual.ipynb": _check_continual,
}
