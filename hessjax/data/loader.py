"""Config-driven entry point: one call turns a data config into a Dataset."""

from pathlib import Path
from typing import Any

from hessjax.data.dataset import Dataset
from hessjax.data.idx import load_idx_dir
from hessjax.data.mnist1d import load_mnist1d
from hessjax.data.synthetic import gaussian_mixture
from hessjax.data.tfds_source import load_tfds

DATASET_NAMES = ("mnist1d", "mnist", "fashion_mnist", "gaussian_mixture")
"""Dataset names `load_dataset` knows."""
SOURCES = ("auto", "idx", "tfds")
"""Where image datasets come from: local idx files, TFDS, or the first available (auto)."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config.get(key, default)`` for ConfigDicts and mappings, else ``getattr``."""
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def default_data_dir(name: str) -> str | None:
    """``<repo>/../shared/data/<name>``, located from this package's path, if that folder exists.

    The repository root is the folder holding the ``hessjax`` package. The folder is read in
    place (it is never copied into the repository); returns None when it is absent.
    """
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / name
    return str(path) if path.is_dir() else None


def load_dataset(config: Any) -> Dataset:
    """Loads the dataset that ``config`` describes (ConfigDict or any object with attributes).

    Fields (``dir`` and ``source`` matter for mnist and fashion_mnist only):
      name: one of ``DATASET_NAMES``.
      dir: folder with the four idx files (may be empty). With source "tfds" it is passed to
        TFDS as ``data_dir``.
      source: "auto" (idx when ``dir`` is set, else TFDS), "idx" or "tfds".
      num_samples, seed: for the generated datasets (mnist1d, gaussian_mixture); missing fields
        take the generators' defaults. gaussian_mixture also reads optional ``dim`` and
        ``num_classes``.

    Returns:
      Dataset; see ``Dataset`` for shapes and dtypes.

    Raises:
      ValueError: unknown name or source, or source "idx" without ``dir``.
    """
    name = _get(config, "name")
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    source = _get(config, "source", "auto")
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")

    if name in ("mnist1d", "gaussian_mixture"):
        keys = ["num_samples", "seed"]
        if name == "gaussian_mixture":
            keys += ["dim", "num_classes"]
        kwargs = {key: _get(config, key) for key in keys if _get(config, key) is not None}
        return load_mnist1d(**kwargs) if name == "mnist1d" else gaussian_mixture(**kwargs)

    directory = _get(config, "dir", "") or ""
    if source == "auto":
        source = "idx" if directory else "tfds"
    if source == "idx":
        if not directory:
            raise ValueError(f"source 'idx' needs config.dir, the folder of {name}'s idx files")
        return load_idx_dir(directory, name=name)
    return load_tfds(name, data_dir=directory or None)
