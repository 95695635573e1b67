"""Opt-in progress reports of long `eigsh` solves (plain Lanczos and thick restart): reports
arrive through one jit, end converged, do not change the answer, a raising callback is reported
once and the solve goes on, and with progress off the compiled solve has no callback at all."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax import linalg
from hessjax.linalg import lanczos


def _operator(n=200):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    vals = np.concatenate([10 * 0.8 ** np.arange(20), rng.uniform(0, 0.1, n - 20)])
    return linalg.dense_operator(jnp.asarray((q * vals) @ q.T, jnp.float32)), np.sort(vals)[::-1]


@pytest.mark.parametrize("restarts", [0, 10])
def test_reports_end_converged_and_do_not_change_the_answer(restarts):
    op, _ = _operator()
    reports = []
    kw = dict(
        key=jax.random.key(0),
        num_steps=16 if restarts else 40,
        max_restarts=restarts,
        check_every=4,
    )  # a basis of 16 for k = 10 needs restarts
    quiet = linalg.eigsh(op, 10, **kw)
    loud = linalg.eigsh(op, 10, progress=reports.append, **kw)
    np.testing.assert_array_equal(loud.eigenvalues, quiet.eigenvalues)
    assert reports and all(isinstance(r, linalg.Progress) for r in reports)
    assert [r.num_matvecs for r in reports] == sorted(r.num_matvecs for r in reports)
    # no pair counts as converged before k steps (the padded projected matrix has zeros)
    assert all(r.converged == 0 for r in reports if r.steps < 10)
    assert reports[-1].converged == int(np.sum(loud.converged)) == reports[-1].k == 10
    assert reports[-1].worst_residual_over_tol <= 1 and reports[-1].seconds >= 0
    if restarts:
        assert reports[-1].restarts >= 1  # thick restart reports every cycle


def test_raising_callback_warns_once_and_the_solve_goes_on():
    op, vals = _operator()
    calls = []

    def broken(p):
        calls.append(p)
        raise KeyError("no")

    with pytest.warns(RuntimeWarning, match="progress callback raised KeyError"):
        res = linalg.eigsh(op, 5, key=jax.random.key(0), num_steps=40, check_every=2,
                           progress=broken)  # fmt: skip
    assert len(calls) == 1
    np.testing.assert_allclose(res.eigenvalues, vals[:5], rtol=1e-4)


def test_progress_true_logs_and_bad_values(caplog):
    op, _ = _operator()
    with caplog.at_level(logging.INFO, logger="hessjax"):
        linalg.eigsh(op, 3, key=jax.random.key(0), num_steps=30, progress=True)
    assert any("eigsh: 3/3 converged" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="progress must be None, a bool or a callable"):
        linalg.eigsh(op, 3, key=jax.random.key(0), progress="yes")


def test_off_compiles_no_callback():
    op, _ = _operator(50)
    v0 = jnp.ones(50)
    args = (op, v0, jax.random.key(0), 3, "LA", 20, 1e-4, 1)

    def text(progress):
        return lanczos._eigsh_traced.lower(*args, True, progress).as_text()

    assert "callback" not in text(False)
    assert "callback" in text(True)
