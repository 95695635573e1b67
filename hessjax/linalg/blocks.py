"""Blocks of a symmetric operator under a partition of its indices.

A partition is given as `block_ids`, an integer (n,) array assigning every index of the flat
vector to one of `num_blocks` blocks (any pattern: contiguous layers, strided neurons, user
labels). A_ij is the block with rows in block i and columns in block j.

* `block_operator`: A_ii as an `Operator` of its own size, or A_ij as a rectangular `Block`;
  `dense_block` materialises either (small models).
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
from hessjax.linalg.lanczos import EigshResult, Which, _converged, _ritz, default_num_steps
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


def dense_block(op: Operator, block_ids, num_blocks: int, i: int, j: int | None = None) -> Array:
    """A_ij (default A_ii) as a dense (n_i, n_j) array, from n_j products (small models)."""
    block = block_operator(op, block_ids, num_blocks, i, j)
    cols = block.size if isinstance(block, Operator) else block.shape[1]
    return block @ jnp.eye(cols, dtype=op.dtype)


# ----------------------------------------------------------------------------- eigenpairs
#
# Block-diagonal Lanczos: the b diagonal blocks are disjoint, so b independent recurrences run
# in lockstep on a padded (b, n_max) layout (block i's vector in row i, zeros past n_i), with
# dense row-wise inner products. A step costs one product with the block-diagonal operator
# D = Σ_i P_i A P_i on the packed n-vector holding all b Lanczos vectors.


class _BlockState(NamedTuple):
    """basis (m, b, n_max) padded Lanczos vectors; alpha, beta (m, b); q (b, n_max); j () steps
    done; norm (b,) ‖A_ii‖ estimates; key; valid (b, n_max) 0/1 padding mask; sizes (b,)."""

    basis: Array
    alpha: Array
    beta: Array
    q: Array
    j: Array
    norm: Array
    key: Array
    valid: Array
    sizes: Array


class _View(NamedTuple):
    """One block's tridiagonal, in the fields `lanczos._ritz` / `_converged` read."""

    alpha: Array
    beta: Array
    j: Array


_ORTHO_ROWS = 8  # basis rows per orthogonalisation block


def _block_orthogonalise(basis: Array, w: Array, num_rows: Array) -> Array:
    """Gram-Schmidt of each row of w (b, n_max) against its block's basis vectors
    0..num_rows-1, 8 at a time; a second pass when any block lost most of its norm (DGKS)."""
    m = basis.shape[0]
    size = min(_ORTHO_ROWS, m)

    def chunk(i, w):
        start = jnp.minimum(i * size, m - size)
        rows = jax.lax.dynamic_slice_in_dim(basis, start, size, 0)  # (size, b, n_max)
        idx = start + jnp.arange(size)
        coef = jnp.einsum("rbn,bn->rb", rows, w)
        coef = jnp.where(((idx >= i * size) & (idx < num_rows))[:, None], coef, 0)
        return w - jnp.einsum("rbn,rb->bn", rows, coef)

    def one_pass(w):
        return jax.lax.fori_loop(0, (num_rows + size - 1) // size, chunk, w)

    before = jnp.sum(w * w, axis=1)
    w = one_pass(w)
    again = jnp.any(jnp.sum(w * w, axis=1) < before / 2)
    return jax.lax.cond(again, one_pass, lambda w: w, w)


def _unit_rows(w: Array) -> tuple[Array, Array]:
    norms = jnp.linalg.norm(w, axis=1)
    return w / jnp.where(norms > 0, norms, 1)[:, None], norms


def _block_step(state: _BlockState, w: Array) -> _BlockState:
    """One lockstep Lanczos step of every block given w = D q in padded form (b, n_max)."""
    basis, alpha, beta, q, j, norm, key, valid, sizes = state
    eps, tiny = jnp.finfo(w.dtype).eps, jnp.finfo(w.dtype).tiny
    active = j < sizes  # blocks still below their dimension
    w = w * active[:, None]
    a = jnp.sum(q * w, axis=1)
    w, nrm = _unit_rows(_block_orthogonalise(basis, w, j + 1))
    norm = jnp.maximum(norm, jnp.sqrt(a * a + nrm * nrm))
    breakdown = nrm <= 100 * eps * jnp.maximum(norm, tiny)
    # Invariant subspace: a block with room left restarts from a random in-block vector
    # orthogonal to its basis (beta = 0); an exhausted block (j + 1 = n_i) gets zeros and stops.
    restart = active & breakdown & (j + 1 < sizes)

    def fresh(w):
        r = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype) * valid
        r = _unit_rows(_block_orthogonalise(basis, r, j + 1))[0]
        return jnp.where(restart[:, None], r, w)

    w = jnp.where((active & ~breakdown)[:, None], w, 0)
    q_next = jax.lax.cond(jnp.any(restart), fresh, lambda w: w, w)
    return state._replace(
        basis=basis.at[j + 1].set(q_next, mode="drop"),
        alpha=alpha.at[j].set(jnp.where(active, a, 0)),
        beta=beta.at[j].set(jnp.where(active & ~breakdown, nrm, 0)),
        q=q_next,
        j=j + 1,
        norm=norm,
    )


def _views(state: _BlockState) -> _View:
    """Per-block tridiagonals, batched over blocks: alpha, beta (b, m), j (b,)."""
    return _View(state.alpha.T, state.beta.T, jnp.minimum(state.j, state.sizes))


@functools.partial(jax.jit, static_argnames=("k", "which", "num_steps", "tol"))
def _block_eigsh(diag_op, pos, gather, valid, sizes, v0, key, k, which, num_steps, tol):
    """pos (n,): padded flat position of every index; gather (b·n_max,): index into the packed
    vector (n for padding, which reads a zero) of every padded slot."""
    nb, n_max = valid.shape
    dtype = v0.dtype

    def unpack(v):
        return jnp.concatenate([v, jnp.zeros((1,), dtype)])[gather].reshape(nb, n_max)

    def pack(x):
        return x.reshape(-1, *x.shape[2:])[pos]

    q = _unit_rows(unpack(v0))[0]
    zeros = jnp.zeros((num_steps, nb), dtype)
    state = _BlockState(
        basis=jnp.zeros((num_steps, nb, n_max), dtype).at[0].set(q),
        alpha=zeros,
        beta=zeros,
        q=q,
        j=jnp.int32(0),
        norm=jnp.zeros((nb,), dtype),
        key=key,
        valid=valid,
        sizes=sizes,
    )

    def all_converged(state):
        ok = jax.vmap(lambda v: _converged(v, k, which, tol))(_views(state))
        return jnp.all((state.j >= state.sizes) | ok)

    def cond(carry):
        state, done = carry
        return (state.j < num_steps) & ~done

    def body(carry):
        state = carry[0]
        state = _block_step(state, unpack(diag_op.matvec(pack(state.q))))
        return state, jnp.bool_(False) if tol is None else all_converged(state)

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.bool_(False)))
    views = _views(state)
    final_tol = tol if tol is not None else float(np.sqrt(np.finfo(dtype).eps))
    with jax.enable_x64(True):  # the small tridiagonal eigenproblems in float64
        views64 = _View(views.alpha.astype(jnp.float64), views.beta.astype(jnp.float64), views.j)
        theta, s, residuals, scale = jax.vmap(lambda v: _ritz(v, k, which))(views64)
        if which == "BE":
            order = jnp.argsort(-theta, axis=1)
            theta = jnp.take_along_axis(theta, order, 1)
            residuals = jnp.take_along_axis(residuals, order, 1)
            s = jnp.take_along_axis(s, order[:, None, :], 2)
        converged = residuals <= final_tol * scale[:, None]
        theta, s, residuals = theta.astype(dtype), s.astype(dtype), residuals.astype(dtype)
    vectors = jnp.einsum("rbn,brk->bnk", state.basis, s)  # (b, n_max, k)
    return EigshResult(theta, pack(vectors), residuals, converged, views.j)


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
    block_diagonal: Operator | None = None,
) -> EigshResult:
    """k eigenpairs of every diagonal block A_ii, all blocks in one compiled Lanczos.

    The blocks are disjoint, so b independent Lanczos recurrences (full reorthogonalisation)
    run in lockstep on a padded (b, max_i n_i) layout: a step is one product with the
    block-diagonal operator D = Σ_i P_i A P_i (P_i the 0/1 mask of block i) and dense
    row-wise orthogonalisation; memory is an (m, b, max_i n_i) basis. D is
    built from `op` with one masked product per block (vmapped), or passed as `block_diagonal`
    when a cheaper product exists (e.g. `curvature.layer_block_diagonal`, which differentiates
    each layer only w.r.t. its own parameters). The loop stops when every block meets `tol`
    (as in `eigsh`) or after `num_steps`; block i takes at most n_i steps.

    Returns an `EigshResult` over blocks: eigenvalues (b, k), residuals (b, k), converged
    (b, k), num_matvecs (b,) Lanczos steps per block (each step of the loop costs one product
    with D), and eigenvectors (n, k) PACKED: rows of block i hold block i's k eigenvectors
    (each of unit norm within its block). num_steps defaults to max_i default_num_steps(k, n_i).
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
    if block_diagonal is None:
        block_diagonal = block_diagonal_operator(op, ids, num_blocks)
    elif block_diagonal.size != op.size:
        raise ValueError(f"block_diagonal has size {block_diagonal.size}, op has {op.size}")
    key, start_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, (op.size,), op.dtype)
    n_max = int(sizes.max())
    order = np.argsort(ids, kind="stable")
    rank = np.empty(op.size, np.int64)
    rank[order] = np.arange(op.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    pos = ids.astype(np.int64) * n_max + rank
    gather = np.full(num_blocks * n_max, op.size, np.int64)
    gather[pos] = np.arange(op.size)
    valid = (np.arange(n_max)[None, :] < sizes[:, None]).astype(op.dtype)
    return _block_eigsh(
        block_diagonal, jnp.asarray(pos, jnp.int32), jnp.asarray(gather, jnp.int32),
        jnp.asarray(valid), jnp.asarray(sizes, jnp.int32), v0, key, k, which,
        int(num_steps), tol,
    )  # fmt: skip


def _block_diagonal_product(v: Array, op: Operator, masks: Array) -> Array:
    return jnp.sum(jax.vmap(lambda m: m * op.matvec(m * v))(masks), axis=0)


def block_diagonal_operator(op: Operator, block_ids, num_blocks: int) -> Operator:
    """D = Σ_i P_i A P_i: the block-diagonal part of A, one masked product per block (vmapped,
    so memory grows with b · n for the tangents)."""
    ids = check_block_ids(block_ids, num_blocks, op.size)
    masks = jnp.asarray(ids[None, :] == np.arange(num_blocks)[:, None], op.dtype)
    return Operator(_block_diagonal_product, (op, masks), op.size, op.dtype)


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
