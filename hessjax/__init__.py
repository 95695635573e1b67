"""hessjax: matrix-free curvature of neural-network losses in JAX.

Layers (lower never imports higher): `linalg` (solvers on flat vectors) -> `curvature`
(operators of a loss over pytrees and data) -> analysis and experiments. The names below are
the everyday entry points; see the subpackages for the rest.
"""

from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    empirical_fisher_operator,
    ggn_operator,
    hessian_operator,
    mse,
)
from hessjax.linalg import (
    density_on_grid,
    eigsh,
    hutchinson,
    hutchpp,
    power_iteration,
    slq,
    spectral_density,
)

__version__ = "0.1.0"

__all__ = [
    "MeanLoss",
    "cross_entropy",
    "density_on_grid",
    "eigsh",
    "empirical_fisher_operator",
    "ggn_operator",
    "hessian_operator",
    "hutchinson",
    "hutchpp",
    "mse",
    "power_iteration",
    "slq",
    "spectral_density",
]
