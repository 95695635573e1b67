"""Datasets for curvature experiments, loaded offline as numpy arrays.

MNIST-1D and Gaussian mixtures are generated procedurally; MNIST and Fashion-MNIST are read
from idx files or from prepared TFDS ArrayRecord data. ``load_dataset`` dispatches on a config;
``microbatches`` and ``class_balanced_subset`` prepare data for Hessian computations;
``load_text`` and ``windows`` give byte-level language-model data (``text``), ``bpe_tokens``
the same corpus under a byte-pair tokenizer trained on its training split (``bpe``).
"""

from hessjax.data.batching import class_balanced_subset, microbatches
from hessjax.data.bpe import BPETokenizer, bpe_tokens, train_bpe
from hessjax.data.dataset import SCALINGS, Dataset, rescale_inputs
from hessjax.data.idx import load_idx_dir, read_idx
from hessjax.data.loader import DATASET_NAMES, SOURCES, default_data_dir, load_dataset
from hessjax.data.mnist1d import load_mnist1d
from hessjax.data.synthetic import gaussian_mixture
from hessjax.data.text import (
    BYTE_VOCAB,
    TextData,
    check_token_batch,
    load_text,
    read_text,
    stdlib_text,
    windows,
)
from hessjax.data.tfds_source import load_tfds

__all__ = [
    "BPETokenizer",
    "bpe_tokens",
    "train_bpe",
    "BYTE_VOCAB",
    "TextData",
    "check_token_batch",
    "load_text",
    "read_text",
    "stdlib_text",
    "windows",
    "DATASET_NAMES",
    "SCALINGS",
    "SOURCES",
    "Dataset",
    "class_balanced_subset",
    "default_data_dir",
    "gaussian_mixture",
    "load_dataset",
    "load_idx_dir",
    "load_mnist1d",
    "load_tfds",
    "microbatches",
    "read_idx",
    "rescale_inputs",
]
