"""Default config of experiments/spectrum.py: a small tanh MLP on MNIST-1D (generated
offline), trained briefly, then its Hessian spectrum. Override any field on the command line,
e.g. --config.model.widths=128,128,10 --config.data.name=mnist --config.data.dir=PATH."""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (see configs/common.py)

    c.data = data_config()

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"  # mlp | conv
    c.model.widths = (64, 64)  # hidden widths (mlp) or channels (conv); output = num classes
    c.model.activation = "tanh"

    c.train = train_config(steps=3000, learning_rate=3e-3, log_every=500)

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 1000  # training samples the Hessian averages over
    c.hessian.microbatch_size = 250
    c.hessian.top_k = 10
    c.hessian.num_steps = 0  # max Krylov size; 0 = default for top_k
    c.hessian.tol = 1e-6
    c.hessian.per_layer = True
    c.hessian.trace_matvecs = 99  # Hutch++ products (multiple of 3)
    c.hessian.slq_probes = 8
    c.hessian.slq_steps = 60
    c.hessian.sigma_ratio = 0.01  # density smoothing width / spectrum width
    return c
