"""experiments/kronecker_sweep.py end to end on a tiny config: the one-at-a-time settings,
results and figure, a failing setting recorded without stopping the others, resume."""

import json
import os

import numpy as np
import tiny

from experiments import kronecker_sweep


def test_sweep_runs_records_failures_and_resumes(tmp_path):
    workdir = str(tmp_path)
    results = kronecker_sweep.run(tiny.kronecker_sweep(), workdir)
    tags = [r["tag"] for r in results["settings"]]
    assert tags == [
        "w8_s200_mnist1d_relu", "w8_s0_mnist1d_relu", "w8_s200_fashion_mnist_relu",
        "w8_s200_mnist1d_tanh",
    ]  # fmt: skip
    assert results["failed"] == ["w8_s200_fashion_mnist_relu"]
    failed = results["settings"][2]
    assert "error" in failed and "result" not in failed
    for row in results["settings"]:
        if "result" not in row:
            continue
        layers = row["result"]["layers"]
        assert set(layers) == {"Dense_0", "Dense_1"}
        for layer in layers.values():
            for form in ("hessian", "ggn"):
                at = layer[form]["overlap_at"]
                assert set(at) == {"1", "10"} and all(0 <= v <= 1 + 1e-5 for v in at.values())
                assert len(layer[form]["eigenvalues_top_c"]["ratio"]) == 10
    # ReLU: exact and Gauss-Newton M coincide; tanh: they differ in the hidden layer
    relu, tanh = results["settings"][0]["result"], results["settings"][3]["result"]
    for name in ("Dense_0", "Dense_1"):
        np.testing.assert_allclose(
            relu["layers"][name]["hessian"]["eigenvalues_top_c"]["exact"],
            relu["layers"][name]["ggn"]["eigenvalues_top_c"]["exact"], rtol=1e-3, atol=1e-6,
        )  # fmt: skip
    h0, g0 = (
        tanh["layers"]["Dense_0"][f]["eigenvalues_top_c"]["exact"] for f in ("hessian", "ggn")
    )
    assert not np.allclose(h0, g0, rtol=1e-3)
    assert os.path.getsize(os.path.join(workdir, "sweep.png")) > 0
    with open(os.path.join(workdir, "results.json")) as f:
        assert set(json.load(f)["near_one"]) == {"hessian", "ggn"}
    again = kronecker_sweep.run(tiny.kronecker_sweep(), workdir)  # every finished setting is reused
    assert [r.get("seconds") for r in again["settings"]] == [
        r.get("seconds") for r in results["settings"]
    ]
