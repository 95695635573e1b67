"""Blocks of a symmetric operator under a partition of its indices.

A partition is given as `block_ids`, an integer (n,) array assigning every index of the flat
vector to one of `num_blocks` blocks (any pattern: contiguous layers, strided neurons, user
labels). A_ij is the block with rows in block i and columns in block j.

* `block_operator`: A_ii as an `Operator` of its own size, or A_ij as a rectangular `Block`.
* `block_eigsh`: eigenpairs of every diagonal block A_ii in one compiled, vmapped Lanczos.
* `block_frobenius_sq`: ‖A_ij‖²_F, exact (unit probes of block j) or estimated without bias
  from Gaussian probes, ‖A_ij‖²_F = E‖A_ij v‖², with standard errors.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax.linalg import _checks
from hessjax.linalg.lanczos import EigshResult, Which, _eigsh_traced, default_num_steps
from hessjax.linalg.operator import Operator, is_traceable

Array = jax.Array


def check_block_ids(block_ids, num_blocks: int, n: int) -> np.ndarray:
    """(n,) int32 copy of block_ids; every block must be non-empty."""
    ids = np.asarray(block_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"block_ids must be an integer array of shape ({n},), got {ids.shape}")
    _checks.check_positive(num_blocks, "num_blocks")
    if ids.min() < 0 or ids.max() >= num_blocks:
        raise ValueError(f"block_ids must lie in [0, {num_blocks}), got [{ids.min()}, {ids.max()}]")
    empty = np.flatnonzero(np.bincount(ids, minlength=num_blocks) == 0)
    if empty.size:
        raise ValueError(f"blocks {empty.tolist()} have no index")
    return ids.astype(np.int32)


def _block_index(ids: np.ndarray, i: int, num_blocks: int) -> np.ndarray:
    if not 0 <= i < num_blocks:
        raise ValueError(f"block index {i} out of range [0, {num_blocks})")
    return np.flatnonzero(ids == i).astype(np.int32)


def _sub_product(v: Array, op: Operator, rows: Array, cols: Array) -> Array:
    full = jnp.zeros((op.size,), v.dtype).at[cols].set(v)
    return op.matvec(full)[rows]


@dataclasses.dataclass(frozen=True)
class Block:
    """Rectangular block A_ij: (n_j,) -> (n_i,) (one full product of A per call).

    args = (op, rows, cols) are traced; `transpose` gives A_ji = A_ijᵀ (A symmetric).
    """

    args: tuple
    shape: tuple[int, int]

    def matvec(self, v: Array) -> Array:
        return _sub_product(v, *self.args)

    def matmat(self, vs: Array) -> Array:
        """(n_j, p) -> (n_i, p), vmapped over columns."""
        return jax.vmap(self.matvec, in_axes=1, out_axes=1)(vs)

    def __matmul__(self, x: Array) -> Array:
        return _block_matmul(self, x)

    @property
    def transpose(self) -> Block:
        op, rows, cols = self.args
        return Block((op, cols, rows), (self.shape[1], self.shape[0]))


jax.tree_util.register_dataclass(Block, data_fields=["args"], meta_fields=["shape"])


@jax.jit
def _block_matmul(block: Block, x: Array) -> Array:
    return block.matvec(x) if x.ndim == 1 else block.matmat(x)


def block_operator(
    op: Operator, block_ids, num_blocks: int, i: int, j: int | None = None
) -> Operator | Block:
    """A_ii (j None or j == i) as a square `Operator` of size n_i, usable by every solver; or
    A_ij as a rectangular `Block`. Indices are numbered in increasing flat order."""
    if not is_traceable(op):
        raise ValueError("block_operator needs an in-memory Operator (data=, not batches=)")
    ids = check_block_ids(block_ids, num_blocks, op.size)
    rows = _block_index(ids, i, num_blocks)
    cols = rows if j is None or j == i else _block_index(ids, j, num_blocks)
    args = (op, jnp.asarray(rows), jnp.asarray(cols))
    if cols is rows:
        return Operator(_sub_product, args, int(rows.size), op.dtype)
    return Block(args, (int(rows.size), int(cols.size)))


# ----------------------------------------------------------------------------- eigenpairs


def _masked_product(v: Array, op: Operator, mask: Array) -> Array:
    return mask * op.matvec(mask * v)


@functools.partial(jax.jit, static_argnames=("k", "which", "num_steps", "tol"))
def _block_eigsh(op, masks, v0s, sizes, key, k, which, num_steps, tol) -> EigshResult:
    def one(mask, v0, size):
        masked = Operator(_masked_product, (op, mask), op.size, op.dtype)
        return _eigsh_traced(masked, v0, key, k, which, num_steps, tol, 1, mask, size)

    return jax.vmap(one)(masks, v0s, sizes)


def block_eigsh(
    op: Operator,
    block_ids,
    num_blocks: int,
    k: int = 1,
    *,
    key: Array,
    which: Which = "LA",
    num_steps: int | None = None,
    tol: float | None = 1e-4,
) -> EigshResult:
    """k eigenpairs of every diagonal block A_ii, all blocks in one compiled Lanczos.

    Each block runs Lanczos on P_i A P_i (P_i the 0/1 mask of block i) from a start vector
    inside the block, with restarts inside the block too, so its Krylov space stays in the
    block and holds at most n_i steps; the b Lanczos runs are vmapped, so one step costs one
    batched product of A with b vectors, and the loop runs until every block meets `tol`
    (see `eigsh`) or has taken min(num_steps, n_i) steps.

    Returns an `EigshResult` with a leading block axis: eigenvalues (b, k), eigenvectors
    (b, n, k) in full coordinates (zero outside the block), residuals (b, k), converged (b, k),
    num_matvecs (b,). num_steps (the basis size) defaults to max_i default_num_steps(k, n_i).
    """
    if not is_traceable(op):
        raise ValueError("block_eigsh needs an in-memory Operator (data=, not batches=)")
    ids = check_block_ids(block_ids, num_blocks, op.size)
    sizes = np.bincount(ids, minlength=num_blocks)
    _checks.check_k(k, int(sizes.min()), "k (every block needs more than k indices)")
    if num_steps is None:
        num_steps = max(default_num_steps(k, int(s)) for s in sizes)
    _checks.check_steps(num_steps, k, int(sizes.max()))
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive or None, got {tol!r}")
    _checks.check_key(key)
    key, start_key = jax.random.split(key)
    masks = jnp.asarray(ids[None, :] == np.arange(num_blocks)[:, None], op.dtype)
    v0s = masks * jax.random.normal(start_key, (num_blocks, op.size), op.dtype)
    sizes = jnp.asarray(sizes, jnp.int32)
    return _block_eigsh(op, masks, v0s, sizes, key, k, which, int(num_steps), tol)


# ----------------------------------------------------------------------------- norms


class BlockNorms(NamedTuple):
    """Squared Frobenius norms of blocks: sq (b, c) with sq[i, a] = ‖A_{i, columns[a]}‖²_F,
    their standard errors stderr (b, c) (0 when exact), the probed column blocks (c,) and
    the number of products spent."""

    sq: Array
    stderr: Array
    columns: np.ndarray
    num_matvecs: int


@functools.partial(jax.jit, static_argnames=("num_blocks", "batch_size"))
def _column_sq(op, probes, ids, num_blocks, batch_size):
    """Per-probe squared norms of each row block of A @ probes: (p, n) probes -> (p, b)."""

    def one(v):
        w = op.matvec(v)
        return jax.ops.segment_sum(w * w, ids, num_segments=num_blocks)

    return jax.lax.map(one, probes, batch_size=batch_size)


def block_frobenius_sq(
    op: Operator,
    block_ids,
    num_blocks: int,
    *,
    columns=None,
    num_probes: int | None = None,
    key: Array | None = None,
    batch_size: int | None = None,
) -> BlockNorms:
    """‖A_ij‖²_F for all row blocks i and the column blocks j in `columns` (default all).

    One product A v with v supported on block j gives ‖A_ij v‖² for every i at once.
    num_probes None: exact, v runs over the n_j unit vectors of block j (n_j products).
    Otherwise `num_probes` Gaussian vectors on block j: an unbiased estimate with standard
    error std/√num_probes (needs `key`). With all columns and probes, the estimate is averaged
    with its transpose (‖A_ij‖ = ‖A_ji‖), which halves its variance. `batch_size` products are
    vmapped at a time (default all probes of a block).
    """
    if not is_traceable(op):
        raise ValueError("block_frobenius_sq needs an in-memory Operator (data=, not batches=)")
    ids = check_block_ids(block_ids, num_blocks, op.size)
    cols = np.arange(num_blocks) if columns is None else np.asarray(columns, np.int32).ravel()
    for j in cols:
        _block_index(ids, int(j), num_blocks)
    if num_probes is not None:
        _checks.check_positive(num_probes, "num_probes")
        if num_probes < 2:
            raise ValueError("num_probes must be >= 2 for a standard error")
        _checks.check_key(key)
    ids_dev = jnp.asarray(ids)
    sq, se, spent = [], [], 0
    for j in cols:
        idx = np.flatnonzero(ids == j)
        if num_probes is None:
            probes = jnp.zeros((idx.size, op.size), op.dtype).at[np.arange(idx.size), idx].set(1)
        else:
            g = jax.random.normal(jax.random.fold_in(key, int(j)), (num_probes, idx.size))
            probes = jnp.zeros((num_probes, op.size), op.dtype).at[:, idx].set(g.astype(op.dtype))
        per_probe = _column_sq(op, probes, ids_dev, num_blocks, batch_size)
        spent += probes.shape[0]
        if num_probes is None:
            sq.append(per_probe.sum(0))
            se.append(jnp.zeros((num_blocks,), op.dtype))
        else:
            sq.append(per_probe.mean(0))
            se.append(per_probe.std(0, ddof=1) / np.sqrt(num_probes))
    sq, se = jnp.stack(sq, axis=1), jnp.stack(se, axis=1)
    if num_probes is not None and columns is None:
        sq, se = (sq + sq.T) / 2, jnp.sqrt(se**2 + se.T**2) / 2
    return BlockNorms(sq, se, cols, spent)


def dense_block_frobenius_sq(matrix: Array, block_ids, num_blocks: int) -> Array:
    """Exact (b, b) ‖A_ij‖²_F of a dense (n, n) matrix."""
    matrix = jnp.asarray(matrix)
    ids = check_block_ids(block_ids, num_blocks, matrix.shape[0])
    onehot = jax.nn.one_hot(ids, num_blocks, dtype=matrix.dtype)
    return onehot.T @ (matrix * matrix) @ onehot


def block_ratios(sq: Array, columns=None) -> Array:
    """Block ratios r (c, b) from squared norms sq (b, c) over the column blocks `columns`
    (default 0..c-1): r[a, i] = ‖A_ji‖²_F / ‖A_jj‖²_F with j = columns[a], the mass of block
    pair (j, i) relative to block j's diagonal block (A symmetric: ‖A_ij‖ = ‖A_ji‖)."""
    sq = jnp.asarray(sq)
    cols = np.arange(sq.shape[1]) if columns is None else np.asarray(columns)
    diag = sq[cols, np.arange(sq.shape[1])]
    return (sq / diag[None, :]).T
