"""hessjax.continual: transformations against hand computations (float64, the `x64` marker),
the same projections in float32, bases, sources, metrics, task builders, and
experiments/continual.py end to end in JAX's default float32 (forgetting and kill/resume)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _x64 import enable_x64

from hessjax import continual as cl
from hessjax import curvature, linalg, models, training
from hessjax.analysis import trajectory
from hessjax.data import Dataset

F64 = jnp.float64


def _tree(key, dtype=F64):
    """A small Linen-style params tree: two dense layers (kernel (in, out), bias (out,))."""
    k = jax.random.split(key, 4)
    return {
        "params": {
            "Dense_0": {
                "bias": jax.random.normal(k[0], (3,), dtype),
                "kernel": jax.random.normal(k[1], (4, 3), dtype),
            },
            "Dense_1": {
                "bias": jax.random.normal(k[2], (2,), dtype),
                "kernel": jax.random.normal(k[3], (3, 2), dtype),
            },
        }
    }


def _flat(tree):
    return curvature.make_layout(tree).ravel(tree)


def _orthonormal(key, n, k, dtype=F64):
    return jnp.linalg.qr(jax.random.normal(key, (n, k), dtype))[0]


# ---------------------------------------------------------------------------- project_out


@pytest.mark.x64
def test_project_out_global_removes_exactly_the_protected_component():
    params = _tree(jax.random.key(0))
    n = _flat(params).size  # 3 + 12 + 2 + 6 = 23
    basis = _orthonormal(jax.random.key(1), n, 5)
    tx = cl.project_out(basis)
    updates = _tree(jax.random.key(2))
    out, _ = tx.update(updates, tx.init(params))
    u, v = _flat(updates), _flat(out)
    np.testing.assert_allclose(v, u - basis @ (basis.T @ u), atol=1e-12)
    np.testing.assert_allclose(basis.T @ v, 0, atol=1e-12)
    # an update orthogonal to the basis passes unchanged, also with zero padding columns
    ortho = curvature.make_layout(params).unravel(u - basis @ (basis.T @ u))
    padded = cl.project_out(linalg.pad_columns(basis, 9))
    same, _ = padded.update(ortho, padded.init(params))
    np.testing.assert_allclose(_flat(same), _flat(ortho), atol=1e-12)
    # inside optax.chain and jit
    chain = optax.chain(optax.sgd(0.5), cl.project_out(basis))
    step = jax.jit(chain.update)(updates, chain.init(params), params)[0]
    np.testing.assert_allclose(_flat(step), -0.5 * (u - basis @ (basis.T @ u)), atol=1e-12)


@pytest.mark.x64
def test_project_out_per_layer():
    params = _tree(jax.random.key(0))
    b0 = _orthonormal(jax.random.key(1), 15, 4)  # Dense_0: bias 3 + kernel 12, leaf order
    tx = cl.project_out({"Dense_0": b0})
    updates = _tree(jax.random.key(2))
    out, _ = tx.update(updates, tx.init(params))
    lay0 = curvature.make_layout(updates, "Dense_0")
    u0 = lay0.ravel(updates)
    np.testing.assert_allclose(lay0.ravel(out), u0 - b0 @ (b0.T @ u0), atol=1e-12)
    for name in ("bias", "kernel"):  # the other layer is untouched
        np.testing.assert_array_equal(
            out["params"]["Dense_1"][name], updates["params"]["Dense_1"][name]
        )
    b1 = _orthonormal(jax.random.key(3), 8, 2)
    both = cl.project_out({"Dense_0": b0, "Dense_1": b1})
    out2, _ = both.update(updates, both.init(params))
    lay1 = curvature.make_layout(updates, "Dense_1")
    np.testing.assert_allclose(b1.T @ lay1.ravel(out2), 0, atol=1e-12)
    np.testing.assert_allclose(lay0.ravel(out2), lay0.ravel(out), atol=1e-12)
    with pytest.raises(ValueError, match="rows"):
        bad = cl.project_out({"Dense_1": b0})
        bad.update(updates, bad.init(params))
    with pytest.raises(ValueError, match="orthonormal"):
        cl.project_out(2 * b0)


# ------------------------------------------------------------------------------ extend_basis


@pytest.mark.x64
def test_extend_basis_orthonormal_and_drops_dependent_vectors():
    n = 12
    basis = _orthonormal(jax.random.key(0), n, 3)
    fresh = jax.random.normal(jax.random.key(1), (n, 2), F64)
    new = (
        jnp.concatenate(
            [
                basis @ jnp.array([1.0, -2.0, 0.5]),  # in span(basis): dropped
                fresh[:, 0],
                jnp.zeros(n),  # zero: dropped
                2 * fresh[:, 0] - basis[:, 1],  # dependent on the kept ones: dropped
                fresh[:, 1],
            ]
        )
        .reshape(5, n)
        .T
    )
    out = linalg.extend_basis(basis, new)
    assert out.shape == (n, 5)
    np.testing.assert_allclose(out.T @ out, np.eye(5), atol=1e-12)
    np.testing.assert_array_equal(out[:, :3], basis)  # the old basis is kept as it is
    # span(out) = span(basis, fresh): the projector onto it reproduces every input vector
    for v in np.concatenate([np.asarray(basis), np.asarray(new)], axis=1).T:
        np.testing.assert_allclose(out @ (out.T @ v), v, atol=1e-10)
    # Gram-Schmidt order: the first kept new column is fresh[:, 0] orthogonalised and normalised
    r = fresh[:, 0] - basis @ (basis.T @ fresh[:, 0])
    np.testing.assert_allclose(out[:, 3], r / jnp.linalg.norm(r), atol=1e-12)
    # from nothing; nearly dependent vectors below tol are dropped, above kept
    first = linalg.extend_basis(None, fresh)
    np.testing.assert_allclose(first.T @ first, np.eye(2), atol=1e-12)
    near = basis[:, :1] + 1e-8 * fresh[:, :1]
    assert linalg.extend_basis(basis, near, tol=1e-6).shape[1] == 3
    assert linalg.extend_basis(basis, near, tol=1e-10).shape[1] == 4
    with pytest.raises(ValueError, match="orthonormal"):
        linalg.extend_basis(2 * basis, fresh)
    # padding round trip
    np.testing.assert_array_equal(linalg.used_columns(linalg.pad_columns(out, 9)), out)
    np.testing.assert_array_equal(linalg.used_rows(linalg.pad_columns(out, 9).T), out.T)
    assert linalg.used_rows(jnp.zeros((3, out.shape[0]))).shape == (0, out.shape[0])


@pytest.mark.x64
def test_extend_basis_blocked_matches_column_by_column_gram_schmidt():
    """40 new columns (more than one block of 16 of the blocked Gram-Schmidt), with dependent
    ones inside a block, across blocks and in span(basis): the same basis as column-by-column
    classical Gram-Schmidt against everything kept before (the oracle, float64 numpy)."""
    n, k, m = 60, 3, 40
    basis = np.asarray(_orthonormal(jax.random.key(4), n, k))
    new = np.array(jax.random.normal(jax.random.key(5), (n, m), F64))
    new[:, 5] = 2 * new[:, 1] - new[:, 3]  # dependent within the first block
    new[:, 20] = new[:, 2] + 0.5 * new[:, 17]  # on columns of two earlier / same blocks
    new[:, 33] = basis @ np.array([1.0, 2.0, -1.0])  # in span(basis)
    new[:, 36] = 0.0
    tol = 1e3 * np.finfo(np.float64).eps
    q = basis
    for x in new.T:
        r = x - q @ (q.T @ x)
        r = r - q @ (q.T @ r)
        if np.linalg.norm(r) > tol * np.linalg.norm(x) > 0:
            q = np.concatenate([q, (r / np.linalg.norm(r))[:, None]], axis=1)
    out = np.asarray(linalg.extend_basis(jnp.asarray(basis), jnp.asarray(new)))
    assert q.shape == (n, k + m - 4) and out.shape == q.shape
    np.testing.assert_allclose(out, q, atol=1e-12)
    np.testing.assert_array_equal(out[:, :k], basis)


def test_projection_and_extend_basis_in_float32():
    """The default float32 path: a basis grown by extend_basis from float32 vectors is
    orthonormal to float32 round-off (two Gram-Schmidt passes: max |BᵀB − I| ~ eps · sqrt(n)
    = 1e-6 here, asserted < 1e-5), project_out keeps float32 and removes the protected
    component down to the round-off of two products with B, |u| · k · eps ~ 1e-6 relative."""
    f32 = jnp.float32
    params = _tree(jax.random.key(0), f32)
    n = _flat(params).size
    vectors = jax.random.normal(jax.random.key(1), (n, 6), f32)
    basis = linalg.extend_basis(None, vectors)
    assert basis.dtype == f32 and basis.shape == (n, 6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-5)
    tx = cl.project_out(linalg.pad_columns(basis, 8))
    updates = _tree(jax.random.key(2), f32)
    out, _ = jax.jit(tx.update)(updates, tx.init(params))
    u, v = np.asarray(_flat(updates), np.float64), _flat(out)
    assert v.dtype == f32
    b = np.asarray(basis, np.float64)
    np.testing.assert_allclose(v, u - b @ (b.T @ u), atol=1e-5 * np.linalg.norm(u))
    np.testing.assert_allclose(b.T @ np.asarray(v, np.float64), 0, atol=1e-5 * np.linalg.norm(u))


# ----------------------------------------------------------------------------- penalties


def _prox_oracle(z, hessian, linear, c):
    """argmin_x ½‖x − z‖² + c (½ xᵀHx − linearᵀx): the dense solve of (I + cH) x = z + c b."""
    n = z.shape[0]
    return np.linalg.solve(
        np.eye(n) + c * np.asarray(hessian), np.asarray(z) + c * np.asarray(linear)
    )


@pytest.mark.x64
def test_curvature_penalty_prox_matches_the_dense_solve():
    """Two old tasks with different anchors and overlapping, non-orthogonal directions: the
    canonical merged state and its closed-form prox equal (I + ηsH)⁻¹ (z + ηs b), H = Σ_t
    E_t Λ_t E_tᵀ, b = Σ_t E_t Λ_t E_tᵀ θ_t, solved densely in float64."""
    params = _tree(jax.random.key(0))
    n = _flat(params).size
    anchors = [_tree(jax.random.key(1)), _tree(jax.random.key(4))]
    e1 = _orthonormal(jax.random.key(2), n, 4)
    e2 = jnp.concatenate([e1[:, :1] + 0.5 * _orthonormal(jax.random.key(5), n, 1),
                          jax.random.normal(jax.random.key(6), (n, 2), F64)], axis=1)  # fmt: skip
    lam1, lam2 = jnp.array([3.0, 1.5, 0.2, 0.0], F64), jnp.array([0.7, 2.0, 0.4], F64)
    state = cl.curvature_penalty_state(
        anchors[1], e2, lam2, previous=cl.curvature_penalty_state(anchors[0], e1, lam1)
    )
    state.check()  # orthonormal directions, weights >= 0
    assert state.directions.shape == (n, 6)  # rank 3 (λ = 0 dropped) + 3
    hess = sum((e * lam) @ e.T for e, lam in ((e1, lam1), (e2, lam2)))
    linear = sum(
        (e * lam) @ (e.T @ _flat(a))
        for (e, lam), a in zip(((e1, lam1), (e2, lam2)), anchors, strict=True)
    )
    grads = _tree(jax.random.key(3))
    for strength in (1.0, 40.0, 1e4):
        lr = 0.05
        tx = optax.chain(optax.sgd(lr), cl.curvature_penalty(state, strength, learning_rate=lr))
        out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        z = _flat(params) - lr * _flat(grads)
        want = _prox_oracle(z, hess, linear, lr * strength)
        np.testing.assert_allclose(_flat(params) + _flat(out), want, rtol=1e-10, atol=1e-10)
    # padded to a capacity, the same penalty
    padded = cl.curvature_penalty_state(anchors[0], e1, lam1, capacity=7)
    assert padded.directions.shape == (n, 7) and float(jnp.sum(padded.weights > 0)) == 3
    with pytest.raises(ValueError, match="capacity"):
        cl.curvature_penalty_state(anchors[0], e1, lam1, capacity=2)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, tx.init(params))
    with pytest.raises(ValueError, match=">= 0"):
        cl.curvature_penalty_state(anchors[0], e1, -lam1)


@pytest.mark.x64
def test_infinite_strength_limit_is_projection():
    """Starting at the anchor, the low-rank penalty's update at s → ∞ is the projected update
    (I − EEᵀ) u of `project_out` on the directions with λ > 0; EWC's params go to the anchor
    on every coordinate with F > 0."""
    params = _tree(jax.random.key(0))
    n = _flat(params).size
    e = _orthonormal(jax.random.key(2), n, 3)
    state = cl.curvature_penalty_state(params, e, jnp.array([2.0, 0.5, 1.0], F64))
    grads = _tree(jax.random.key(3))
    lr = 0.05
    prox = optax.chain(optax.sgd(lr), cl.curvature_penalty(state, 1e13, learning_rate=lr))
    proj = optax.chain(optax.sgd(lr), cl.project_out(e))
    got = _flat(prox.update(grads, prox.init(params), params)[0])
    want = _flat(proj.update(grads, proj.init(params), params)[0])
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.max(np.abs(want - _flat(grads) * -lr)) > 1e-3  # the projection did something

    anchor = _tree(jax.random.key(4))
    fisher = jax.tree_util.tree_map(
        lambda a: jnp.abs(a) * (jnp.arange(a.size).reshape(a.shape) % 3), anchor
    )
    ewc = optax.chain(optax.sgd(lr), cl.ewc_penalty(cl.ewc_state(anchor, fisher), 1e13, lr))
    new = optax.apply_updates(params, ewc.update(grads, ewc.init(params), params)[0])
    free = optax.apply_updates(params, jax.tree_util.tree_map(lambda g: -lr * g, grads))
    pinned = _flat(fisher) > 0
    np.testing.assert_allclose(_flat(new)[pinned], _flat(anchor)[pinned], atol=1e-10)
    np.testing.assert_allclose(_flat(new)[~pinned], _flat(free)[~pinned], atol=1e-12)


class _Linear(nn.Module):
    """Logistic regression: logits = x W + b."""

    classes: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes, param_dtype=F64)(x)


@pytest.fixture(scope="module")
def linear():
    with enable_x64():
        model = _Linear()
        x = jax.random.normal(jax.random.key(0), (6, 4), F64)
        y = jnp.array([0, 1, 2, 1, 0, 2])
        params = model.init(jax.random.key(1), x)
        return model, params, x, y


@pytest.mark.x64
def test_ewc_fisher_and_penalty_by_hand(linear):
    model, params, x, y = linear
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    fisher = cl.fisher_diagonal(loss_fn, params, (x.reshape(2, 3, 4), y.reshape(2, 3)))
    # per-example CE gradient of a linear model: dW = x (p − onehot)ᵀ, db = p − onehot
    p = jax.nn.softmax(model.apply(params, x))
    r = p - jax.nn.one_hot(y, 3, dtype=F64)
    dw = np.einsum("ni,nc->nic", x, r)
    np.testing.assert_allclose(fisher["params"]["Dense_0"]["kernel"], np.mean(dw**2, 0), rtol=1e-12)
    np.testing.assert_allclose(fisher["params"]["Dense_0"]["bias"], np.mean(r**2, 0), rtol=1e-12)

    # two tasks: the prox of s/2 Σ_t Σ_i F_t,i (θ_i − θ_t,i)² after SGD, coordinate by
    # coordinate x = (z + c Σ_t F_t θ_t) / (1 + c Σ_t F_t), c = η s, z = θ − η g
    anchor = jax.tree_util.tree_map(lambda a: a + 0.3, params)
    anchor2 = jax.tree_util.tree_map(lambda a: a - 0.1, params)
    fisher2 = jax.tree_util.tree_map(lambda f: 2 * f + 0.5, fisher)
    state = cl.ewc_state(anchor2, fisher2, previous=cl.ewc_state(anchor, fisher))
    lr, s = 0.05, 7.0
    tx = optax.chain(optax.sgd(lr), cl.ewc_penalty(state, strength=s, learning_rate=lr))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    out, _ = tx.update(grads, tx.init(params), params)
    for name in ("kernel", "bias"):
        f1, f2 = fisher["params"]["Dense_0"][name], fisher2["params"]["Dense_0"][name]
        p = params["params"]["Dense_0"][name]
        z, c = p - lr, lr * s
        want = (z + c * (f1 * (p + 0.3) + f2 * (p - 0.1))) / (1 + c * (f1 + f2))
        np.testing.assert_allclose(p + out["params"]["Dense_0"][name], want, rtol=1e-12)


@pytest.mark.x64
def test_penalties_stay_finite_for_every_strength(linear):
    """SGD at lr 0.05 on a second task under the EWC and low-rank Hessian penalties of the
    first, strengths 1 and 1e4: finite losses, and the stronger penalty ends with a far
    smaller value. The explicit penalty step
    diverges at the largest strength (what the proximal form prevents)."""
    model, params, x, y = linear
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    data = (x.reshape(2, 3, 4), y.reshape(2, 3))
    y2 = (y + 1) % 3
    key = jax.random.key(0)
    for strategy_fn in (
        lambda s: cl.ewc(loss_fn, s, 0.05),
        lambda s: cl.hessian_penalty(loss_fn, k=4, strength=s, learning_rate=0.05, tol=None),
    ):
        drift = []
        for s in (1.0, 1e4):  # each strength compiles a training loop: two
            strategy = strategy_fn(s)
            memory = strategy.remember(strategy.init_memory(params), params, data, key=key)
            opt = optax.chain(optax.sgd(0.05), strategy.transform(memory))
            new, history = training.train(loss_fn, params, x, y2, optimizer=opt, num_steps=100,
                                          batch_size=6, key=key, log_every=100)  # fmt: skip
            assert all(np.isfinite(loss) for _, loss in history), (strategy.name, s)
            if strategy.name == "ewc":  # the penalty's value, Σ F (θ − θ_old)²
                drift.append(
                    float(jnp.sum(_flat(memory.precision) * (_flat(new) - _flat(params)) ** 2))
                )
            else:  # Σ λ_i (<θ, e_i> − τ_i)²
                d = memory.directions.T @ _flat(new) - memory.targets
                drift.append(float(jnp.sum(memory.weights * d**2)))
        assert drift[0] > 100 * drift[1], (strategy.name, drift)
    # the explicit step θ <- θ − η (∇L + s F ⊙ (θ − θ_old)) at s = 1e4: |1 − η s F| > 1
    fisher = cl.fisher_diagonal(loss_fn, params, data)
    assert max(float(jnp.max(f)) for f in jax.tree_util.tree_leaves(fisher)) * 0.05 * 1e4 > 2

    def explicit(_, theta):
        g = jax.grad(loss_fn)(theta, (x, y2))
        return jax.tree_util.tree_map(
            lambda t, gi, f, a: t - 0.05 * (gi + 1e4 * f * (t - a)), theta, g, fisher, params
        )

    theta = jax.jit(lambda p: jax.lax.fori_loop(0, 100, explicit, p))(params)
    assert not np.all(np.abs(_flat(theta)) < 1e6)


def test_bad_memories_and_strengths_raise():
    params = _tree(jax.random.key(0), jnp.float32)
    other = {"params": {"Dense_0": params["params"]["Dense_0"]}}  # another params tree
    n = _flat(params).size
    grads = _tree(jax.random.key(1), jnp.float32)
    # a memory of another params tree: caught at init and at remember
    ewc = cl.ewc(lambda p, b: jnp.sum(_flat(p) ** 2), 10.0, 0.1)
    memory = ewc.init_memory(other)
    with pytest.raises(ValueError, match="another tree"):
        optax.chain(optax.sgd(0.1), ewc.transform(memory)).init(params)
    with pytest.raises(ValueError, match="another tree"):
        ewc.remember(memory, params, (jnp.ones((1, 2, 4)), jnp.ones((1, 2))))
    # a basis of the wrong size
    basis = _orthonormal(jax.random.key(2), n + 1, 3, jnp.float32)
    with pytest.raises(ValueError, match="rows"):
        cl.project_out(basis).init(params)
    wrong = cl.curvature_penalty_state(other, _orthonormal(jax.random.key(2), 15, 2, jnp.float32),
                                       jnp.ones(2))  # fmt: skip
    with pytest.raises(ValueError, match="rows"):
        cl.curvature_penalty(wrong, 1.0, 0.1).init(params)
    # a non-orthonormal basis swapped into a state: set_memory checks it (tree_set does not,
    # and the projection then inflates a unit update)
    good = _orthonormal(jax.random.key(3), n, 3, jnp.float32)
    opt = optax.chain(optax.sgd(1.0), cl.project_out(good))
    state = opt.init(params)
    bad = cl.ProjectionState(good.T * 10.0)  # the basis stored as rows (k, n)
    with pytest.raises(ValueError, match="not orthonormal"):
        cl.set_memory(state, bad)
    with pytest.raises(ValueError, match="float32"):
        cl.set_memory(state, cl.ProjectionState(good[:, :2].T))
    # a memory that grows: only its leading axis may change, and only when allowed
    fewer = cl.set_memory(state, cl.ProjectionState(good[:, :2].T), same_shapes=False)
    assert cl.get_memory(fewer, cl.ProjectionState).basis.shape == (n, 2)
    with pytest.raises(ValueError, match="only axis 0 may differ"):
        cl.set_memory(state, cl.ProjectionState(basis.T), same_shapes=False)
    swapped = optax.tree_utils.tree_set(state, rows=bad.rows)
    unit = jax.tree_util.tree_map(jnp.ones_like, grads)
    assert float(jnp.max(jnp.abs(_flat(opt.update(unit, swapped, params)[0])))) > 10
    fine = cl.set_memory(state, cl.ProjectionState(-good.T))
    assert cl.get_memory(fine, cl.ProjectionState).basis[0, 0] == -good[0, 0]
    with pytest.raises(ValueError, match="not orthonormal"):
        cl.project_out(good * 2.0)
    # strengths and learning rates <= 0 or NaN
    ewc_memory = cl.ewc_state(params, jax.tree_util.tree_map(jnp.ones_like, params))
    pen = cl.curvature_penalty_state(params, good, jnp.ones(3))
    for bad_value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            cl.ewc_penalty(ewc_memory, bad_value, 0.1)
        with pytest.raises(ValueError, match="strength"):
            cl.curvature_penalty(pen, bad_value, 0.1)
        with pytest.raises(ValueError, match="learning_rate"):
            cl.curvature_penalty(pen, 1.0, bad_value)
        with pytest.raises(ValueError, match="strength"):
            cl.ewc(None, bad_value, 0.1)
        with pytest.raises(ValueError, match="strength"):
            cl.hessian_penalty(None, 3, bad_value, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        cl.ewc_state(params, jax.tree_util.tree_map(lambda a: a * jnp.nan, params))


@pytest.mark.x64
def test_hessian_directions_match_dense_eigh(linear):
    model, params, x, y = linear
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    data = (x.reshape(2, 3, 4), y.reshape(2, 3))
    top = cl.hessian_directions(loss_fn, params, data, 3, key=jax.random.key(0), tol=None)
    layout = curvature.make_layout(params)
    dense = jax.hessian(lambda v: loss_fn(layout.unravel(v), (x, y)))(layout.ravel(params))
    lam, vec = np.linalg.eigh(np.asarray(dense))
    np.testing.assert_allclose(top.values, lam[::-1][:3], rtol=1e-8, atol=1e-10)
    proj = vec[:, ::-1][:, :3] @ vec[:, ::-1][:, :3].T  # the top-3 eigenspace (gaps checked)
    assert np.min(np.diff(lam[::-1][:4]) * -1) > 1e-6
    np.testing.assert_allclose(proj @ top.vectors, top.vectors, atol=1e-7)


@pytest.mark.x64
def test_hessian_strategies_build_the_hessian_with_the_given_operator(linear):
    """hessian_project, hessian_penalty and hessian_mass_project build their Hessian with
    `make_operator=` (the binary's hook for config.mesh): called once per remember, and the memory
    spans the dense Hessian's top eigenvectors (k of them; the mass rule's k from the dense
    eigenvalues). The binary's hook: tests/e2e/test_continual_binary.py."""
    model, params, x, y = linear
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    data = (x.reshape(2, 3, 4), y.reshape(2, 3))
    layout = curvature.make_layout(params)
    dense = jax.hessian(lambda v: loss_fn(layout.unravel(v), (x, y)))(layout.ravel(params))
    lam, vec = np.linalg.eigh(np.asarray(dense))
    lam, vec = lam[::-1], vec[:, ::-1]
    calls = []

    def operator(loss, p, d):
        calls.append(loss)
        return curvature.hessian_operator(loss, p, d)

    share = 0.6
    k_mass = max(cl.curvature_rank(lam[:3], share), 1)
    assert 1 <= k_mass < 3
    cases = {
        "hessian_project": (cl.hessian_project(loss_fn, 3, tol=None, make_operator=operator), 3),
        "hessian_penalty": (
            cl.hessian_penalty(loss_fn, 3, 1.0, 0.1, tol=None, make_operator=operator),
            3,
        ),
        "hessian_mass_project": (
            cl.hessian_mass_project(loss_fn, share, 3, tol=None, make_operator=operator),
            k_mass,
        ),
    }
    with pytest.raises(TypeError, match="argument 'operator' was renamed 'make_operator'"):
        cl.hessian_project(loss_fn, 3, operator=operator)
    for name, (strategy, k) in cases.items():
        before = len(calls)
        memory = strategy.remember(
            strategy.init_memory(params), params, data, key=jax.random.key(0)
        )
        assert len(calls) == before + 1 and calls[-1] is loss_fn, name
        basis = memory.directions if name == "hessian_penalty" else memory.basis
        assert basis.shape == (layout.size, k), name
        top = vec[:, :k]
        np.testing.assert_allclose(top @ (top.T @ basis), basis, atol=1e-7, err_msg=name)


@pytest.mark.x64
def test_ogd_logit_gradients_by_hand_and_projection(linear):
    model, params, x, y = linear
    grads = cl.logit_gradients(model.apply, params, x, y)  # (n, N), n = bias 3 + kernel 12
    assert grads.shape == (15, 6)
    for i in range(6):
        want = {"bias": np.eye(3)[y[i]], "kernel": np.outer(x[i], np.eye(3)[y[i]])}
        tree = curvature.make_layout(params).unravel(grads[:, i])["params"]["Dense_0"]
        for name in want:
            np.testing.assert_allclose(tree[name], want[name], atol=1e-12)
    every = cl.logit_gradients(model.apply, params, x[:2])  # all logits: (n, 2·3)
    assert every.shape == (15, 6)
    for i in range(2):  # sample-major: column i·C + c is the gradient of logit c of sample i
        for c in range(3):
            tree = curvature.make_layout(params).unravel(every[:, 3 * i + c])["params"]["Dense_0"]
            np.testing.assert_allclose(tree["bias"], np.eye(3)[c], atol=1e-12)
            np.testing.assert_allclose(tree["kernel"], np.outer(x[i], np.eye(3)[c]), atol=1e-12)
        np.testing.assert_allclose(every[:, 3 * i + int(y[i])], grads[:, i], atol=1e-12)
    # OGD: after projecting out the orthonormalised memory, a step leaves the stored
    # samples' true-class logits unchanged (the model is linear, so exactly)
    basis = linalg.extend_basis(None, grads)
    tx = optax.chain(optax.sgd(0.3), cl.project_out(basis))
    step, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params), params)
    new = optax.apply_updates(params, step)
    before = jnp.take_along_axis(model.apply(params, x), y[:, None], 1)
    after = jnp.take_along_axis(model.apply(new, x), y[:, None], 1)
    np.testing.assert_allclose(after, before, atol=1e-12)
    assert float(jnp.max(jnp.abs(model.apply(new, x) - model.apply(params, x)))) > 1e-3


@pytest.mark.x64
def test_kron_strategies_project_and_swap_memories_without_recompiling(linear):
    """kron_project / kron_prox (without and with a projection) through the Strategy API:
    remember equals kron_remember + kron_projection_state / kron_prox_state by hand and sums
    the factors over tasks; after `set_memory` the compiled loop is reused; the projected
    training moves no protected input direction of the old task."""
    from hessjax.continual import kron

    model, params, x, y = linear
    loss_fn = curvature.MeanLoss(model.apply, curvature.cross_entropy)
    data = (x.reshape(2, 3, 4), y.reshape(2, 3))
    ce = curvature.cross_entropy
    for strategy, share in ((cl.kron_project(model, ce, share=0.9, chunk_size=None), 0.9),
                            (cl.kron_prox(model, ce, 10.0, 0.1, chunk_size=None), None),
                            (cl.kron_prox(model, ce, 10.0, 0.1, chunk_size=None, share=0.9,
                                          mode="input"), 0.9)):  # fmt: skip
        opt = optax.chain(optax.sgd(0.1), strategy.transform(strategy.init_memory(params)))
        step = training.make_train_step(loss_fn, opt)
        p1, state, _ = step.run(params, opt.init(params), jax.random.key(0), x, y,
                                num_steps=3, batch_size=4)  # fmt: skip
        first = strategy.remember(cl.get_memory(state, cl.KronState), p1, data)
        factors = kron.kron_remember(None, model, p1, (x, y), ce, chunk_size=None)
        if strategy.name == "kron_project":
            want = kron.kron_projection_state(factors, 0.9, "input")
        else:  # with share: the projected pairs get S = 0, the penalty acts on the rest
            proj = None if share is None else kron.kron_projection_state(factors, share, "input")
            want = kron.kron_prox_state(factors, p1, 10.0, 0.1, proj)
        for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(want),
                        strict=True):  # fmt: skip
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        state = cl.set_memory(state, first)
        p2, state, _ = step.run(p1, state, jax.random.key(1), x, y, num_steps=3, batch_size=4)
        assert step.run._cache_size() == 1  # the swapped-in memory did not recompile
        second = strategy.remember(cl.get_memory(state, cl.KronState), p2, data)
        again = kron.kron_remember(factors, model, p2, (x, y), ce, chunk_size=None)
        assert int(second.num_tasks) == 2
        np.testing.assert_allclose(second.a["Dense_0"], again["Dense_0"].a, rtol=1e-10)
        np.testing.assert_allclose(second.g["Dense_0"], again["Dense_0"].g, rtol=1e-10)
        if share is not None:  # projection (alone or with the penalty)
            mats = [kron.layer_matrices(p, ["Dense_0"])["Dense_0"] for p in (p1, p2)]
            rows = np.asarray(first.scale["Dense_0"])[:, 0] == 0  # protected eigvecs of A
            assert 0 < rows.sum() < rows.size
            moved = np.asarray(first.u_a["Dense_0"])[:, rows].T @ np.asarray(mats[1] - mats[0])
            assert np.max(np.abs(moved)) < 1e-12 < np.max(np.abs(mats[1] - mats[0]))
        else:
            assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(p2))


@pytest.mark.x64
def test_kron_strategies_reject_bad_input(linear):
    model, params, x, y = linear
    ce = curvature.cross_entropy
    data = (x.reshape(2, 3, 4), y.reshape(2, 3))
    other = _Linear(classes=2).init(jax.random.key(1), x)  # another params tree
    strategy = cl.kron_project(model, ce)
    with pytest.raises(ValueError, match="the memory"):
        strategy.remember(strategy.init_memory(other), params, data)
    opt = optax.chain(optax.sgd(0.1), strategy.transform(strategy.init_memory(params)))
    state = opt.init(params)
    with pytest.raises(ValueError, match="KronState leaf"):
        cl.set_memory(state, strategy.init_memory(other))
    with pytest.raises(ValueError, match="the memory"):
        optax.chain(optax.sgd(0.1), strategy.transform(strategy.init_memory(other))).init(params)
    memory = strategy.remember(strategy.init_memory(params), params, data)
    bad = memory._replace(u_a={"Dense_0": 3.0 * memory.u_a["Dense_0"]})
    with pytest.raises(ValueError, match="not orthogonal"):
        cl.set_memory(state, bad)
    for share in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="share"):
            cl.kron_project(model, ce, share=share)
        with pytest.raises(ValueError, match="share"):
            cl.hessian_mass_project(None, share, 10)
    with pytest.raises(ValueError, match="mode"):
        cl.kron_project(model, ce, mode="diagonal")
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            cl.kron_prox(model, ce, value, 0.1)
        with pytest.raises(ValueError, match="learning_rate"):
            cl.kron_prox(model, ce, 1.0, value)
    with pytest.raises(ValueError, match="need 7 samples"):
        cl.kron_project(model, ce, num_samples=7).remember(memory, params, data)


@pytest.mark.x64
def test_gpm_energy_threshold_and_projection_by_hand():
    # activations with singular values 4, 2, 1 along e0, e1, e2 of R^4 (energy 16, 4, 1)
    acts = np.zeros((3, 4))
    acts[0, 0], acts[1, 1], acts[2, 2] = 4.0, 2.0, 1.0
    acts = jnp.asarray(acts)
    b = cl.gpm_extend(None, {"L": acts}, threshold=0.75)["L"]  # 16/21 = 0.76 >= 0.75: r = 1
    assert b.shape == (4, 1)
    np.testing.assert_allclose(jnp.abs(b[:, 0]), [1, 0, 0, 0], atol=1e-12)
    b = cl.gpm_extend(None, {"L": acts}, threshold=0.9)["L"]  # 20/21 = 0.95: r = 2
    assert b.shape == (4, 2)
    # second task: half its energy already in span(e0, e1); the rest along e3
    acts2 = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, np.sqrt(2.0)]], F64)  # 2 + 2
    same = cl.gpm_extend({"L": b}, {"L": acts2}, threshold=0.5)["L"]
    assert same.shape == (4, 2)  # 2/4 of the energy is already in the basis
    grown = cl.gpm_extend({"L": b}, {"L": acts2}, threshold=0.9)["L"]
    assert grown.shape == (4, 3)
    np.testing.assert_allclose(jnp.abs(grown[:, 2]), [0, 0, 0, 1], atol=1e-12)

    # the projected update leaves the layer's outputs on old inputs (with the bias) unchanged
    model = nn.Dense(5, param_dtype=F64)
    x = jax.random.normal(jax.random.key(0), (8, 3), F64)
    x = x.at[:, 2].set(x[:, 0] - x[:, 1])  # old inputs span 2 of 3 dimensions
    params = {"params": model.init(jax.random.key(1), x)["params"]}
    xs = cl.dense_inputs(nn.Sequential([model]), {"params": {"layers_0": params["params"]}}, x)
    assert xs["layers_0"].shape == (8, 4)  # the constant 1 column of the bias
    bases = cl.gpm_extend(None, {"Dense": xs["layers_0"]}, threshold=1.0)
    assert bases["Dense"].shape == (4, 3)
    tx = cl.gpm_project({"params": bases["Dense"]})  # the layer is the whole 'params' dict
    g = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(2), a.shape, F64), params)
    step, _ = tx.update(g, tx.init(params))
    new = optax.apply_updates(params, step)
    np.testing.assert_allclose(model.apply(new, x), model.apply(params, x), atol=1e-10)
    x_new = jax.random.normal(jax.random.key(3), (4, 3), F64)
    assert float(jnp.max(jnp.abs(model.apply(new, x_new) - model.apply(params, x_new)))) > 1e-3


def test_gpm_per_layer_thresholds_pick_each_layers_rank():
    # a bias-free 6-4-3 MLP on inputs of rank 3: threshold 1 keeps all 3 input directions of
    # layer 0, a tiny threshold keeps 1 direction of layer 1's inputs
    model = models.MLP((4, 3), act="relu", use_bias=False)
    x = jax.random.normal(jax.random.key(0), (12, 3)) @ jax.random.normal(jax.random.key(1), (3, 6))
    params = model.init(jax.random.key(2), x)
    data = (x[None], jnp.zeros((1, 12), jnp.int32))
    strategy = cl.gpm(model, (1.0, 1e-6), num_samples=12)
    memory = strategy.remember(strategy.init_memory(params), params, data)
    ranks = {name: int(jnp.sum(jnp.any(b != 0, axis=0))) for name, b in memory.layer_bases.items()}
    assert ranks == {"Dense_0": 3, "Dense_1": 1}
    # unpadded bases (fixed_shape=False) hold exactly the used columns and project the same
    grow = cl.gpm(model, (1.0, 1e-6), num_samples=12, fixed_shape=False)
    empty = grow.init_memory(params)
    assert {n: b.shape for n, b in empty.layer_bases.items()} == {"Dense_0": (6, 0),
                                                                   "Dense_1": (4, 0)}  # fmt: skip
    grown = grow.remember(empty, params, data)
    for name, b in grown.layer_bases.items():
        np.testing.assert_array_equal(b, memory.layer_bases[name][:, : b.shape[1]])
    state = grow.transform(empty).init(params)
    with pytest.raises(ValueError, match=r"float32\[6, 3\], the state holds float32\[6, 0\]$"):
        cl.set_memory(state, grown)  # a grown memory needs same_shapes=False
    wrong_d = grown._replace(layer_bases=grown.layer_bases | {"Dense_1": jnp.zeros((5, 1))})
    with pytest.raises(ValueError, match="only axis 1 may differ"):
        cl.set_memory(state, wrong_d, same_shapes=False)
    state = cl.set_memory(state, grown, same_shapes=False)
    fixed_state = strategy.transform(memory).init(params)
    g = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(3), a.shape), params)
    got = grow.transform(empty).update(g, state, params)[0]
    want = strategy.transform(memory).update(g, fixed_state, params)[0]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)
    with pytest.raises(ValueError, match="3 layer thresholds for 2 dense layers"):
        cl.gpm(model, (0.9, 0.9, 0.9), num_samples=12).init_memory(params)
    with pytest.raises(ValueError, match="GPM threshold must be in"):
        cl.gpm(model, (0.9, 1.5), num_samples=12)


@pytest.mark.x64
def test_weight_svd_and_update_pca_directions():
    params = _tree(jax.random.key(0))
    d = cl.weight_svd_directions(params, 2)
    assert d.vectors.shape == (23, 4)
    np.testing.assert_allclose(d.vectors.T @ d.vectors, np.eye(4), atol=1e-12)
    w = params["params"]["Dense_0"]["kernel"]
    u, s, vt = np.linalg.svd(w)
    first = curvature.make_layout(params).unravel(d.vectors[:, 0])["params"]
    np.testing.assert_allclose(first["Dense_0"]["kernel"], np.outer(u[:, 0], vt[0]), atol=1e-12)
    np.testing.assert_allclose(first["Dense_0"]["bias"], 0)
    np.testing.assert_allclose(d.values[:2], s[:2], rtol=1e-12)

    # update PCA: the top right singular vectors of the centred update matrix (numpy oracle)
    ups = np.array(jax.random.normal(jax.random.key(4), (7, 23), F64))
    ups[:, 0] += 5.0  # a large mean: centring must remove it
    pca = cl.update_pca_directions(jnp.asarray(ups), 2)
    centred = ups - ups.mean(0)
    _, s2, vt2 = np.linalg.svd(centred)
    assert pca.vectors.shape == (23, 2) and pca.vectors.dtype == F64
    np.testing.assert_allclose(np.abs(np.sum(pca.vectors * vt2[:2].T, axis=0)), 1, atol=1e-10)
    np.testing.assert_allclose(pca.values, s2[:2] ** 2 / 6, rtol=1e-10)
    # read from an optimiser state: the applied updates recorded by analysis.trajectory
    tx = optax.chain(optax.sgd(0.1), trajectory.recording(3, 2))
    state = tx.init(params)
    grads = [_tree(jax.random.key(10 + i)) for i in range(6)]
    for g in grads:
        _, state = tx.update(g, state, params)
    recorded = trajectory.read_snapshots(state).updates  # steps 0, 2, 4
    np.testing.assert_allclose(recorded, -0.1 * np.stack([_flat(grads[i]) for i in (0, 2, 4)]))
    with pytest.raises(ValueError, match="fewer than"):
        cl.update_pca_directions(jnp.ones((5, 23), F64).at[:, 0].set(jnp.arange(5.0)), 2)


# ------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_made_matrices():
    r = np.array(
        [
            [0.9, 0.1, 0.2],
            [0.6, 0.8, 0.1],
            [0.5, 0.7, 0.9],
        ]
    )
    m = cl.continual_metrics(r)
    assert m.acc == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m.bwt == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert m.forgetting == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    # forgetting uses the best earlier accuracy, BWT the one right after training
    r2 = np.array([[0.5, 0.0], [0.9, 0.6]])  # task 0 improved: positive transfer, no forgetting
    assert cl.backward_transfer(r2) == pytest.approx(0.4)
    assert cl.forgetting(r2) == pytest.approx(-0.4)
    r3 = np.array([[0.7, 0, 0], [0.9, 0.8, 0], [0.6, 0.8, 0.9]])
    assert cl.backward_transfer(r3) == pytest.approx(((0.6 - 0.7) + 0.0) / 2)
    assert cl.forgetting(r3) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert np.isclose(cl.average_accuracy(np.eye(4)), 0.25)
    with pytest.raises(ValueError, match="square"):
        cl.continual_metrics(np.ones((2, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        cl.backward_transfer(np.ones((1, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        cl.forgetting(np.array([[1, np.nan], [1, 1]]))


# --------------------------------------------------------------------------------- tasks


def _toy_dataset(n=60, d=6):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] = y  # make labels recoverable from inputs
    return Dataset(x, y.astype(np.int32), x[:20] + 1, y[:20].astype(np.int32), 10, "toy")


def test_permuted_tasks_are_bijections_with_identity_first():
    perms = cl.permutations(4, 9, seed=3)
    np.testing.assert_array_equal(perms[0], np.arange(9))
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(9))
    assert not np.array_equal(perms[1], perms[2])
    ds = _toy_dataset()
    seq = cl.permuted_tasks(ds, 3, seed=1)
    assert seq.num_tasks == 3 and seq.num_classes == 10
    perm = cl.permutations(3, 6, seed=1)[2]
    for t, p in ((seq.tasks[0], np.arange(6)), (seq.tasks[2], perm)):
        # column 0 of the toy inputs is the label (+ 1 in the test set): rows keep their labels
        for which in cl.SPLITS:
            x, y = t.split(which)
            np.testing.assert_array_equal(x[:, np.argsort(p)][:, 0] - (which == "test"), y)
        # train and valid partition the training pool (6 = 10% of 60), unpermuted rows
        rows = np.concatenate([t.x_train, t.x_valid])[:, np.argsort(p)]
        assert len(t.x_valid) == 6 and len(t.x_train) == 54
        np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(ds.x_train, axis=0))
    np.testing.assert_array_equal(seq.tasks[2].x_test, ds.x_test[:, perm])
    assert not np.array_equal(seq.tasks[0].y_valid, seq.tasks[1].y_valid)  # drawn per task
    sub = cl.permuted_tasks(ds, 2, seed=1, train_size=10, test_size=5, valid_fraction=0.5)
    assert sub.tasks[1].x_train.shape == (10, 6) and sub.tasks[1].y_test.shape == (5,)
    assert sub.tasks[1].x_valid.shape == (30, 6)
    again = cl.permuted_tasks(ds, 2, seed=1, train_size=10, test_size=5, valid_fraction=0.5)
    np.testing.assert_array_equal(again.tasks[1].x_valid, sub.tasks[1].x_valid)  # seeded


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.1"])
def test_valid_fraction_outside_open_interval_is_rejected(fraction):
    with pytest.raises(ValueError, match="valid_fraction must be in"):
        cl.permuted_tasks(_toy_dataset(), 2, valid_fraction=fraction)


def test_valid_fraction_leaving_no_training_samples_is_rejected():
    tiny = _toy_dataset(n=3)
    with pytest.raises(ValueError, match="leaves none for training"):
        cl.split_tasks(tiny._replace(y_train=np.zeros(3, np.int32)), pairs=[(0, 1)],
                       valid_fraction=0.9)  # fmt: skip
    with pytest.raises(ValueError, match="train_size of task 0"):
        cl.permuted_tasks(_toy_dataset(), 2, train_size=55)  # 54 left after validation
    with pytest.raises(ValueError, match="unknown split|split must be one of"):
        cl.permuted_tasks(_toy_dataset(), 2).tasks[0].split("validation")


def test_split_tasks_pairs_and_labels():
    ds = _toy_dataset()
    seq = cl.split_tasks(ds)
    assert [t.name for t in seq.tasks] == [
        "split0_1",
        "split2_3",
        "split4_5",
        "split6_7",
        "split8_9",
    ]
    assert seq.num_classes == 2
    for t, (a, b) in zip(seq.tasks, cl.default_pairs(), strict=True):
        for which in cl.SPLITS:
            x, y = t.split(which)
            orig = x[:, 0].astype(int) - (which == "test")  # column 0: the label (test: + 1)
            assert set(orig) <= {a, b} and (which == "valid" or set(orig) == {a, b})
            np.testing.assert_array_equal(y, (orig == b).astype(int))
        assert len(t.y_valid) == 1 and len(t.y_train) == 11  # 10% of the pair's 12 samples
    keep = cl.split_tasks(ds, pairs=[(3, 7), (1, 2)], remap=False)
    assert keep.num_classes == 10
    assert set(keep.tasks[0].y_train) == {3, 7} and set(keep.tasks[1].y_test) == {1, 2}
    with pytest.raises(ValueError, match="disjoint"):
        cl.split_tasks(ds, pairs=[(0, 1), (1, 2)])


def test_mnist1d_sequences_offline():
    seq = cl.permuted_mnist1d(num_tasks=2, num_samples=200, train_size=50)
    assert seq.tasks[1].x_train.shape == (50, 40) and seq.name == "permuted_mnist1d"
    split = cl.split_mnist1d(num_samples=200)
    assert split.num_tasks == 5 and set(split.tasks[0].y_train) == {0, 1}
