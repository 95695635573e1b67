"""Matrix-free linear algebra on flat vectors: Lanczos, eigensolvers, trace and density,
blocks of an operator under a partition of its indices."""

from hessjax.linalg.blocks import (
    Block,
    BlockNorms,
    block_diagonal_operator,
    block_eigsh,
    block_frobenius_sq,
    block_operator,
    block_ratios,
    dense_block,
    dense_block_frobenius_sq,
)
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
from hessjax.linalg.subspace import overlap_chance, subspace_overlap
from hessjax.linalg.trace import TraceEstimate, hutchinson, hutchpp, probes

__all__ = [
    "Block",
    "BlockNorms",
    "EigshResult",
    "block_diagonal_operator",
    "block_eigsh",
    "block_frobenius_sq",
    "block_operator",
    "block_ratios",
    "dense_block",
    "dense_block_frobenius_sq",
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
    "overlap_chance",
    "slq",
    "spectral_density",
    "subspace_overlap",
    "to_dense",
    "tridiag_eigh",
]
