"""Stochastic Lanczos quadrature (SLQ) for the spectral density of a symmetric operator.

For a unit probe v, m Lanczos steps give T_m = S diag(θ) Sᵀ and the Gauss quadrature
vᵀ f(A) v ≈ Σ_k S_{0k}² f(θ_k), exact for polynomials of degree <= 2m - 1. Averaged over probes
with E[v vᵀ] = I / n this estimates the spectral measure (1/n) Σ_i δ(λ_i).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hessjax import _checks
from hessjax.linalg import krylov
from hessjax.linalg.lanczos import tridiag_eigh
from hessjax.linalg.operator import LinearOperatorLike, constrain, is_traceable, place_vectors
from hessjax.linalg.trace import probes

Array = jax.Array


class SpectralQuadrature(NamedTuple):
    """nodes: (num_probes, m) Ritz values; weights: (num_probes, m), each row sums to 1.

    The spectral measure estimate is (1/num_probes) Σ_p Σ_k weights[p, k] δ(nodes[p, k]).
    """

    nodes: Array
    weights: Array

    def moment(self, power: int) -> Array:
        """Estimate of tr(Aᵖ)/n."""
        return jnp.mean(jnp.sum(self.weights * self.nodes**power, axis=1))


def _quadrature(alpha: Array, beta: Array) -> tuple[Array, Array]:
    theta, s = tridiag_eigh(alpha, beta)
    with jax.enable_x64(True):
        return theta.astype(alpha.dtype), (s[0] ** 2).astype(alpha.dtype)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _slq_traced(op, vs, key, num_steps):
    def one(v, key):
        state = krylov.run(op, krylov.init(v, num_steps, key), num_steps)
        return (*_quadrature(state.alpha[0], state.beta[0]), state.bad)

    vs = constrain(op, vs)  # (n, p) split along n: every probe's basis (m, n) too
    keys = jax.random.split(key, vs.shape[1])
    nodes, weights, bad = jax.vmap(one, in_axes=(1, 0))(vs, keys)
    return nodes, weights, jnp.max(bad)


def slq(
    op: LinearOperatorLike, *, num_probes: int, num_steps: int, key: Array
) -> SpectralQuadrature:
    """SLQ with `num_probes` Rademacher probes and `num_steps` Lanczos steps each.

    Traceable operators batch all probes in one vmapped, jitted Lanczos run. Raises
    FloatingPointError when a product is not finite (see `eigsh`).
    """
    _checks.check_dtype(op.dtype)
    _checks.check_positive(num_probes, "num_probes")
    _checks.check_steps(num_steps, 1, op.size)
    _checks.check_key(key)
    k_probe, k_run = jax.random.split(key)
    vs = place_vectors(op, probes(k_probe, op.size, num_probes, op.dtype))
    if is_traceable(op):
        nodes, weights, bad = _slq_traced(op, vs, k_run, int(num_steps))
        _checks.raise_if_nonfinite(bad, "slq")
        return SpectralQuadrature(nodes, weights)
    out = []
    for p in range(num_probes):
        state = krylov.init(vs[:, p], num_steps, jax.random.fold_in(k_run, p))
        state = krylov.run_host(op, state, num_steps)
        _checks.raise_if_nonfinite(state.bad, "slq")
        out.append(jax.jit(_quadrature)(state.alpha[0], state.beta[0]))
    nodes, weights = (jnp.stack(x) for x in zip(*out, strict=True))
    return SpectralQuadrature(nodes, weights)


def spectral_density(quad: SpectralQuadrature, grid: Array, sigma: float) -> Array:
    """Gaussian-smoothed density (G,) on `grid` (G,): mean_p Σ_k w_pk N(t; θ_pk, sigma²).

    Integrates to 1 over the real line (up to the mass outside the grid).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    z = (grid[:, None, None] - quad.nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.mean(jnp.sum(quad.weights[None] * kernel, axis=2), axis=1)


def density_on_grid(
    quad: SpectralQuadrature, num_points: int = 1000, sigma_ratio: float = 1e-2
) -> tuple[Array, Array]:
    """Grid (G,) spanning the nodes with 5σ margins and the smoothed density (G,) on it;
    σ = sigma_ratio · (max node - min node)."""
    lo, hi = jnp.min(quad.nodes), jnp.max(quad.nodes)
    sigma = sigma_ratio * jnp.maximum(hi - lo, jnp.finfo(quad.nodes.dtype).eps)
    grid = jnp.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    return grid, spectral_density(quad, grid, sigma)
