"""Matrix-free linear algebra on flat vectors: Lanczos, eigensolvers, trace and density."""

from hessjax.linalg.lanczos import (
    EigshResult,
    Tridiagonal,
    default_num_steps,
    eigsh,
    lanczos_tridiag,
    tridiag_eigh,
)
from hessjax.linalg.operator import (
    LinearOperatorLike,
    Operator,
    apply_block,
    dense_operator,
    is_traceable,
    to_dense,
)
from hessjax.linalg.power import power_iteration
from hessjax.linalg.slq import SpectralQuadrature, density_on_grid, slq, spectral_density
from hessjax.linalg.trace import TraceEstimate, hutchinson, hutchpp, probes

__all__ = [
    "EigshResult",
    "LinearOperatorLike",
    "Operator",
    "SpectralQuadrature",
    "TraceEstimate",
    "Tridiagonal",
    "apply_block",
    "default_num_steps",
    "density_on_grid",
    "dense_operator",
    "eigsh",
    "hutchinson",
    "hutchpp",
    "is_traceable",
    "lanczos_tridiag",
    "power_iteration",
    "probes",
    "slq",
    "spectral_density",
    "to_dense",
    "tridiag_eigh",
]
