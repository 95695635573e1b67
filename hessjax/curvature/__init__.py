"""Curvature operators of a loss (Hessian, GGN, empirical Fisher) over pytrees and data."""

from hessjax.curvature.layout import ParamLayout, group_by_prefix, leaf_paths, make_layout
from hessjax.curvature.losses import MeanLoss, cross_entropy, mse
from hessjax.curvature.operators import (
    CurvatureOperator,
    StreamingOperator,
    empirical_fisher_operator,
    ggn_operator,
    hessian_operator,
)

__all__ = [
    "CurvatureOperator",
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
]
