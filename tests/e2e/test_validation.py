"""Every binary validates its whole config (experiments.common.validate) before any work."""

import importlib
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from _env import ROOT

from experiments import common
from hessjax import distributed

BINARIES = (
    "spectrum", "block_structure", "kronecker", "kronecker_sweep", "weights", "mask_overlap",
    "continual", "transformer",
)  # fmt: skip

# (binary, field, bad value, what the message must say)
BAD = [
    ("spectrum", "train.steps", -5, "an integer >= 1"),
    ("spectrum", "hessian.top_k", -3, "an integer >= 1"),
    ("spectrum", "hessian.trace_matvecs", 10, "multiple of 3"),
    ("spectrum", "hessian.num_samples", 4500, "training samples"),
    ("block_structure", "static.losses", ("ce", "hinge"), "distinct names from ce, mse"),
    ("block_structure", "dynamic.spacing", "cubic", "'log', 'linear'"),
    ("kronecker", "outliers.rel_floor", 1.5, "(0.0, 1.0)"),
    ("kronecker", "data.name", "cifar", "one of 'mnist1d'"),
    ("kronecker", "model.kind", "conv", "batch norm is an option of the MLP only"),
    ("kronecker_sweep", "sweep.widths", (), "a non-empty tuple of integers >= 1"),
    ("kronecker_sweep", "sweep.datasets", (), "a non-empty tuple of distinct names"),
    ("kronecker_sweep", "sweep.steps", (), "a non-empty tuple of integers >= 0"),
    ("weights", "record.every", 5000, "train.steps / 2"),
    ("weights", "train.optimizer", "rmsprop", "'adam', 'sgd'"),
    ("mask_overlap", "checkpoints", (0, -20), "integers >= 0"),
    ("mask_overlap", "sketch.outer", 100, "at least sketch.k"),
    ("continual", "strategies", ("finetune", "nope"), "distinct names"),
    ("continual", "train.learning_rate", 0.0, "(0.0, inf)"),
    ("continual", "tasks.valid_fraction", 1.0, "(0.0, 1.0)"),
    ("continual", "memory.num_samples", 900, "a multiple of memory.microbatch_size"),
    ("continual", "tasks.valid_fraction", 0.0, "(0.0, 1.0)"),
    ("continual", "select.seeds", (5, 1), "disjoint from config.seeds"),
    ("continual", "select.grid", "huge", "a grid of experiments/configs/continual.py GRIDS"),
    ("continual", "gpm.layer_thresholds", (0.9, 1.2), "one per dense layer"),
    ("transformer", "model.pool", "max", "'mean', 'cls'"),
    ("transformer", "hessian.microbatch_size", 5, "a divisor of hessian.num_samples"),
    ("transformer", "compare", ("mlp", "rnn"), "distinct names from mlp, conv, vit"),
    ("spectrum", "mesh", "data:5", "mesh 'data:5' needs 5 devices, 4 available"),
    ("spectrum", "mesh", "data:2", "using all 4 devices"),
    ("spectrum", "mesh", "model:4", "axis 'model' is not one of fsdp, data"),
    ("spectrum", "mesh", "data:x", "size of 'data' is not an integer"),
]


def _config(binary: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"experiments.configs.{binary}").get_config()


@pytest.mark.parametrize("binary", BINARIES)
def test_default_configs_are_valid_and_fully_covered(binary):
    """validate() also fails on a field without a rule, so passing means every field of the
    default config (and of mask_overlap's large preset) is checked."""
    module = importlib.import_module(f"experiments.{binary}")
    configs = [_config(binary)]
    presets = {"mask_overlap": "large", "transformer": "vit", "continual": "gpm_pmnist"}
    if binary in presets:
        configs.append(
            importlib.import_module(f"experiments.configs.{binary}").get_config(presets[binary])
        )
    for config in configs:
        if binary == "continual":
            config = module.resolve_config(config)
        common.validate(config, module.RULES, module.RELATIONS)


@pytest.mark.parametrize(("binary", "field", "value", "demand"), BAD)
def test_bad_value_fails_before_any_work(binary, field, value, demand, tmp_path):
    """run() raises ConfigError naming the field and value before touching the workdir (no
    data loaded, nothing trained)."""
    module = importlib.import_module(f"experiments.{binary}")
    config = _config(binary)
    common.set_fields(config, {field: value})
    workdir = str(tmp_path / "run")
    with pytest.raises(common.ConfigError) as info:
        module.run(config, workdir)
    message = str(info.value)
    assert f"config.{field} = {value!r}" in message and demand in message, message
    assert not os.path.exists(workdir)


def test_continual_validation_split_leaving_less_than_a_batch_fails_before_training(tmp_path):
    from experiments import continual

    config = _config("continual")
    # MNIST-1D 6,000 samples: 4,800 train; a 99% validation split leaves 48 < batch 64
    common.set_fields(config, {"tasks.valid_fraction": 0.99, "seeds": (0,)})
    with pytest.raises(common.ConfigError, match="train.batch_size = 64: must be at most the "
                       "48 training samples a task keeps"):  # fmt: skip
        continual.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_continual_grid_cannot_vary_a_threshold_the_preset_replaces(tmp_path):
    from experiments import continual

    config = importlib.import_module("experiments.configs.continual").get_config("gpm_pmnist")
    common.set_fields(config, {"select.grid": "budget4"})
    with pytest.raises(common.ConfigError, match="a grid that does not vary gpm.threshold"):
        continual.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_mesh_must_split_the_hessian_batch_and_some_params(tmp_path):
    """A mesh whose device count does not divide the Hessian microbatch, or an FSDP split that
    no param leaf allows, fails with the setting named, before any data or training."""
    from experiments import spectrum

    config = _config("spectrum")
    config.mesh = "data:4"  # default hessian.microbatch_size = 250
    with pytest.raises(common.ConfigError) as info:
        spectrum.run(config, str(tmp_path / "run"))
    assert "config.hessian.microbatch_size = 250: must be divisible by" in str(info.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"config.mesh = 'fsdp:4'.*no param leaf.*'a': \(3, 5\)"):
        distributed.check_mesh_fits("fsdp:4", {"a": np.ones((3, 5))}, 8)
    with pytest.raises(ValueError, match=r"config.mesh = 'data:4'.*6 rows.*4 devices"):
        distributed.check_mesh_fits("data:4", {"a": np.ones((3, 5))}, 6)
    distributed.check_mesh_fits("fsdp:2,data:2", {"a": np.ones((3, 4)), "b": np.ones(3)}, 8)


# the batch axis each binary splits over config.mesh
MESH_BATCH = {
    "spectrum": "hessian.microbatch_size",
    "weights": "hessian.microbatch_size",
    "block_structure": "layerwise.microbatch_size",
    "mask_overlap": "hessian.microbatch_size",
    "kronecker": "hessian.microbatch_size",
    "continual": "memory.microbatch_size",
    "edge_of_stability": "eos.num_train",
}


@pytest.mark.parametrize("binary", sorted(MESH_BATCH))
def test_every_binary_checks_config_mesh_before_any_work(binary, tmp_path):
    """Every binary that computes curvature takes --config.mesh: a mesh axis that does not
    exist, or a batch that does not split over the mesh's devices, fails with the field named
    before the workdir is touched."""
    module = importlib.import_module(f"experiments.{binary}")
    config = _config(binary)
    config.mesh = "model:4"
    with pytest.raises(common.ConfigError, match="axis 'model' is not one of fsdp, data"):
        module.run(config, str(tmp_path / "run"))
    config = _config(binary)
    config.mesh = "data:4"
    common.set_fields(config, {MESH_BATCH[binary]: 102})
    with pytest.raises(common.ConfigError) as info:
        module.run(config, str(tmp_path / "run"))
    assert f"config.{MESH_BATCH[binary]} = 102: must be divisible by the number of devices" in str(
        info.value
    )
    assert not (tmp_path / "run").exists()


def test_every_failing_field_is_listed_and_unruled_fields_are_errors():
    config = ml_collections.ConfigDict({"a": -1, "b": "x", "extra": 2})
    rules = {"a": common.POSITIVE_INT, "b": common.one_of("y", "z")}
    with pytest.raises(common.ConfigError) as info:
        common.validate(config, rules)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 3 and "config.extra = 2 has no validation rule" in lines[0]
    assert common.BOOL.test(True) and not common.POSITIVE_INT.test(True)  # bools are not ints
    assert not common.POSITIVE.test(float("nan")) and common.PROBABILITY.test(0.5)


def test_binary_exits_nonzero_with_the_field_in_its_message(tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "experiments.spectrum", f"--workdir={workdir}",
         "--config.train.steps=-5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0 and "config.train.steps = -5" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not workdir.exists()  # failed before any work
