"""experiments/transformer.py end to end on a tiny GPT with no data files (the running
interpreter's standard library): outputs, the interlacing of block and whole tops, resuming,
and config errors before any work."""

import json
import os

import pytest
import tiny

from experiments import common, transformer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("transformer"))
    return workdir, transformer.run(tiny.transformer(), workdir)


def test_outputs_and_interlacing(tiny_run):
    workdir, results = tiny_run
    for name in transformer.OUTPUTS:
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["num_params"] == results["num_params"]
    blocks = results["blocks"]
    assert sum(b["size"] for b in blocks.values()) == results["num_params"]
    assert {"block_0/Q", "block_0/K", "block_0/V", "block_0/O", "unembed", "pos"} <= set(blocks)
    assert [r["step"] for r in results["checkpoints"]] == [0, 5]
    for row in results["checkpoints"]:
        whole = row["top_eigenvalues"][0]
        # Cauchy interlacing: no principal block's top eigenvalue exceeds the whole one.
        assert max(b["top_eigenvalues"][0] for b in row["blocks"].values()) <= whole * (1 + 1e-3)
        assert 0 <= row["heterogeneity"]["mean_js_distance"] <= 1
        assert set(row["qkvo_norms"]) == {f"block_0/{r}" for r in "QKVO"}
        assert "kronecker" not in row  # kron_layers = "none"
        # per-head blocks partition each Q/K/V/O block (O's shared bias aside) and, by
        # interlacing again, none exceeds its role block's top eigenvalue
        heads = row["heads"]
        assert set(heads) == {f"block_0/{r}/head_{i}" for r in "QKVO" for i in range(2)}
        for role in "QKVO":
            within = [heads[f"block_0/{role}/head_{i}"] for i in range(2)]
            bias = blocks["block_0/O"]["size"] - 2 * within[0]["size"] if role == "O" else 0
            assert sum(h["size"] for h in within) + bias == row["blocks"][f"block_0/{role}"]["size"]
            top = row["blocks"][f"block_0/{role}"]["top_eigenvalues"][0]
            assert max(h["top_eigenvalues"][0] for h in within) <= top * (1 + 1e-3) + 1e-6
        assert row["layerwise"]["rows"][-1]["top_eigenvalue"] == pytest.approx(whole, rel=1e-3)
    assert results["heterogeneity"] == results["checkpoints"][-1]["heterogeneity"]
    first, last = results["checkpoints"]
    assert "preconditioned_sharpness" not in first  # no Adam moments before the first step
    # P = √v̂ + ε ≪ 1 here, so P⁻¹ scales the curvature up
    assert last["preconditioned_sharpness"] > last["top_eigenvalues"][0] > 0
    assert last["adam_threshold"] == pytest.approx(38 / tiny.transformer().train.learning_rate)
    adam = results["adam_sharpness"]  # the monitor inside the Adam step, every 2 steps
    assert adam["steps"] == [2, 4] and adam["threshold"] == last["adam_threshold"]
    assert all(v > 0 for v in adam["preconditioned_sharpness"])
    train = results["checkpoints"]
    assert train[1]["valid_loss"] < train[0]["valid_loss"]  # Adam learns something in 5 steps


def test_rerun_resumes(tiny_run, monkeypatch):
    """A rerun reuses every checkpoint's measurements: nothing is measured again."""
    workdir, results = tiny_run

    def measured_again(*args, **kwargs):
        raise AssertionError("a checkpoint was measured again")

    monkeypatch.setattr(transformer, "measure", measured_again)
    again = transformer.run(tiny.transformer(), workdir)
    assert again["checkpoints"] == results["checkpoints"]
    assert again["adam_sharpness"] == results["adam_sharpness"]  # the monitor's state resumed


def test_bad_config_fails_before_work(tmp_path):
    c = tiny.transformer()
    c.hessian.microbatch_size = 3
    with pytest.raises(common.ConfigError, match="microbatch_size"):
        transformer.run(c, str(tmp_path))
    c = tiny.transformer()
    c.data.source = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="does not exist"):
        transformer.run(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "results.json")
