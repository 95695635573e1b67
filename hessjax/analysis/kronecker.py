"""What Wu et al., "Dissecting Hessian" (arXiv 2010.04261) measure on the Hessian block of a
dense layer, given its eigenvectors (from `hessjax.curvature.exact_layer_hessian`, from `eigsh`
of a `hessian_operator(..., select='<layer>/kernel')`, or from `kron_eigh` of its Kronecker
factors):

* `exact_vs_kronecker_overlap`, `cross_model_overlap`: overlap ‖UₖᵀVₖ‖²_F / k of the top-k
  eigenspaces of two bases for each k, beside chance k/n (`hessjax.linalg.overlap_curve`).
* `eigenvector_low_rank`: each eigenvector reshaped to the kernel's (in, out) shape, its
  singular values, the share σ₁²/Σσ² of its top singular value, and the alignment of its
  input-side singular vector with the mean layer input E[x].
* `count_outliers`: the number of outlier eigenvalues at the top of a spectrum (largest ratio
  gap rule).

Eigenvectors are flat over the kernel in the library's row-major (in, out) flattening (see
`hessjax.curvature.kronecker`). Everything here is a pure numpy function of arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from hessjax.linalg.subspace import OverlapCurve, overlap_curve, random_alignment

# ----------------------------------------------------------------------------- overlaps


def exact_vs_kronecker_overlap(
    exact_vectors: ArrayLike, kron_vectors: ArrayLike, ks: Sequence[int] | None = None
) -> OverlapCurve:
    """Overlap vs k between the top eigenspaces of the exact layer block H = E[xxᵀ ⊗ M]
    (exact_vectors (n, K)) and of its Kronecker approximation E[xxᵀ] ⊗ E[M] (kron_vectors
    (n, K), e.g. `kron_eigh(factors, K).eigenvectors`), n = in*out. See
    `hessjax.linalg.overlap_curve`."""
    return overlap_curve(exact_vectors, kron_vectors, ks)


def cross_model_overlap(
    vectors_a: ArrayLike, vectors_b: ArrayLike, ks: Sequence[int] | None = None
) -> OverlapCurve:
    """Overlap vs k between the top eigenspaces of the same layer's Hessian block in two
    models (e.g. trained from different seeds), vectors (n, K) each, in raw parameter
    coordinates: hidden units are not matched, so a permutation between the models counts
    against the overlap. See `hessjax.linalg.overlap_curve`."""
    return overlap_curve(vectors_a, vectors_b, ks)


# ----------------------------------------------------------------------------- low rank


class EigenvectorLowRank(NamedTuple):
    """Low-rank structure of k eigenvectors reshaped to the (in, out) kernel.

    singular_values: (k, min(in, out)) descending, Σσ² = ‖v‖² (= 1 for unit vectors).
    top_share: (k,) σ₁²/Σσ², in [1/min(in, out), 1]; 1 means the reshaped eigenvector is rank
      one, u vᵀ.
    input_vectors: (k, in) the top singular vector on the input side (left singular vector of
      the (in, out) matrix); output_vectors: (k, out) the one on the output side (right).
    mean_alignment: (k,) |cos| between input_vectors[i] and E[x].
    alignment_chance: E|cos| between E[x] and a uniformly random unit vector of R^in,
      Γ(in/2) / (√π Γ((in+1)/2)) ≈ √(2/(π in)).
    """

    singular_values: np.ndarray
    top_share: np.ndarray
    input_vectors: np.ndarray
    output_vectors: np.ndarray
    mean_alignment: np.ndarray
    alignment_chance: float


def eigenvector_low_rank(
    vectors: ArrayLike, in_dim: int, out_dim: int, x_mean: ArrayLike
) -> EigenvectorLowRank:
    """Reshape each eigenvector of a dense layer's kernel Hessian to the kernel's shape and
    measure how close to rank one it is and where its input side points.

    vectors: (in*out, k) eigenvectors as columns (or a single (in*out,) vector), flattened
    row-major over the flax kernel (in, out), so column i becomes V_i = vectors[:, i]
    .reshape(in, out). x_mean: (in,) E[x], the mean input of the layer
    (`KroneckerFactors.x_mean`).

    Under the Kronecker approximation E[xxᵀ] ⊗ E[M] the eigenvectors are exactly u ⊗ w, V = u wᵀ
    (rank one), with u an eigenvector of E[xxᵀ]; when E[x] dominates E[xxᵀ] the top u is close
    to E[x]/‖E[x]‖ (Wu et al., sec. 5). Wu et al. write the weight as W (out, in), so their
    reshaped eigenvector is our Vᵀ and its input side is their *right* singular vector; here
    it is the *left* one.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    for name, d in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(d, int | np.integer) or d < 1:
            raise ValueError(f"{name} must be a positive integer, got {d!r}")
    if v.ndim != 2 or v.shape[0] != in_dim * out_dim or v.shape[1] < 1:
        raise ValueError(
            f"vectors must be (in*out, k) = ({in_dim * out_dim}, k) with k >= 1, got {v.shape}"
        )
    mean = np.asarray(x_mean, dtype=np.float64)
    if mean.shape != (in_dim,):
        raise ValueError(f"x_mean must have shape ({in_dim},), got {mean.shape}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(mean))):
        raise ValueError("vectors and x_mean must be finite")
    mean_norm = float(np.linalg.norm(mean))
    if mean_norm == 0.0:
        raise ValueError("x_mean is zero: the alignment with E[x] is undefined")
    if np.any(np.linalg.norm(v, axis=0) == 0.0):
        raise ValueError("vectors has a zero column")

    mats = v.T.reshape(v.shape[1], in_dim, out_dim)  # (k, in, out), row-major per column
    left, sigma, right_t = np.linalg.svd(mats, full_matrices=False)
    sq = sigma**2
    inputs, outputs = left[:, :, 0], right_t[:, 0, :]
    return EigenvectorLowRank(
        singular_values=sigma,
        top_share=sq[:, 0] / sq.sum(axis=1),
        input_vectors=inputs,
        output_vectors=outputs,
        mean_alignment=np.abs(inputs @ mean) / mean_norm,
        alignment_chance=random_alignment(in_dim),
    )


# ----------------------------------------------------------------------------- outliers


class OutlierCount(NamedTuple):
    """count: number of outlier eigenvalues (0 when no ratio exceeds min_gap); gap: the ratio
    λ_count/λ_{count+1} that separates them from the rest (1.0 when count is 0); ratios:
    (m-1,) λ̃_i/λ̃_{i+1} of the floored eigenvalues λ̃ considered, i = 1 .. m-1."""

    count: int
    gap: float
    ratios: np.ndarray


def count_outliers(
    eigenvalues: ArrayLike,
    *,
    max_count: int | None = None,
    rel_floor: float = 1e-3,
    min_gap: float = 1.0,
) -> OutlierCount:
    """Number of outlier eigenvalues at the top of a spectrum, by the largest ratio gap.

    eigenvalues: (m,) the top m eigenvalues (any order; sorted descending here), m >= 2, with
    λ₁ > 0. Take m well above the expected count: a bulk of eigenvalues must follow the
    outliers for a gap to exist.

    Rule: floor the eigenvalues at rel_floor·λ₁, λ̃_i = max(λ_i, rel_floor·λ₁), so that the
    ratios among near-zero or negative bulk eigenvalues stay bounded; form the ratios
    r_i = λ̃_i/λ̃_{i+1} for i = 1 .. m-1 (only i <= max_count when given); the count is the i
    of the largest ratio (the first on ties), i.e. the outliers are λ₁ .. λ_i and the widest
    multiplicative gap of the top spectrum lies just below them. If that largest ratio is
    <= min_gap the count is 0 (with the default 1.0: only for a flat top spectrum).

    The rule always names a group; read `gap` to judge its separation (Hessian outliers sit
    one or more orders of magnitude above the bulk, gap >> 1).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2:
        raise ValueError(f"eigenvalues must be a 1-D array of >= 2 values, got shape {lam.shape}")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues must be finite")
    if not 0.0 < rel_floor < 1.0:
        raise ValueError(f"rel_floor must be in (0, 1), got {rel_floor!r}")
    if not min_gap >= 1.0:
        raise ValueError(f"min_gap must be >= 1, got {min_gap!r}")
    lam = np.sort(lam)[::-1]
    if lam[0] <= 0:
        raise ValueError(f"the largest eigenvalue must be positive, got {lam[0]!r}")
    m = lam.size
    limit = m - 1 if max_count is None else max_count
    if not isinstance(limit, int | np.integer) or not 1 <= limit <= m - 1:
        raise ValueError(f"max_count must be an integer in [1, {m - 1}], got {max_count!r}")
    floored = np.maximum(lam, rel_floor * lam[0])
    ratios = floored[:-1] / floored[1:]
    i = int(np.argmax(ratios[:limit]))
    if ratios[i] <= min_gap:
        return OutlierCount(0, 1.0, ratios)
    return OutlierCount(i + 1, float(ratios[i]), ratios)


__all__ = [
    "EigenvectorLowRank",
    "OutlierCount",
    "count_outliers",
    "cross_model_overlap",
    "eigenvector_low_rank",
    "exact_vs_kronecker_overlap",
]
