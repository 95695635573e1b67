"""optax gradient transformations that protect old tasks; compose them with any optimiser.

* `project_out(basis)`: remove the update's component in a protected subspace, globally
  (basis (n, k) over the flat params layout) or per layer ({layer: (n_layer, k)}). Hessian,
  weight-SVD and update-PCA subspaces, and OGD (a basis of old logit gradients), all use it.
* `gpm_project(bases)`: GPM, each dense layer's kernel (and bias) gradient projected out of a
  subspace of that layer's old inputs.
* `curvature_penalty(anchor, directions, weights)`: add the gradient of
  ½ Σ_i λ_i <θ − θ_old, e_i>², a low-rank Hessian generalisation of EWC.
* `ewc_penalty(anchor, fisher, strength)`: add the gradient of λ/2 Σ_i F_i (θ_i − θ_old,i)².

Update-PCA directions come from `hessjax.analysis.trajectory.recording` chained last (it
records the applied updates) and `sources.update_pca_directions`.

Projections go after the optimiser, so the applied update is exactly orthogonal to the
protected subspace: `optax.chain(optax.adam(lr), project_out(basis))`. Penalties are loss
terms, so they go before it: `optax.chain(ewc_penalty(...), optax.adam(lr))`.

The protected quantities live in the transformation's state, not in its closure: `init` puts
them there and `update` reads them from there, so under `jit` they are arguments rather than
compile-time constants, and a new task's memory replaces the old one in an optimiser state with
`optax.tree_utils.tree_set` (by field or state-class name) without rebuilding, and so without
recompiling, the optimiser. `update` never changes the state. Zero columns (and zero weights)
are allowed and act as nothing, so a fixed-capacity zero-padded memory keeps every shape fixed
as it grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessjax.curvature import leaf_paths, make_layout
from hessjax.curvature.layout import select_mask
from hessjax.linalg.subspace import check_orthonormal, project_vector

Array = jax.Array
PyTree = Any

# ------------------------------------------------------------------------------- projections


def _memory_transform(state0: NamedTuple, apply, needs_params: str | None = None):
    """A transformation whose state is the constant memory `state0` and whose update is
    apply(updates, state, params) -> updates; `needs_params`: the name to report when update
    is called without params (None: params are not used)."""

    def init(params):
        del params
        return state0

    def update(updates, state, params=None):
        if needs_params and params is None:
            raise ValueError(f"{needs_params} needs params: update(updates, state, params)")
        return apply(updates, state, params), state

    return optax.GradientTransformation(init, update)


class ProjectionState(NamedTuple):
    """basis: (n, k) orthonormal (or zero) columns over the flat params layout, or a dict
    {layer: (n_layer, k_layer)} over each layer's flat params."""

    basis: Array | dict[str, Array]


def _project_global(updates: PyTree, basis: Array) -> PyTree:
    layout = make_layout(updates)
    if basis.shape[0] != layout.size:
        raise ValueError(f"basis has {basis.shape[0]} rows but the updates {layout.size} entries")
    return layout.unravel(project_vector(basis, layout.ravel(updates)))


def _project_layers(updates: PyTree, bases: Mapping[str, Array]) -> PyTree:
    leaves = jax.tree_util.tree_leaves(updates)
    owner: dict[int, str] = {}
    for name, basis in bases.items():
        layout = make_layout(updates, select=name)
        for i, on in enumerate(layout.selected):
            if on and i in owner:
                raise ValueError(f"layers {owner[i]!r} and {name!r} share {layout.paths[i]!r}")
            if on:
                owner[i] = name
        if basis.shape[0] != layout.size:
            raise ValueError(
                f"basis of layer {name!r} has {basis.shape[0]} rows but the layer has "
                f"{layout.size} parameters ({list(layout.selected_paths)})"
            )
        picked = layout.pick(leaves)
        flat = project_vector(basis, layout.ravel_picked(picked))
        leaves = jax.tree_util.tree_leaves(layout.merge(layout.unravel_picked(flat), leaves))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(updates), leaves)


def _check_basis_arg(basis) -> Array | dict[str, Array]:
    if isinstance(basis, Mapping):
        if not basis:
            raise ValueError("per-layer basis dict is empty")
        out = {}
        for name, b in basis.items():
            b = jnp.asarray(b)
            check_orthonormal(b, f"basis of layer {name!r}", allow_zero=True)
            out[str(name)] = b
        return out
    basis = jnp.asarray(basis)
    check_orthonormal(basis, allow_zero=True)
    return basis


def project_out(basis: Array | Mapping[str, Array]) -> optax.GradientTransformation:
    """Remove from the updates their component in a protected subspace: u <- (I − B Bᵀ) u.

    Args:
      basis: (n, k) orthonormal columns over the flat layout of the params
        (`make_layout(params)`: all leaves in leaf order, as `eigsh` eigenvectors of a
        `hessian_operator`), or a dict {layer: (n_layer, k)} of per-layer bases over the flat
        params of each layer (the leaves whose path contains the layer name as whole
        components, e.g. 'Dense_0', in leaf order); leaves of no listed layer pass unchanged.
        Zero columns (padding) are allowed.

    The state (`ProjectionState`) holds the basis; `update` ignores params. Stateless
    otherwise.
    """

    def apply(updates, state, params):
        if isinstance(state.basis, Mapping):
            return _project_layers(updates, state.basis)
        return _project_global(updates, state.basis)

    return _memory_transform(ProjectionState(_check_basis_arg(basis)), apply)


class GpmState(NamedTuple):
    """layer_bases: {layer: (d, k)} orthonormal (or zero) columns over the layer's inputs,
    d = in (kernel only) or in + 1 (inputs with a constant 1 appended: kernel and bias)."""

    layer_bases: dict[str, Array]


def _layer_leaf(paths: list[str], layer: str, name: str) -> int | None:
    hits = [i for i, on in enumerate(select_mask(paths, f"{layer}/{name}")) if on]
    if len(hits) > 1:
        raise ValueError(f"layer {layer!r} matches several {name} leaves: {hits}")
    return hits[0] if hits else None


def _gpm_apply(updates: PyTree, bases: Mapping[str, Array]) -> PyTree:
    paths = leaf_paths(updates)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    for layer, basis in bases.items():
        ik = _layer_leaf(paths, layer, "kernel")
        if ik is None or leaves[ik].ndim != 2:
            raise ValueError(f"no 2-D kernel for layer {layer!r} among {paths}")
        ib = _layer_leaf(paths, layer, "bias")
        kernel = leaves[ik]  # (in, out): outputs x @ W
        d = basis.shape[0]
        if d == kernel.shape[0]:
            ib = None  # the basis covers the kernel only; the bias passes unchanged
        elif ib is None or d != kernel.shape[0] + 1:
            raise ValueError(
                f"GPM basis of {layer!r} has {d} rows; the kernel has {kernel.shape[0]} inputs"
                + ("" if ib is None else " (+1 with the bias)")
            )
        g = kernel if ib is None else jnp.concatenate([kernel, leaves[ib][None]], axis=0)
        u = basis.astype(g.dtype)
        g = g - u @ (u.T @ g)
        leaves[ik] = g[: kernel.shape[0]]
        if ib is not None:
            leaves[ib] = g[-1]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def gpm_project(bases: Mapping[str, Array]) -> optax.GradientTransformation:
    """Gradient projection memory (Saha et al. 2021): for each dense layer with kernel W
    (in, out) (outputs x W + b), G <- (I − U Uᵀ) G for the update G of [W; b] ((in + 1, out),
    U (in + 1, k)) or of W alone (U (in, k)), so the layer's outputs on inputs in span(U)
    do not change. bases: {layer: U} from `gpm_extend` (layer names as in `dense_layers`, e.g.
    'Dense_0'); zero columns allowed; layers not listed pass unchanged."""
    if not isinstance(bases, Mapping) or not bases:
        raise ValueError("bases must be a non-empty dict {layer: (d, k) basis}")
    bases = {str(k): jnp.asarray(v) for k, v in bases.items()}
    for name, b in bases.items():
        check_orthonormal(b, f"GPM basis of {name!r}", allow_zero=True)
    return _memory_transform(GpmState(bases), lambda u, state, p: _gpm_apply(u, state.layer_bases))


# --------------------------------------------------------------------------------- penalties


def _check_strength(strength: float) -> float:
    strength = float(strength)
    if not (np.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be finite and >= 0, got {strength}")
    return strength


class CurvaturePenaltyState(NamedTuple):
    """directions: (n, k) unit vectors e_i over the flat params layout; weights: (k,) λ_i >= 0;
    targets: (k,) <θ_old, e_i>, the old parameters' coordinate along each direction (each
    direction may come from a different task and so a different θ_old)."""

    directions: Array
    weights: Array
    targets: Array


def curvature_penalty_state(anchor: PyTree, directions: Array, weights: Array):
    """The state of ½ Σ_i λ_i <θ − anchor, e_i>² for params-shaped `anchor` (θ_old),
    directions (n, k) and weights (k,) (checked non-negative and finite)."""
    directions, weights = jnp.asarray(directions), jnp.asarray(weights)
    flat = make_layout(anchor).ravel(anchor)
    if directions.ndim != 2 or directions.shape[0] != flat.shape[0]:
        raise ValueError(f"directions must be ({flat.shape[0]}, k), got {directions.shape}")
    if weights.shape != directions.shape[1:]:
        raise ValueError(f"weights must be ({directions.shape[1]},), got {weights.shape}")
    w = np.asarray(weights)
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ValueError(f"weights must be finite and >= 0, got min {w.min(initial=0)}")
    if not bool(jnp.all(jnp.isfinite(directions))):
        raise ValueError("directions have non-finite entries")
    targets = directions.T @ flat.astype(directions.dtype)
    return CurvaturePenaltyState(directions, weights.astype(directions.dtype), targets)


def concat_penalty_states(*states: CurvaturePenaltyState) -> CurvaturePenaltyState:
    """One state for the sum of several penalties (e.g. one per old task)."""
    if not states:
        raise ValueError("need at least one state")
    return CurvaturePenaltyState(
        jnp.concatenate([s.directions for s in states], axis=1),
        jnp.concatenate([s.weights for s in states]),
        jnp.concatenate([s.targets for s in states]),
    )


def curvature_penalty(
    anchor: PyTree | CurvaturePenaltyState,
    directions: Array | None = None,
    weights: Array | None = None,
    strength: float = 1.0,
) -> optax.GradientTransformation:
    """Add to the updates the gradient of strength · ½ Σ_i λ_i <θ − θ_old, e_i>², that is
    strength · E (λ ⊙ (Eᵀθ − Eᵀθ_old)): a quadratic penalty along protected directions e_i
    (columns of `directions` (n, k), e.g. top Hessian eigenvectors of the old task) weighted
    by their curvature λ_i (`weights` (k,), e.g. the eigenvalues); the Hessian of the penalty
    is the rank-k part E diag(λ) Eᵀ of the old task's Hessian (EWC uses its diagonal).

    anchor: θ_old (params-shaped), or a ready `CurvaturePenaltyState` (then directions and
    weights are None), e.g. `concat_penalty_states` of several tasks. Needs params:
    `update(updates, state, params)`.
    """
    if isinstance(anchor, CurvaturePenaltyState):
        if directions is not None or weights is not None:
            raise ValueError("pass directions and weights in the state, not besides it")
        state0 = anchor
    else:
        if directions is None or weights is None:
            raise ValueError("curvature_penalty needs directions and weights")
        state0 = curvature_penalty_state(anchor, directions, weights)
    strength = _check_strength(strength)

    def apply(updates, state, params):
        layout = make_layout(params)
        theta = layout.ravel(params)
        e = state.directions.astype(theta.dtype)
        coef = strength * state.weights.astype(theta.dtype) * (e.T @ theta - state.targets)
        return jax.tree_util.tree_map(jnp.add, updates, layout.unravel(e @ coef))

    return _memory_transform(state0, apply, needs_params="curvature_penalty")


class EwcState(NamedTuple):
    """precision: params-shaped Σ_t F_t (diagonal Fisher of each old task t);
    weighted_anchor: params-shaped Σ_t F_t ⊙ θ_t. The penalty of all old tasks,
    λ/2 Σ_t Σ_i F_t,i (θ_i − θ_t,i)², has gradient λ (precision ⊙ θ − weighted_anchor)."""

    precision: PyTree
    weighted_anchor: PyTree


def ewc_state(anchor: PyTree, fisher: PyTree, previous: EwcState | None = None) -> EwcState:
    """The state for one old task (anchor θ_t and its diagonal Fisher F_t, both params-shaped;
    F >= 0), added to `previous` (the other old tasks) if given."""
    if jax.tree_util.tree_structure(anchor) != jax.tree_util.tree_structure(fisher):
        raise ValueError("anchor and fisher must have the same tree structure")
    leaves = jax.tree_util.tree_leaves
    for a, f in zip(leaves(anchor), leaves(fisher), strict=True):
        if np.shape(a) != np.shape(f):
            raise ValueError(f"anchor and fisher leaves differ in shape: {a.shape} vs {f.shape}")
    if not all(bool(jnp.all(f >= 0)) for f in jax.tree_util.tree_leaves(fisher)):
        raise ValueError("fisher must be >= 0 (and finite)")
    new = EwcState(fisher, jax.tree_util.tree_map(jnp.multiply, fisher, anchor))
    if previous is None:
        return new
    return jax.tree_util.tree_map(jnp.add, previous, new)


def ewc_penalty(
    anchor: PyTree | EwcState, fisher: PyTree | None = None, strength: float = 1.0
) -> optax.GradientTransformation:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): add to the updates the gradient
    of strength/2 · Σ_i F_i (θ_i − θ_old,i)², i.e. strength · F ⊙ (θ − θ_old).

    anchor: θ_old (params-shaped) with `fisher` its diagonal Fisher (`fisher_diagonal`), or a
    ready `EwcState` (several old tasks, `ewc_state(..., previous=...)`). Needs params.
    """
    if isinstance(anchor, EwcState):
        if fisher is not None:
            raise ValueError("pass the Fisher in the EwcState, not besides it")
        state0 = anchor
    else:
        if fisher is None:
            raise ValueError("ewc_penalty needs the Fisher diagonal")
        state0 = ewc_state(anchor, fisher)
    strength = _check_strength(strength)

    def apply(updates, state, params):
        return jax.tree_util.tree_map(
            lambda u, p, f, m: u + strength * (f * p - m).astype(u.dtype),
            updates, params, state.precision, state.weighted_anchor,
        )  # fmt: skip

    return _memory_transform(state0, apply, needs_params="ewc_penalty")
