"""Curvature operators of a loss (Hessian, GGN, empirical Fisher) over pytrees and data,
parameter partitions into blocks, and Kronecker factors of dense and conv layers (with the
`dense` / `conv` tags for models that are not flax Linen modules)."""

from hessjax.curvature.blocks import (
    Partition,
    layer_block_diagonal,
    partition_by_layer,
    partition_by_neuron,
    partition_from_labels,
)
from hessjax.curvature.kronecker import (
    DenseIO,
    KroneckerEigenpairs,
    KroneckerFactors,
    conv,
    dense,
    dense_layer_io,
    exact_and_factors,
    exact_layer_hessian,
    kron_eigh,
    kron_matvec,
    kronecker_factors,
    kronecker_operator,
    layer_names,
    layer_patches,
    output_hessians,
)
from hessjax.curvature.layout import ParamLayout, group_by_prefix, leaf_paths, make_layout
from hessjax.curvature.losses import MeanLoss, cross_entropy, mse, token_cross_entropy
from hessjax.curvature.operators import (
    CurvatureOperator,
    StreamingOperator,
    empirical_fisher_operator,
    ggn_operator,
    hessian_operator,
)

__all__ = [
    "CurvatureOperator",
    "DenseIO",
    "KroneckerEigenpairs",
    "KroneckerFactors",
    "Partition",
    "conv",
    "dense",
    "dense_layer_io",
    "exact_and_factors",
    "exact_layer_hessian",
    "kron_eigh",
    "kron_matvec",
    "kronecker_factors",
    "kronecker_operator",
    "layer_block_diagonal",
    "layer_names",
    "layer_patches",
    "output_hessians",
    "partition_by_layer",
    "partition_by_neuron",
    "partition_from_labels",
    "MeanLoss",
    "ParamLayout",
    "StreamingOperator",
    "cross_entropy",
    "empirical_fisher_operator",
    "ggn_operator",
    "group_by_prefix",
    "hessian_operator",
    "leaf_paths",
    "make_layout",
    "mse",
    "token_cross_entropy",
]
