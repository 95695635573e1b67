"""Config of experiments/block_structure.py (Dong, Zhang, Luo, Yao, Sun 2025, "Towards
Quantifying the Hessian Structure of Neural Networks": static and dynamic force, block
spectra, heatmaps; and the layer-wise block structure of a trained network).

Presets (the config string after the file name, `...block_structure.py:paper`):

* small (default) — every part at small sizes, offline. Measured 2026-12-01 on the 2 CPU
  cores of the development machine shared with other jobs: all seven parts in 3.5 min wall,
  125 s of CPU time (user + sys), peak RSS 1.9 GB, at a load average of 1-6; per part (wall):
  static 19 s, dynamic 19 s, layerwise 40 s, large_c 43 s, spectra 45 s, heatmap 19 s,
  neuron_dynamic 23 s (an earlier run at a load average of ~38: 9.3 min wall; MNIST-1D;
  on MNIST, --config.data.name=mnist --config.data.dir=../shared/data/mnist, it took 11.8 min
  wall, 80 s CPU). Switch a part off with e.g. --config.large_c.enabled=False.
* paper — the sizes of the authors' code (train_gaussian.py of zyushun/Hessian-structure):
  Gaussian inputs x ~ N(0, I_500), 5,000 samples, uniform random labels, width 8, no biases,
  PyTorch's default U(±1/√fan_in) init, cross-entropy; f = V x and f = V relu(W x). C sweeps
  up to 500-1,000 (static, spectra) and 32,768 (large_c). The heatmaps use d = C = 100 (the
  dense Hessian of the linear model at d = C = 500 has 250,000² entries); training for the
  "after" heatmap is 2,000 full-batch Adam steps at lr 1e-3 (the authors: lr 1e-4, cosine
  schedule). Not run in full here: hours on 2 CPU cores (each probed hidden block costs 500
  Hessian-vector products over 5,000 samples), meant for a GPU. Measured on the shared
  2 cores: part static with losses=ce, C = 10, 100, 1000 and probed=2 took 9.1 min wall
  (60 s CPU); part large_c alone with losses=ce and C = 1000, 4096 (one batch) took 7.0 min wall,
  221 s CPU, peak RSS 1.3 GB at a load average of ~7 (C = 1000: 80 s, C = 4096: 5.6 min wall; the
  time grows at least linearly in C: C = 32,768 alone with probed=1, microbatch_size 500,
  had not finished after 39 min wall, 28 min CPU (RSS 1.8 GB) at a load average of 4-10, so the full
  large_c part takes hours here; one batch of 5,000 samples at C = 32,768 held 6.2 GB);
  part heatmap alone (both models, init and trained) 6.0 min wall, 182 s CPU,
  peak RSS 3.2 GB (the linear model's dense 10,000² Hessian).
"""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config

PRESETS = ("small", "paper")


def _static(num_classes, input_dim, width, num_samples, probed, block_size, param_init, mb=0):
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.num_classes = num_classes
    c.losses = ("ce", "mse")
    c.input_dim = input_dim
    c.width = width
    c.num_samples = num_samples  # Gaussian inputs, uniform random labels
    c.probed = probed  # neuron blocks j probed per layer (exact norms, n_j products each)
    c.block_size = block_size  # products vmapped at a time (0 = all of a block at once)
    # samples per microbatch of a product (0 = all at once); a product holds about
    # block_size · microbatch_size · C logits, so this bounds memory at large C
    c.microbatch_size = mb
    c.param_init = param_init  # lecun | fan_in_uniform (PyTorch default, the authors' code)
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    preset = preset or "small"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} of block_structure; choose from {PRESETS}")
    paper = preset == "paper"
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    # a. Static force: mean neuron-block ratio r of f = V relu(W x) at initialisation vs C.
    if paper:
        c.static = _static((10, 50, 100, 500, 1000), 500, 8, 5000, 4, 8, "fan_in_uniform")
    else:
        c.static = _static((10, 30, 100, 300, 1000), 32, 32, 512, 4, 0, "lecun")

    # b. Dynamic force: layer blocks of the same net's Hessian while it trains.
    c.dynamic = ml_collections.ConfigDict()
    c.dynamic.enabled = True
    c.dynamic.loss = "ce"  # ce | mse
    c.dynamic.num_classes = 10
    c.dynamic.dim = 32  # Gaussian-mixture input dimension
    c.dynamic.width = 32
    c.dynamic.num_samples = 2048  # mixture samples (80% train)
    c.dynamic.separation = 3.0  # distance scale of the class means
    c.dynamic.optimizer = "sgd"  # sgd | adam
    c.dynamic.learning_rate = 0.1
    c.dynamic.steps = 2000
    c.dynamic.batch_size = 64
    c.dynamic.num_checkpoints = 11  # measurements, including step 0 and the last step
    c.dynamic.spacing = "log"  # log (dense early, where the loss falls fastest) | linear
    c.dynamic.hessian_samples = 512  # training samples the Hessian averages over
    c.dynamic.microbatch_size = 512
    c.dynamic.norms = "auto"  # exact | estimate | auto (exact when n <= exact_max_params)
    c.dynamic.exact_max_params = 4096
    c.dynamic.num_probes = 32  # Gaussian probes per block for the estimate

    # c. Layer-wise structure of a trained MLP: block ratios and top eigenvalues per layer.
    c.data = data_config()
    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"  # mlp | conv
    c.model.widths = (32, 32)  # hidden widths (mlp) or channels (conv); output = num classes
    c.model.activation = "tanh"
    c.train = train_config(steps=2000, learning_rate=3e-3, log_every=500)

    c.layerwise = ml_collections.ConfigDict()
    c.layerwise.enabled = True
    c.layerwise.hessian_samples = 1000
    c.layerwise.microbatch_size = 500
    c.layerwise.norms = "auto"  # exact | estimate | auto (exact when n <= exact_max_params)
    c.layerwise.exact_max_params = 4096
    c.layerwise.num_probes = 32
    c.layerwise.tol = 1e-5  # Lanczos tolerance of the block and whole-network top eigenvalues

    # d. Large C as in language models: the static-force ratios up to C = 32,768, matrix-free
    # (probed blocks only; output-layer blocks have `width` entries). Figure large_c.png.
    if paper:
        c.large_c = _static((1000, 4096, 16384, 32768), 500, 8, 5000, 2, 2, "fan_in_uniform", 500)
    else:
        c.large_c = _static((1024, 4096, 32768), 8, 8, 128, 2, 8, "lecun")

    # e. Block spectra at init: eigenvalues of diagonal, singular values of off-diagonal neuron
    # blocks vs C, for f = V x (linear) and f = V relu(W x) (nn). Figure block_spectra.png.
    c.spectra = ml_collections.ConfigDict()
    c.spectra.enabled = True
    c.spectra.models = ("linear", "nn")
    c.spectra.num_classes = (10, 50, 100, 500) if paper else (10, 100, 1000)
    c.spectra.loss = "ce"
    c.spectra.input_dim = 500 if paper else 32
    c.spectra.width = 8
    c.spectra.num_samples = 5000 if paper else 1024
    c.spectra.probed = 4 if paper else 8  # diagonal and as many off-diagonal blocks per layer
    c.spectra.block_size = 50 if paper else 0
    c.spectra.param_init = "fan_in_uniform" if paper else "lecun"
    c.spectra.bins = 40

    # f. Heatmaps of |H| (dense) with the neuron-block grid, at init and after training on
    # the same Gaussian inputs and random labels. Figure hessian_heatmap.png (+ .npz).
    c.heatmap = ml_collections.ConfigDict()
    c.heatmap.enabled = True
    c.heatmap.models = ("linear", "nn")
    c.heatmap.num_classes = 100 if paper else 16
    c.heatmap.loss = "ce"
    c.heatmap.input_dim = 100 if paper else 16
    c.heatmap.width = 8
    c.heatmap.num_samples = 5000 if paper else 512
    c.heatmap.param_init = "fan_in_uniform" if paper else "lecun"
    c.heatmap.optimizer = "adam"
    c.heatmap.learning_rate = 1e-3 if paper else 1e-2
    c.heatmap.steps = 2000 if paper else 1000
    c.heatmap.batch_size = 5000 if paper else 512  # full batch, as the authors
    c.heatmap.block_size = 200 if paper else 0
    c.heatmap.max_pixels = 500  # |H| max-pooled to at most this many rows for the figure
    c.heatmap.max_params = 20000  # refuse to form a larger dense Hessian
    c.heatmap.vmax_fraction = 0.01 if paper else 0.1  # colour scale top: max |H| / 100 (authors)

    # g. Dynamic force at the neuron level on config.data (MNIST-1D offline; MNIST with
    # --config.data.name=mnist --config.data.dir=../shared/data/mnist): the static-force
    # ratios r of f = V relu(W x) while it trains. Figure neuron_dynamic.png.
    c.neuron_dynamic = ml_collections.ConfigDict()
    c.neuron_dynamic.enabled = True
    c.neuron_dynamic.loss = "ce"
    c.neuron_dynamic.width = 8 if paper else 32
    c.neuron_dynamic.optimizer = "adam"
    c.neuron_dynamic.learning_rate = 1e-3
    c.neuron_dynamic.steps = 3000
    c.neuron_dynamic.batch_size = 128
    c.neuron_dynamic.num_checkpoints = 7
    c.neuron_dynamic.spacing = "log"
    c.neuron_dynamic.hessian_samples = 1000
    c.neuron_dynamic.microbatch_size = 500
    c.neuron_dynamic.probed = 4
    c.neuron_dynamic.block_size = 0
    return c
