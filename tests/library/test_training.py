"""hessjax.training: the train-step factory (optimisers are not static jit arguments) and
divergence reporting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessjax import training


def _loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)


def _problem():
    x = jax.random.normal(jax.random.key(0), (32, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    return {"w": jnp.zeros(3)}, x, y


def test_train_step_is_reused_and_matches_a_fresh_one():
    params, x, y = _problem()
    opt = optax.sgd(0.1)
    step = training.make_train_step(_loss, opt)
    kw = dict(optimizer=opt, num_steps=20, batch_size=8, key=jax.random.key(1), log_every=10)
    a, hist_a = training.train(_loss, params, x, y, step=step, **kw)
    b, hist_b = training.train(_loss, params, x, y, **kw)  # a step of its own
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
    assert hist_a == hist_b and hist_a[-1][1] < hist_a[0][1]
    assert step.run._cache_size() == 1  # one compilation, both 10-step chunks
    # a new optimiser object of another learning rate: its own loop, never a stale one
    opt2 = optax.sgd(0.01)
    c, _ = training.train(_loss, params, x, y, **(kw | {"optimizer": opt2}))
    assert not np.allclose(c["w"], a["w"])
    with pytest.raises(ValueError, match="another loss_fn or optimizer"):
        training.train(_loss, params, x, y, step=step, **(kw | {"optimizer": opt2}))


def test_divergence_names_the_step():
    params, x, y = _problem()
    opt = optax.sgd(100.0)  # far beyond 2 / λ_max: the loss blows up
    with pytest.raises(training.TrainingDiverged) as info:
        training.train(_loss, params, x, y, optimizer=opt, num_steps=400, batch_size=32,
                       key=jax.random.key(1), log_every=50)  # fmt: skip
    assert info.value.step % 50 == 0 and 0 < info.value.step <= 400
    assert not np.isfinite(info.value.loss)
    assert isinstance(info.value, FloatingPointError)
