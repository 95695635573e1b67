"""experiments/block_structure.py end to end on a tiny config: static force slopes against
Dong et al.'s theory, the dynamic force, and the layer-wise table against interlacing."""

import json
import os

import jax
import numpy as np
import pytest
import tiny

from experiments import block_structure, common
from experiments.configs.block_structure import get_config

FIGURES = (
    "static_force.png", "dynamic_force.png", "block_ratios.png", "layerwise_top.png",
    "large_c.png", "block_spectra.png", "hessian_heatmap.png", "neuron_dynamic.png",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("block_structure"))
    return workdir, block_structure.run(tiny.block_structure(), workdir)


def test_writes_results_and_figures(tiny_run):
    workdir, results = tiny_run
    for name in ("results.json",) + FIGURES:
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    parts = {"static", "dynamic", "layerwise", "large_c", "spectra", "heatmap", "neuron_dynamic"}
    assert set(saved) >= parts | {"config", "seconds"}
    assert os.path.getsize(os.path.join(workdir, "hessian_heatmap.npz")) > 0
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


def test_large_c_slopes_and_mse_zero(tiny_run):
    large = tiny_run[1]["large_c"]
    assert large["num_classes"] == [128, 4096]
    assert -2.25 <= large["slopes"]["ce"]["output"]["slope"] <= -1.75, large["slopes"]
    assert large["slopes"]["mse"]["output"] == "exactly zero"
    assert all(r > 0 for r in large["ratios"]["ce"]["hidden"])


def test_block_spectra_part(tiny_run):
    spectra = tiny_run[1]["spectra"]
    sizes = {("linear", "output"): 8, ("nn", "output"): 4, ("nn", "hidden"): 8}
    for (model, layer), n_j in sizes.items():
        recs = spectra["models"][model][layer]
        assert [r["num_classes"] for r in recs] == [8, 64]
        for r in recs:
            assert len(r["diagonal_eigenvalues"]) == len(r["off_diagonal_singular_values"])
            assert len(r["diagonal_eigenvalues"]) == 2 * n_j  # 2 probed blocks
            assert r["num_hvps"] == 2 * n_j and min(r["off_diagonal_singular_values"]) >= 0
        # off-diagonal output blocks shrink relative to diagonal ones as C grows
        if layer == "output":
            assert recs[1]["scale_ratio"] < recs[0]["scale_ratio"]
            assert spectra["slopes"][model][layer]["slope"] < -0.5


def test_heatmap_part(tiny_run):
    heat = tiny_run[1]["heatmap"]
    for model in ("linear", "nn"):
        assert heat[model]["trained"]["loss"] < heat[model]["init"]["loss"]
        for stage in ("init", "trained"):
            assert 0 < heat[model][stage]["neuron_diagonal_mass"] <= 1
    # the linear model has one layer: its layer blocks are the whole Hessian
    assert heat["linear"]["init"]["layer_diagonal_mass"] == pytest.approx(1.0)
    assert heat["nn"]["init"]["layer_diagonal_mass"] < 1
    with np.load(os.path.join(tiny_run[0], "hessian_heatmap.npz")) as z:
        assert z["nn/init"].shape == (heat["nn"]["num_params"],) * 2  # no pooling needed
        np.testing.assert_allclose(z["nn/bounds"][[0, -1]], [0, heat["nn"]["num_params"]])


def test_neuron_dynamic_part(tiny_run):
    dyn = tiny_run[1]["neuron_dynamic"]
    assert dyn["dataset"] == "mnist1d"
    recs = dyn["checkpoints"]
    assert [r["step"] for r in recs] == [0, 50]
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert all(r["r_hidden"] > 0 and r["r_output"] > 0 for r in recs)
    assert dyn["change"]["r_hidden"] == pytest.approx(recs[-1]["r_hidden"] / recs[0]["r_hidden"])


def test_presets_and_bad_sweeps(tmp_path):
    paper = get_config("paper")
    assert (paper.spectra.input_dim, paper.spectra.width, paper.spectra.num_samples) == (
        500, 8, 5000,
    )  # fmt: skip
    assert paper.static.param_init == "fan_in_uniform" and max(paper.large_c.num_classes) >= 32768
    assert get_config("small").static.input_dim == get_config().static.input_dim
    common.validate(paper, block_structure.RULES, block_structure.RELATIONS)
    with pytest.raises(ValueError, match="unknown preset 'papr'"):
        get_config("papr")
    # empty sweeps, and a microbatch size that does not divide large_c's 64 samples
    bad = {"spectra.num_classes": (), "large_c.num_classes": (), "spectra.models": (),
           "large_c.microbatch_size": 24}  # fmt: skip
    for field, value in bad.items():
        c = tiny.block_structure()
        section, name = field.split(".")
        c[section][name] = value
        workdir = tmp_path / field
        with pytest.raises(common.ConfigError, match=field.replace(".", r"\.")):
            block_structure.run(c, str(workdir))
        assert not workdir.exists()  # rejected before any work


def test_heatmap_refuses_large_dense_hessian(tmp_path):
    c = tiny.block_structure().heatmap
    c.max_params = 10
    with pytest.raises(ValueError, match="max_params"):
        block_structure.heatmaps(c, str(tmp_path), jax.random.key(0))


def test_one_failing_setting_is_recorded():
    def fail():
        raise FloatingPointError("not finite")

    assert block_structure._guarded("x", fail) == {"error": "FloatingPointError: not finite"}
    assert block_structure._guarded("x", lambda: {"a": 1}) == {"a": 1}
