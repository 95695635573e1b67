"""experiments/mask_overlap.py on a tiny MNIST-1D MLP, checked against a dense float64 oracle
(jax.hessian + numpy.linalg.eigh, under enable_x64), and the fan_in_uniform init of the paper's
MLP. The binary runs in JAX's default float32 (its dense Hessian is float64 by design)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from _x64 import enable_x64
from jax.flatten_util import ravel_pytree

from experiments import common, mask_overlap
from experiments.configs.mask_overlap import get_config
from hessjax import linalg, training
from hessjax.data import class_balanced_subset

KS, NUM_RANDOM = tiny.MASK_OVERLAP_KS, tiny.MASK_OVERLAP_RANDOM


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mask_overlap"))
    return workdir, mask_overlap.run(tiny.mask_overlap(), workdir)


def _oracle(config, workdir, step, test=False):
    """θ (n,), eigenvalues (n,) and eigenvectors (n, n) ranked by |λ|, from jax.hessian of the
    mean loss on the binary's Hessian samples (its test subset with `test`), in float64,
    independently of hessjax's operators."""
    with enable_x64():
        ds = mask_overlap.load_data(config.data)
        model = common.build_model(config.model, ds.num_classes)
        params = model.init(jax.random.key(0), jnp.asarray(ds.x_train[:1]))
        optimizer = training.make_optimizer(config.train.optimizer, config.train.learning_rate)
        target = {"params": params, "opt_state": optimizer.init(params)}
        done = [c for c in sorted(config.checkpoints) if c <= step]
        fingerprint = mask_overlap._fingerprint(config, done)
        params = mask_overlap._load_checkpoint(workdir, step, fingerprint, target)[0]["params"]
        if test:
            per_class = config.hessian.test_samples // ds.num_classes
            x, y = class_balanced_subset(ds.x_test, ds.y_test, per_class, seed=config.seed)
        else:
            per_class = config.hessian.num_samples // ds.num_classes
            x, y = class_balanced_subset(ds.x_train, ds.y_train, per_class, seed=config.seed)
        x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y)
        flat, unravel = ravel_pytree(
            jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        )

        def loss(theta):
            logits = model.apply(unravel(theta), x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        h = np.asarray(jax.hessian(loss)(flat))
        lam, vec = np.linalg.eigh((h + h.T) / 2)
    order = np.argsort(-np.abs(lam))
    return np.asarray(flat), lam[order], vec[:, order], h


def test_exact_overlaps_match_dense_numpy_oracle(tiny_run):
    workdir, results = tiny_run
    n = results["num_params"]
    assert n == 40 * 6 + 6 + 6 * 10 + 10 and results["ks"] == list(KS)
    assert [r["step"] for r in results["checkpoints"]] == [0, 25]
    for record in results["checkpoints"]:
        theta, lam, vec, _ = _oracle(tiny.mask_overlap(), workdir, record["step"])
        np.testing.assert_allclose(record["exact"]["eigenvalues_top"], lam[:20], rtol=1e-6)
        round_off = len(lam) * np.finfo(np.float64).eps * abs(lam[0])
        assert record["exact"]["num_negative"] == int(np.sum(lam < -round_off))
        assert set(record["exact"]["layerwise_overlap"]) == {str(k) for k in KS}
        for k in KS:
            mask = np.argsort(-np.abs(theta))[:k]
            expected = np.sum(vec[mask, :k] ** 2) / k
            assert record["exact"]["overlap"][str(k)] == pytest.approx(expected, rel=1e-6)
            # The chance level and the Grassmann distances are those of the same two subspaces.
            assert results["chance"][str(k)] == k / n
            cos = np.linalg.svd(vec[mask, :k], compute_uv=False)
            geodesic = np.linalg.norm(np.arccos(np.clip(cos, 0, 1)))
            assert record["exact"]["grassmann"][str(k)]["geodesic"] == pytest.approx(
                geodesic, rel=1e-4
            )


def test_curves_crystallisation_and_test_hessian_match_the_oracle(tiny_run):
    """Every-k curves (magnitude mask, best k-sparse mask: top-k rows of V_k), the IoU and
    eigenspace overlap between the two checkpoints, and the test-subset Hessian, each against
    the jax.hessian + numpy eigh oracle (float64 eigh on both sides; the crystallisation
    figures use float32 copies of the bases: 1e-5)."""
    workdir, results = tiny_run
    config = tiny.mask_overlap()
    kmax = max(KS)
    oracles = [_oracle(config, workdir, r["step"]) for r in results["checkpoints"]]
    for record, (theta, _, vec, _) in zip(results["checkpoints"], oracles, strict=True):
        order = np.argsort(-np.abs(theta), kind="stable")
        curve, best = record["exact"]["curve"]["overlap"], record["exact"]["curve"]["best_mask"]
        assert len(curve) == len(best) == kmax
        for k in range(1, kmax + 1):
            vk = vec[:, :k]
            assert curve[k - 1] == pytest.approx(np.sum(vk[order[:k]] ** 2) / k, rel=1e-6)
            rows = np.sort(np.sum(vk**2, axis=1))[::-1]
            assert best[k - 1] == pytest.approx(np.sum(rows[:k]) / k, rel=1e-6)
            assert curve[k - 1] <= best[k - 1] + 1e-9
        assert len(record["sketch"]["curve"]["overlap"]) == config.sketch.k
        test_theta, test_lam, test_vec, _ = _oracle(config, workdir, record["step"], test=True)
        t = record["test_hessian"]
        assert t["method"] == "exact"
        np.testing.assert_allclose(t["eigenvalues_top"], test_lam[:20], rtol=1e-6)
        for k in KS:
            expected = np.sum((vec[:, :k].T @ test_vec[:, :k]) ** 2) / k
            assert t["train_test_overlap"][str(k)] == pytest.approx(expected, rel=1e-6)
            expected = np.sum(test_vec[order[:k], :k] ** 2) / k
            assert t["overlap"][str(k)] == pytest.approx(expected, rel=1e-6)
    assert results["checkpoints"][0]["crystallisation"] is None
    cryst = results["checkpoints"][1]["crystallisation"]
    assert cryst["from_step"] == 0
    (theta0, _, vec0, _), (theta1, _, vec1, _) = oracles
    for k in KS:
        a, b = (set(np.argsort(-np.abs(t), kind="stable")[:k]) for t in (theta0, theta1))
        assert cryst["mask_iou"][str(k)] == pytest.approx(len(a & b) / len(a | b), rel=1e-12)
        expected = np.sum((vec0[:, :k].T @ vec1[:, :k]) ** 2) / k
        assert cryst["exact"]["eigenspace_overlap"][str(k)] == pytest.approx(expected, abs=1e-5)
    assert len(cryst["sketch"]["curve"]) == config.sketch.k
    assert 0 < cryst["mask_iou"]["5"] < 1  # training moved the mask, not all of it


def test_random_masks_sit_at_chance_and_training_moves_the_overlap(tiny_run):
    _, results = tiny_run
    n = results["num_params"]
    for record in results["checkpoints"]:
        for k in KS:
            rnd = record["exact"]["random"][str(k)]
            assert len(rnd["values"]) == NUM_RANDOM
            # E[overlap of a random k-mask with a fixed k-space] = k/n exactly.
            assert abs(rnd["mean"] - k / n) < 4 * rnd["std"] / np.sqrt(NUM_RANDOM) + 1e-9
            # The same random masks measured against the sketched basis.
            assert record["sketch"]["random"][str(k)]["mean"] == pytest.approx(
                rnd["mean"], abs=4 * rnd["std"] / np.sqrt(NUM_RANDOM)
            )


def test_training_moves_the_overlap_as_the_oracle_says(tiny_run):
    """The overlap at k = 20 changes between the checkpoints by what the dense float64 oracle
    says (to 1e-6: both are float64 eigh of the same Hessian up to float64 round-off), and by
    more than the noise of the random-mask chance level, so the change is measured, not noise."""
    workdir, results = tiny_run
    k = 20
    oracle = []
    for record in results["checkpoints"]:
        theta, _, vec, _ = _oracle(tiny.mask_overlap(), workdir, record["step"])
        mask = np.argsort(-np.abs(theta))[:k]
        oracle.append(np.sum(vec[mask, :k] ** 2) / k)
    first, last = (r["exact"]["overlap"][str(k)] for r in results["checkpoints"])
    assert last - first == pytest.approx(oracle[1] - oracle[0], abs=1e-6)
    noise = max(r["exact"]["random"][str(k)]["std"] for r in results["checkpoints"])
    assert abs(oracle[1] - oracle[0]) > noise / np.sqrt(NUM_RANDOM)


def test_sketch_agrees_with_exact_and_its_error_estimate_is_honest(tiny_run):
    _, results = tiny_run
    for record in results["checkpoints"]:
        s, e = record["sketch"], record["exact"]
        assert s["num_matvecs"] == 150 + 300 + 30
        np.testing.assert_allclose(s["eigenvalues_top"][:3], e["eigenvalues_top"][:3], rtol=0.03)
        assert s["eigenvalue_rel_error"]["top10_max"] < 0.05
        assert s["subspace_overlap_with_exact"]["5"] > 0.95
        for k in KS:  # sketched mask overlaps close to the exact ones
            assert abs(s["overlap"][str(k)] - e["overlap"][str(k)]) < 0.02
        assert s["optimal_relative_error"] <= s["true_relative_error"] + 1e-12
        assert abs(s["error_estimate"] - s["true_relative_error"]) < max(
            4 * s["error_stderr"], 0.1 * s["true_relative_error"]
        )


@pytest.mark.x64
def test_sketch_vs_exact_true_error_is_the_frobenius_error():
    rng = np.random.default_rng(0)
    n, k = 30, 6
    h = rng.normal(size=(n, n))
    h = (h + h.T) / 2
    lam, vec = np.linalg.eigh(h)
    order = np.argsort(-np.abs(lam))
    lam, vec = lam[order], vec[:, order]
    # A perturbed, orthonormal basis (as sketch_eigh returns), and eigenvalues with errors.
    vec_s = np.linalg.qr(vec[:, :k] + 1e-2 * rng.normal(size=(n, k)))[0]
    vec_s *= np.sign(np.sum(vec_s * vec[:, :k], 0))  # QR may flip signs; keep them near vec
    lam_s = lam[:k] * (1 + 1e-2 * rng.normal(size=k))
    out = mask_overlap.sketch_vs_exact(h, lam, vec, lam_s, vec_s, [2, 6])
    truth = np.linalg.norm(h - vec_s @ np.diag(lam_s) @ vec_s.T) / np.linalg.norm(h)
    assert out["true_relative_error"] == pytest.approx(truth, rel=1e-10)
    optimal = np.linalg.norm(h - vec[:, :k] @ np.diag(lam[:k]) @ vec[:, :k].T) / np.linalg.norm(h)
    assert out["optimal_relative_error"] == pytest.approx(optimal, rel=1e-10)
    np.testing.assert_allclose(
        out["eigenvalue_rel_error"]["per_rank"], np.abs(lam_s / lam[:k] - 1), rtol=1e-10
    )
    # A pair +a, -a that swaps places when ranked by |λ| is no error; a wrong size is.
    swapped = linalg.magnitude_errors([2.0, -1.0, 1.0], [2.0, 1.0, -1.0])
    np.testing.assert_allclose(swapped, 0.0)
    np.testing.assert_allclose(linalg.magnitude_errors([3.0, -1.0], [2.0, -1.0]), [0.5, 0])
    # the overlaps against the oracle: mean cos² of numpy's principal angles
    for kk in (2, 6):
        cos = np.linalg.svd(vec_s[:, :kk].T @ vec[:, :kk], compute_uv=False)
        assert out["subspace_overlap_with_exact"][kk] == pytest.approx(np.mean(cos**2), rel=1e-10)
    assert 0.99 < out["subspace_overlap_with_exact"][6] < 1
    # the true error is exact for any V_s, but the overlap of a non-orthonormal one is no
    # overlap (it used to come out as a number): refused
    with pytest.raises(ValueError, match="not orthonormal"):
        mask_overlap.sketch_vs_exact(h, lam, vec, lam_s, 1.1 * vec_s, [2, 6])


def test_writes_results_figures_and_resumes(tiny_run):
    workdir, first = tiny_run
    for name in mask_overlap.OUTPUTS + ("bases_0.npz", "bases_25.npz"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["checkpoints"] == first["checkpoints"]
    spectra = np.load(os.path.join(workdir, "spectra.npz"))
    assert spectra["exact_25"].shape == (first["num_params"],)
    assert spectra["sketch_25"].shape == (40,)
    # Same config again: both checkpoints are read back, not recomputed (equal timings too).
    again = mask_overlap.run(tiny.mask_overlap(), workdir)
    assert again["checkpoints"] == first["checkpoints"]
    # One more checkpoint: the first two are reused, training continues from step 25.
    longer = mask_overlap.run(tiny.mask_overlap((0, 25, 35)), workdir)
    assert longer["checkpoints"][:2] == first["checkpoints"]
    assert [h[0] for h in longer["train_history"]][-1] >= 25
    assert longer["checkpoints"][2]["seconds"]["train"] > 0


def test_resize_images_keeps_range_and_shape():
    x = np.random.default_rng(0).uniform(size=(3, 28 * 28)).astype(np.float32)
    x[0] = 0.25
    out = mask_overlap.resize_images(x, 16)
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.25, rtol=1e-6)  # constant image stays constant
    assert out.min() >= 0 and out.max() <= 1
    assert abs(out[1:].mean() - x[1:].mean()) < 0.01  # bilinear averaging keeps the mean
    assert mask_overlap.resize_images(x, 0).shape == (3, 28, 28, 1)


def test_fan_in_uniform_mlp_of_the_paper():
    config = get_config()
    model = common.build_model(config.model, 10)
    params = model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 1)))
    n = sum(a.size for a in jax.tree_util.tree_leaves(params))
    assert n == 7030  # 256-20-20-20-20-20-10 with biases
    layers = params["params"]
    assert len(layers) == 6
    for layer in layers.values():
        bound = 1 / np.sqrt(layer["kernel"].shape[0])
        for name in ("kernel", "bias"):
            a = np.asarray(layer[name])
            assert np.all(np.abs(a) <= bound), name
            assert np.abs(a).max() > 0.5 * bound, name  # the whole range is used, bias too
        # U(-b, b) has std b/√3 (LeCun-normal would give 1/√fan_in = b).
        kernel = np.asarray(layer["kernel"])
        if kernel.size >= 200:
            assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.15)


def test_large_preset_is_the_documented_conv_net():
    c = get_config("large")
    assert c.model.kind == "conv" and c.sketch.k == 1000 and not c.exact.enabled
    assert 1000 in c.overlap.ks and c.data.resize == 0
    model = common.build_model(c.model, 10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes)) == 962_314
    # n (k_o + k + 3 block) float32 bytes: 10.8 GB, within a 16 GB accelerator
    assert mask_overlap.sketch_peak_bytes(962_314, 1000, 1500, 100) < 16e9
    with pytest.raises(ValueError, match="preset"):
        get_config("huge")


def test_size_sweep_records_each_setting_and_survives_a_failing_one(tmp_path, monkeypatch):
    """Settings deduplicated across the width and depth sweeps, k = round(k_fraction n) with
    chance k / n, each summary equal to its own run's results.json; a setting that raises is
    recorded with its error and the others still run and are plotted."""
    real_run = mask_overlap.run

    def run(config, workdir):
        if tuple(config.model.widths) == (5,):
            raise RuntimeError("injected failure")
        return real_run(config, workdir)

    monkeypatch.setattr(mask_overlap, "run", run)
    out = mask_overlap.main(tiny.mask_overlap_sweep(), str(tmp_path))
    names = [e["name"] for e in out["settings"]]
    assert names == ["mlp_3", "mlp_5", "mlp_3-3"]
    assert out["settings"][0]["sweeps"] == ["width", "depth"]
    assert out["failed"] == ["mlp_5"] and "injected failure" in out["settings"][1]["error"]
    for entry, n in ((out["settings"][0], 163), (out["settings"][2], 175)):
        assert entry["num_params"] == n and entry["k"] == round(0.05 * n)
        assert entry["chance"] == entry["k"] / n
        with open(tmp_path / entry["name"] / "results.json") as f:
            single = json.load(f)
        k = str(entry["k"])
        for summary, record in zip(entry["checkpoints"], single["checkpoints"], strict=True):
            for kind in ("exact", "sketch"):
                assert summary[kind]["overlap"] == record[kind]["overlap"][k]
                assert summary[kind]["best_mask"] == record[kind]["best_mask"][k]
    for name in mask_overlap.SWEEP_OUTPUTS:
        assert os.path.getsize(tmp_path / name) > 0


@pytest.mark.parametrize("field", ["widths", "depths"])
def test_size_sweep_refuses_an_empty_list_before_any_work(tmp_path, field):
    c = tiny.mask_overlap_sweep()
    c.sweep[field] = ()
    with pytest.raises(
        common.ConfigError, match=rf"config.sweep.{field} = \(\): must be a non-empty"
    ):
        mask_overlap.main(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
