r"""Config of experiments/transformer.py: the Hessian of a small GPT trained with Adam on bytes,
by role (Zhang et al. 2024 block heterogeneity; Ormaniec et al. 2025 Q/K/V/O blocks; Wu et al.
Kronecker factors with tokens as samples; Haink layer-wise tops; Fernandez et al. masks).

Presets (the config string after the file name):

* gpt (default) — GPT, V = 256 bytes, context 32, width 64, 4 heads, 2 layers (134,912
  parameters), Adam 3e-3, batch 32, measured at steps 0, 150 and 600. Data: the running
  interpreter's standard library (`data.source = 'stdlib'`: no files needed, but its bytes
  depend on the Python version); the README's numbers use the fixed corpus,
  `--config.data.source=shared` (../shared/data/python_stdlib/). Models compared at
  initialisation (`compare`): an MLP, a ConvNet and a ViT on MNIST when ../shared/data/mnist
  is present (skipped, and recorded as skipped, otherwise).
* vit — the same measurements for a ViT (7×7 patches, width 32, 2 heads, 2 layers, mean
  pooling) trained on MNIST from ../shared/data/mnist (`data.dir`):

    python -m experiments.transformer --config=experiments/configs/transformer.py:vit
"""

import ml_collections


def get_config(preset: str = "gpt") -> ml_collections.ConfigDict:
    if preset not in ("gpt", "vit"):
        raise ValueError(f"unknown preset {preset!r}: choose gpt or vit")
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "stdlib"  # gpt: stdlib | shared | a text file or folder
    c.data.max_bytes = 2_000_000  # gpt: training bytes kept
    c.data.context = 32  # gpt: window length T
    c.data.train_windows = 20_000  # gpt: training windows drawn (seeded) from the train split
    c.data.dir = ""  # vit: MNIST idx folder ("" = ../shared/data/mnist)

    c.model = ml_collections.ConfigDict()
    c.model.kind = preset  # gpt | vit
    c.model.width = 64 if preset == "gpt" else 32
    c.model.num_heads = 4 if preset == "gpt" else 2
    c.model.num_layers = 2
    c.model.mlp_ratio = 4
    c.model.tie_embeddings = False  # gpt
    c.model.patch_size = 7  # vit
    c.model.pool = "mean"  # vit: mean | cls

    c.train = ml_collections.ConfigDict()
    c.train.learning_rate = 3e-3 if preset == "gpt" else 1e-3
    c.train.batch_size = 32
    c.train.log_every = 50
    c.train.monitor_every = 25  # λ_max(P⁻¹H) of the Adam step's minibatch every N steps; 0 = off
    c.checkpoints = (0, 150, 600)  # training steps at which the Hessian is measured

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 32  # sequences (gpt) or images (vit) the Hessian averages over
    c.hessian.microbatch_size = 16
    c.hessian.top_k = 10  # whole-network top eigenpairs
    c.hessian.block_k = 2  # top eigenvalues of every role block
    c.hessian.head_k = 0  # top eigenvalues of every attention head's Q/K/V/O block; 0 = off
    c.hessian.tol = 1e-4
    c.hessian.slq_probes = 4  # >= 2: halves give the noise floor; a step = 25 full products
    c.hessian.slq_steps = 20
    c.hessian.sigma_ratio = 0.01  # density smoothing / spectrum span (heterogeneity grid)
    c.hessian.norm_probes = 16  # Gaussian probes per Q/K/V/O block norm (0 = exact)
    c.hessian.kron_samples = 2  # sequences / images for the Kronecker comparison
    c.hessian.kron_k = 10
    c.hessian.kron_layers = "first"  # first (block_0 projections + output) | all | none

    c.compare = ("mlp", "conv", "vit") if preset == "gpt" else ("mlp", "conv")
    return c
