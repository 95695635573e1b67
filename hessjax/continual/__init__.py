"""Continual learning with the Hessian's structure against catastrophic forgetting.

* strategies (`strategies`): each a `Strategy` of `init_memory(params)`, a pure
  `remember(memory, params, data, key=...)` that adds a finished task, and
  `transform(memory)`, an optax transformation chained after any optimiser: `finetune`,
  `ewc`, `ogd`, `gpm`, `hessian_project`, `hessian_mass_project` (k per task by curvature
  mass), `hessian_penalty`, `kron_project` / `kron_prox` (per-layer Kronecker-factored
  curvature: projection, online structured Laplace penalty), `weight_svd_project`,
  `update_pca_project`, and `projection` to build more; `set_memory` / `get_memory` swap a
  memory in an optimiser state (checked);
* transforms (optax, chained after any optimiser): `project_out` (global or per-layer
  protected subspace; also OGD), `gpm_project`, `kron_transform` (scaling in the eigenbasis
  of Kronecker factors, memory `KronState`; the pieces in `hessjax.continual.kron`), and the
  proximal penalties `ewc_penalty`,
  `curvature_penalty` (low-rank Hessian EWC), `proximal_penalty` (the hook for new
  quadratics); the updates for update-PCA are recorded by `analysis.trajectory.recording`;
* subspace sources on an old task: `hessian_directions`, `weight_svd_directions`,
  `update_pca_directions`, `logit_gradients` (OGD), `fisher_diagonal` (EWC), `dense_inputs` +
  `gpm_extend` (GPM); the bases grow with `linalg.extend_basis` and `linalg.pad_columns`
  (the flat-vector basis algebra lives in `hessjax.linalg`);
* task sequences: permuted / split MNIST and MNIST-1D;
* metrics of an accuracy matrix: ACC, BWT, forgetting.
"""

from hessjax.continual.kron import (
    KronState,
    curvature_rank,
    hessian_mass_directions,
    kron_identity_state,
    kron_memory,
    kron_projection_state,
    kron_prox_state,
    kron_remember,
    kron_transform,
)
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
    gpm_sizes,
    hessian_directions,
    logit_gradients,
    update_pca_directions,
    weight_svd_directions,
)
from hessjax.continual.strategies import (
    Strategy,
    ewc,
    finetune,
    gpm,
    hessian_mass_project,
    hessian_penalty,
    hessian_project,
    kron_project,
    kron_prox,
    ogd,
    projection,
    update_pca_project,
    weight_svd_project,
)
from hessjax.continual.tasks import (
    SPLITS,
    VALID_FRACTION,
    Task,
    TaskSequence,
    check_valid_fraction,
    default_pairs,
    permutations,
    permuted_mnist1d,
    permuted_tasks,
    split_mnist1d,
    split_tasks,
    task_sequence,
)
from hessjax.continual.transforms import (
    CurvaturePenaltyState,
    EwcState,
    GpmState,
    ProjectionState,
    check_positive,
    curvature_penalty,
    curvature_penalty_state,
    ewc_penalty,
    ewc_state,
    get_memory,
    gpm_project,
    memory_transform,
    project_out,
    proximal_penalty,
    set_memory,
)

__all__ = [
    "ContinualMetrics",
    "CurvaturePenaltyState",
    "Directions",
    "EwcState",
    "GpmState",
    "KronState",
    "ProjectionState",
    "Strategy",
    "SPLITS",
    "Task",
    "VALID_FRACTION",
    "TaskSequence",
    "average_accuracy",
    "backward_transfer",
    "check_accuracy_matrix",
    "check_positive",
    "continual_metrics",
    "curvature_rank",
    "curvature_penalty",
    "curvature_penalty_state",
    "default_pairs",
    "dense_inputs",
    "dense_layers",
    "ewc",
    "ewc_penalty",
    "ewc_state",
    "finetune",
    "fisher_diagonal",
    "forgetting",
    "get_memory",
    "gpm",
    "gpm_extend",
    "gpm_project",
    "gpm_sizes",
    "hessian_directions",
    "hessian_mass_directions",
    "hessian_mass_project",
    "hessian_penalty",
    "hessian_project",
    "kron_identity_state",
    "kron_memory",
    "kron_project",
    "kron_projection_state",
    "kron_prox",
    "kron_prox_state",
    "kron_remember",
    "kron_transform",
    "logit_gradients",
    "ogd",
    "permutations",
    "permuted_mnist1d",
    "check_valid_fraction",
    "permuted_tasks",
    "memory_transform",
    "project_out",
    "projection",
    "proximal_penalty",
    "set_memory",
    "split_mnist1d",
    "split_tasks",
    "task_sequence",
    "update_pca_directions",
    "update_pca_project",
    "weight_svd_directions",
    "weight_svd_project",
]
