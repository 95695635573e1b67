"""Default config of experiments/weights.py (Haink, arXiv 2311.00452: Hessian eigenvectors vs
the weights and the training trajectory): a tanh MLP on MNIST-1D (generated offline) trained
with plain SGD while recording weight and update snapshots; about a minute on 2 CPU cores.
Override any field on the command line, e.g. --config.train.optimizer=adam
--config.train.learning_rate=3e-3, or real MNIST with --config.data.name=mnist
--config.data.dir=../shared/data/mnist."""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    c.data = data_config()

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"  # mlp | conv (conv kernels are SVD'd as (prod(spatial)*in, out))
    c.model.widths = (64, 64)  # hidden widths (mlp) or channels (conv); output = num classes
    c.model.activation = "tanh"

    c.train = train_config(steps=6000, learning_rate=0.05, log_every=1000)
    c.train.optimizer = "sgd"  # the quadratic-model rate (1 - ηλ) assumes plain SGD

    # Snapshots of (θ_t, Δ_t) every `every` steps, the last `capacity` kept: with the
    # defaults the late window is steps 4000 .. 5995.
    c.record = ml_collections.ConfigDict()
    c.record.capacity = 400
    c.record.every = 5

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = 1000  # training samples the Hessian (and the GD probe) use
    c.hessian.microbatch_size = 500
    c.hessian.top_k = 30  # top eigenpairs of the whole Hessian at the end of training
    c.hessian.bottom_k = 0  # also the smallest eigenpairs, for the alignment (slow to converge)
    c.hessian.num_steps = 0  # Lanczos steps; 0 = max(4 k, default)
    c.hessian.tol = 1e-4
    c.hessian.layer_k = 10  # top eigenpairs of each kernel's own block H_ll; 0 = off

    c.pca = ml_collections.ConfigDict()
    c.pca.k = 30  # principal components of weights and of updates (<= capacity - 1, top_k)
    c.pca.ks = (1, 2, 5, 10, 20, 30)  # dimensions reported (<= k)

    # Quadratic model along the top eigendirections: full-batch GD from the trained params on
    # the Hessian's samples, recorded with the pure recorder in a lax.scan, then a fit of the
    # decay of the projected updates (differences: a slowly moving offset cancels).
    c.fit = ml_collections.ConfigDict()
    c.fit.num_directions = 10  # top eigendirections fitted
    c.fit.steps = 60  # GD probe steps
    c.fit.learning_rate = 0.025  # GD probe η; 0 = the training learning rate
    c.fit.rel_floor = 1e-2  # leave out points below this fraction of the series' peak

    c.svd = ml_collections.ConfigDict()
    c.svd.num_show = 10  # SVD directions per layer in the figure and the summaries
    c.svd.num_top = 3  # "top SVD" share and curvature: the first num_top directions
    c.svd.trace_probes = 30  # Hutchinson probes for each kernel block's mean curvature
    return c
