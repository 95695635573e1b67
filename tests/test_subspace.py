"""Subspace geometry (hessjax.linalg.subspace): identities between overlap, principal angles
and Grassmann distances, invariance to the choice of basis, chance levels by Monte Carlo, and
sparse masks against their dense coordinate bases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.linalg import (
    as_basis,
    grassmann_distances,
    mask_overlap,
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


def test_principal_angles_of_a_constructed_pair():
    """span(e_1..e_3) vs span(cos a_i e_i + sin a_i e_{3+i}): the angles are exactly a_i."""
    a = np.array([0.1, 0.7, 1.3])
    u = np.eye(8)[:, :3]
    v = np.cos(a) * np.eye(8)[:, :3] + np.sin(a) * np.eye(8)[:, 3:6]
    np.testing.assert_allclose(principal_angles(u, v), a, rtol=1e-10)
    d = grassmann_distances(u, v)
    np.testing.assert_allclose(d.geodesic, np.linalg.norm(a), rtol=1e-10)
    np.testing.assert_allclose(d.projection, np.linalg.norm(np.sin(a)), rtol=1e-10)
    np.testing.assert_allclose(d.chordal, np.linalg.norm(2 * np.sin(a / 2)), rtol=1e-10)
    np.testing.assert_allclose(d.fubini_study, np.arccos(np.prod(np.cos(a))), rtol=1e-10)


def test_overlap_identities_and_rotation_invariance(pair):
    u, v, rng = pair
    ov = subspace_overlap(u, v)
    d = grassmann_distances(u, v)
    np.testing.assert_allclose(ov, 1 - d.projection**2 / K, rtol=1e-12)
    # projection distance = ‖UUᵀ − VVᵀ‖_F / √2
    np.testing.assert_allclose(
        d.projection, np.linalg.norm(u @ u.T - v @ v.T) / np.sqrt(2), rtol=1e-10
    )
    ru, rv = orthonormal(rng, K, K), orthonormal(rng, K, K)
    np.testing.assert_allclose(subspace_overlap(u @ ru, v @ rv), ov, rtol=1e-12)
    np.testing.assert_allclose(principal_angles(u @ ru, v @ rv), principal_angles(u, v),
                               atol=1e-10)  # fmt: skip
    np.testing.assert_allclose(subspace_overlap(u, u @ ru), 1, rtol=1e-12)
    np.testing.assert_allclose(grassmann_distances(u, u @ ru).geodesic, 0, atol=1e-6)


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
    np.testing.assert_allclose(as_basis(tree), u, atol=0)
    np.testing.assert_allclose(subspace_overlap(tree, v), subspace_overlap(u, v), rtol=1e-12)


def test_masks_against_dense_coordinate_bases(pair):
    _, v, _ = pair
    a, b = np.array([0, 3, 5, 7, 11, 20]), np.array([3, 5, 8, 9, 11, 30])
    dense_a, dense_b = np.eye(N)[:, a], np.eye(N)[:, b]
    np.testing.assert_allclose(mask_overlap(a, v), subspace_overlap(dense_a, v), rtol=1e-12)
    ov = masks_overlap(a, b)
    assert ov == pytest.approx(float(subspace_overlap(dense_a, dense_b)))
    assert masks_iou(a, b) == pytest.approx(overlap_to_iou(ov))  # IoU = ov / (2 - ov)
    assert masks_iou(a, b) == pytest.approx(3 / 9)


def test_top_magnitude_masks():
    theta = np.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -1.0])
    np.testing.assert_array_equal(top_magnitude_mask(theta, 3), [1, 3, 6])
    ids = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # k = 4 split 2 + 2 over two blocks of 4: block 0 keeps {1, 3}, block 1 keeps {6, 7}
    np.testing.assert_array_equal(top_magnitude_mask(theta, 4, ids), [1, 3, 6, 7])
    assert top_magnitude_mask(theta, 3, ids).size == 3
    with pytest.raises(ValueError, match="k <= n"):
        top_magnitude_mask(theta, 9)


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
