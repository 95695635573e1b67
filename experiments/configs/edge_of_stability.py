"""Default config of experiments/edge_of_stability.py: full-batch GD on 1,000 MNIST-1D
samples (generated offline), a tanh MLP, MSE, three step sizes; --config.eos.optimizer=adam
for full-batch Adam at its own three step sizes (`eos.adam`). Real MNIST:
--config.data.name=mnist --config.data.dir=PATH (inputs flattened to 784)."""

import ml_collections

from experiments.configs.common import add_mesh, data_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    add_mesh(c)  # c.mesh: "" one device, "data:8", "fsdp:2,data:4" (configs/common.py)

    c.data = data_config()
    c.data.num_samples = 5000  # MNIST-1D: 4,000 training samples, of which eos.num_train used

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"
    c.model.widths = (64, 64)  # hidden widths; output = number of classes
    c.model.activation = "tanh"
    c.model.param_init = "fan_in_uniform"  # PyTorch's default (as Cohen et al.): initial
    # sharpness ~3.6, below 2/η for every default η (LeCun init starts at ~12)

    c.eos = ml_collections.ConfigDict()
    c.eos.num_train = 1000  # the fixed training subset (full batch)
    c.eos.loss = "mse"  # mse (as Cohen et al.) | ce
    c.eos.learning_rates = (0.1, 0.2, 0.4)  # step sizes η; the sharpness should reach 2/η
    c.eos.steps = 3000
    c.eos.measure_every = 10  # the monitor measures the sharpness every this many steps
    c.eos.checkpoint_every = 500  # steps per compiled chunk and checkpoint
    c.eos.tol = 1e-4  # Lanczos tolerance
    c.eos.low = 0.9  # the edge criterion: median of the last 20 % of sharpness in
    c.eos.high = 1.2  # [low, high] · 2/η
    c.eos.optimizer = "gd"  # gd | adam (Cohen et al. 2022: the preconditioned sharpness)

    c.eos.adam = ml_collections.ConfigDict()  # used when eos.optimizer = "adam"
    c.eos.adam.learning_rates = (5e-4, 1e-3, 2e-3)  # threshold 38/η = 76,000, 38,000, 19,000
    c.eos.adam.b1 = 0.9
    c.eos.adam.b2 = 0.999
    c.eos.adam.eps = 1e-8
    c.eos.adam.low = 0.85  # median of the last 20 % of λ_max(P⁻¹H) in [low, high] · threshold
    c.eos.adam.high = 1.2
    return c
