r"""Config of experiments/mask_overlap.py (Fernandez, Schneider, Mahsereci and Hennig,
"Connecting Parameter Magnitudes and Hessian Eigenspaces at Scale using Sketched Methods",
TMLR 2025): overlap of the top-k |θ| magnitude mask with the top-k Hessian eigenspace over
training, exact (dense eigh) and sketched (`sketch_eigh`).

Presets (the config string after the file name, `...mask_overlap.py:large`):

* small (default) — the paper's small setup: inputs in [0, 1] without standardisation, MLP
  d-20-20-20-20-20-10, tanh, biases, U(±1/√fan_in) init, cross-entropy, SGD lr 0.3, batch 500,
  Hessian of the mean loss on 500 class-balanced training samples.
  Data: `data.name = 'auto'` picks MNIST when `data.dir` is set and MNIST-1D (generated
  offline, 40 inputs, so 2,710 parameters) otherwise. The paper's setup (MNIST resized
  bilinearly to 16×16 = 256 inputs, 7,030 parameters) is

    python -m experiments.mask_overlap --config.data.dir=../shared/data/mnist

  Default checkpoints (0, 20, 100, 400, 1500 SGD steps): on MNIST-1D 3.2 minutes on 2 CPU
  cores (9.5 minutes when shared with two other jobs); on MNIST 16×16 each checkpoint costs
  1.7-2.3 minutes (measured 2026-11-28 on 2 shared CPU cores: numpy eigh of the
  7,030 × 7,030 float64 Hessian 83-113 s, the dense Hessian 13-18 s, the sketch 4-27 s),
  9-12 minutes for the five. The longer trajectory

    --config.checkpoints=0,10,20,50,100,200,400,700,1000,1500,2000,3000

  takes ≈ 25 minutes on MNIST 16×16. These timings predate the test-subset Hessian
  (`hessian.test_samples = 500`, exact here: one more dense Hessian and eigh per checkpoint;
  0 turns it off). With it, checkpoints 0, 100, 1500 on MNIST-1D took 39 minutes on 2 CPU
  cores at a load average of 35-40 (2026-12-01, other jobs; not a clean timing: the step-0
  sketch took 286 s there against 4-27 s before). Results of finished checkpoints are reused
  on a rerun with the same config (and the same earlier checkpoints), so an interrupted run
  resumes.

* large — meant for one GPU: a conv net (3×3 convs 64-128-256-256, relu, 2× average pooling,
  global average pooling, dense head; 962,314 parameters on 28×28 MNIST, `data.resize = 0`),
  SGD lr 0.05, batch 128, Hessian on 1,000 class-balanced samples, k up to 1,000 from
  `sketch_eigh` only (`exact.enabled = False`; no dense eigh). Select it with

    python -m experiments.mask_overlap --config=experiments/configs/mask_overlap.py:large \
        --config.data.dir=../shared/data/mnist

  (other --config.* overrides apply on top of the preset). Not run here (no GPU on the
  development machine): the sizes and memory below are computed, not measured. Memory:
  `sketch_eigh` keeps about n · (outer + k + 3 · block_size) · 4 bytes at its peak beyond
  the operator's own (the float32 range basis and result and a few blocks; the inner size
  does not enter; logged by the binary as `mask_overlap.sketch_peak_bytes`); measured on CPU
  it is 8.3 bytes/param per outer column (benchmarks/results/memory_cpu.json). Outer 1500,
  k = 1000, blocks of 100 at n = 962k: ≈ 10.8 GB (≈ 12 GB at the measured rate), so any
  16 GB accelerator; bases_<step>.npz then takes n · 2,000 · 4 ≈ 7.7 GB of disk per
  checkpoint.

* sweep — the width and depth sweep of the overlap at fixed k / n (`sweep.*`; see
  experiments/mask_overlap.py): the small preset's MLP family and training, checkpoints
  (0, 1000), no test-subset Hessian, exact eigh up to 5,000 parameters. Its default
  (MNIST-1D, 8 settings of 490-4,810 parameters) took 3.7 minutes on 2 CPU cores at a load
  average of 5-7 (2026-12-01). Sketch-only sweeps (--config.exact.enabled=False
  --config.checkpoints=1000) at a load average of 35-40 on 2 cores: 16×16 MNIST widths 4, 8,
  16 at depth 2 and depths 1-3 at width 8 (1,098-4,554 parameters) 24 minutes; width 32
  (9,610 parameters) 10 more minutes; 28×28 MNIST widths 4, 8, 16 at depth 1 and (4, 4)
  (3,190-12,730 parameters): the 12,730-parameter setting 142 s at a load average of ~5.
"""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config

PRESETS = ("small", "large", "sweep")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    preset = preset or "small"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    c.data = data_config()
    c.data.name = "auto"  # auto = mnist when data.dir is set, else mnist1d (offline)
    c.data.resize = 16  # MNIST-style images resized bilinearly to resize × resize; 0 = keep

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"  # mlp | conv
    c.model.widths = (20, 20, 20, 20, 20)  # hidden widths (mlp) or channels (conv)
    c.model.activation = "tanh"
    c.model.param_init = "fan_in_uniform"  # U(±1/√fan_in) kernels and biases | lecun

    c.train = train_config(steps=0, learning_rate=0.3, log_every=100)
    c.train.optimizer = "sgd"
    c.train.batch_size = 500
    # SGD steps at which the Hessian is measured (0 = initialisation); training runs between
    # them, carrying the optimizer state. train.steps is unused.
    c.checkpoints = (0, 20, 100, 400, 1500)

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 500  # class-balanced training samples (a multiple of the classes)
    c.hessian.microbatch_size = 500
    # class-balanced test samples for a second Hessian beside the training one (0 = none):
    # exact when the training Hessian is, else sketched
    c.hessian.test_samples = 500

    c.overlap = ml_collections.ConfigDict()
    c.overlap.ks = (10, 50, 100, 350, 1000)  # mask / eigenspace sizes (those > n are dropped)
    c.overlap.num_random_masks = 5  # random k-masks per k: the chance band (mean ± std)
    c.overlap.layerwise = True  # also per-layer magnitude masks (each layer its share of k)

    c.exact = ml_collections.ConfigDict()
    c.exact.enabled = True  # dense float64 Hessian + numpy eigh
    c.exact.max_params = 20000  # skipped (with a log line) above this many parameters
    c.exact.block_size = 512  # columns of the dense Hessian per vmapped product block

    c.sketch = ml_collections.ConfigDict()
    c.sketch.k = 350  # sketched eigenpairs (ranked by |λ|); sketched overlaps for ks <= k
    c.sketch.outer = 0  # outer sketch size; 0 = 2k
    c.sketch.inner = 0  # core sketch size; 0 = 2 outer
    c.sketch.test_matrix = "gaussian"  # gaussian | rademacher | srtt
    c.sketch.error_probes = 20  # probes of the a-posteriori error estimate
    c.sketch.block_size = 256  # products per vmapped block (bounds memory)

    if preset == "sweep":
        # Width and depth sweep of the mask overlap at fixed k / n (one small run per setting,
        # in workdir/mlp_<widths>); the exact eigh where n <= exact.max_params, the sketch
        # (k = k_fraction n, outer 2k, inner 4k) always.
        c.sweep = ml_collections.ConfigDict()
        c.sweep.widths = (8, 16, 32, 48)  # hidden widths of the width sweep (non-empty) ...
        c.sweep.depth = 2  # ... at this many hidden layers
        c.sweep.depths = (1, 2, 3, 4)  # hidden layers of the depth sweep (non-empty) ...
        c.sweep.width = 24  # ... at this width
        c.sweep.k_fraction = 0.05  # k = round(k_fraction n) (the paper: 350 / 7,030 = 0.0498)
        c.checkpoints = (0, 1000)
        c.hessian.test_samples = 0
        c.exact.max_params = 5000
    if preset == "large":
        c.data.resize = 0  # 28×28 MNIST
        c.model.kind = "conv"
        c.model.widths = (64, 128, 256, 256)  # 962,314 parameters on 28×28×1 inputs
        c.model.activation = "relu"
        c.train.learning_rate = 0.05
        c.train.batch_size = 128
        c.train.log_every = 200
        c.checkpoints = (0, 200, 1000, 4000)
        c.hessian.num_samples = 1000
        c.hessian.microbatch_size = 250
        c.hessian.test_samples = 1000
        c.exact.enabled = False
        c.sketch.k = 1000
        c.sketch.outer = 1500
        c.sketch.inner = 3000
        c.sketch.block_size = 100
    return c
