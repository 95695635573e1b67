"""Blocks of a symmetric operator under a partition of its indices.

A `Partition` assigns every index of the flat vector to one of b blocks (any pattern:
contiguous layers, strided neurons, user labels). A_ij is the block with rows in block i and
columns in block j.

* `block_operator`: A_ii as an `Operator` of its own size, or A_ij as a rectangular `Block`;
  `dense_block` materialises either (small models).
* `block_eigsh`: eigenpairs of every diagonal block A_ii in one compiled Lanczos (the kernel
  of `krylov.py` with b lockstep recurrences on the packed, ragged layout).
* `block_slq`: SLQ spectral densities of every diagonal block in one compiled loop.
* `block_frobenius_sq`: ‖A_ij‖²_F, exact (unit probes of block j) or estimated without bias
  from Gaussian probes, ‖A_ij‖²_F = E‖A_ij v‖², with standard errors.
* `block_spectra`: eigenvalues of chosen diagonal blocks A_jj and singular values of chosen
  off-diagonal blocks A_ij, exact from the n_j products of each column block j.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax.linalg import krylov
from hessjax.linalg.density import SpectralQuadrature
from hessjax.linalg.lanczos import Which, default_num_steps, tridiag_eigh
from hessjax.linalg.operator import Operator, apply_block, is_traceable
from hessjax.linalg.partition import Partition, as_partition
from hessjax.linalg.trace import probes

Array = jax.Array


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


def _in_memory(op, name: str, partition) -> Partition:
    if not is_traceable(op):
        raise ValueError(f"{name} needs an in-memory Operator (data=, not batches=)")
    partition = as_partition(partition)
    partition.check_size(op.size)
    return partition


def block_operator(op: Operator, partition: Partition, i: int, j: int | None = None):
    """A_ii (j None or j == i) as a square `Operator` of size n_i, usable by every solver; or
    A_ij as a rectangular `Block`. Indices are numbered in increasing flat order."""
    partition = _in_memory(op, "block_operator", partition)
    rows = partition.indices(i)
    cols = rows if j is None or j == i else partition.indices(j)
    args = (op, jnp.asarray(rows), jnp.asarray(cols))
    if cols is rows:
        return Operator(_sub_product, args, int(rows.size), op.dtype)
    return Block(args, (int(rows.size), int(cols.size)))


def dense_block(op: Operator, partition: Partition, i: int, j: int | None = None) -> Array:
    """A_ij (default A_ii) as a dense (n_i, n_j) array, from n_j products (small models)."""
    block = block_operator(op, partition, i, j)
    cols = block.size if isinstance(block, Operator) else block.shape[1]
    return block @ jnp.eye(cols, dtype=op.dtype)


# ----------------------------------------------------------------------------- eigenpairs


class BlockEigshResult(NamedTuple):
    """k eigenpairs of each of the b diagonal blocks A_ii.

    eigenvalues, residuals, converged: (b, k), ordered within a block as `EigshResult`;
    eigenvectors: (n, k) PACKED: the rows of block i hold block i's k eigenvectors (each of
    unit norm within its block); num_steps: (b,) int32 Lanczos steps of every block;
    num_matvecs: int, products with the block-diagonal operator (one per lockstep step).
    """

    eigenvalues: Array
    eigenvectors: Array
    residuals: Array
    converged: Array
    num_steps: Array
    num_matvecs: int | Array


@functools.partial(jax.jit, static_argnames=("k", "which", "num_steps", "tol"))
def _block_eigsh(diag_op, blocks, sizes, v0, key, k, which, num_steps, tol):
    state = krylov.init(v0, num_steps, key, blocks, sizes)

    def cond(carry):
        state, done = carry
        return (state.j < num_steps) & ~done

    def body(carry):
        state = krylov.step(carry[0], diag_op.matvec(carry[0].q))
        done = state.bad >= 0
        if tol is not None:
            done = done | krylov.converged(state, k, which, tol)
        return state, done

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.bool_(False)))
    r = krylov.final_ritz(state, k, which)
    bad = state.bad >= 0
    final_tol = krylov.default_tol(v0.dtype) if tol is None else tol
    with jax.enable_x64(True):
        converged = (r.residuals <= final_tol * r.scale[:, None]) & ~bad
    result = BlockEigshResult(
        eigenvalues=jnp.where(bad, jnp.nan, r.values),
        eigenvectors=krylov.ritz_vectors(state, r.vectors),
        residuals=r.residuals,
        converged=converged,
        num_steps=krylov.block_steps(state),
        num_matvecs=state.matvecs,
    )
    return result, state.bad


def block_eigsh(
    op: Operator,
    partition: Partition,
    k: int = 1,
    *,
    key: Array,
    which: Which = "LA",
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    block_diagonal: Operator | None = None,
) -> BlockEigshResult:
    """k eigenpairs of every diagonal block A_ii, all blocks in one compiled Lanczos.

    The blocks are disjoint, so b independent Lanczos recurrences (full reorthogonalisation)
    run in lockstep on the packed vector: a step is one product with the block-diagonal
    operator D = Σ_i P_i A P_i (P_i the 0/1 mask of block i) and per-block inner products;
    memory is one (m, n) basis (ragged: no padding to the largest block). D is built from `op`
    with one masked product per block (vmapped), or passed as `block_diagonal` when a cheaper
    product exists (e.g. `curvature.layer_block_diagonal`, which differentiates each layer
    only w.r.t. its own parameters); a passed D is checked with 2⌈log2 b⌉ probe products to
    have no coupling between blocks. The loop stops when every block meets `tol` (in (0, 1),
    as in `eigsh`) or after `num_steps`; block i takes at most n_i steps. num_steps defaults
    to max_i default_num_steps(k, n_i).

    Raises FloatingPointError when a product is not finite (see `eigsh`).
    """
    partition = _in_memory(op, "block_eigsh", partition)
    _checks.check_dtype(op.dtype)
    krylov.check_which(which)
    sizes = partition.sizes
    _checks.check_k(k, int(sizes.min()), "k (every block needs more than k indices)")
    if num_steps is None:
        num_steps = max(default_num_steps(k, int(s)) for s in sizes)
    _checks.check_steps(num_steps, k, int(sizes.max()))
    _checks.check_tol(tol, allow_none=True)
    _checks.check_key(key)
    packed, blocks, order = _packed_operator(op, partition, block_diagonal, key)
    key, start_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, (op.size,), op.dtype)
    result, bad = _block_eigsh(
        packed, blocks, jnp.asarray(sizes, jnp.int32), v0, key, k, which, int(num_steps), tol
    )
    _checks.raise_if_nonfinite(bad, "block_eigsh")
    if order is not None:
        result = result._replace(eigenvectors=result.eigenvectors[jnp.argsort(order)])
    return _checks.concrete_matvecs(result)


_MAX_RANGES = 64  # blocks handled as contiguous slices; more: segment sums over block ids


def _packed_blocks(partition: Partition) -> tuple[krylov.Blocks | None, np.ndarray | None]:
    """The kernel's view of the partition, and the permutation (n,) that sorts the indices by
    block when the blocks are not already contiguous ranges (None when they are, or when
    there are too many blocks for slices)."""
    b, ids = partition.num_blocks, partition.block_ids
    if b == 1:
        return None, None
    if b > _MAX_RANGES:
        return krylov.Blocks(b, ids=jnp.asarray(ids)), None
    bounds = tuple(int(x) for x in np.concatenate([[0], np.cumsum(partition.sizes)]))
    order = None if np.all(np.diff(ids) >= 0) else np.argsort(ids, kind="stable")
    return krylov.Blocks(b, bounds=bounds), order


def _packed_operator(op: Operator, partition: Partition, block_diagonal: Operator | None, key):
    """(D, blocks, order): the block-diagonal operator the lockstep kernel runs on (masked
    products of `op`, or the given `block_diagonal`, checked for coupling), with its indices
    sorted by block when the blocks are not contiguous ranges (order (n,) int32 that
    permutation, x_sorted = x[order]; None when not needed), and the kernel's `Blocks`."""
    if block_diagonal is None:
        block_diagonal = block_diagonal_operator(op, partition)
    else:
        if block_diagonal.size != op.size:
            raise ValueError(f"block_diagonal has size {block_diagonal.size}, op has {op.size}")
        check_block_diagonal(block_diagonal, partition, key)
    blocks, order = _packed_blocks(partition)
    if order is None:
        return block_diagonal, blocks, None
    inverse = jnp.asarray(np.argsort(order), jnp.int32)
    order = jnp.asarray(order, jnp.int32)
    permuted = Operator(_permuted_product, (block_diagonal, order, inverse), op.size, op.dtype)
    return permuted, blocks, order


def _permuted_product(v: Array, op: Operator, order: Array, inverse: Array) -> Array:
    """P A Pᵀ v for the permutation P x = x[order] (inverse = argsort(order))."""
    return op.matvec(v[inverse])[order]


def _block_diagonal_product(v: Array, op: Operator, masks: Array) -> Array:
    return jnp.sum(jax.vmap(lambda m: m * op.matvec(m * v))(masks), axis=0)


def block_diagonal_operator(op: Operator, partition: Partition) -> Operator:
    """D = Σ_i P_i A P_i: the block-diagonal part of A, one masked product per block (vmapped,
    so memory grows with b · n for the tangents)."""
    partition = _in_memory(op, "block_diagonal_operator", partition)
    ids = partition.block_ids
    masks = jnp.asarray(ids[None, :] == np.arange(partition.num_blocks)[:, None], op.dtype)
    return Operator(_block_diagonal_product, (op, masks), op.size, op.dtype)


@jax.jit
def _leakage(op: Operator, probes: Array, support: Array) -> Array:
    out = jax.vmap(op.matvec)(probes)
    return jnp.sqrt(jnp.sum((out * (1 - support)) ** 2) / jnp.maximum(jnp.sum(out**2), 1e-300))


def check_block_diagonal(block_diagonal: Operator, partition: Partition, key: Array) -> None:
    """Raise unless `block_diagonal` maps every block into itself.

    Probes: for every bit t of the block index, a random vector on the blocks whose bit t is 0
    and one on the others; any two blocks differ in some bit, so a coupling A_ij, i != j,
    puts mass outside some probe's support. Costs 2⌈log2 b⌉ products (none for b = 1)."""
    b = partition.num_blocks
    leaves = jax.tree_util.tree_leaves((block_diagonal, key))
    if b == 1 or not all(_checks.is_concrete(x) for x in leaves):
        return  # under an outer trace: nothing to check on the host
    ids = partition.block_ids
    bits = int(np.ceil(np.log2(b)))
    support = np.stack([((ids >> t) & 1) == side for t in range(bits) for side in (0, 1)])
    support = jnp.asarray(support, block_diagonal.dtype)
    g = jax.random.normal(jax.random.fold_in(key, 7), support.shape, block_diagonal.dtype)
    leak = float(_leakage(block_diagonal, g * support, support))
    tol = 100 * float(jnp.finfo(block_diagonal.dtype).eps) ** 0.5
    if not leak <= tol:
        raise ValueError(
            f"block_diagonal couples different blocks (relative leakage {leak:.2e} > {tol:.1e}):"
            " pass the block-diagonal part (curvature.layer_block_diagonal or "
            "linalg.block_diagonal_operator), not the full operator"
        )


# ----------------------------------------------------------------------------- densities


class BlockQuadrature(NamedTuple):
    """Stochastic Lanczos quadrature of every diagonal block A_ii: nodes, weights
    (num_probes, b, m), each (probe, block) row of weights summing to 1 (fewer than m nodes
    carry weight in a block with n_i < m). `block(i)` is block i's `SpectralQuadrature`, for
    `spectral_density` / `density_on_grid`; num_matvecs: products with the block-diagonal
    operator (one per lockstep step and probe)."""

    nodes: Array
    weights: Array
    num_matvecs: int

    def block(self, i: int) -> SpectralQuadrature:
        return SpectralQuadrature(self.nodes[:, i], self.weights[:, i])


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _block_slq(diag_op, blocks, sizes, vs, key, num_steps):
    def one(args):
        v, key = args
        state = krylov.run(diag_op, krylov.init(v, num_steps, key, blocks, sizes), num_steps)
        theta, s = jax.vmap(tridiag_eigh)(state.alpha, state.beta)  # (b, m), (b, m, m)
        with jax.enable_x64(True):
            return theta.astype(vs.dtype), (s[:, 0] ** 2).astype(vs.dtype), state.bad

    keys = jax.random.split(key, vs.shape[0])
    nodes, weights, bad = jax.lax.map(one, (vs, keys))
    return nodes, weights, jnp.max(bad)


def block_slq(
    op: Operator,
    partition: Partition,
    *,
    num_probes: int,
    num_steps: int,
    key: Array,
    block_diagonal: Operator | None = None,
) -> BlockQuadrature:
    """SLQ spectral densities of every diagonal block A_ii in one compiled loop: for each of
    `num_probes` Rademacher probes, b Lanczos recurrences of `num_steps` steps run in
    lockstep on the packed vector (as in `block_eigsh`: products with the block-diagonal
    operator, from `op` by masked products or passed as `block_diagonal`, e.g.
    `curvature.layer_block_diagonal`, checked for coupling), probes one after another
    (memory: one (m, n) basis). A block with n_i < num_steps stops at n_i steps (exact
    spectrum). Raises FloatingPointError when a product is not finite."""
    partition = _in_memory(op, "block_slq", partition)
    _checks.check_dtype(op.dtype)
    _checks.check_positive(num_probes, "num_probes")
    _checks.check_positive(num_steps, "num_steps")
    _checks.check_key(key)
    packed, blocks, order = _packed_operator(op, partition, block_diagonal, key)
    probe_key, run_key = jax.random.split(key)
    vs = probes(probe_key, op.size, num_probes, op.dtype).T  # (p, n)
    if order is not None:
        vs = vs[:, order]  # the same probes, in the block-sorted coordinates
    sizes = jnp.asarray(partition.sizes, jnp.int32)
    nodes, weights, bad = _block_slq(packed, blocks, sizes, vs, run_key, int(num_steps))
    _checks.raise_if_nonfinite(bad, "block_slq")
    return BlockQuadrature(nodes, weights, int(num_probes) * int(num_steps))


# ----------------------------------------------------------------------------- norms


class BlockNorms(NamedTuple):
    """Squared Frobenius norms of blocks: sq (b, c) float64 with sq[i, a] =
    ‖A_{i, columns[a]}‖²_F, their standard errors stderr (b, c) (0 when exact), the probed
    column blocks (c,) and the number of products spent."""

    sq: np.ndarray
    stderr: np.ndarray
    columns: np.ndarray
    num_matvecs: int


@functools.partial(jax.jit, static_argnames=("num_blocks", "block_size"))
@functools.partial(jax.jit, static_argnames=("num_blocks", "block_size"))
def _column_sq(op, probes, ids, num_blocks, block_size):
    """Per-probe squared norms of each row block of A @ probes: (p, n) probes -> (p, b); one
    compilation per operator kind and probe shape."""

    def one(v):
        w = op.matvec(v)
        return jax.ops.segment_sum(w * w, ids, num_segments=num_blocks)

    return jax.lax.map(one, probes, batch_size=block_size)


def block_frobenius_sq(
    op: Operator,
    partition: Partition,
    *,
    columns=None,
    num_probes: int | None = None,
    key: Array | None = None,
    block_size: int | None = None,
) -> BlockNorms:
    """‖A_ij‖²_F for all row blocks i and the column blocks j in `columns` (default all).

    One product A v with v supported on block j gives ‖A_ij v‖² for every i at once.
    num_probes None: exact, v runs over the n_j unit vectors of block j (n_j products).
    Otherwise `num_probes` Gaussian vectors on block j: an unbiased estimate with standard
    error std/√num_probes (needs `key`). With all columns and probes, the estimate is averaged
    with its transpose (‖A_ij‖ = ‖A_ji‖), which halves its variance. `block_size` products are
    vmapped at a time (default all probes of a block).
    """
    partition = _in_memory(op, "block_frobenius_sq", partition)
    _checks.check_block_size(block_size)
    num_blocks, ids = partition.num_blocks, partition.block_ids
    cols = np.arange(num_blocks) if columns is None else np.asarray(columns).ravel()
    for j in cols:
        partition.indices(int(j))
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
        per_probe = _column_sq(op, probes, ids_dev, num_blocks, block_size)
        spent += probes.shape[0]
        # statistics in float64 on the host: squared deviations of tiny norms underflow float32
        per_probe = np.asarray(per_probe, np.float64)
        if num_probes is None:
            sq.append(per_probe.sum(0))
            se.append(np.zeros((num_blocks,)))
        else:
            sq.append(per_probe.mean(0))
            se.append(per_probe.std(0, ddof=1) / np.sqrt(num_probes))
    sq, se = np.stack(sq, axis=1), np.stack(se, axis=1)
    if num_probes is not None and columns is None:
        sq, se = (sq + sq.T) / 2, np.sqrt(se**2 + se.T**2) / 2
    return BlockNorms(sq, se, cols, spent)


class BlockSpectra(NamedTuple):
    """Spectra of chosen blocks A_ij: pairs (p, 2) int (i, j) in the order asked;
    values: p float64 arrays, the eigenvalues of A_jj (ascending) for i == j, the
    min(n_i, n_j) singular values of A_ij (descending) otherwise; num_matvecs: products spent
    (n_j per distinct column block j)."""

    pairs: np.ndarray
    values: tuple[np.ndarray, ...]
    num_matvecs: int


def block_spectra(
    op: Operator, partition: Partition, pairs, *, block_size: int | None = None
) -> BlockSpectra:
    """Exact spectra of the blocks A_ij for (i, j) in `pairs`: eigenvalues of diagonal blocks
    (i == j; the block is symmetrised, ½(B + Bᵀ), against rounding), singular values of the
    others. Each distinct column block j costs its n_j unit-vector products, `block_size` at a
    time (default all), and holds one (n, n_j) column panel; matrix-free otherwise (A itself
    is never formed). The small dense eigh/SVD run in float64 on the host."""
    partition = _in_memory(op, "block_spectra", partition)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        raise ValueError("block_spectra needs at least one (i, j) pair, got none")
    for i, j in pairs:
        partition.indices(int(i)), partition.indices(int(j))  # raise on a bad block index
    values: list[np.ndarray | None] = [None] * pairs.shape[0]
    spent = 0
    for j in np.unique(pairs[:, 1]):
        cols = partition.indices(int(j))
        unit = jnp.zeros((op.size, cols.size), op.dtype).at[cols, np.arange(cols.size)].set(1)
        panel = np.asarray(apply_block(op, unit, block_size), np.float64)  # (n, n_j) = A[:, J]
        spent += int(cols.size)
        for a in np.flatnonzero(pairs[:, 1] == j):
            rows = partition.indices(int(pairs[a, 0]))
            block = panel[rows]
            if pairs[a, 0] == j:
                values[a] = np.linalg.eigvalsh((block + block.T) / 2)
            else:
                values[a] = np.linalg.svd(block, compute_uv=False)
    return BlockSpectra(pairs, tuple(values), spent)


def dense_block_frobenius_sq(matrix: Array, partition: Partition) -> Array:
    """Exact (b, b) ‖A_ij‖²_F of a dense (n, n) matrix."""
    matrix = jnp.asarray(matrix)
    as_partition(partition).check_size(matrix.shape[0])
    onehot = jax.nn.one_hot(partition.block_ids, partition.num_blocks, dtype=matrix.dtype)
    return onehot.T @ (matrix * matrix) @ onehot


def block_ratios(sq: Array, columns=None) -> Array:
    """Block ratios r (c, b) from squared norms sq (b, c) over the column blocks `columns`
    (default 0..c-1): r[a, i] = ‖A_ji‖²_F / ‖A_jj‖²_F with j = columns[a], the mass of block
    pair (j, i) relative to block j's diagonal block (A symmetric: ‖A_ij‖ = ‖A_ji‖)."""
    sq = jnp.asarray(sq)
    cols = np.arange(sq.shape[1]) if columns is None else np.asarray(columns)
    diag = sq[cols, np.arange(sq.shape[1])]
    return (sq / diag[None, :]).T
