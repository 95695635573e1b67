"""optax gradient transformations that protect old tasks; chain them after any optimiser.

* `project_out(basis)`: remove the update's component in a protected subspace, globally
  (basis (n, k) over the flat params layout) or per layer ({layer: (n_layer, k)}). Hessian,
  weight-SVD and update-PCA subspaces, and OGD (a basis of old logit gradients), all use it.
* `gpm_project(bases)`: GPM, each dense layer's kernel (and bias) gradient projected out of a
  subspace of that layer's old inputs.
* `curvature_penalty(state, strength, learning_rate)`: the low-rank Hessian generalisation of
  EWC, s/2 Σ_i λ_i <θ − θ_old, e_i>², applied as an exact proximal step.
* `ewc_penalty(state, strength, learning_rate)`: EWC, s/2 Σ_i F_i (θ_i − θ_old,i)², likewise.
* `proximal_penalty(memory, correction, ...)`: the hook both penalties use; a new quadratic
  (e.g. Kronecker-factored per layer) only supplies its closed-form proximal correction.

All of them go after the optimiser: `optax.chain(optax.sgd(lr), project_out(basis))`, so the
applied update is exactly orthogonal to a protected subspace, and
`optax.chain(optax.sgd(lr), ewc_penalty(state, strength, learning_rate=lr))`, so a penalty is
an implicit (proximal) step that no strength can make diverge (see `proximal_penalty`).

The protected quantities (the *memory*) live in the transformation's state, not in its
closure: `init` puts them there and `update` reads them from there, so under `jit` they are
arguments rather than compile-time constants, and a new task's memory replaces the old one in
an optimiser state with `set_memory` without rebuilding, and so without recompiling, the
optimiser. `update` never changes the state. Zero columns (and zero weights) are allowed and
act as nothing, so a fixed-capacity zero-padded memory keeps every shape fixed as it grows.

What is checked where (each failure a ValueError naming the value):
* building a memory (`ewc_state`, `curvature_penalty_state`, `project_out(basis)`,
  `gpm_project(bases)`) and `set_memory` (unless told the values were checked): its values
  (`memory.check()`: orthonormal or zero columns, finite, weights and Fisher >= 0) and, for
  `set_memory`, that it has the tree, shapes and dtypes of the memory it replaces;
* `init(params)`: that the memory fits the params (`memory.check_params(params)`: tree,
  shapes, rows of a basis), statically, without reading values;
* `update`: shapes only (it runs under `jit`, where values cannot raise). A memory written
  into a state by other means (`optax.tree_utils.tree_set`) bypasses the value checks: use
  `set_memory`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessjax.continual import _helpers
from hessjax.curvature import leaf_paths, make_layout
from hessjax.linalg.subspace import check_orthonormal, extend_basis
from hessjax.training import find_state

Array = jax.Array
PyTree = Any


def memory_transform(
    state0: NamedTuple,
    apply: Callable[[PyTree, NamedTuple, PyTree | None], PyTree],
    needs_params: str | None = None,
) -> optax.GradientTransformation:
    """The optax transformation of a strategy's memory: its state is the constant memory
    `state0` (checked against the params at init, `state0.check_params(params)`) and its update
    is apply(updates, state, params) -> updates, a pytree like the params; `needs_params`: the
    name to report when update is called without params (None: params are not used)."""

    def init(params):
        state0.check_params(params)
        return state0

    def update(updates, state, params=None):
        if needs_params and params is None:
            raise ValueError(f"{needs_params} needs params: update(updates, state, params)")
        return apply(updates, state, params), state

    return optax.GradientTransformation(init, update)


def _same_tree(a: PyTree, b: PyTree, what: str, other: str) -> None:
    """ValueError unless a and b have the same tree structure and leaf shapes."""
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        raise ValueError(f"{what} has another tree than {other}: {ta} vs {tb}")
    for pa, x, y in zip(leaf_paths(a), jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                        strict=True):  # fmt: skip
        if np.shape(x) != np.shape(y):
            raise ValueError(f"{what} leaf {pa!r} has shape {np.shape(x)}, {other} {np.shape(y)}")


def _rows_fit(rows: int, params: PyTree, what: str) -> None:
    n = make_layout(params).size
    if rows != n:
        raise ValueError(f"{what} has {rows} rows but the params have {n} entries")


# ------------------------------------------------------------------------------- projections


class ProjectionState(NamedTuple):
    """rows: (k, n) the protected basis B (n, k) stored as its transpose, orthonormal (or
    zero) rows over the flat params layout, or a dict {layer: (k_layer, n_layer)} over each
    layer's flat params. Rows, because XLA on CPU streams the per-step products
    (B v, then (Bᵀ v)ᵀ Bᵀ) over contiguous rows several times faster than over the columns
    of an (n, k) array (a 157-step projected training loop: ~3x). `basis` gives B (n, k)."""

    rows: Array | dict[str, Array]

    @property
    def basis(self) -> Array | dict[str, Array]:
        """B (n, k) (or {layer: (n_layer, k_layer)}): the transpose of `rows`."""
        if isinstance(self.rows, Mapping):
            return {name: r.T for name, r in self.rows.items()}
        return self.rows.T

    def check(self) -> None:
        _check_rows(self.rows)

    def check_params(self, params: PyTree) -> None:
        if not isinstance(self.rows, Mapping):
            _rows_fit(self.rows.shape[1], params, "the protected basis")
            return
        for name, r in self.rows.items():
            layout = make_layout(params, select=name)
            if r.shape[1] != layout.size:
                raise ValueError(
                    f"basis of layer {name!r} has {r.shape[1]} rows but the layer has "
                    f"{layout.size} parameters"
                )


def _remove(rows: Array, v: Array) -> Array:
    """(I − B Bᵀ) v for B = rowsᵀ (rows (k, n) orthonormal or zero) and v (n,)."""
    rows = rows.astype(v.dtype)
    return v - (rows @ v) @ rows


def _project_global(updates: PyTree, rows: Array) -> PyTree:
    layout = make_layout(updates)
    if rows.shape[1] != layout.size:
        raise ValueError(f"basis has {rows.shape[1]} rows but the updates {layout.size} entries")
    return layout.unravel(_remove(rows, layout.ravel(updates)))


def _project_layers(updates: PyTree, bases: Mapping[str, Array]) -> PyTree:
    leaves = jax.tree_util.tree_leaves(updates)
    owner: dict[int, str] = {}
    for name, rows in bases.items():
        layout = make_layout(updates, select=name)
        for i, on in enumerate(layout.selected):
            if on and i in owner:
                raise ValueError(f"layers {owner[i]!r} and {name!r} share {layout.paths[i]!r}")
            if on:
                owner[i] = name
        if rows.shape[1] != layout.size:
            raise ValueError(
                f"basis of layer {name!r} has {rows.shape[1]} rows but the layer has "
                f"{layout.size} parameters ({list(layout.selected_paths)})"
            )
        picked = layout.pick(leaves)
        flat = _remove(rows, layout.ravel_picked(picked))
        leaves = jax.tree_util.tree_leaves(layout.merge(layout.unravel_picked(flat), leaves))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(updates), leaves)


def _check_rows(rows) -> None:
    """check_orthonormal of the basis B = rowsᵀ (a dict: of each layer's)."""
    if isinstance(rows, Mapping):
        if not rows:
            raise ValueError("per-layer basis dict is empty")
        for name, r in rows.items():
            check_orthonormal(np.asarray(r).T, f"basis of layer {name!r}", allow_zero=True)
        return
    check_orthonormal(np.asarray(rows).T, allow_zero=True)


def projection_state(basis: Array | Mapping[str, Array]) -> ProjectionState:
    """The checked `ProjectionState` of a basis (n, k) with orthonormal (or zero) columns, or
    of a dict {layer: (n_layer, k_layer)} of them."""
    if isinstance(basis, Mapping):
        rows = {str(name): jnp.asarray(b).T for name, b in basis.items()}
    else:
        rows = jnp.asarray(basis).T
    _check_rows(rows)
    return ProjectionState(rows)


def project_out(
    basis: Array | Mapping[str, Array] | ProjectionState,
) -> optax.GradientTransformation:
    """Remove from the updates their component in a protected subspace: u <- (I − B Bᵀ) u.

    Args:
      basis: (n, k) orthonormal columns over the flat layout of the params
        (`make_layout(params)`: all leaves in leaf order, as `eigsh` eigenvectors of a
        `hessian_operator`), or a dict {layer: (n_layer, k)} of per-layer bases over the flat
        params of each layer (the leaves whose path contains the layer name as whole
        components, e.g. 'Dense_0', in leaf order); leaves of no listed layer pass unchanged.
        Zero columns (padding) are allowed. Or a ready `ProjectionState` (checked).

    The state (`ProjectionState`) holds the basis (as rows); `update` ignores params.
    Stateless otherwise.
    """
    if isinstance(basis, ProjectionState):
        basis.check()
        state = basis
    else:
        state = projection_state(basis)

    def apply(updates, state, params):
        if isinstance(state.rows, Mapping):
            return _project_layers(updates, state.rows)
        return _project_global(updates, state.rows)

    return memory_transform(state, apply)


class GpmState(NamedTuple):
    """layer_bases: {layer: (d, k)} orthonormal (or zero) columns over the layer's inputs,
    d = in (kernel only) or in + 1 (inputs with a constant 1 appended: kernel and bias);
    num_tasks: () int32, the number of tasks remembered (sets GPM's per-task threshold)."""

    layer_bases: dict[str, Array]
    num_tasks: Array = np.int32(0)
    grow_axis = 1  # set_memory(same_shapes=False): the basis grows along k

    def check(self) -> None:
        if not isinstance(self.layer_bases, Mapping) or not self.layer_bases:
            raise ValueError("GPM bases must be a non-empty dict {layer: (d, k) basis}")
        for name, b in self.layer_bases.items():
            check_orthonormal(b, f"GPM basis of {name!r}", allow_zero=True)

    def check_params(self, params: PyTree) -> None:
        paths = leaf_paths(params)
        leaves = jax.tree_util.tree_leaves(params)
        for layer, basis in self.layer_bases.items():
            _gpm_leaves(paths, leaves, layer, basis.shape[0])


def _gpm_leaves(paths: list[str], leaves: list, layer: str, d: int) -> tuple[int, int | None]:
    """(kernel leaf, bias leaf or None when the basis covers the kernel only) of `layer` for
    a basis of d rows; ValueError when they do not fit."""
    ik = _helpers.layer_leaf(paths, layer, "kernel")
    if ik is None or np.ndim(leaves[ik]) != 2:
        raise ValueError(f"no 2-D kernel for layer {layer!r} among {paths}")
    ib = _helpers.layer_leaf(paths, layer, "bias")
    rows = np.shape(leaves[ik])[0]
    if d == rows:
        return ik, None  # the basis covers the kernel only; the bias passes unchanged
    if ib is None or d != rows + 1:
        raise ValueError(
            f"GPM basis of {layer!r} has {d} rows; the kernel has {rows} inputs"
            + ("" if ib is None else " (+1 with the bias)")
        )
    return ik, ib


def _gpm_apply(updates: PyTree, bases: Mapping[str, Array]) -> PyTree:
    paths = leaf_paths(updates)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    for layer, basis in bases.items():
        ik, ib = _gpm_leaves(paths, leaves, layer, basis.shape[0])
        kernel = leaves[ik]  # (in, out): outputs x @ W
        g = kernel if ib is None else jnp.concatenate([kernel, leaves[ib][None]], axis=0)
        u = basis.astype(g.dtype)
        g = g - u @ (u.T @ g)
        leaves[ik] = g[: kernel.shape[0]]
        if ib is not None:
            leaves[ib] = g[-1]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def gpm_project(bases: Mapping[str, Array] | GpmState) -> optax.GradientTransformation:
    """Gradient projection memory (Saha et al. 2021): for each dense layer with kernel W
    (in, out) (outputs x W + b), G <- (I − U Uᵀ) G for the update G of [W; b] ((in + 1, out),
    U (in + 1, k)) or of W alone (U (in, k)), so the layer's outputs on inputs in span(U)
    do not change. bases: {layer: U} from `gpm_extend` (layer names as in `dense_layers`, e.g.
    'Dense_0'), or a ready `GpmState`; zero columns allowed; layers not listed pass
    unchanged."""
    if isinstance(bases, GpmState):
        state = bases
    else:
        if not isinstance(bases, Mapping):
            raise ValueError("bases must be a non-empty dict {layer: (d, k) basis}")
        bases = {str(k): jnp.asarray(v) for k, v in bases.items()}
        state = GpmState(bases, jnp.zeros((), jnp.int32))
    state.check()
    return memory_transform(state, lambda u, st, p: _gpm_apply(u, st.layer_bases))


# --------------------------------------------------------------------------------- penalties


def check_positive(value: float, name: str) -> float:
    """float(value), ValueError naming it unless finite and > 0."""
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def proximal_penalty(
    memory: NamedTuple,
    correction: Callable[[NamedTuple, PyTree, Array], PyTree],
    *,
    strength: float,
    learning_rate: float,
    name: str = "proximal_penalty",
) -> optax.GradientTransformation:
    """A quadratic penalty s · P(θ), P(θ) = ½ (θ − a)ᵀ A (θ − a) with A PSD, as an exact
    proximal (implicit) step after the optimiser: with z = θ + u the optimiser's proposed new
    params (u its update), the applied update becomes x − θ with

        x = prox_{c P}(z) = argmin_x ½‖x − z‖² + c P(x) = (I + c A)⁻¹ (z + c A a),  c = η s,

    η = `learning_rate`, s = `strength`. `correction(memory, z, c)` returns x − z (params-
    shaped), so the update is u + correction; `memory` is the transformation's state.

    Why no strength diverges (proof). In an eigenbasis A = Σ_i λ_i q_i q_iᵀ the prox acts on
    each coordinate separately: <x − a, q_i> = <z − a, q_i> / (1 + c λ_i). Since λ_i >= 0 and
    c > 0, every factor lies in (0, 1]: the penalty step never moves a coordinate away from
    the anchor, for any s (the explicit step multiplies it by 1 − c λ_i, which exceeds 1 in
    magnitude once c λ_i > 2). So the composite step is the optimiser's step followed by a
    non-expansive map, and stays finite wherever the optimiser alone does. For plain SGD,
    z = θ − η ∇L(θ), and x = prox_{ηsP}(θ − η∇L(θ)) is the proximal-gradient (forward-
    backward) step on L + sP; its fixed points satisfy ∇L(x) + s ∇P(x) = 0, the stationary
    points of the penalised loss, exactly as with the explicit penalty. As s → ∞ the factor
    goes to 0 on every λ_i > 0: x keeps the anchor's coordinates there, i.e. the update is
    projected out of range(A) (when θ starts at the anchor along it). With another optimiser
    (Adam, momentum) the prox is applied to its proposed step with the nominal η: still
    non-expansive and the same s → ∞ limit, but the penalty then acts in the Euclidean
    rather than the optimiser's metric.

    Chain it after the optimiser (and before recorders of the applied update):
    `optax.chain(optax.sgd(lr), ewc_penalty(state, s, learning_rate=lr))`. Needs params.

    Closed forms: diagonal A (`ewc_penalty`) per coordinate; A = E diag(λ) Eᵀ with orthonormal
    E (`curvature_penalty`) per direction; a Kronecker factor A = G ⊗ B of one layer's kernel
    W (in, out), G = U_G diag(g) U_Gᵀ (in, in), B = U_B diag(b) U_Bᵀ (out, out), in the
    eigenbasis of both: U_Gᵀ (X − Z) U_B = −(c g_i b_j / (1 + c g_i b_j)) ⊙ U_Gᵀ (Z − W_old) U_B.
    """
    strength = check_positive(strength, f"{name} strength")
    learning_rate = check_positive(learning_rate, f"{name} learning_rate")
    memory.check()

    def apply(updates, state, params):
        z = optax.apply_updates(params, updates)
        c = jnp.asarray(learning_rate * strength, jax.tree_util.tree_leaves(params)[0].dtype)
        delta = correction(state, z, c)
        return jax.tree_util.tree_map(lambda u, d: u + d.astype(u.dtype), updates, delta)

    return memory_transform(memory, apply, needs_params=name)


class CurvaturePenaltyState(NamedTuple):
    """The quadratic ½ Σ_i λ_i (<θ, e_i> − τ_i)² (+ a constant) in canonical form:
    rows: (K, n) orthonormal (or zero) rows e_i over the flat params layout (stored as rows
    for the speed of the per-step products, as `ProjectionState`; `directions` gives the
    (n, K) columns); weights: (K,) λ_i >= 0 (0 on zero rows); targets: (K,) τ_i, the
    anchor's coordinate along e_i. Built by `curvature_penalty_state`, which also merges
    several old tasks."""

    rows: Array
    weights: Array
    targets: Array

    @property
    def directions(self) -> Array:
        """The directions e_i as (n, K) columns (the transpose of `rows`)."""
        return self.rows.T

    def check(self) -> None:
        check_orthonormal(np.asarray(self.rows).T, "penalty directions", allow_zero=True)
        k = self.rows.shape[0]
        for field in ("weights", "targets"):
            v = np.asarray(getattr(self, field))
            if v.shape != (k,):
                raise ValueError(f"penalty {field} must be ({k},), got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"penalty {field} have non-finite entries")
        if np.any(np.asarray(self.weights) < 0):
            raise ValueError(f"penalty weights must be >= 0, got min {np.min(self.weights)}")

    def check_params(self, params: PyTree) -> None:
        _rows_fit(self.rows.shape[1], params, "the penalty directions")


def curvature_penalty_state(
    anchor: PyTree,
    directions: Array,
    weights: Array,
    previous: CurvaturePenaltyState | None = None,
    capacity: int | None = None,
) -> CurvaturePenaltyState:
    """The canonical state of previous + ½ Σ_j w_j <θ − anchor, d_j>² for params-shaped
    `anchor` (θ_old), directions (n, m) (unit or not, orthogonal or not: e.g. one task's
    Hessian eigenvectors, possibly overlapping an earlier task's) and weights (m,) >= 0.

    The sum Q = V diag(μ) Vᵀ + D diag(w) Dᵀ (V, μ: previous) and its linear term
    b = V (μ ⊙ τ) + D (w ⊙ Dᵀ anchor) are rewritten as ½ Σ_i λ_i (<θ, e_i> − τ_i)² with
    orthonormal e_i: a basis B of span(V, D) (`extend_basis`), the small matrix BᵀQB =
    W diag(λ) Wᵀ (float64 eigh), e = B W, τ_i = <e_i, b> / λ_i; directions with λ_i <=
    eps · max λ are dropped. Same gradient Qθ − b as the sum, so the same penalty up to a
    constant. capacity: zero-pad to that many columns (ValueError if the rank exceeds it).
    """
    directions, weights = jnp.asarray(directions), jnp.asarray(weights)
    layout = make_layout(anchor)
    flat = layout.ravel(anchor)
    n = flat.shape[0]
    if directions.ndim != 2 or directions.shape[0] != n:
        raise ValueError(f"directions must be ({n}, m), got {directions.shape}")
    if weights.shape != directions.shape[1:]:
        raise ValueError(f"weights must be ({directions.shape[1]},), got {weights.shape}")
    w = np.asarray(weights, np.float64)
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ValueError(f"weights must be finite and >= 0, got min {w.min(initial=0)}")
    if not bool(jnp.all(jnp.isfinite(directions))):
        raise ValueError("directions have non-finite entries")
    dtype = directions.dtype
    if previous is None:
        v, mu, tau = jnp.zeros((n, 0), dtype), np.zeros(0), np.zeros(0)
    else:
        previous.check()
        previous.check_params(anchor)
        keep = np.asarray(previous.weights) > 0
        v = jnp.asarray(previous.rows)[np.flatnonzero(keep)].T.astype(dtype)
        mu = np.asarray(previous.weights, np.float64)[keep]
        tau = np.asarray(previous.targets, np.float64)[keep]
    basis = extend_basis(v, directions)  # (n, K'): V, then new directions
    k0 = v.shape[1]
    coords = np.asarray(basis.T @ directions, np.float64)  # (K', m): D in the basis
    c = np.asarray(directions.T @ flat.astype(dtype), np.float64)  # Dᵀ anchor
    s = np.zeros((basis.shape[1], k0 + w.size))
    s[:k0, :k0] = np.eye(k0)  # V in the basis
    s[:, k0:] = coords
    weights_all = np.concatenate([mu, w])
    q = (s * weights_all) @ s.T
    beta = s @ (weights_all * np.concatenate([tau, c]))  # Bᵀ b
    lam, rot = np.linalg.eigh(q)
    kept = lam > np.finfo(np.dtype(dtype)).eps * max(float(lam.max(initial=0)), 0)
    lam, rot = lam[kept][::-1], rot[:, kept][:, ::-1]
    rows = jnp.asarray(rot.T, dtype) @ basis.T  # (K, n): e_i = B w_i as rows
    targets = (rot.T @ beta) / lam
    size = rows.shape[0] if capacity is None else int(capacity)
    if rows.shape[0] > size:
        raise ValueError(f"the penalty has rank {rows.shape[0]} > capacity {size}")
    pad = size - rows.shape[0]
    return CurvaturePenaltyState(
        jnp.pad(rows, ((0, pad), (0, 0))),
        jnp.asarray(np.pad(lam, (0, pad)), dtype),
        jnp.asarray(np.pad(targets, (0, pad)), dtype),
    )


def _low_rank_correction(state: CurvaturePenaltyState, z: PyTree, c: Array) -> PyTree:
    layout = make_layout(z)
    flat = layout.ravel(z)
    e = state.rows.astype(flat.dtype)  # (K, n)
    lam = state.weights.astype(flat.dtype)
    shrink = c * lam / (1 + c * lam)  # 1 − 1/(1 + c λ_i)
    coords = e @ flat  # Eᵀ flat
    return layout.unravel(-(shrink * (coords - state.targets.astype(flat.dtype))) @ e)


def curvature_penalty(
    state: CurvaturePenaltyState, strength: float, learning_rate: float
) -> optax.GradientTransformation:
    """The penalty strength · ½ Σ_i λ_i (<θ, e_i> − τ_i)² along orthonormal protected
    directions e_i (e.g. top Hessian eigenvectors of old tasks) weighted by their curvature λ_i
    (the rank-K part E diag(λ) Eᵀ of the old tasks' Hessians; EWC uses its diagonal), as the
    proximal step of `proximal_penalty`: the component of the proposed params z along e_i is
    moved to τ_i + (<z, e_i> − τ_i) / (1 + η s λ_i). state: `curvature_penalty_state`.
    Chain after the optimiser; needs params."""
    return proximal_penalty(
        state, _low_rank_correction, strength=strength, learning_rate=learning_rate,
        name="curvature_penalty",
    )  # fmt: skip


class EwcState(NamedTuple):
    """precision: params-shaped Σ_t F_t (diagonal Fisher of each old task t);
    weighted_anchor: params-shaped Σ_t F_t ⊙ θ_t. The penalty of all old tasks,
    λ/2 Σ_t Σ_i F_t,i (θ_i − θ_t,i)², has gradient λ (precision ⊙ θ − weighted_anchor)."""

    precision: PyTree
    weighted_anchor: PyTree

    def check(self) -> None:
        _same_tree(self.precision, self.weighted_anchor, "EWC precision", "its weighted anchor")
        trees = {"precision": self.precision, "weighted anchor": self.weighted_anchor}
        for name, tree in trees.items():
            if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree)):
                raise ValueError(f"EWC {name} has non-finite entries")
        if not all(bool(jnp.all(f >= 0)) for f in jax.tree_util.tree_leaves(self.precision)):
            raise ValueError("EWC precision (Fisher) must be >= 0")

    def check_params(self, params: PyTree) -> None:
        _same_tree(self.precision, params, "the EWC memory", "the params")


def ewc_state(anchor: PyTree, fisher: PyTree, previous: EwcState | None = None) -> EwcState:
    """The state for one old task (anchor θ_t and its diagonal Fisher F_t, both params-shaped;
    F >= 0), added to `previous` (the other old tasks) if given."""
    _same_tree(fisher, anchor, "fisher", "the anchor")
    new = EwcState(fisher, jax.tree_util.tree_map(jnp.multiply, fisher, anchor))
    if previous is not None:
        previous.check_params(anchor)
        new = jax.tree_util.tree_map(jnp.add, previous, new)
    new.check()
    return new


def _diagonal_correction(state: EwcState, z: PyTree, c: Array) -> PyTree:
    # x = (z + c m) / (1 + c P), so x − z = c (m − P z) / (1 + c P)
    return jax.tree_util.tree_map(
        lambda zi, p, m: c * (m - p * zi) / (1 + c * p), z, state.precision, state.weighted_anchor
    )


def ewc_penalty(
    state: EwcState, strength: float, learning_rate: float
) -> optax.GradientTransformation:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): the penalty
    strength/2 · Σ_t Σ_i F_t,i (θ_i − θ_t,i)² as the proximal step of `proximal_penalty`:
    each coordinate of the proposed params z becomes (z_i + c m_i) / (1 + c P_i), c = η s,
    P = Σ_t F_t, m = Σ_t F_t θ_t. state: `ewc_state`. Chain after the optimiser; needs
    params."""
    return proximal_penalty(
        state, _diagonal_correction, strength=strength, learning_rate=learning_rate,
        name="ewc_penalty",
    )  # fmt: skip


# ---------------------------------------------------------------------------- memories


def get_memory(opt_state: PyTree, cls: type) -> NamedTuple:
    """The one memory of class `cls` (e.g. `ProjectionState`) inside an optimiser state."""
    return find_state(opt_state, cls)


def set_memory(
    opt_state: PyTree, memory: NamedTuple, check_values: bool = True, same_shapes: bool = True
) -> PyTree:
    """opt_state with its one memory of type(memory) replaced by `memory`, after checking
    `memory.check()` (orthonormal bases, finite, non-negative weights) and that it has the
    tree, shapes and dtypes of the memory it replaces (so a jitted step does not recompile
    and a basis of the wrong size or another params tree is caught here). check_values=False
    skips `memory.check()` (an O(n k²) Gram matrix for a basis) but not the shape checks: for
    a memory read back (`get_memory`) from a state it was checked into, e.g. to carry it
    into a fresh optimiser state. same_shapes=False lets one axis of every leaf differ, the
    memory class' `grow_axis` (default 0, the leading one; `GpmState`: 1, the k of its (d, k)
    bases): a memory that grows, e.g. a projection basis without a capacity (a jitted step
    then compiles once per new size); the other axes are still checked."""
    cls = type(memory)
    old = find_state(opt_state, cls)
    ta, tb = jax.tree_util.tree_structure(old), jax.tree_util.tree_structure(memory)
    if ta != tb:
        raise ValueError(f"new {cls.__name__} has another tree than the one in the state")
    axis = getattr(cls, "grow_axis", 0)
    for x, y in zip(jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(memory), strict=True):
        sx, sy = np.shape(x), np.shape(y)
        grows = (
            len(sx) == len(sy) > axis and sx[:axis] + sx[axis + 1 :] == sy[:axis] + sy[axis + 1 :]
        )
        if not same_shapes and grows:
            sx = sy
        if sx != sy or jnp.result_type(x) != jnp.result_type(y):
            raise ValueError(
                f"new {cls.__name__} leaf is {jnp.result_type(y)}{list(np.shape(y))}, the state "
                f"holds {jnp.result_type(x)}{list(np.shape(x))}"
                + ("" if same_shapes else f" (only axis {axis} may differ)")
            )
    if check_values:
        memory.check()
    return jax.tree_util.tree_map(
        lambda x: memory if isinstance(x, cls) else x,
        opt_state, is_leaf=lambda x: isinstance(x, cls),
    )  # fmt: skip
