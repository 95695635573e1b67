"""The Lanczos kernel: b independent recurrences on one packed vector, full reorthogonalisation.

Every Krylov solver of the package runs on this one kernel: `eigsh` (b = 1), thick restart
(cycles of `run` and `restart` with b = 1), `block_eigsh` (b disjoint blocks of the indices,
in lockstep) and `slq` (b = 1, vmapped over probes).

Packed layout: the b recurrences live on disjoint index sets of one flat (n,) vector, given
by `Blocks` (None for b = 1): contiguous ranges (static offsets; per-block inner products are
slices, as fast as plain dot products) or, for many blocks, the block id of every index
(segment sums). Basis row r holds the r-th Lanczos vector of every block at once, so memory is
one (m, n) basis whatever the block sizes (ragged, no padding), and one product with the
block-diagonal operator D = Σ_i P_i A P_i advances every recurrence.

After j steps, block i satisfies A_i Q_j = Q_j T_j + β_{j-1} q_j e_jᵀ where the projected
matrix T_j is tridiagonal (alpha, beta), plus, after a thick restart at row `start`, an
arrowhead: kept Ritz values on the diagonal of rows < start, coupled to row `start` by `spike`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessjax._arrays import concat

Array = jax.Array
WHICH = ("LA", "SA", "LM", "BE")
_ORTHO_ROWS = 8  # basis rows per block of the block Gram-Schmidt


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The index sets of b > 1 recurrences in the packed (n,) vector: `bounds` (b + 1,) static
    offsets of contiguous ranges, or else `ids` (n,) int32 block of every index."""

    num_blocks: int
    bounds: tuple[int, ...] | None = None
    ids: Array | None = None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))


jax.tree_util.register_dataclass(Blocks, data_fields=["ids"], meta_fields=["num_blocks", "bounds"])


class KrylovState(NamedTuple):
    """basis (m, n): rows q_0..q_{m-1} (zero past j); alpha, beta, spike (b, m): projected
    matrix (beta[:, r] couples rows r and r+1, 0 at a breakdown restart; spike couples row
    `start` to the kept rows of a thick restart); start () int32; q (n,) the next vector
    (beyond the last row when j = m); j () steps in the current basis; matvecs () products
    spent in all; bad () int32 index of the first non-finite product, -1 if none; norm (b,)
    running ‖A_i‖ estimates; sizes (b,) int32 dimension of every block; blocks: `Blocks`, or
    None for b = 1; key: PRNG key for restart vectors."""

    basis: Array
    alpha: Array
    beta: Array
    spike: Array
    start: Array
    q: Array
    j: Array
    matvecs: Array
    bad: Array
    norm: Array
    sizes: Array
    blocks: Blocks | None
    key: Array


# ----------------------------------------------------------------------------- per block


def _dots(blocks: Blocks | None, x: Array, y: Array) -> Array:
    """Per-block inner products: x (..., n), y (n,) -> (..., b)."""
    if blocks is None:
        return (x @ y)[..., None]
    if blocks.ids is None:
        return jnp.stack([x[..., a:e] @ y[a:e] for a, e in blocks.ranges], -1)
    prod = jnp.moveaxis(x * y, -1, 0)
    sums = jax.ops.segment_sum(prod, blocks.ids, num_segments=blocks.num_blocks)
    return jnp.moveaxis(sums, 0, -1)


def _spread(blocks: Blocks | None, c: Array) -> Array:
    """Per-block values c (..., b) -> (..., n) (or (..., 1), broadcastable, for b = 1)."""
    if blocks is None:
        return c
    if blocks.ids is None:
        parts = [
            jnp.broadcast_to(c[..., i : i + 1], (*c.shape[:-1], e - a))
            for i, (a, e) in enumerate(blocks.ranges)
        ]
        return concat(parts, -1)
    return c[..., blocks.ids]


def _combine(blocks: Blocks | None, rows: Array, coef: Array) -> Array:
    """Σ_r rows[r] · coef[r, block of the index]: rows (r, n), coef (r, b) -> (n,)."""
    if blocks is None:
        return coef[:, 0] @ rows
    if blocks.ids is None:
        return concat([coef[:, i] @ rows[:, a:e] for i, (a, e) in enumerate(blocks.ranges)])
    return jnp.sum(rows * coef[:, blocks.ids], axis=0)


def _unit(blocks: Blocks | None, w: Array) -> tuple[Array, Array]:
    """w scaled to unit norm in every block (zero blocks stay zero) and the norms (b,)."""
    norms = jnp.sqrt(_dots(blocks, w, w))
    return w / _spread(blocks, jnp.where(norms > 0, norms, 1)), norms


def _over_rows(num_rows: Array, m: int, fn, acc):
    """acc = fn(start, size, acc) over chunks [start, start + size) covering rows
    0..num_rows-1 (<= m) exactly: `_ORTHO_ROWS`-row chunks, then the remaining rows one at a
    time (two fori_loops). No chunk reads a row past num_rows, so the cost follows the rows
    in use, not m."""
    size = min(_ORTHO_ROWS, m)
    full = num_rows // size
    acc = lax.fori_loop(0, full, lambda i, a: fn(i * size, size, a), acc)
    return lax.fori_loop(full * size, num_rows, lambda r, a: fn(r, 1, a), acc)


def orthogonalise(basis: Array, w: Array, num_rows: Array, blocks: Blocks | None) -> Array:
    """Block Gram-Schmidt of w (n,) against rows 0..num_rows-1 of `basis` (m, n), block by
    block, `_ORTHO_ROWS` rows at a time (`_over_rows`). A second pass runs when some block
    lost most of its norm (‖w'‖ < ‖w‖/√2, the DGKS test: "twice is enough")."""

    def chunk(start, size, w):
        rows = lax.dynamic_slice_in_dim(basis, start, size, 0)
        return w - _combine(blocks, rows, _dots(blocks, rows, w))

    def one_pass(w):
        return _over_rows(num_rows, basis.shape[0], chunk, w)

    before = _dots(blocks, w, w)
    w = one_pass(w)
    return lax.cond(jnp.any(_dots(blocks, w, w) < before / 2), one_pass, lambda w: w, w)


# ----------------------------------------------------------------------------- recurrence


def init(
    v0: Array,
    num_steps: int,
    key: Array,
    blocks: Blocks | None = None,
    sizes: Array | None = None,
) -> KrylovState:
    """State before the first step: v0 (n,) normalised in every block, an (m, n) basis.
    `sizes` (b,) defaults to [n] (b = 1)."""
    n = v0.shape[0]
    sizes = jnp.full((1,), n, jnp.int32) if sizes is None else jnp.asarray(sizes, jnp.int32)
    b = sizes.shape[0]
    q = _unit(blocks, v0)[0]
    zeros = jnp.zeros((b, num_steps), v0.dtype)
    return KrylovState(
        basis=jnp.zeros((num_steps, n), v0.dtype).at[0].set(q),
        alpha=zeros,
        beta=zeros,
        spike=zeros,
        start=jnp.int32(0),
        q=q,
        j=jnp.int32(0),
        matvecs=jnp.int32(0),
        bad=jnp.int32(-1),
        norm=jnp.zeros((b,), v0.dtype),
        sizes=sizes,
        blocks=blocks,
        key=key,
    )


def step(state: KrylovState, w: Array, reorthogonalize: bool = True) -> KrylovState:
    """One Lanczos step of every block given w = D q_j (n,).

    reorthogonalize=False keeps only the three-term recurrence (no Gram-Schmidt against the
    basis, whose rows are still stored for the Ritz vectors): no basis reads, but orthogonality
    is lost as Ritz pairs converge (Paige: |q_{j+1}ᵀ y| ~ ε‖A‖ / the residual of the Ritz pair
    y), so it suits few wanted pairs stopped at a loose tolerance.

    A block whose Krylov space became invariant restarts from a random vector orthogonal to
    its basis (beta = 0, so T splits into blocks whose eigenvalues are all eigenvalues of A);
    an exhausted block (j + 1 = n_i) gets zeros. A non-finite product is recorded in `bad`
    and replaced by zeros (the callers stop and report it)."""
    s = state
    blocks, j = s.blocks, s.j
    eps, tiny = jnp.finfo(w.dtype).eps, jnp.finfo(w.dtype).tiny
    finite = jnp.all(jnp.isfinite(w))
    bad = jnp.where((s.bad < 0) & ~finite, s.matvecs, s.bad)
    active = j < s.sizes
    w = jnp.where(finite, w, 0) * _spread(blocks, active.astype(w.dtype))
    a = _dots(blocks, s.q, w)
    # The three-term recurrence first: the full Gram-Schmidt pass after it then only removes
    # what the recurrence leaves (lost orthogonality), and its DGKS second pass rarely runs
    # (0 of 60 steps on a float32 Hessian-like spectrum, against 57 without): half the basis
    # reads. After a thick or breakdown restart beta[j - 1] is 0 and the full pass does the
    # coupling to the kept rows.
    prev = lax.dynamic_index_in_dim(s.basis, jnp.maximum(j - 1, 0), 0, keepdims=False)
    b_prev = jnp.where((j > 0) & active, s.beta[:, jnp.maximum(j - 1, 0)], 0)
    w = w - _spread(blocks, a) * s.q - _spread(blocks, b_prev) * prev
    if reorthogonalize:
        w = orthogonalise(s.basis, w, j + 1, blocks)
    w, nrm = _unit(blocks, w)
    norm = jnp.maximum(s.norm, jnp.sqrt(a * a + nrm * nrm))
    breakdown = nrm <= 100 * eps * jnp.maximum(norm, tiny)
    restart = active & breakdown & (j + 1 < s.sizes)
    keep = active & ~breakdown

    def fresh(w):  # under lax.cond: n normals and two more passes only when needed
        r = jax.random.normal(jax.random.fold_in(s.key, s.matvecs), w.shape, w.dtype)
        r = _unit(blocks, orthogonalise(s.basis, r, j + 1, blocks))[0]
        return jnp.where(_spread(blocks, restart), r, w)

    w = w * _spread(blocks, keep.astype(w.dtype))
    q_next = lax.cond(jnp.any(restart), fresh, lambda w: w, w)
    return s._replace(
        basis=s.basis.at[j + 1].set(q_next, mode="drop"),
        alpha=s.alpha.at[:, j].set(jnp.where(active, a, 0)),
        beta=s.beta.at[:, j].set(jnp.where(keep, nrm, 0)),
        q=q_next,
        j=j + 1,
        matvecs=s.matvecs + 1,
        bad=bad,
        norm=norm,
    )


def run(op, state: KrylovState, num_steps, reorthogonalize: bool = True) -> KrylovState:
    """`num_steps` steps (may be traced) inside the caller's trace; op.matvec: (n,) -> (n,)."""

    def body(_, s):
        return step(s, op.matvec(s.q), reorthogonalize)

    return lax.fori_loop(0, num_steps, body, state)


_step_jit = jax.jit(step, static_argnums=2)


def run_host(op, state: KrylovState, num_steps: int, reorthogonalize: bool = True) -> KrylovState:
    """`num_steps` steps from a host loop, for operators that cannot be traced (streamed
    data): one product and one jitted step each."""
    for _ in range(num_steps):
        state = _step_jit(state, op.matvec(state.q), reorthogonalize)
    return state


# ----------------------------------------------------------------------------- Ritz pairs


def projected_matrix(alpha: Array, beta: Array, spike: Array, start: Array, j: Array) -> Array:
    """Dense (m, m) projected matrix of one block whose leading j×j part is T_j; the rest is
    decoupled and diagonal with a value above ‖T_j‖ (Gershgorin), so ascending eigenvalues
    0..j-1 are exactly those of T_j."""
    m = alpha.shape[0]
    idx = jnp.arange(m)
    active = idx < j
    off = jnp.where(idx[:-1] < j - 1, beta[:-1], 0)
    spike = jnp.where(idx < start, spike, 0)
    bound = (
        jnp.max(jnp.where(active, jnp.abs(alpha), 0))
        + 2 * jnp.max(jnp.where(active, jnp.abs(beta), 0))
        + jnp.sum(jnp.abs(spike))
    )
    t = jnp.diag(jnp.where(active, alpha, 2 * bound + 1)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return t.at[start].add(spike).at[:, start].add(spike)


def select(theta: Array, j: Array, k: int, which: str) -> Array:
    """Indices (k,) of the wanted values among the first j (ascending) entries of theta, best
    first: "LA" largest, "SA" smallest, "LM" largest |θ|, "BE" alternating top/bottom."""
    idx = jnp.arange(theta.shape[0])
    if which == "LA":
        score = theta
    elif which == "SA":
        score = -theta
    elif which == "LM":
        score = jnp.abs(theta)
    elif which == "BE":
        score = -jnp.minimum(2 * (j - 1 - idx), 2 * idx + 1).astype(theta.dtype)
    else:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return lax.top_k(jnp.where(idx < j, score, -jnp.inf), k)[1]


class Ritz(NamedTuple):
    """Wanted Ritz values (b, k) best first, their eigenvectors of T (b, m, k) (zero past the
    block's steps), residual estimates (b, k) |β_last s_last| and scale (b,) max |θ wanted|."""

    values: Array
    vectors: Array
    residuals: Array
    scale: Array


def block_steps(state: KrylovState) -> Array:
    """(b,) steps taken by every block (a block stops at its dimension)."""
    return jnp.minimum(state.j, state.sizes)


def ritz(state: KrylovState, k: int, which: str, dtype=None) -> Ritz:
    """Ritz pairs of every block, computed in `dtype` (e.g. float64 inside `enable_x64`)."""
    dtype = dtype or state.alpha.dtype

    def one(alpha, beta, spike, j):
        t = projected_matrix(alpha, beta, spike, state.start, j)
        theta, s = jnp.linalg.eigh(t)
        sel = select(theta, j, k, which)
        last = jnp.maximum(j - 1, 0)
        residuals = jnp.abs(beta[last] * s[last, sel])
        s = jnp.where((jnp.arange(s.shape[0]) < j)[:, None], s[:, sel], 0)
        return theta[sel], s, residuals, jnp.max(jnp.abs(theta[sel]))

    cast = [x.astype(dtype) for x in (state.alpha, state.beta, state.spike)]
    # lax.map, not vmap: a batched eigh may be split over a device mesh by sharding
    # propagation, and devices would then disagree on a convergence test (a hang)
    return Ritz(*lax.map(lambda xs: one(*xs), (*cast, block_steps(state))))


def converged(state: KrylovState, k: int, which: str, tol: float) -> Array:
    """() True when every block is exhausted or has all k wanted residuals <= tol · scale.

    Never on the step of a first breakdown: the exhausted Krylov space has zero residuals but
    may miss wanted eigenvalues, so the random restart vector gets one product to show a
    better Ritz value."""
    r = ritz(state, k, which)
    j = block_steps(state)
    rows = jnp.arange(state.beta.shape[1])
    beta_at = jax.vmap(lambda beta, i: beta[jnp.clip(i, 0, rows.size - 1)])
    broke_now = beta_at(state.beta, j - 1) == 0
    broke_before = (j >= 2) & (beta_at(state.beta, j - 2) == 0)
    ok = (j >= k) & ~(broke_now & ~broke_before) & jnp.all(r.residuals <= tol * r.scale[:, None], 1)
    return jnp.all(ok | (state.j >= state.sizes))


def ritz_vectors(state: KrylovState, s: Array) -> Array:
    """Packed Ritz vectors (n, k) from coefficients s (b, m, k): rows of block i hold block
    i's vectors."""
    s = s.astype(state.basis.dtype)
    blocks = state.blocks
    if blocks is None:
        return _combine_rows(state.basis, s[0], state.j).T
    if blocks.ids is None:
        return concat([state.basis[:, a:e].T @ s[i] for i, (a, e) in enumerate(blocks.ranges)], 0)
    ids = blocks.ids

    def add(acc, row_and_coef):
        row, coef = row_and_coef  # (n,), (b, k)
        return acc + row[:, None] * coef[ids], None

    init_acc = jnp.zeros((state.basis.shape[1], s.shape[2]), state.basis.dtype)
    return lax.scan(add, init_acc, (state.basis, jnp.swapaxes(s, 0, 1)))[0]


def _combine_rows(basis: Array, coef: Array, num_rows: Array) -> Array:
    """coefᵀ basis over rows 0..num_rows-1 only (`_over_rows`): basis (m, n), coef (m, k)
    -> (k, n)."""

    def chunk(start, size, acc):
        c = lax.dynamic_slice_in_dim(coef, start, size, 0)
        return acc + c.T @ lax.dynamic_slice_in_dim(basis, start, size, 0)

    acc = jnp.zeros((coef.shape[1], basis.shape[1]), basis.dtype)
    return _over_rows(jnp.minimum(num_rows, basis.shape[0]), basis.shape[0], chunk, acc)


def final_ritz(state: KrylovState, k: int, which: str) -> Ritz:
    """Ritz pairs in float64 (the small eigenproblems), cast back to the basis dtype, with
    "BE" pairs sorted by value descending."""
    dtype = state.basis.dtype
    with jax.enable_x64(True):
        r = ritz(state, k, which, jnp.float64)
        values, vectors, residuals = r.values, r.vectors, r.residuals
        if which == "BE":
            order = jnp.argsort(-values, axis=1)
            values = jnp.take_along_axis(values, order, 1)
            residuals = jnp.take_along_axis(residuals, order, 1)
            vectors = jnp.take_along_axis(vectors, order[:, None, :], 2)
        return Ritz(
            values.astype(dtype), vectors.astype(dtype), residuals.astype(dtype),
            r.scale.astype(dtype),
        )  # fmt: skip


def restart(state: KrylovState, keep: int, which: str) -> KrylovState:
    """Thick restart of a b = 1 state with a full basis (Wu and Simon 2000): keep the `keep`
    best Ritz vectors as rows 0..keep-1 with their values on the diagonal, the residual
    direction q as row `keep`, coupled to the kept rows by s_i = β_last y_{last, i}."""
    dtype = state.basis.dtype
    with jax.enable_x64(True):
        r = ritz(state, keep, which, jnp.float64)
        last = block_steps(state)[0] - 1
        s = (state.beta[0, last].astype(jnp.float64) * r.vectors[0, last]).astype(dtype)
        theta = r.values[0].astype(dtype)
        y = r.vectors[0].astype(dtype)
    basis = _rotate_rows(state.basis, y).at[keep].set(state.q)
    zeros = jnp.zeros_like(state.alpha)
    return state._replace(
        basis=basis,
        alpha=zeros.at[0, :keep].set(theta),
        beta=zeros,
        spike=zeros.at[0, :keep].set(s),
        start=jnp.int32(keep),
        j=jnp.int32(keep),
    )


_ROTATE_ELEMENTS = 1 << 22  # basis entries rewritten per chunk of `_rotate_rows`


def _rotate_rows(basis: Array, y: Array) -> Array:
    """basis (m, n) -> rows 0..p-1 replaced by yᵀ basis (p Ritz vectors, y (m, p)), the rest
    zero, in place: column chunks of the basis are rewritten one at a time, so the only
    temporary is one (m, chunk) block instead of a second (m, n) basis."""
    m, n = basis.shape
    width = max(1, min(n, _ROTATE_ELEMENTS // m))
    y = jnp.pad(y, ((0, 0), (0, m - y.shape[1])))  # (m, m): zero rows past p

    def rewrite(start, width, basis):
        block = lax.dynamic_slice_in_dim(basis, start, width, axis=1)
        return lax.dynamic_update_slice_in_dim(basis, y.T @ block, start, axis=1)

    full, rest = divmod(n, width)
    basis = lax.fori_loop(0, full, lambda c, b: rewrite(c * width, width, b), basis)
    return rewrite(full * width, rest, basis) if rest else basis


def check_which(which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")


def default_tol(dtype) -> float:
    """sqrt(machine epsilon) of `dtype`: the convergence threshold when none is asked for."""
    return float(np.sqrt(np.finfo(dtype).eps))
