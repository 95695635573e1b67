"""experiments/block_structure.py end to end on a tiny config: static force slopes against
Dong et al.'s theory, the dynamic force, and the layer-wise table against interlacing."""

import json
import os

import numpy as np
import pytest

from experiments import block_structure
from experiments.configs.block_structure import get_config

FIGURES = ("static_force.png", "dynamic_force.png", "block_ratios.png", "layerwise_top.png")


def _tiny_config():
    c = get_config()
    # Static force on a reduced sweep. Slopes measured with this setup in float64 over 16
    # seeds (the suite used to run in float64; it now runs this binary in its default
    # float32, where seed 0 passes the same bounds; the spread was not re-measured):
    # CE output -2.06 .. -1.96 (theory -2), CE hidden -1.15 .. -0.78
    # (mean -0.99, sd 0.10; theory -1), MSE hidden -1.21 .. -0.85. The output slope is tight;
    # the hidden one varies with W and the 8 probed neurons.
    c.static.num_classes = (16, 32, 64, 128, 256)
    c.static.input_dim = 16
    c.static.width = 16
    c.static.num_samples = 256
    c.static.probed = 8
    c.dynamic.num_classes = 4
    c.dynamic.dim = 8
    c.dynamic.width = 8
    c.dynamic.num_samples = 512
    c.dynamic.steps = 200
    c.dynamic.num_checkpoints = 3
    c.dynamic.spacing = "linear"  # equal segments: one compiled training chunk
    c.dynamic.hessian_samples = 128
    c.dynamic.microbatch_size = 128
    c.dynamic.norms = "exact"
    c.data.num_samples = 600
    c.model.widths = (16,)
    c.train.steps = 200
    c.train.log_every = 200
    c.layerwise.hessian_samples = 200
    c.layerwise.microbatch_size = 200
    c.layerwise.norms = "estimate"  # the Gaussian-probe path (the dynamic part runs exact)
    c.layerwise.num_probes = 16
    return c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("block_structure"))
    return workdir, block_structure.run(_tiny_config(), workdir)


def test_writes_results_and_figures(tiny_run):
    workdir, results = tiny_run
    for name in ("results.json",) + FIGURES:
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert set(saved) >= {"config", "static", "dynamic", "layerwise", "seconds"}
    assert saved["static"]["num_classes"] == [16, 32, 64, 128, 256]


def test_static_force_slopes_match_theory(tiny_run):
    slopes = tiny_run[1]["static"]["slopes"]
    # Tolerances: output ±0.25 (over 4x the measured spread), hidden [-1.35, -0.7] (over 3 sd
    # of the measured spread on either side of -1).
    assert -2.25 <= slopes["ce"]["output"]["slope"] <= -1.75, slopes["ce"]
    assert -1.35 <= slopes["ce"]["hidden"]["slope"] <= -0.7, slopes["ce"]
    assert -1.35 <= slopes["mse"]["hidden"]["slope"] <= -0.7, slopes["mse"]


def test_static_force_mse_output_blocks_exactly_zero(tiny_run):
    static = tiny_run[1]["static"]
    assert all(r == 0.0 for r in static["ratios"]["mse"]["output"])
    assert static["slopes"]["mse"]["output"] == "exactly zero"
    assert all(r > 0 for r in static["ratios"]["mse"]["hidden"])


def test_dynamic_force_cross_layer_block_shrinks_with_the_loss(tiny_run):
    dynamic = tiny_run[1]["dynamic"]
    first, last = dynamic["checkpoints"][0], dynamic["checkpoints"][-1]
    assert first["step"] == 0 and last["step"] == 200 and dynamic["norms"] == "exact"
    assert last["loss"] < first["loss"]
    assert last["norm_WV"] < first["norm_WV"]
    assert last["ratio_WV_WW"] == pytest.approx(last["norm_WV"] ** 2 / last["norm_WW"] ** 2)
    assert first["norm_WV_stderr"] == 0.0


def test_layerwise_block_tops_interlace_whole_network(tiny_run):
    layerwise = tiny_run[1]["layerwise"]
    rows = layerwise["top_eigenvalues"]
    assert [r["block"] for r in rows] == ["Dense_0", "Dense_1", "whole network"]
    assert sum(r["params"] for r in rows[:-1]) == rows[-1]["params"] == layerwise["num_params"]
    whole = rows[-1]["top_eigenvalue"]
    # Cauchy interlacing: a diagonal block's top eigenvalue never exceeds the whole Hessian's.
    for r in rows[:-1]:
        assert r["top_eigenvalue"] <= whole * (1 + 1e-4), (r, whole)
    ratios = np.asarray(layerwise["block_ratios"])
    assert ratios.shape == (2, 2) and np.all(ratios > 0)
    np.testing.assert_allclose(np.diag(ratios), 1.0)
