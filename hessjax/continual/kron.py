"""Kronecker-factored curvature memories against forgetting, and curvature-mass rank rules.

For a dense layer z = x K + b (kernel K (in, out)), write the layer's parameters as one matrix
W = [K; b] (d, out), d = in + 1 (the bias row, when the layer has one), acting on x̃ = [x; 1].
Its Hessian block is approximated (Wu et al. 2020; Ritter, Botev, Barber 2018; K-FAC) by

    H_W ≈ kron(A, G),   A = E[x̃ x̃ᵀ] (d, d),   G = E[M] (out, out),

in the row-major flattening of W (`hessjax.curvature.kronecker`). A task sequence is
remembered by summing each task's factors, A = Σ_t A_t and G = Σ_t G_t (`kron_remember`).
Where the G_t are PSD (the output layer under cross-entropy; Gauss-Newton parts) every cross
term A_s ⊗ G_t is PSD, so (Σ A_t) ⊗ (Σ G_t) ⪰ Σ_t A_t ⊗ G_t: the summed factors over-protect,
never under-protect, the sum of the tasks' curvatures. Hidden layers' exact G may be
indefinite; their negative eigenvalues γ count as 0 (G⁺) below.

With eigendecompositions A = U_a diag(α) U_aᵀ and G = U_g diag(γ) U_gᵀ (orthogonal U_a, U_g),
vec(U_a C U_gᵀ) = (U_a ⊗ U_g) vec(C), so C = U_aᵀ Δ U_g are the coordinates of an update Δ in
the orthonormal eigenbasis of kron(A, G), whose eigenvalues are α_i γ_j. Both strategies scale
these coordinates elementwise by a (d, out) matrix S (`KronState.scale`):

* projection (`kron_projection_state`): S_ij ∈ {0, 1}; S = 0 on the protected pairs (i, j).
  Δ ← U_a (S ⊙ U_aᵀ Δ U_g) U_gᵀ = P Δ with P = (U_a⊗U_g) diag(vec S) (U_a⊗U_g)ᵀ, an orthogonal
  projector (symmetric and idempotent since S² = S), so the applied update has no component
  along a protected eigenvector u_i ⊗ w_j. `mode="input"` protects all j for the top i of A
  (the span of the old inputs: GPM's subspace from the summed input second moments);
  `mode="product"` protects the pairs of largest α_i γ_j (curvature mass), freeing the output
  directions the old tasks' loss is flat in (on permuted MNIST this costs plasticity: a new
  task's gradients x δᵀ have δ in the top directions of G too; benchmarks/README.md).
* proximal penalty (`kron_prox_state`): the online structured Laplace penalty
  q(θ) = ½ s (θ − θ*)ᵀ H (θ − θ*) with H = kron(A, G⁺) / T (G⁺: negative γ clipped to 0; T
  the number of old tasks) and the anchor θ* (the parameters after the last old task),
  applied as a proximal step after the base optimiser's update u:
  θ⁺ = argmin_θ ½‖θ − (θ + u)‖² + η q(θ) = θ* + (I + η s H)⁻¹ (θ + u − θ*), i.e. with
  δ = θ − θ* the applied update is
  U_a (S ⊙ U_aᵀ (δ + u) U_g) U_gᵀ − δ with S_ij = 1 / (1 + η s α_i γ_j⁺ / T). Since
  0 < S_ij ≤ 1, ‖θ⁺ − θ*‖ ≤ ‖θ + u − θ*‖ for every strength s > 0: the step cannot diverge
  (an explicit gradient step on q diverges once η s α γ > 2); s → ∞ gives S → 1[αγ⁺ = 0],
  the projection of θ + u − θ* onto the null space of H.

`curvature_rank(values, share)`: the smallest k whose top-k curvature (positive part) reaches a
share of the total, the adaptive k of `hessian_mass_directions` (Hessian projection with k
chosen per task) and of the masks above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessjax import _checks
from hessjax.continual import _helpers
from hessjax.continual.sources import Directions, dense_layers, hessian_directions
from hessjax.continual.transforms import check_positive, memory_transform
from hessjax.curvature import hessian_operator, kronecker_factors, leaf_paths
from hessjax.curvature.kronecker import Model

Array = jax.Array
PyTree = Any


class KronFactor(NamedTuple):
    """The summed Kronecker factors of one dense layer: a (d, d) Σ_t E_t[x̃ x̃ᵀ] (d = in + 1
    with the bias, x̃ = [x; 1]), g (out, out) Σ_t E_t[M]; tasks: how many tasks were added."""

    a: Array
    g: Array
    tasks: int


KronMemory = dict[str, KronFactor]


def _layer_slots(paths: Sequence[str], layer: str) -> tuple[int, int | None]:
    """Leaf indices of the 2-D kernel and (None if absent) the bias of `layer`."""
    kernel = _helpers.layer_leaf(list(paths), layer, "kernel")
    if kernel is None:
        raise ValueError(f"no kernel for layer {layer!r} among {list(paths)}")
    return kernel, _helpers.layer_leaf(list(paths), layer, "bias")


def layer_matrices(tree: PyTree, layers: Sequence[str]) -> dict[str, Array]:
    """{layer: [K; b]} (d, out) for params- (or updates-) shaped `tree`: the kernel K (in,
    out) with the bias b (out,) appended as a last row when the layer has one."""
    paths, leaves = leaf_paths(tree), jax.tree_util.tree_leaves(tree)
    out = {}
    for layer in layers:
        ik, ib = _layer_slots(paths, layer)
        if leaves[ik].ndim != 2:
            raise ValueError(f"kernel of {layer!r} must be 2-D, got shape {leaves[ik].shape}")
        out[layer] = (
            leaves[ik] if ib is None else jnp.concatenate([leaves[ik], leaves[ib][None]], 0)
        )
    return out


def _set_layer_matrices(tree: PyTree, mats: Mapping[str, Array]) -> PyTree:
    """`tree` with each layer's kernel (and bias) replaced by the rows of mats[layer]."""
    paths = leaf_paths(tree)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for layer, w in mats.items():
        ik, ib = _layer_slots(paths, layer)
        n_in = leaves[ik].shape[0]
        leaves[ik] = w[:n_in].astype(leaves[ik].dtype)
        if ib is not None:
            leaves[ib] = w[n_in].astype(leaves[ib].dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def kron_remember(
    memory: KronMemory | None,
    model: Model,
    params: PyTree,
    batch: tuple[Array, Array],
    per_example_loss: Callable[[Array, Any], Array],
    *,
    layers: Sequence[str] | None = None,
    chunk_size: int | None = 250,
) -> KronMemory:
    """`memory` with one finished task added: for each dense layer (default all,
    `dense_layers`), A += E[x̃ x̃ᵀ] and G += E[M] of that task (`kronecker_factors` of
    `model` at `params` over batch = (inputs (N, ...), targets (N,)); the bias row of A
    from E[x] and E[1] = 1). memory None: the first task.

    model: a Linen module (params = its variables), or any apply(params, inputs) whose dense
    layers are `curvature.dense` tags named after the params subtree holding their `kernel`
    (and `bias`) leaves, e.g. name="hidden" for `params["hidden"]["kernel"]`."""
    layers = dense_layers(params) if layers is None else list(layers)
    if memory is not None and set(memory) != set(layers):
        raise ValueError(f"memory has layers {sorted(memory)}, the params {sorted(layers)}")
    paths = leaf_paths(params)
    out = {}
    for layer in layers:
        f = kronecker_factors(model, params, batch, per_example_loss, layer, chunk_size=chunk_size)
        a = f.a
        if _layer_slots(paths, layer)[1] is not None:
            top = jnp.concatenate([f.a, f.x_mean[:, None]], axis=1)
            bottom = jnp.concatenate([f.x_mean, jnp.ones((1,), f.a.dtype)])[None]
            a = jnp.concatenate([top, bottom], axis=0)
        if not (bool(jnp.all(jnp.isfinite(a))) and bool(jnp.all(jnp.isfinite(f.g)))):
            raise ValueError(f"Kronecker factors of {layer!r} are not finite")
        if memory is None:
            out[layer] = KronFactor(a, f.g, 1)
            continue
        old = memory[layer]
        if old.a.shape != a.shape or old.g.shape != f.g.shape:
            raise ValueError(
                f"memory of {layer!r} has factors {old.a.shape}, {old.g.shape}; this task's are "
                f"{a.shape}, {f.g.shape}"
            )
        out[layer] = KronFactor(old.a + a, old.g + f.g, old.tasks + 1)
    return out


class KronState(NamedTuple):
    """Per layer {name: ...}: u_a (d, d) and u_g (out, out) orthogonal eigenvectors of the
    factors, scale (d, out) the multiplier S_ij of each eigen-coordinate (module docstring),
    anchor (d, out) [K; b] at θ* (the proximal step; zeros and unused for a projection); a
    (d, d) and g (out, out) the summed factors Σ_t A_t, Σ_t G_t they were computed from
    (`kron_memory` reads them back for the next task; zeros before the first) and num_tasks
    () int32 the T summed. The memory of the `kron_project` / `kron_prox` strategies: every
    shape is fixed by the params, so a new task's state replaces the old one in an optimiser
    state (`set_memory`) without recompiling."""

    u_a: dict[str, Array]
    u_g: dict[str, Array]
    scale: dict[str, Array]
    anchor: dict[str, Array]
    a: dict[str, Array]
    g: dict[str, Array]
    num_tasks: Array

    def check(self) -> None:
        """ValueError unless every layer's leaves have consistent shapes, u_a and u_g are
        orthogonal, 0 <= scale <= 1, the factors and anchor are finite and num_tasks >= 0."""
        if not isinstance(self.u_a, Mapping) or not self.u_a:
            raise ValueError("a KronState needs at least one layer")
        for layer in self.u_a:
            d, o = self.u_a[layer].shape[0], self.u_g[layer].shape[0]
            for name, shape in (("u_a", (d, d)), ("u_g", (o, o)), ("scale", (d, o)),
                                ("anchor", (d, o)), ("a", (d, d)), ("g", (o, o))):  # fmt: skip
                m = getattr(self, name)[layer]
                if m.shape != shape:
                    raise ValueError(f"{name} of {layer!r} must be {shape}, got {m.shape}")
            for name in ("u_a", "u_g"):
                u = getattr(self, name)[layer]
                err = float(jnp.max(jnp.abs(u.T @ u - jnp.eye(u.shape[0], dtype=u.dtype))))
                if not err <= 1e-3:
                    raise ValueError(f"{name} of {layer!r} is not orthogonal (max |UᵀU − I| {err})")
            sc = np.asarray(self.scale[layer])
            if not (np.all(sc >= 0) and np.all(sc <= 1)):
                raise ValueError(f"scale of {layer!r} must lie in [0, 1]")
            for name in ("anchor", "a", "g"):
                if not bool(jnp.all(jnp.isfinite(getattr(self, name)[layer]))):
                    raise ValueError(f"{name} of {layer!r} has non-finite entries")
        if np.shape(self.num_tasks) != () or not int(self.num_tasks) >= 0:
            raise ValueError(f"num_tasks must be a scalar >= 0, got {self.num_tasks}")

    def check_params(self, params: PyTree) -> None:
        """ValueError unless each layer's [K; b] in `params` is (d, out) as in the state."""
        mats = layer_matrices(params, list(self.u_a))
        for layer, w in mats.items():
            want = (self.u_a[layer].shape[0], self.u_g[layer].shape[0])
            if w.shape != want:
                raise ValueError(f"layer {layer!r} of the params is {w.shape}, the memory {want}")


def kron_identity_state(params: PyTree, layers: Sequence[str] | None = None) -> KronState:
    """The state of a `kron_transform` that changes nothing (U = I, S = 1, anchor 0, no
    factors), for each dense layer of `params` (default all, `dense_layers`): the memory
    before the first task, with the shapes of every later state, so an optimiser built on it
    takes them (`set_memory`) without recompiling."""
    layers = dense_layers(params) if layers is None else list(layers)
    mats = layer_matrices(params, layers)

    def square(axis):
        return {k: jnp.zeros((m.shape[axis],) * 2, m.dtype) for k, m in mats.items()}

    return KronState(
        {k: jnp.eye(m.shape[0], dtype=m.dtype) for k, m in mats.items()},
        {k: jnp.eye(m.shape[1], dtype=m.dtype) for k, m in mats.items()},
        {k: jnp.ones(m.shape, m.dtype) for k, m in mats.items()},
        {k: jnp.zeros(m.shape, m.dtype) for k, m in mats.items()},
        square(0),
        square(1),
        jnp.zeros((), jnp.int32),
    )


def kron_memory(state: KronState) -> KronMemory | None:
    """The summed factors a state was built from, {layer: KronFactor} (`kron_remember`'s
    memory), None for a state of no task (`kron_identity_state`)."""
    tasks = int(state.num_tasks)
    if tasks == 0:
        return None
    return {k: KronFactor(state.a[k], state.g[k], tasks) for k in state.u_a}


def _factor_fields(memory: KronMemory) -> dict[str, Any]:
    """The a, g, num_tasks fields of a KronState built from `memory`."""
    tasks = {f.tasks for f in memory.values()}
    if len(tasks) != 1:
        raise ValueError(f"the layers of the memory hold different numbers of tasks: {tasks}")
    return {
        "a": {k: f.a for k, f in memory.items()},
        "g": {k: f.g for k, f in memory.items()},
        "num_tasks": jnp.asarray(tasks.pop(), jnp.int32),
    }


def _eigh_desc(m: Array) -> tuple[np.ndarray, np.ndarray]:
    w, v = np.linalg.eigh(np.asarray(m, np.float64))
    return w[::-1], v[:, ::-1]


def check_share(share: float, name: str = "share") -> float:
    """float(share), ValueError naming it unless in (0, 1]."""
    share = float(share)
    if not 0 < share <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {share}")
    return share


def check_shares(share: float | Mapping[str, float]) -> float | dict[str, float]:
    """`check_share` of one share or of each value of {layer: share}."""
    if isinstance(share, Mapping):
        if not share:
            raise ValueError("share must be a float or a non-empty {layer: share} dict")
        return {k: check_share(v, f"share of {k!r}") for k, v in share.items()}
    return check_share(share)


MODES = ("product", "input", "block", "mass")


def check_mode(mode: str) -> str:
    """mode, ValueError unless a `kron_projection_state` mode (`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def curvature_rank(values: Array, share: float) -> int:
    """The smallest k such that the k largest positive parts of `values` (any order) hold at
    least `share` of their sum: Σ_{i<k} λ⁺_(i) >= share · Σ_i λ⁺_i, share in (0, 1]
    (0 when no value is positive)."""
    share = check_share(share)
    v = np.asarray(values, np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    pos = np.sort(np.maximum(v, 0))[::-1]
    total = float(pos.sum())
    if total == 0:
        return 0
    return _helpers.energy_rank(np.cumsum(pos), share * total, total)


def _protected_mask(
    alpha: np.ndarray, gamma: np.ndarray, share: float, mode: str, output_share: float
) -> np.ndarray:
    """(d, out) bool: the eigenpairs (i, j) a projection protects (see kron_projection_state)."""
    d, o = alpha.size, gamma.size
    if mode in ("input", "block"):
        rows = np.arange(d)[:, None] < curvature_rank(alpha, share)
        cols = np.arange(o)[None, :] < (
            o if mode == "input" else curvature_rank(gamma, output_share)
        )
        return rows & cols
    products = np.maximum(alpha[:, None] * gamma[None, :], 0).ravel()
    k = curvature_rank(products, share)
    mask = np.zeros(d * o, bool)
    mask[np.argsort(-products, kind="stable")[:k]] = True
    return mask.reshape(d, o)


def mass_ranks(spectra: Mapping[str, tuple[Array, Array]], share: float) -> dict[str, int]:
    """Mode "mass": how many top eigenvectors of each layer's A to protect, {layer: k}, from
    spectra {layer: (α (d,) descending, γ (out,))}. Row i of a layer (all pairs (i, j)) holds
    curvature mass m_i = α_i⁺ tr(G⁺), i.e. m_i / out per parameter; an update of per-entry
    size δ along it (Adam's steps are about lr per entry) raises the old tasks' loss by about
    ½ δ² m_i. Rows of all layers are protected in decreasing m_i / out, the fewest holding
    `share` of Σ_layers tr(A⁺) tr(G⁺) (all layers' curvature mass): one threshold on the
    curvature per parameter for the whole network, instead of one share per layer."""
    share = check_share(share)
    names, density, mass = [], [], []
    for layer, (alpha, gamma) in spectra.items():
        m = np.maximum(np.asarray(alpha, np.float64), 0) * np.maximum(np.asarray(gamma), 0).sum()
        names += [layer] * m.size
        mass.append(m)
        density.append(m / np.size(gamma))
    mass, density, names = np.concatenate(mass), np.concatenate(density), np.asarray(names)
    order = np.argsort(-density, kind="stable")
    total = float(mass.sum())
    k = 0 if total == 0 else _helpers.energy_rank(np.cumsum(mass[order]), share * total, total)
    chosen = names[order[:k]]
    return {layer: int(np.sum(chosen == layer)) for layer in spectra}


def _check_memory(memory: KronMemory) -> None:
    if not isinstance(memory, Mapping) or not memory:
        raise ValueError("memory must be a non-empty dict {layer: KronFactor} (kron_remember)")


def kron_projection_state(
    memory: KronMemory,
    share: float | Mapping[str, float],
    mode: str = "product",
    output_share: float = 1.0,
) -> KronState:
    """The projection of each layer's update out of the high-curvature eigenpairs of
    kron(A, G) (module docstring): mode "product" protects the fewest pairs (i, j) of largest
    α_i γ_j⁺ holding `share` of Σ α_i γ_j⁺ = tr(A) tr(G⁺) (`curvature_rank`); mode "input"
    protects every j for the fewest top eigenvectors of A holding `share` of tr(A) (GPM's
    input subspace, from the summed factors); mode "block" protects the pairs (i, j) of those
    top eigenvectors of A and the fewest top eigenvectors of G holding `output_share` of
    tr(G⁺) (the Cartesian block; output_share 1 is mode "input" up to G's null space); mode
    "mass" protects, like "input", every j for top eigenvectors of A, but chooses how many in
    each layer with one threshold on the curvature per parameter across layers
    (`mass_ranks`: `share` of all layers' Σ tr(A) tr(G⁺)). share: one value or (not for
    "mass") {layer: value}, in (0, 1]."""
    _check_memory(memory)
    check_mode(mode)
    check_share(output_share, "output_share")
    share = check_shares(share)
    if isinstance(share, Mapping) and set(share) != set(memory):
        raise ValueError(f"share has layers {sorted(share)}, the memory {sorted(memory)}")
    if mode == "mass" and isinstance(share, Mapping):
        raise ValueError("mode 'mass' takes one share for all layers, not {layer: share}")
    eigs = {layer: (_eigh_desc(f.a), _eigh_desc(f.g)) for layer, f in memory.items()}
    if mode == "mass":
        ranks = mass_ranks({k: (a[0], g[0]) for k, (a, g) in eigs.items()}, share)
    u_a, u_g, scale, anchor = {}, {}, {}, {}
    for layer, f in memory.items():
        (alpha, ua), (gamma, ug) = eigs[layer]
        if mode == "mass":  # every column j of the top ranks[layer] rows
            rows = np.arange(alpha.size)[:, None] < ranks[layer]
            keep = ~np.repeat(rows, gamma.size, axis=1)
        else:
            thr = share[layer] if isinstance(share, Mapping) else share
            keep = ~_protected_mask(alpha, gamma, thr, mode, output_share)
        dtype = f.a.dtype
        u_a[layer], u_g[layer] = jnp.asarray(ua, dtype), jnp.asarray(ug, dtype)
        scale[layer] = jnp.asarray(keep, dtype)
        anchor[layer] = jnp.zeros(keep.shape, dtype)
    return KronState(u_a, u_g, scale, anchor, **_factor_fields(memory))


def kron_prox_state(
    memory: KronMemory,
    anchor: PyTree,
    strength: float,
    learning_rate: float,
    projection: KronState | None = None,
) -> KronState:
    """The proximal Kronecker-factored penalty ½ s (θ − θ*)ᵀ kron(A, G⁺) / T (θ − θ*) per layer
    (module docstring), anchored at params-shaped `anchor` θ*: S_ij = 1 / (1 + η s α_i γ_j⁺ / T)
    with η = learning_rate (the base optimiser's step), s = strength (> 0), G⁺ the summed G
    with negative eigenvalues set to 0 and T the memory's number of tasks: for T similar tasks
    (Σ A_t) ⊗ (Σ G_t) / T ≈ Σ_t A_t ⊗ G_t, the online Laplace precision. `projection`: a
    `kron_projection_state` of the same memory (same eigenvectors), whose protected pairs get
    S_ij = 0 (the s → ∞ limit there: projection of the top directions, the penalty on the
    rest), S = S_proj ⊙ S_prox."""
    _check_memory(memory)
    strength = check_positive(strength, "strength")
    lr = check_positive(learning_rate, "learning_rate")
    mats = layer_matrices(anchor, list(memory))
    u_a, u_g, scale, anchors = {}, {}, {}, {}
    for layer, f in memory.items():
        alpha, ua = _eigh_desc(f.a)
        gamma, ug = _eigh_desc(f.g)
        if mats[layer].shape != (alpha.size, gamma.size):
            raise ValueError(
                f"layer {layer!r}: anchor {mats[layer].shape}, factors {(alpha.size, gamma.size)}"
            )
        curv = np.maximum(alpha[:, None] * gamma[None, :], 0) / f.tasks
        dtype = f.a.dtype
        u_a[layer], u_g[layer] = jnp.asarray(ua, dtype), jnp.asarray(ug, dtype)
        sc = 1.0 / (1.0 + lr * strength * curv)
        if projection is not None:
            if set(projection.u_a) != set(memory):
                raise ValueError(f"projection has layers {sorted(projection.u_a)}, the memory "
                                 f"{sorted(memory)}")  # fmt: skip
            if not np.allclose(projection.u_a[layer], ua) or not np.allclose(
                projection.u_g[layer], ug
            ):
                raise ValueError(f"projection of {layer!r} has other eigenvectors than the memory")
            sc = sc * np.asarray(projection.scale[layer], np.float64)
        scale[layer] = jnp.asarray(sc, dtype)
        anchors[layer] = mats[layer].astype(dtype)
    return KronState(u_a, u_g, scale, anchors, **_factor_fields(memory))


def _kron_apply(updates: PyTree, st: KronState, params: PyTree | None, proximal: bool) -> PyTree:
    layers = list(st.u_a)
    deltas = layer_matrices(updates, layers)
    theta = layer_matrices(params, layers) if proximal else None
    out = {}
    for layer in layers:
        ua, ug = st.u_a[layer], st.u_g[layer]
        v = deltas[layer].astype(ua.dtype)
        if proximal:
            drift = theta[layer].astype(ua.dtype) - st.anchor[layer]
            v = v + drift
        w = ua @ (st.scale[layer] * (ua.T @ v @ ug)) @ ug.T
        out[layer] = w - drift if proximal else w
    return _set_layer_matrices(updates, out)


def kron_transform(state: KronState, proximal: bool = False) -> optax.GradientTransformation:
    """Scale each listed layer's update in the eigenbasis of its Kronecker factors (module
    docstring): Δ ← U_a (S ⊙ U_aᵀ Δ U_g) U_gᵀ (projection, `proximal=False`), or the proximal
    step Δ ← U_a (S ⊙ U_aᵀ (δ + Δ) U_g) U_gᵀ − δ, δ = [K; b] − anchor (needs params), with Δ
    the [K; b] (d, out) update of the layer. Chain it after the base optimiser:
    `optax.chain(optax.sgd(lr), kron_transform(state))`. Layers not in the state pass
    unchanged. The state (checked: `KronState.check`, and at init against the params) holds
    the memory (swap in a new task's with `set_memory`); `update` never changes it."""
    if not isinstance(state, KronState):
        raise ValueError(f"state must be a KronState, got {type(state).__name__}")
    state.check()
    return memory_transform(
        state, lambda u, st, p: _kron_apply(u, st, p, proximal),
        needs_params="the proximal kron_transform" if proximal else None,
    )  # fmt: skip


@_checks.renamed(operator="make_operator")
def hessian_mass_directions(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    data: PyTree,
    share: float,
    max_k: int,
    *,
    key: Array,
    num_steps: int | None = None,
    tol: float | None = 1e-4,
    max_restarts: int = 0,
    make_operator: Callable[..., Any] = hessian_operator,
) -> Directions:
    """Hessian projection with k chosen per task by curvature: the top max_k eigenpairs
    (largest algebraic) of the Hessian of the mean of loss_fn over `data` (leaves (m, b, ...))
    at `params` (`sources.hessian_directions`, thick-restarted `max_restarts` times, the
    Hessian built by `make_operator(loss_fn, params, data)`), truncated to the fewest that hold
    `share` of their positive curvature (`curvature_rank`, at least 1).
    vectors (n, k), values (k,) descending, k <= max_k."""
    check_share(share)
    top = hessian_directions(
        loss_fn, params, data, max_k, key=key, num_steps=num_steps, tol=tol,
        max_restarts=max_restarts, make_operator=make_operator,
    )  # fmt: skip
    k = max(curvature_rank(top.values, share), 1)
    return Directions(top.vectors[:, :k], top.values[:k])
