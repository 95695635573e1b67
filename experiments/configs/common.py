"""Config pieces shared by the experiment configs."""

import ml_collections


def add_mesh(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """c.mesh = "": the device mesh of the binary's curvature work
    (`hessjax.distributed.placed_operator`). "" one device; "data:8" the Hessian batch split
    over 8 devices; "fsdp:2,data:4" params split over 2 as well; vectors and Krylov bases
    split over all.
    Must use every device of the job (all processes' under jax.distributed)."""
    c.mesh = ""
    return c


def data_config() -> ml_collections.ConfigDict:
    """Dataset (hessjax.data.load_dataset): MNIST-1D generated offline by default."""
    c = ml_collections.ConfigDict()
    c.name = "mnist1d"  # mnist1d | mnist | fashion_mnist | gaussian_mixture
    c.dir = ""  # directory of idx .gz files for mnist / fashion_mnist
    c.source = "auto"  # auto | idx | tfds
    c.num_samples = 5000  # generated datasets only
    c.seed = 0
    return c


def train_config(steps: int, learning_rate: float = 3e-3, log_every: int = 500):
    """Minibatch training (hessjax.training.train)."""
    c = ml_collections.ConfigDict()
    c.optimizer = "adam"  # adam | sgd
    c.learning_rate = learning_rate
    c.steps = steps
    c.batch_size = 128
    c.log_every = log_every
    return c
