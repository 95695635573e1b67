"""Hessian eigenvectors against the weights themselves (Haink, arXiv 2311.00452):

* `weight_svd`, `svd_directions`: the SVD W = U S Vᵀ of every weight kernel and its rank-one
  directions u_i v_iᵀ as unit flat parameter vectors in an operator's flat layout (zeros
  outside that kernel). Dense kernels (in, out) are used as they are; conv kernels
  (*spatial, in, out) as the (prod(spatial)·in, out) matrix of their row-major reshape, so a
  direction's flat entries are exactly the row-major flattening of the kernel leaf.
* `svd_eigen_overlap`: the matrix |<d_i, e_j>|² over SVD index i and eigen-index j for one
  kernel, computed on the kernel slice of each eigenvector (no n-sized directions formed).
* `rayleigh_quotients`: the curvature dᵀHd of any directions (e.g. the SVD directions).
* `weight_alignment`: each eigenvector's alignment with the weight vector, |cos(e_j, θ)| over
  the whole network and |cos(P_l e_j, P_l θ)| within each layer l, as a function of λ_j.

Flat vectors follow a `ParamLayout` (`op.layout` of a `hessian_operator`): the selected leaves
in `jax.tree_util` leaf order, each flattened row-major. Results are float64 numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from hessjax.curvature.blocks import Partition, partition_by_layer
from hessjax.curvature.layout import ParamLayout
from hessjax.linalg import LinearOperatorLike, apply_block
from hessjax.linalg.subspace import random_alignment

PyTree = Any

# ----------------------------------------------------------------------------- kernels


class KernelSlice(NamedTuple):
    """Where one selected kernel leaf sits in the flat layout: path ('params/Dense_0/kernel'),
    name (its module, 'Dense_0'), shape (the leaf's shape), start (flat offset), rows, cols
    (the matrix it is viewed as: prod(shape[:-1]), shape[-1])."""

    path: str
    name: str
    shape: tuple[int, ...]
    start: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def stop(self) -> int:
        return self.start + self.size


def _module_name(path: str, skip: Sequence[str] = ("params",)) -> str:
    parts = path.split("/")
    while parts and parts[0] in skip:
        parts = parts[1:]
    return "/".join(parts[:-1]) or parts[-1]


def kernel_slices(layout: ParamLayout) -> list[KernelSlice]:
    """The selected leaves named 'kernel' with >= 2 dimensions, in flat-layout order."""
    out, start = [], 0
    for path, shape, on in zip(layout.paths, layout.shapes, layout.selected, strict=True):
        if not on:
            continue
        size = int(np.prod(shape))
        if path.split("/")[-1] == "kernel" and len(shape) >= 2:
            rows = int(np.prod(shape[:-1]))
            out.append(KernelSlice(path, _module_name(path), tuple(shape), start, rows, shape[-1]))
        start += size
    return out


def _flat(layout: ParamLayout, params_or_flat: PyTree | ArrayLike) -> np.ndarray:
    """params tree -> its (n,) flat vector in float64; a flat vector is checked and passed on."""
    if np.shape(params_or_flat) == (layout.size,):
        flat = np.asarray(params_or_flat, np.float64)
    else:
        flat = np.asarray(layout.ravel(params_or_flat), np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError("params have non-finite entries")
    return flat


def _eigenvectors(vectors: ArrayLike, n: int) -> np.ndarray:
    v = np.asarray(vectors, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != n or v.shape[1] < 1:
        raise ValueError(f"eigenvectors must be an (n, k) array with n = {n}, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("eigenvectors have non-finite entries")
    return v


# ----------------------------------------------------------------------------- SVD


class WeightSVD(NamedTuple):
    """SVD of one kernel viewed as a (rows, cols) matrix W = U diag(s) Vᵀ.

    kernel: its `KernelSlice`; size: the flat size n of the layout it was taken in (flat
    vectors paired with it must have that length); u (rows, r), s (r,) descending, v (cols,
    r), r = min(rows, cols). The rank-one direction i is u_i v_iᵀ (unit Frobenius norm; the
    directions are orthonormal), and W = Σ_i s_i u_i v_iᵀ.
    """

    kernel: KernelSlice
    size: int
    u: np.ndarray
    s: np.ndarray
    v: np.ndarray

    @property
    def name(self) -> str:
        return self.kernel.name


def weight_svd(layout: ParamLayout, params: PyTree | ArrayLike) -> list[WeightSVD]:
    """SVD of every selected kernel of `params` (a params tree, or its flat (n,) vector in
    `layout`), in flat-layout order; float64."""
    flat = _flat(layout, params)
    kernels = kernel_slices(layout)
    if not kernels:
        raise ValueError(f"no selected leaf is a kernel with >= 2 dims: {layout.selected_paths}")
    out = []
    for ks in kernels:
        w = flat[ks.start : ks.stop].reshape(ks.rows, ks.cols)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        out.append(WeightSVD(ks, layout.size, u, s, vt.T))
    return out


def svd_directions(svd: WeightSVD, num: int | None = None) -> np.ndarray:
    """The first `num` (default all r) rank-one directions u_i v_iᵀ of one kernel as unit flat
    vectors (n, num) in the layout of the SVD (n = svd.size): zeros outside the kernel."""
    r = svd.s.shape[0]
    num = r if num is None else num
    if not isinstance(num, int | np.integer) or not 1 <= num <= r:
        raise ValueError(f"num must be an integer in [1, {r}], got {num!r}")
    ks = svd.kernel
    out = np.zeros((svd.size, num))
    rank_one = np.einsum("ri,ci->rci", svd.u[:, :num], svd.v[:, :num])  # (rows, cols, num)
    out[ks.start : ks.stop] = rank_one.reshape(ks.size, num)
    return out


class SVDOverlap(NamedTuple):
    """Overlap of one kernel's rank-one SVD directions with k eigenvectors.

    name: the layer; overlap (r, k): |<u_i v_iᵀ, e_j>|² (each column sums to at most
    kernel_mass[j]); kernel_mass (k,): ‖P e_j‖², the part of e_j inside this kernel;
    chance (k,): kernel_mass / (rows·cols), the expected overlap of one fixed unit direction of
    the kernel with a uniformly random unit vector of the same kernel mass; singular_values
    (r,); eigenvalues (k,) when given (else NaN).
    """

    name: str
    overlap: np.ndarray
    kernel_mass: np.ndarray
    chance: np.ndarray
    singular_values: np.ndarray
    eigenvalues: np.ndarray

    def best(self) -> tuple[int, int, float]:
        """(i, j, overlap) of the largest entry (SVD index i, eigen-index j)."""
        i, j = np.unravel_index(int(np.argmax(self.overlap)), self.overlap.shape)
        return int(i), int(j), float(self.overlap[i, j])


def svd_eigen_overlap(
    svd: WeightSVD, eigenvectors: ArrayLike, eigenvalues: ArrayLike | None = None
) -> SVDOverlap:
    """|<u_i v_iᵀ, e_j>|² for one kernel's SVD directions (r of them) and eigenvectors (n, k)
    flat in the same layout as the SVD (n = svd.size; e.g. take both from one operator's
    `layout`). Uses only the kernel slice: O(rows·cols·k)."""
    ks = svd.kernel
    v = _eigenvectors(eigenvectors, svd.size)
    k = v.shape[1]
    mats = v[ks.start : ks.stop].T.reshape(k, ks.rows, ks.cols)  # (k, rows, cols)
    # <u_i v_iᵀ, E_j> = u_iᵀ E_j v_i
    inner = np.einsum("ri,jrc,ci->ij", svd.u, mats, svd.v)
    mass = np.sum(mats**2, axis=(1, 2))
    lam = np.full(k, np.nan) if eigenvalues is None else np.asarray(eigenvalues, np.float64)
    if lam.shape != (k,):
        raise ValueError(f"eigenvalues must have shape ({k},), got {lam.shape}")
    return SVDOverlap(ks.name, inner**2, mass, mass / ks.size, svd.s.copy(), lam)


def rayleigh_quotients(
    op: LinearOperatorLike, directions: ArrayLike, block_size: int | None = None
) -> np.ndarray:
    """Curvature dᵀHd / dᵀd (r,) of the operator along each column of directions (n, r) (e.g.
    `svd_directions`), `block_size` products at a time (default all at once)."""
    d = np.asarray(directions, np.float64)
    d = d[:, None] if d.ndim == 1 else d
    if d.ndim != 2 or d.shape[0] != op.size or d.shape[1] < 1:
        raise ValueError(f"directions must be (n, r) with n = {op.size}, got {d.shape}")
    norms = np.sum(d * d, axis=0)
    if np.any(norms == 0):
        raise ValueError("directions has a zero column")
    hd = np.asarray(apply_block(op, jnp.asarray(d, op.dtype), block_size), np.float64)
    return np.sum(d * hd, axis=0) / norms


# ----------------------------------------------------------------------------- alignment


class WeightAlignment(NamedTuple):
    """Alignment of k eigenvectors with the weight vector θ.

    eigenvalues (k,); global_cos (k,): |<e_j, θ>| / (‖e_j‖ ‖θ‖); names (L,) the layer blocks;
    layer_cos (L, k): |<P_l e_j, P_l θ>| / (‖P_l e_j‖ ‖P_l θ‖) (NaN where P_l e_j = 0);
    layer_mass (L, k): ‖P_l e_j‖² / ‖e_j‖²; global_chance: E|cos| of θ with a uniformly random
    direction of R^n; layer_chance (L,): the same within each layer (R^{n_l}).
    """

    eigenvalues: np.ndarray
    global_cos: np.ndarray
    names: tuple[str, ...]
    layer_cos: np.ndarray
    layer_mass: np.ndarray
    global_chance: float
    layer_chance: np.ndarray

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""

        def clean(a):
            return [None if not np.isfinite(x) else float(x) for x in np.ravel(a)]

        return {
            "eigenvalues": clean(self.eigenvalues),
            "global_cos": clean(self.global_cos),
            "global_chance": float(self.global_chance),
            "layers": {
                name: {
                    "cos": clean(self.layer_cos[i]),
                    "mass": clean(self.layer_mass[i]),
                    "chance": float(self.layer_chance[i]),
                }
                for i, name in enumerate(self.names)
            },
        }


def weight_alignment(
    layout: ParamLayout,
    params: PyTree | ArrayLike,
    eigenvectors: ArrayLike,
    eigenvalues: ArrayLike,
    partition: Partition | None = None,
) -> WeightAlignment:
    """|cos(e_j, θ)| globally and per block, for eigenvectors (n, k) with eigenvalues (k,).

    params: a params tree or its flat (n,) vector in `layout`; partition: the blocks for the
    per-layer cosines (default `partition_by_layer(layout)`: one per module, kernel and bias
    together). Alignment at chance level is ≈ √(2/(π n)).
    """
    theta = _flat(layout, params)
    n = theta.shape[0]
    vecs = _eigenvectors(eigenvectors, n)
    lam = np.asarray(eigenvalues, np.float64)
    if lam.shape != (vecs.shape[1],):
        raise ValueError(f"eigenvalues must have shape ({vecs.shape[1]},), got {lam.shape}")
    theta_norm = float(np.linalg.norm(theta))
    if theta_norm == 0.0:
        raise ValueError("the weight vector is zero: its alignment is undefined")
    vec_norm = np.linalg.norm(vecs, axis=0)
    if np.any(vec_norm == 0.0):
        raise ValueError("eigenvectors has a zero column")
    part = partition_by_layer(layout) if partition is None else partition
    ids = np.asarray(part.block_ids)
    if ids.shape != (n,):
        raise ValueError(f"partition covers {ids.shape[0]} entries, the layout has {n}")
    global_cos = np.abs(theta @ vecs) / (theta_norm * vec_norm)
    layer_cos = np.full((part.num_blocks, vecs.shape[1]), np.nan)
    layer_mass = np.zeros_like(layer_cos)
    layer_chance = np.zeros(part.num_blocks)
    for b in range(part.num_blocks):
        idx = ids == b
        t, e = theta[idx], vecs[idx]
        e_norm = np.linalg.norm(e, axis=0)
        t_norm = float(np.linalg.norm(t))
        layer_mass[b] = e_norm**2 / vec_norm**2
        ok = (e_norm > 0) & (t_norm > 0)
        layer_cos[b, ok] = np.abs(t @ e[:, ok]) / (t_norm * e_norm[ok])
        layer_chance[b] = random_alignment(int(idx.sum()))
    return WeightAlignment(
        eigenvalues=lam,
        global_cos=global_cos,
        names=tuple(part.names),
        layer_cos=layer_cos,
        layer_mass=layer_mass,
        global_chance=random_alignment(n),
        layer_chance=layer_chance,
    )


__all__ = [
    "KernelSlice",
    "SVDOverlap",
    "WeightAlignment",
    "WeightSVD",
    "kernel_slices",
    "rayleigh_quotients",
    "svd_directions",
    "svd_eigen_overlap",
    "weight_alignment",
    "weight_svd",
]
