"""Default config of experiments/layerwise_sweep.py (Haink, arXiv 2311.00452: "higher
eigenvalues are concentrated more in deeper layers"): layer-wise top Hessian eigenvalues of
MLPs on MNIST-1D (generated offline), one factor at a time around a base setting, measured at
several training steps: 12 settings × 5 checkpoints. Measured on the shared 2-core machine
(2026-12-01): 8.1 min wall, 247 s of CPU time (user + sys), peak RSS 1.3 GB, at a load
average of ~7 (earlier, at ~30-40: 26 min wall over two invocations). Real MNIST with
--config.data.name=mnist --config.data.dir=../shared/data/mnist (first layers of 784 inputs:
slower)."""

import ml_collections

from experiments.configs.common import data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = data_config()

    # The base setting; each sweep list below varies one of its fields, the others fixed.
    c.base = ml_collections.ConfigDict()
    c.base.depth = 2  # hidden layers (the output layer comes on top)
    c.base.width = 64  # units per hidden layer
    # none (as loaded) | unit ([0, 1]) | global (one mean and std) | standard (per feature)
    c.base.scaling = "standard"
    c.base.activation = "tanh"
    c.base.loss = "ce"  # ce | mse (on one-hot targets)
    c.base.param_init = "lecun"  # lecun | fan_in_uniform (PyTorch's default)

    # Values swept, one field at a time (the base value may be listed; it is run once).
    c.sweep = ml_collections.ConfigDict()
    c.sweep.depth = (2, 3, 4, 6)
    c.sweep.width = (32, 64, 128)
    c.sweep.scaling = ("standard", "global", "unit")
    c.sweep.activation = ("tanh", "relu", "sigmoid")
    c.sweep.loss = ("ce", "mse")
    c.sweep.param_init = ("lecun", "fan_in_uniform")

    c.train = train_config(steps=3000, learning_rate=0.05, log_every=1000)
    c.train.optimizer = "sgd"
    # Training steps at which the layer-wise top eigenvalues are measured (0: initialisation);
    # the last one should be train.steps.
    c.checkpoints = (0, 100, 300, 1000, 3000)

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 1000  # training samples of the Hessian
    c.hessian.microbatch_size = 500
    c.hessian.tol = 1e-4
    return c
