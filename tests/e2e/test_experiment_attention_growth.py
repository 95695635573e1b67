"""experiments/attention_growth.py end to end on a tiny GPT with no data files: outputs, the
theory's powers at small σ without LayerNorm, their removal by LayerNorm, a failing seed that
does not end the run, and config errors before any work."""

import json
import os

import numpy as np
import pytest
import tiny

from experiments import attention_growth, common


def test_outputs_powers_and_layer_norm(tmp_path):
    results = attention_growth.run(tiny.attention_growth(), str(tmp_path))
    for name in attention_growth.OUTPUTS:
        assert os.path.getsize(tmp_path / name) > 0, name
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["scales"] == pytest.approx([0.01, 0.1, 1.0])
    assert results["failed"] == []
    none = results["variants"]["none"]["summary"]["slopes_small"]
    for block, powers in results["theory_powers"].items():
        for part, power in powers.items():
            assert none[part][block]["mean"] == pytest.approx(power, abs=0.1), (block, part)
            assert len(none[part][block]["values"]) == 2
    pre = results["variants"]["pre"]["summary"]["slopes_small"]
    assert abs(pre["hessian"]["Q"]["mean"]) < 1.5
    run = results["variants"]["none"]["runs"][0]
    assert np.asarray(run["norms"]["outer"]).shape == (3, 2)


def test_failure_is_recorded_not_fatal(tmp_path, monkeypatch):
    real = attention_growth.one_run

    def flaky(config, text, variant, seed):
        if variant == "pre":
            raise FloatingPointError("boom")
        return real(config, text, variant, seed)

    monkeypatch.setattr(attention_growth, "one_run", flaky)
    c = tiny.attention_growth()
    c.num_seeds = 1
    results = attention_growth.run(c, str(tmp_path))
    assert set(results["variants"]) == {"none"}
    assert results["failed"] == [
        {"variant": "pre", "seed": 0, "error": "FloatingPointError('boom')"}
    ]
    assert os.path.exists(tmp_path / "growth.png")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("model.variants", ("post",), "model.variants"),
        ("growth.num_probes", 1, "0 \\(exact\\) or at least 2"),
        ("growth.log10_max", -3.0, "greater than growth.log10_min"),
        ("growth.fit_max", 0.001, "two smallest scales"),
    ],
)
def test_config_errors(tmp_path, field, value, match):
    c = tiny.attention_growth()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(common.ConfigError, match=match):
        attention_growth.run(c, str(tmp_path))
