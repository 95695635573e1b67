"""Default config of experiments/block_structure.py (Dong et al. 2025 static and dynamic force,
and the layer-wise block structure of a trained network). Runs offline on CPU in well under
three minutes. Switch a part off with e.g. --config.static.enabled=False; run part c on real
MNIST with --config.data.name=mnist --config.data.dir=../shared/data/mnist."""

import ml_collections

from experiments.configs.common import add_mesh, data_config, train_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    # a. Static force: mean neuron-block ratio r of f = V relu(W x) at initialisation vs C.
    c.static = ml_collections.ConfigDict()
    c.static.enabled = True
    c.static.num_classes = (10, 30, 100, 300, 1000)
    c.static.losses = ("ce", "mse")
    c.static.input_dim = 32
    c.static.width = 32
    c.static.num_samples = 512  # Gaussian inputs, uniform random labels
    c.static.probed = 4  # neuron blocks j probed per layer (exact norms, n_j products each)

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
    return c
