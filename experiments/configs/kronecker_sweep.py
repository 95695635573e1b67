"""Default config of experiments/kronecker_sweep.py: when is the Kronecker form of a dense
layer's Hessian block accurate (Wu et al., "Dissecting Hessian")? A base ReLU MLP on MNIST-1D
(generated offline) and one-at-a-time variations of its width, training length, data and
activation; every setting is measured with M exact and in Gauss-Newton form. Real MNIST:
--config.sweep.datasets=mnist --config.data.dir=../shared/data/mnist."""

import ml_collections

from experiments.configs.common import data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = data_config()  # the base setting's data (a setting of sweep.datasets replaces name)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"
    c.model.widths = (32, 32)  # base hidden widths; sweep.widths sets every hidden layer's
    c.model.activation = "relu"

    c.train = train_config(steps=3000, learning_rate=3e-3, log_every=1000)

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 1000  # training samples the layer blocks average over
    c.hessian.chunk_size = 250
    c.hessian.top_k = 0  # 0 = 3 * num_classes
    c.hessian.dense_max_size = 2048  # in*out up to this: dense block + eigh, else eigsh
    c.hessian.microbatch_size = 500
    c.hessian.tol = 1e-4

    # One-at-a-time variations of the base (model.widths width, train.steps, data.name,
    # model.activation); each list must be non-empty. Both forms of M are measured always.
    c.sweep = ml_collections.ConfigDict()
    c.sweep.widths = (16, 128)  # hidden width (every hidden layer, base depth)
    c.sweep.steps = (0, 10000)  # training steps (0: at initialisation)
    c.sweep.datasets = ("mnist1d", "gaussian_mixture")  # data.name
    c.sweep.activations = ("relu", "tanh")  # tanh: exact and Gauss-Newton M differ
    c.sweep.near_one = 0.9  # report the settings whose top-C overlap is >= this in all layers
    return c
