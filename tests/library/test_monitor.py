"""The curvature monitor (hessjax.monitor) and the edge-of-stability binary."""

import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessjax import monitor as hm
from hessjax import training
from hessjax.curvature import MeanLoss, mse
from hessjax.models import MLP


def quadratic(params, batch):
    """½ θᵀAθ with A the batch's single matrix: batch = (A[None],)."""
    a = batch[0][0]
    return 0.5 * params["t"] @ a @ params["t"]


def _spd(n, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * np.linspace(0.1, 10.0, n)) @ q.T


def _run(monitor, state, params, batch, steps, loss_fn=None):
    @jax.jit
    def step(state, params):
        loss = None if loss_fn is None else loss_fn(params, batch)
        return monitor.update(state, params, batch, loss=loss)

    for _ in range(steps):
        state = step(state, params)
    return state


def test_quadratic_sharpness_is_top_eigenvalue():
    a = _spd(30)
    batch = (jnp.asarray(a, jnp.float32)[None],)
    params = {"t": jnp.ones(30)}
    monitor = hm.curvature_monitor(quadratic, every=1, k=3, capacity=4, tol=1e-5, num_steps=30)
    state = _run(monitor, monitor.init(params, batch), params, batch, 3)
    log = hm.read_log(state)
    top = np.linalg.eigh(a)[0][::-1][:3]
    assert log.steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(log.eigenvalues, np.tile(top, (3, 1)), rtol=1e-4)
    assert log.converged.all()
    np.testing.assert_allclose(log.loss, 0.5 * np.ones(30) @ a @ np.ones(30), rtol=1e-5)


def test_k1_skips_reorthogonalisation_at_the_same_sharpness():
    """k = 1 at the default tol runs the plain three-term Lanczos: same products and sharpness
    as with full reorthogonalisation, within the residual bound tol · λ of the dense top."""
    a = _spd(30)
    batch = (jnp.asarray(a, jnp.float32)[None],)
    params = {"t": jnp.ones(30)}
    fast = hm.curvature_monitor(quadratic, every=1, k=1, capacity=4)
    full = hm.curvature_monitor(quadratic, every=1, k=1, capacity=4, reorthogonalize=True)
    assert not fast.reorthogonalize and full.reorthogonalize
    assert hm.curvature_monitor(quadratic, k=2).reorthogonalize
    assert hm.curvature_monitor(quadratic, k=1, tol=1e-4).reorthogonalize
    # the PRNG key is a jax.random.key like everywhere else (stored hashably as its data)
    keyed = hm.curvature_monitor(quadratic, every=1, k=1, capacity=4, key=jax.random.key(3))
    assert hash(keyed) == hash(hm.curvature_monitor(quadratic, every=1, k=1, capacity=4,
                                                    key=jax.random.key(3)))  # fmt: skip
    np.testing.assert_array_equal(keyed.init(params).key, jax.random.key_data(jax.random.key(3)))
    np.testing.assert_array_equal(fast.init(params).key, jax.random.key_data(jax.random.key(0)))
    with pytest.raises(TypeError, match="argument 'seed' was renamed 'key'"):
        hm.curvature_monitor(quadratic, seed=3)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        hm.curvature_monitor(quadratic, key=3)
    logs = [hm.read_log(_run(m, m.init(params, batch), params, batch, 3)) for m in (fast, full)]
    np.testing.assert_array_equal(logs[0].hvps, logs[1].hvps)
    np.testing.assert_allclose(logs[0].sharpness, logs[1].sharpness, rtol=1e-5)
    top = np.linalg.eigvalsh(a)[-1]
    np.testing.assert_allclose(logs[0].sharpness, top, rtol=1e-2)  # |λ - θ| <= r <= tol λ
    assert logs[0].converged.all()


def _mlp_problem():
    """A tiny float64 tanh MLP with MSE: (model, x, y, params, loss)."""
    model = MLP((5, 3), act="tanh")
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 3)
    params = jax.tree_util.tree_map(
        lambda v: v.astype(jnp.float64), model.init(jax.random.key(2), x)
    )
    return model, x, y, params, MeanLoss(model.apply, mse)


@pytest.mark.x64
def test_mlp_sharpness_matches_dense_hessian():
    model, x, y, params, loss = _mlp_problem()
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), (x, y)))(flat))
    want = np.linalg.eigh(dense)[0][::-1][:2]
    monitor = hm.curvature_monitor(loss, every=1, k=2, tol=1e-8, num_steps=flat.size - 1)
    state = monitor.update(monitor.init(params), params, (x, y))
    assert state.eigenvalues.dtype == jnp.float64
    np.testing.assert_allclose(hm.read_log(state).eigenvalues[0], want, rtol=1e-7)
    # The Gauss-Newton matrix of MSE is PSD and its top eigenvalue is Jᵀ J's.
    ggn = hm.curvature_monitor(loss, every=1, k=1, curvature="ggn", tol=1e-8, num_steps=30)
    j = np.asarray(jax.jacobian(lambda f: model.apply(unravel(f), x).ravel())(flat))
    g_state = ggn.update(ggn.init(params), params, (x, y))
    np.testing.assert_allclose(
        hm.read_log(g_state).sharpness, np.linalg.eigvalsh(j.T @ j / 16)[-1], rtol=1e-7
    )


def test_ring_buffer_wraps_and_cond_fires_every_n(tmp_path):
    path = str(tmp_path / "monitor.jsonl")
    a = _spd(10)
    batch = (jnp.asarray(a, jnp.float32)[None],)
    params = {"t": jnp.ones(10)}
    monitor = hm.curvature_monitor(quadratic, every=3, k=1, capacity=3, callback=hm.JsonlLog(path))
    state = _run(monitor, monitor.init(params, batch), params, batch, 17)
    jax.effects_barrier()
    log = hm.read_log(state)
    assert int(state.count) == 6 and int(state.step) == 17
    assert log.steps.tolist() == [9, 12, 15]  # the last 3 of 0, 3, ..., 15, oldest first
    assert np.asarray(state.steps).tolist() == [9, 12, 15]  # slots 0..2 overwritten in turn
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    assert sorted(r["step"] for r in lines) == [0, 3, 6, 9, 12, 15]  # fired exactly there
    assert all(abs(r["eigenvalues"][0] - 10.0) < 1e-3 for r in lines)


def _gd_problem():
    model = MLP((16, 3), act="tanh")
    x = jax.random.normal(jax.random.key(0), (64, 6))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    params = model.init(jax.random.key(2), x)
    return MeanLoss(model.apply, mse), params, (x, y)


def _gd_with_monitor(monitor, loss, params, batch, steps, lr=0.05):
    @jax.jit
    def chunk(params, state):
        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates = jax.tree_util.tree_map(lambda g: -lr * g, grads)
            state = monitor.update(state, params, batch, updates=updates, loss=value)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, state), None, length=steps)[0]

    return chunk(params, monitor.init(params, batch))


def test_warm_start_spends_fewer_hvps_than_cold():
    loss, params, batch = _gd_problem()
    hvps, eigenvalues = {}, {}
    for warm in (True, False):
        monitor = hm.curvature_monitor(loss, every=5, k=2, capacity=20, warm_start=warm)
        _, state = _gd_with_monitor(monitor, loss, params, batch, 100)
        log = hm.read_log(state)
        assert log.converged.all()
        hvps[warm] = log.hvps[1:].mean()  # the first measurement is cold for both
        eigenvalues[warm] = log.eigenvalues
    # Same tolerance, same answer: at tol 1e-2 the eigenvalue error is ~ (1e-2 λ)² / gap.
    np.testing.assert_allclose(eigenvalues[True], eigenvalues[False], rtol=2e-3)
    assert hvps[True] * 2 < hvps[False], hvps  # GD changes the Hessian slowly


def test_applied_measures_the_params_after_the_update():
    """update(θ_s + u, applied=True) at call s is the measurement update(θ_{s+1}) takes at
    call s + 1: same recorded steps (bar step 0), same eigenvalues."""
    loss, params, batch = _gd_problem()
    monitor = hm.curvature_monitor(loss, every=5, k=1, capacity=8, tol=1e-4)

    @jax.jit
    def chunk(params, pre, post):
        def step(carry, _):
            params, pre, post = carry
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates = jax.tree_util.tree_map(lambda g: -0.05 * g, grads)
            new = optax.apply_updates(params, updates)
            pre = monitor.update(pre, params, batch, loss=value)
            post = monitor.update(post, new, batch, loss=value, applied=True)
            return (new, pre, post), None

        return jax.lax.scan(step, (params, pre, post), None, length=21)[0]

    _, pre, post = chunk(params, monitor.init(params, batch), monitor.init(params, batch))
    pre, post = hm.read_log(pre), hm.read_log(post)
    assert pre.steps.tolist() == [0, 5, 10, 15, 20] and post.steps.tolist() == [5, 10, 15, 20]
    np.testing.assert_allclose(post.sharpness, pre.sharpness[1:], rtol=1e-5)
    np.testing.assert_allclose(post.loss, pre.loss[1:], rtol=1e-6)


@pytest.mark.x64
def test_preconditioned_sharpness_matches_dense_adam_oracle():
    """λ(P^{-1/2} H P^{-1/2}) with P = √v̂ + ε from a real optax.adam state after 5 steps, against
    a dense float64 `jax.hessian` and numpy's eigh; the same through the optax transform."""
    _, x, y, params, loss = _mlp_problem()
    adam = optax.adam(1e-2, eps=1e-6)
    opt_state = adam.init(params)
    for _ in range(5):
        updates, opt_state = adam.update(jax.grad(loss)(params, (x, y)), opt_state)
        params = optax.apply_updates(params, updates)
    pre = hm.adam_preconditioner(opt_state, eps=1e-6)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    p_flat = jax.flatten_util.ravel_pytree(pre)[0]
    nu = jax.flatten_util.ravel_pytree(opt_state[0].nu)[0]
    np.testing.assert_allclose(p_flat, np.sqrt(nu / (1 - 0.999**5)) + 1e-6, rtol=1e-12)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), (x, y)))(flat))
    s = 1 / np.sqrt(np.asarray(p_flat))
    want = np.linalg.eigh(s[:, None] * dense * s[None, :])[0][::-1][:2]
    monitor = hm.curvature_monitor(loss, every=1, k=2, tol=1e-8, num_steps=flat.size - 1,
                                   preconditioned=True)  # fmt: skip
    state = monitor.update(monitor.init(params), params, (x, y), preconditioner=pre)
    np.testing.assert_allclose(hm.read_log(state).eigenvalues[0], want, rtol=1e-7)
    assert want[0] > 10 * np.linalg.eigvalsh(dense)[-1]  # P⁻¹ matters here
    # through the optax transform (preconditioner= extra argument)
    opt = hm.monitoring(monitor, (x, y))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    _, ostate = opt.update(zero, opt.init(params), params, preconditioner=pre)
    np.testing.assert_allclose(hm.read_log(ostate).eigenvalues[0], want, rtol=1e-7)
    # bad input: no second moments, a missing or misshapen preconditioner
    with pytest.raises(ValueError, match="no Adam second moments"):
        hm.adam_preconditioner(optax.sgd(0.1).init(params))
    with pytest.raises(ValueError, match="pass preconditioner="):
        monitor.update(monitor.init(params), params, (x, y))
    with pytest.raises(ValueError, match="without preconditioned=True"):
        plain = hm.curvature_monitor(loss, every=1)
        plain.update(plain.init(params), params, (x, y), preconditioner=pre)
    with pytest.raises(ValueError, match="params' structure and shapes"):
        monitor.update(monitor.init(params), params, (x, y), preconditioner={"a": 1.0})


@pytest.mark.x64
def test_preconditioned_monitor_inside_training_train():
    """`training.train(monitor=, preconditioner=)` under Adam: the monitor records steps 3 and
    6, and the step-6 λ(P^{-1/2} H P^{-1/2}) equals a dense float64 oracle at the params and
    Adam state that step ends at; riding along leaves the training untouched. Every row of x
    is the same sample, so each minibatch (drawn with replacement) is that sample's loss."""
    model, x, y, params, loss = _mlp_problem()
    x, y = jnp.tile(x[:1], (16, 1)), jnp.tile(y[:1], 16)
    adam = optax.adam(1e-2)
    monitor = hm.curvature_monitor(loss, every=3, k=2, tol=1e-10, num_steps=40,
                                   preconditioned=True)  # fmt: skip
    common = dict(optimizer=adam, num_steps=6, batch_size=4, key=jax.random.key(3),
                  return_opt_state=True)  # fmt: skip
    got, _, (opt_state, mstate) = training.train(
        loss, params, x, y, monitor=monitor, preconditioner=hm.adam_preconditioner, **common
    )
    plain, _, _ = training.train(loss, params, x, y, **common)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, plain)
    log = hm.read_log(mstate)
    assert log.steps.tolist() == [3, 6]
    flat, unravel = jax.flatten_util.ravel_pytree(got)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), (x[:4], y[:4])))(flat))
    s = 1 / np.sqrt(np.asarray(jax.flatten_util.ravel_pytree(hm.adam_preconditioner(opt_state))[0]))
    want = np.linalg.eigh(s[:, None] * dense * s[None, :])[0][::-1][:2]
    np.testing.assert_allclose(log.eigenvalues[-1], want, rtol=1e-6)
    with pytest.raises(ValueError, match="needs preconditioner="):
        training.train(loss, params, x, y, monitor=monitor, **common)
    plain_monitor = hm.curvature_monitor(loss, every=3)
    with pytest.raises(ValueError, match="only for a preconditioned monitor"):
        training.make_train_step(loss, adam, plain_monitor, hm.adam_preconditioner)
    step = training.make_train_step(loss, adam)
    with pytest.raises(ValueError, match="another monitor"):
        training.train(loss, params, x, y, monitor=plain_monitor, step=step, **common)


def test_optax_transform_and_alignment():
    loss, params, batch = _gd_problem()
    monitor = hm.curvature_monitor(loss, every=4, k=1, capacity=8, trace_probes=8)
    opt = optax.chain(optax.sgd(0.05), hm.monitoring(monitor, batch, alignment=True))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params, loss=value)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(9):
        params, opt_state = step(params, opt_state)
    log = hm.read_log(opt_state)
    assert log.steps.tolist() == [4, 8]  # the params after 4 and 8 updates
    assert np.all((log.alignment >= 0) & (log.alignment <= 1 + 1e-6))
    assert np.all(log.trace > 0) and np.all(log.hvps > 8)  # Lanczos + 8 trace probes
    hm.check_finite(opt_state)  # healthy: no error


def test_bad_inputs_name_the_value():
    loss, params, batch = _gd_problem()
    with pytest.raises(ValueError, match=r"every .* got 0"):
        hm.curvature_monitor(loss, every=0)
    with pytest.raises(ValueError, match=r"every .* got -3"):
        hm.curvature_monitor(loss, every=-3)
    n = sum(v.size for v in jax.tree_util.tree_leaves(params))
    with pytest.raises(ValueError, match=rf"k = {n} must be smaller .* n = {n}"):
        hm.curvature_monitor(loss, k=n).init(params)
    monitor = hm.curvature_monitor(loss, every=2)
    with pytest.raises(ValueError, match=r"probe batch .*\(64, 6\).*\(63,\).*different leading"):
        monitor.init(params, (batch[0], batch[1][:63]))
    with pytest.raises(ValueError, match=r"probe batch .*\(64, 7\).*does not fit loss_fn"):
        monitor.init(params, (jnp.ones((64, 7)), batch[1]))
    with pytest.raises(ValueError, match=r"probe batch .*\(64, 6\)"):  # no targets
        jax.jit(lambda s, p: monitor.update(s, p, (batch[0],)))(monitor.init(params), params)
    with pytest.raises(ValueError, match="ggn"):
        hm.curvature_monitor(quadratic, curvature="ggn")
    with pytest.raises(ValueError, match="reorthogonalize .* got 'no'"):
        hm.curvature_monitor(quadratic, reorthogonalize="no")

    from experiments.edge_of_stability import check_step_sizes

    with pytest.raises(ValueError, match=r"got -0.1"):
        check_step_sizes([0.1, -0.1])
    with pytest.raises(ValueError, match=r"got 0"):
        check_step_sizes([0])


def test_divergence_names_the_step_and_keeps_the_state():
    loss, params, batch = _gd_problem()
    monitor = hm.curvature_monitor(loss, every=5, k=1, capacity=50)
    # Step size far beyond 2/sharpness: the loss overflows after some steps.
    _, state = _gd_with_monitor(monitor, loss, params, batch, 200, lr=200.0)
    with pytest.raises(hm.MonitorDivergence, match=r"training loss became (nan|inf) at step \d+"):
        hm.check_finite(state)
    try:
        hm.check_finite(state)
    except hm.MonitorDivergence as err:
        step, kept = err.step, hm.read_log(err.state)
    assert 0 < step < 200
    assert kept.steps.size > 0 and kept.steps.max() <= step
    good = kept.steps < step
    assert np.all(np.isfinite(kept.sharpness[good]))
    assert int(state.count) == kept.steps.size  # no measurement after the divergence
