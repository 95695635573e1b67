"""Default config of experiments/kronecker.py (Wu et al., "Dissecting Hessian"): a small ReLU
MLP on MNIST-1D (generated offline), trained briefly, then the Kronecker structure of each
dense layer's Hessian block, with M exact and in Gauss-Newton form, and with batch norm;
outliers vs classes on Gaussian mixtures. A conv net: --config.model.kind=conv
--config.model.widths=8,16 --config.batch_norm.enabled=False. Override any field on
the command line, e.g. --config.data.name=mnist --config.data.dir=../shared/data/mnist."""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # model A: init and minibatch order; model B uses seed + cross_seed.offset
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    c.data = data_config()

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"  # mlp | conv (ConvNet: widths = channels, then a Dense head)
    c.model.widths = (32, 32)  # hidden widths; a Dense output layer of C units follows
    c.model.activation = "relu"  # Wu et al. use ReLU: nonnegative hidden inputs, large E[x]
    c.model.batch_norm = False  # MLP only: BatchNorm after each hidden Dense layer

    c.train = train_config(steps=3000, learning_rate=3e-3, log_every=1000)

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 2000  # training samples the layer Hessians average over
    c.hessian.chunk_size = 500  # samples per scan step of exact_layer_hessian / factors
    c.hessian.top_k = 0  # K eigenpairs per layer; 0 = 3 * num_classes
    c.hessian.dense_max_size = 4096  # in*out up to this: dense block + eigh, else eigsh
    c.hessian.microbatch_size = 500  # eigsh path: microbatches of the hessian_operator
    c.hessian.tol = 1e-4  # eigsh path: relative residual tolerance (float32 round-off ~1e-6)
    c.hessian.num_lowrank = 10  # top eigenvectors whose reshaped low rank is measured
    c.hessian.at_init = True  # also compare exact vs Kronecker at initialisation (baseline)
    c.hessian.gauss_newton = True  # also with M in Gauss-Newton form (the GGN's layer block)

    c.batch_norm = ml_collections.ConfigDict()
    c.batch_norm.enabled = True  # also the same MLP with model.batch_norm toggled, same training

    c.cross_seed = ml_collections.ConfigDict()
    c.cross_seed.enabled = True
    c.cross_seed.offset = 1  # model B's seed = seed + offset (same data)

    c.outliers = ml_collections.ConfigDict()
    c.outliers.enabled = True
    c.outliers.num_classes = (2, 5, 10, 20)  # one Gaussian mixture and model per C
    c.outliers.num_samples = 5000
    c.outliers.dim = 32
    c.outliers.separation = 3.0
    c.outliers.steps = 1500  # training steps per mixture model (other train fields shared)
    c.outliers.top_factor = 3  # count among the top max(top_factor * C, min_top) eigenvalues
    c.outliers.min_top = 16
    c.outliers.rel_floor = 1e-3  # count_outliers floor, relative to λ₁
    return c
