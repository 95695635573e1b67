"""Subspace geometry (hessjax.linalg.subspace): identities between overlap, principal angles
and Grassmann distances, invariance to the choice of basis, chance levels by Monte Carlo, and
sparse masks against their dense coordinate bases.

The tests run in JAX's default float32 (numpy float64 inputs become float32 arrays), the path
users run; tolerances are multiples of float32 round-off, eps = 1.2e-7. One test repeats the
closed forms in float64."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.linalg import (
    Partition,
    as_basis,
    best_mask,
    best_mask_overlap_curve,
    check_orthonormal,
    grassmann_distances,
    magnitude_mask_iou_curve,
    mask_grassmann_distances,
    mask_overlap,
    mask_overlap_curve,
    mask_principal_angles,
    masks_iou,
    masks_overlap,
    overlap_chance,
    overlap_to_iou,
    principal_angles,
    random_mask,
    subspace_overlap,
    top_magnitude_mask,
)

N, K = 40, 6


def orthonormal(rng, n, k):
    return np.linalg.qr(rng.normal(size=(n, k)))[0]


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    return orthonormal(rng, N, K), orthonormal(rng, N, K), rng


def _constructed_pair():
    """span(e_1..e_3) vs span(cos a_i e_i + sin a_i e_{3+i}): the angles are exactly a_i."""
    a = np.array([0.1, 0.7, 1.3])
    u = np.eye(8)[:, :3]
    v = np.cos(a) * np.eye(8)[:, :3] + np.sin(a) * np.eye(8)[:, 3:6]
    return a, u, v


def _check_constructed_pair(rtol, atol):
    a, u, v = _constructed_pair()
    np.testing.assert_allclose(principal_angles(u, v), a, rtol=rtol, atol=atol)
    d = grassmann_distances(u, v)
    np.testing.assert_allclose(d.geodesic, np.linalg.norm(a), rtol=rtol, atol=atol)
    np.testing.assert_allclose(d.projection, np.linalg.norm(np.sin(a)), rtol=rtol, atol=atol)
    np.testing.assert_allclose(d.chordal, np.linalg.norm(2 * np.sin(a / 2)), rtol=rtol, atol=atol)
    np.testing.assert_allclose(d.fubini_study, np.arccos(np.prod(np.cos(a))), rtol=rtol, atol=atol)


def test_principal_angles_of_a_constructed_pair():
    # float32: the cosines carry an error of a few eps = 1.2e-7, and arccos turns an error δ in
    # cos a into δ / sin a, at most 1.2e-7 · 4 / sin 0.1 = 5e-6 here
    assert principal_angles(*_constructed_pair()[1:]).dtype == jnp.float32
    _check_constructed_pair(rtol=0, atol=5e-6)


@pytest.mark.x64
def test_principal_angles_of_a_constructed_pair_float64():
    assert principal_angles(*_constructed_pair()[1:]).dtype == jnp.float64
    _check_constructed_pair(rtol=1e-10, atol=0)


def test_overlap_identities_and_rotation_invariance(pair):
    # float32: each overlap is a sum of K² = 36 squared products of unit vectors, so an error of
    # a few eps · K = 1e-6 relative; angles of nearby spaces resolve only to sqrt(eps) = 3.5e-4
    u, v, rng = pair
    ov = subspace_overlap(u, v)
    d = grassmann_distances(u, v)
    np.testing.assert_allclose(ov, 1 - d.projection**2 / K, rtol=1e-5)
    # projection distance = ‖UUᵀ − VVᵀ‖_F / √2
    np.testing.assert_allclose(
        d.projection, np.linalg.norm(u @ u.T - v @ v.T) / np.sqrt(2), rtol=1e-5
    )
    ru, rv = orthonormal(rng, K, K), orthonormal(rng, K, K)
    np.testing.assert_allclose(subspace_overlap(u @ ru, v @ rv), ov, rtol=1e-5)
    np.testing.assert_allclose(principal_angles(u @ ru, v @ rv), principal_angles(u, v),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(subspace_overlap(u, u @ ru), 1, rtol=1e-5)
    np.testing.assert_allclose(grassmann_distances(u, u @ ru).geodesic, 0, atol=1e-3)
    # the float64 oracle: overlap from numpy's SVD of UᵀV
    cos = np.linalg.svd(u.T @ v, compute_uv=False)
    np.testing.assert_allclose(ov, np.sum(cos**2) / K, rtol=1e-5)
    np.testing.assert_allclose(principal_angles(u, v), np.sort(np.arccos(cos)), atol=1e-5)


def test_chance_level_by_monte_carlo():
    rng = np.random.default_rng(1)
    u = orthonormal(rng, N, K)
    draws = [float(subspace_overlap(u, orthonormal(rng, N, K))) for _ in range(500)]
    # mean of 500 draws; sd of one draw here ~0.08, so the mean is within ~0.0036 (1 sd)
    assert abs(np.mean(draws) - overlap_chance(K, N)) < 0.015
    masks = [masks_overlap(random_mask(jax.random.key(i), N, K), np.arange(K)) for i in range(500)]
    assert abs(np.mean(masks) - K / N) < 0.015


def test_pytree_bases_match_flat(pair):
    u, v, _ = pair
    tree = {"a": jnp.asarray(u[:10].T).reshape(K, 2, 5), "b": jnp.asarray(u[10:].T)}
    np.testing.assert_allclose(as_basis(tree), u.astype(np.float32), atol=0)  # a reshuffle
    np.testing.assert_allclose(subspace_overlap(tree, v), subspace_overlap(u, v), rtol=1e-6)


def test_masks_against_dense_coordinate_bases(pair):
    _, v, _ = pair
    a, b = np.array([0, 3, 5, 7, 11, 20]), np.array([3, 5, 8, 9, 11, 30])
    dense_a, dense_b = np.eye(N)[:, a], np.eye(N)[:, b]
    # float32: both sides sum the same 36 squares in different orders: a few eps relative
    np.testing.assert_allclose(mask_overlap(a, v), subspace_overlap(dense_a, v), rtol=1e-6)
    np.testing.assert_allclose(mask_overlap(a, v), np.sum(v[a] ** 2) / K, rtol=1e-6)
    # principal angles and distances of a mask against the dense coordinate basis (oracle: the
    # float64 SVD of E_aᵀV); one angle may be small, resolved to sqrt(eps) = 3.5e-4 in float32
    cos = np.linalg.svd(dense_a.T @ v, compute_uv=False)
    np.testing.assert_allclose(mask_principal_angles(a, v), np.arccos(cos), atol=1e-3)
    dist, dense = mask_grassmann_distances(a, v), grassmann_distances(dense_a, v)
    for name in dist._fields:
        np.testing.assert_allclose(getattr(dist, name), getattr(dense, name), atol=1e-3)
    ov = masks_overlap(a, b)
    assert ov == pytest.approx(float(subspace_overlap(dense_a, dense_b)))
    assert masks_iou(a, b) == pytest.approx(overlap_to_iou(ov))  # IoU = ov / (2 - ov)
    assert masks_iou(a, b) == pytest.approx(3 / 9)


def test_top_magnitude_masks():
    theta = np.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -1.0])
    np.testing.assert_array_equal(top_magnitude_mask(theta, 3), [1, 3, 6])
    part = Partition.from_ids(np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    # k = 4 split 2 + 2 over two blocks of 4: block 0 keeps {1, 3}, block 1 keeps {6, 7}
    np.testing.assert_array_equal(top_magnitude_mask(theta, 4, part), [1, 3, 6, 7])
    assert top_magnitude_mask(theta, 3, part).size == 3
    with pytest.raises(TypeError, match="Partition"):
        top_magnitude_mask(theta, 3, np.zeros(8, int))
    with pytest.raises(ValueError, match="k <= n"):
        top_magnitude_mask(theta, 9)


def test_top_magnitude_mask_requires_a_flat_vector():
    """A 2-D θ (e.g. a kernel matrix) used to be flattened silently, so indices came back
    into an array the caller did not mean: it is refused, naming the shape."""
    kernel = np.arange(12.0).reshape(3, 4)
    with pytest.raises(ValueError, match=r"flat \(n,\) vector.*\(3, 4\)"):
        top_magnitude_mask(kernel, 2)
    with pytest.raises(ValueError, match="flat"):
        top_magnitude_mask(np.float32(1.0), 1)
    np.testing.assert_array_equal(top_magnitude_mask(kernel.ravel(), 2), [10, 11])


def test_metrics_refuse_non_orthonormal_bases(pair):
    """‖UᵀV‖²_F / k of scaled or merely independent bases is no overlap (a basis scaled by 6
    gave overlap 36 and angles 0): the metrics raise, naming the deviation, or orthonormalise
    on request."""
    u, v, rng = pair
    skew = u @ (np.eye(K) + 0.3 * rng.normal(size=(K, K)))  # same span, not orthonormal
    for bad in (6 * u, skew):
        err = np.max(np.abs(bad.T @ bad - np.eye(K)))
        for metric in (subspace_overlap, principal_angles, grassmann_distances):
            with pytest.raises(
                ValueError,
                match=re.escape(f"u columns are not orthonormal: max |BᵀB − I| = {err:.2e}"),
            ):
                metric(bad, v)
            with pytest.raises(ValueError, match="v columns are not orthonormal"):
                metric(v, bad)
        with pytest.raises(ValueError, match="not orthonormal"):
            mask_overlap(np.arange(K), bad)
        with pytest.raises(ValueError, match="not orthonormal"):
            mask_grassmann_distances(np.arange(K), bad)
    # orthonormalize=True: the metrics of the spans, equal to those of orthonormal bases of them
    ov = subspace_overlap(skew, 6 * v, orthonormalize=True)
    np.testing.assert_allclose(ov, subspace_overlap(u, v), rtol=1e-5)
    np.testing.assert_allclose(subspace_overlap(skew, u, orthonormalize=True), 1, rtol=1e-5)
    np.testing.assert_allclose(
        principal_angles(skew, v, orthonormalize=True), principal_angles(u, v), atol=1e-5
    )
    with pytest.raises(ValueError, match="rank deficient"):
        subspace_overlap(np.concatenate([u[:, :2], u[:, :1]], 1), v, orthonormalize=True)


def test_orthonormality_tolerance_suits_float32():
    """Bases orthonormal to float32 round-off pass (QR of a tall float32 matrix: max
    |QᵀQ − I| ~ eps · sqrt(n) ~ 1e-6, against the tolerance 10·sqrt(eps) = 3.5e-3); a column
    off by 1% fails."""
    q = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (4000, 64)))[0]
    assert q.dtype == jnp.float32
    check_orthonormal(q)
    assert float(subspace_overlap(q, q)) == pytest.approx(1, rel=1e-5)
    with pytest.raises(ValueError, match="not orthonormal"):
        check_orthonormal(q.at[:, 3].multiply(1.01))


def test_errors(pair):
    u, v, _ = pair
    with pytest.raises(ValueError, match="same n"):
        subspace_overlap(u, v[:10])
    with pytest.raises(ValueError, match="distinct"):
        mask_overlap(np.array([1, 1]), v)
    with pytest.raises(ValueError, match=r"lie in"):
        mask_overlap(np.array([N]), v)
    with pytest.raises(ValueError, match="leading k"):
        as_basis({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})


# ----------------------------------------------------------------------------- curves over k


@pytest.mark.x64
def test_best_k_sparse_mask_beats_every_mask_by_enumeration():
    """Oracle: all C(n, k) masks enumerated for n = 10. The best mask's overlap with the top-k
    columns equals the maximum over all of them (float64 sums of the same squares: 1e-12),
    and the magnitude-mask curve never exceeds it."""
    rng = np.random.default_rng(3)
    n = 10
    v = orthonormal(rng, n, 7)
    theta = rng.normal(size=n)
    best = best_mask_overlap_curve(v)
    magnitude = mask_overlap_curve(theta, v)
    np.testing.assert_array_equal(best.ks, np.arange(1, 8))
    for k in range(1, 8):
        values = {m: np.sum(v[list(m), :k] ** 2) / k for m in itertools.combinations(range(n), k)}
        top = max(values, key=values.get)
        assert best.overlap[k - 1] == pytest.approx(values[top], rel=1e-12)
        np.testing.assert_array_equal(best_mask(v, k), top)  # the maximiser is unique here
        assert magnitude.overlap[k - 1] <= best.overlap[k - 1] + 1e-12
        assert best.chance[k - 1] == k / n
    # at k = n the whole space is covered; a subset of ks gives the same values
    assert best_mask_overlap_curve(orthonormal(rng, 5, 5)).overlap[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(best_mask_overlap_curve(v, [2, 5]).overlap, best.overlap[[1, 4]])


@pytest.mark.x64
def test_mask_overlap_curve_is_the_per_k_mask_overlap():
    """Oracle: `mask_overlap` of `top_magnitude_mask` and the first k columns, one k at a time
    (ties in |θ| included: both take the lower index)."""
    rng = np.random.default_rng(4)
    n = 30
    v = orthonormal(rng, n, 12)
    theta = rng.normal(size=n)
    theta[[3, 17, 25]] = theta[8]  # a tie of four entries
    curve = mask_overlap_curve(theta, v)
    for k in range(1, 13):
        mask = top_magnitude_mask(theta, k)
        expected = np.sum(v[mask, :k] ** 2) / k
        assert curve.overlap[k - 1] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(mask_overlap(mask, v[:, :k]), expected, rtol=1e-12)
    np.testing.assert_allclose(curve.chance, np.arange(1, 13) / n)
    np.testing.assert_allclose(mask_overlap_curve(theta, v, [4, 9]).overlap, curve.overlap[[3, 8]])
    with pytest.raises(ValueError, match="theta has 29 entries"):
        mask_overlap_curve(theta[:-1], v)
    with pytest.raises(ValueError, match=r"ks must be .* \[1, 12\]"):
        mask_overlap_curve(theta, v, [13])
    with pytest.raises(ValueError, match="not orthonormal"):
        mask_overlap_curve(theta, 2 * v)


def test_magnitude_mask_iou_curve_against_sets():
    """Oracle: Python sets of the two `top_magnitude_mask`s for every k; identical vectors give
    IoU 1, and the chance level is that of two random masks (Monte Carlo)."""
    rng = np.random.default_rng(5)
    n = 25
    a, b = rng.normal(size=n), rng.normal(size=n)
    b[:5] = a[:5]
    a[[2, 9]] = a[4]  # ties
    curve = magnitude_mask_iou_curve(a, b)
    for k in range(1, n + 1):
        sa, sb = set(top_magnitude_mask(a, k)), set(top_magnitude_mask(b, k))
        assert curve.iou[k - 1] == pytest.approx(len(sa & sb) / len(sa | sb), rel=1e-12)
    assert curve.iou[-1] == 1.0
    np.testing.assert_allclose(magnitude_mask_iou_curve(a, a).iou, 1.0)
    k = 8
    draws = [
        masks_iou(random_mask(jax.random.key(i), n, k), random_mask(jax.random.key(i + 999), n, k))
        for i in range(300)
    ]
    # E|A ∩ B| = k²/n exactly; the IoU at that intersection is within a few % of E[IoU]
    assert np.mean(draws) == pytest.approx(curve.chance[k - 1], rel=0.08)
    with pytest.raises(ValueError, match="differ in length"):
        magnitude_mask_iou_curve(a, b[:-1])
