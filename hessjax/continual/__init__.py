"""Continual learning with the Hessian's structure against catastrophic forgetting.

* transforms (optax, compose with any optimiser): `project_out` (global or per-layer protected
  subspace; also OGD), `gpm_project`, `curvature_penalty` (low-rank Hessian EWC),
  `ewc_penalty`; the updates for update-PCA are recorded by `analysis.trajectory.recording`;
* subspace sources on an old task: `hessian_directions`, `weight_svd_directions`,
  `update_pca_directions`, `logit_gradients` (OGD), `fisher_diagonal` (EWC), `dense_inputs` +
  `gpm_extend` (GPM); growing orthonormal bases: `extend_basis`, `pad_columns` (re-exported
  from `hessjax.linalg.subspace`, where the flat-vector basis algebra lives);
* task sequences: permuted / split MNIST and MNIST-1D;
* metrics of an accuracy matrix: ACC, BWT, forgetting.
"""

from hessjax.continual.metrics import (
    ContinualMetrics,
    average_accuracy,
    backward_transfer,
    check_accuracy_matrix,
    continual_metrics,
    forgetting,
)
from hessjax.continual.sources import (
    Directions,
    dense_inputs,
    dense_layers,
    fisher_diagonal,
    gpm_extend,
    hessian_directions,
    logit_gradients,
    update_pca_directions,
    weight_svd_directions,
)
from hessjax.continual.tasks import (
    Task,
    TaskSequence,
    default_pairs,
    permutations,
    permuted_mnist,
    permuted_mnist1d,
    permuted_tasks,
    split_mnist,
    split_mnist1d,
    split_tasks,
    task_sequence,
)
from hessjax.continual.transforms import (
    CurvaturePenaltyState,
    EwcState,
    GpmState,
    ProjectionState,
    concat_penalty_states,
    curvature_penalty,
    curvature_penalty_state,
    ewc_penalty,
    ewc_state,
    gpm_project,
    project_out,
)
from hessjax.linalg.subspace import (
    check_orthonormal,
    default_tol,
    extend_basis,
    pad_columns,
    project_vector,
    used_columns,
)

__all__ = [
    "ContinualMetrics",
    "CurvaturePenaltyState",
    "Directions",
    "EwcState",
    "GpmState",
    "ProjectionState",
    "Task",
    "TaskSequence",
    "average_accuracy",
    "backward_transfer",
    "check_accuracy_matrix",
    "check_orthonormal",
    "concat_penalty_states",
    "continual_metrics",
    "curvature_penalty",
    "curvature_penalty_state",
    "default_pairs",
    "default_tol",
    "dense_inputs",
    "dense_layers",
    "ewc_penalty",
    "ewc_state",
    "extend_basis",
    "fisher_diagonal",
    "forgetting",
    "gpm_extend",
    "gpm_project",
    "hessian_directions",
    "logit_gradients",
    "pad_columns",
    "permutations",
    "permuted_mnist",
    "permuted_mnist1d",
    "permuted_tasks",
    "project_out",
    "project_vector",
    "split_mnist",
    "split_mnist1d",
    "split_tasks",
    "task_sequence",
    "update_pca_directions",
    "used_columns",
    "weight_svd_directions",
]
