"""experiments/weights.py end to end on a tiny config, in JAX's default float32."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from experiments import weights as weights_experiment
from experiments.common import build_model
from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    make_layout,
)
from hessjax.data import load_dataset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("weights"))
    return workdir, weights_experiment.run(tiny.weights(), workdir)


def test_weights_binary_writes_results_and_figures(tiny_run):
    workdir, results = tiny_run
    names = ["results.json", "pca_vs_hessian_overlap.png", "pca_vs_hessian_eigenvalues.png",
             "drift_mode.png", "quadratic_fit.png", "trajectory_fit.png", "weight_alignment.png",
             "svd_overlap.png", "svd_curvature.png", "params_weights.ckpt"]  # fmt: skip
    for name in names:
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    n = saved["num_params"]
    assert n == 40 * 16 + 16 + 16 * 10 + 10
    assert saved["window"] == {"steps": [400, 595], "num_snapshots": 40}
    assert all(saved["top_converged"])
    top = np.asarray(saved["top_eigenvalues"])
    assert top.shape == (8,) and np.all(np.diff(top) <= 0) and top[0] > 0
    pca = saved["pca"]
    for part in ("weights", "updates"):
        at = np.asarray(list(pca[part]["overlap_at"].values()))
        assert np.all((at >= 0) & (at <= 1 + 1e-6))
        ratios = np.asarray(pca[part]["explained_variance_ratio"])
        assert np.all(np.diff(ratios) <= 1e-12) and 0 < ratios.sum() <= 1 + 1e-9
    # Haink: updates approximate the top Hessian eigenspace far better than weights do
    for k in ("4", "8"):
        assert pca["updates"]["overlap_at"][k] > 2 * pca["weights"]["overlap_at"][k]
        assert pca["updates"]["overlap_at"][k] > 10 * pca["chance_at"][k]
        # PCA by eigenvalues: the variances are the ratios times one total, and each
        # component's curvature is a Rayleigh quotient of H, so at most λ_1 (Lanczos tol)
        spec = pca[part]["spectrum"]
        var = np.asarray(spec["explained_variance"])
        np.testing.assert_allclose(var / var[0], ratios / ratios[0], rtol=1e-5)
        curv = np.asarray(spec["component_curvature"])
        assert curv.shape == (8,) and np.all(curv <= top[0] * (1 + 1e-3))
        assert spec["variance_decay"] == pytest.approx(var[0] / var[-1], rel=1e-5)
    # the update PCs see more curvature than the weight PCs (Haink: updates track H)
    assert np.mean(pca["updates"]["spectrum"]["component_curvature"]) > np.mean(
        pca["weights"]["spectrum"]["component_curvature"]
    )
    tf = saved["trajectory_fit"]
    eta = saved["config"]["train"]["learning_rate"]
    np.testing.assert_allclose(tf["predicted_ratio"], 1 - eta * top, rtol=1e-6)
    assert len(tf["ratio"]) == 8 and tf["window"] == [400, 595]
    assert sum(r is not None for r in tf["ratio"]) >= 4
    drift = saved["drift_mode"]
    assert drift["explained_variance_ratio"] > 0.5 and drift["displacement_share"] > 0.5
    null = drift["random_walk_null"]  # isotropic random walks of the same shape
    assert 0.4 < null["explained_variance_ratio"] < 0.8 and null["num_walks"] == 10
    assert 0 < drift["curvature"] < 0.1 * top[0]  # the drift is a low-curvature direction
    fit = saved["quadratic_fit"]
    assert len(fit["fitted"]) == 4 and fit["median_relative_error"] < 0.3
    assert set(saved["svd"]) == {"Dense_0", "Dense_1"}
    for entry in saved["svd"].values():
        assert 0 <= entry["whole"]["best"]["overlap"] <= 1
        assert entry["curvature"]["mean"] > 0
    align = saved["alignment"]
    assert len(align["global_cos"]) == 8 and set(align["layers"]) == {"Dense_0", "Dense_1"}
    assert all(0 <= c <= 1 for c in align["global_cos"])


def test_weights_binary_resumes_training_and_snapshots(tiny_run):
    workdir, first = tiny_run
    config = tiny.weights()
    ds = load_dataset(config.data)
    model = build_model(config.model, ds.num_classes)
    init = model.init(jax.random.key(0), jnp.asarray(ds.x_train[:1]))
    loss_fn = MeanLoss(model.apply, cross_entropy)
    params, history, traj = weights_experiment.train_recorded(
        config, workdir, loss_fn, init, ds, jax.random.key(1)
    )
    assert [list(h) for h in history] == [list(h) for h in first["train_history"]]
    np.testing.assert_array_equal(traj.steps, np.arange(400, 600, 5))
    flat = np.asarray(make_layout(params).ravel(params))
    assert traj.params.shape == traj.updates.shape == (40, flat.size)
    config.train.steps = 700  # another config trains afresh (and is not resumed)
    config.train.log_every = 700
    _, history2, traj2 = weights_experiment.train_recorded(
        config, workdir, loss_fn, init, ds, jax.random.key(1)
    )
    assert history2[-1][0] == 700 and traj2.steps[-1] == 695


def test_weights_binary_records_the_applied_updates(tmp_path):
    """With the last snapshot at the last step (steps - 1 divisible by every), that snapshot
    plus its recorded update is the trained params: the recorder stores θ_t and the update the
    optimizer applies, θ_{t+1} = θ_t + u_t. Both are float32 and apply_updates adds them in
    float32, so the sum is reproduced up to one rounding, |θ| eps32 (atol below)."""
    config = tiny.weights()
    config.train.steps, config.train.log_every = 21, 21
    config.record.capacity, config.record.every = 3, 5  # snapshots at 10, 15, 20
    ds = load_dataset(config.data)
    model = build_model(config.model, ds.num_classes)
    init = model.init(jax.random.key(0), jnp.asarray(ds.x_train[:1]))
    loss_fn = MeanLoss(model.apply, cross_entropy)
    params, _, traj = weights_experiment.train_recorded(
        config, str(tmp_path), loss_fn, init, ds, jax.random.key(1)
    )
    np.testing.assert_array_equal(traj.steps, [10, 15, 20])
    flat = np.asarray(make_layout(params).ravel(params))
    assert traj.params.dtype == flat.dtype == np.float32
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(traj.params[-1] + traj.updates[-1], flat, rtol=0,
                               atol=eps * np.abs(flat).max())  # fmt: skip
    assert np.linalg.norm(traj.updates[-1]) > 0
    # and the snapshot before: 5 more steps were taken since, so it is not the trained params
    assert np.linalg.norm(traj.params[-2] + traj.updates[-2] - flat) > np.linalg.norm(
        traj.updates[-1]
    )
