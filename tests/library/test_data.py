"""Tests for hessjax.data: idx reader, generated datasets, TFDS source, batching, dispatch."""

import gzip
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hessjax.data import (
    DATASET_NAMES,
    Dataset,
    class_balanced_subset,
    default_data_dir,
    gaussian_mixture,
    load_dataset,
    load_idx_dir,
    load_mnist1d,
    load_tfds,
    microbatches,
    read_idx,
)

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialises a uint8 array of ndim 3 (images) or 1 (labels) in idx format."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = np.array((magic, *array.shape), dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_dir(directory: Path, sizes: dict[str, int], suffix: str = ".gz") -> dict:
    """Writes the four idx files of a tiny 4x3-image dataset; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_stem, labels_stem) in IDX_STEMS.items():
        images = rng.integers(0, 256, size=(sizes[split], 4, 3), dtype=np.uint8)
        labels = (np.arange(sizes[split]) % 10).astype(np.uint8)
        write_file(directory / (images_stem + suffix), idx_bytes(images))
        write_file(directory / (labels_stem + suffix), idx_bytes(labels))
        arrays[split] = (images, labels)
    return arrays


def check_dataset(ds: Dataset, n_train: int, n_test: int, features: int, num_classes: int):
    assert ds.x_train.shape == (n_train, features) and ds.x_test.shape == (n_test, features)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.num_classes == num_classes
    for y in (ds.y_train, ds.y_test):
        assert 0 <= y.min() and y.max() < num_classes


def assert_datasets_equal(a: Dataset, b: Dataset):
    assert a.name == b.name and a.num_classes == b.num_classes
    for u, v in zip(a[:4], b[:4], strict=True):
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------------------------
# idx reader


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for stem, array in [("images", images), ("labels", labels)]:
        out = read_idx(write_file(tmp_path / (stem + suffix), idx_bytes(array)))
        assert out.dtype == np.uint8 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic(tmp_path):
    data = np.array((2050, 2), dtype=">u4").tobytes() + bytes(2)
    path = write_file(tmp_path / "bad.gz", data)
    with pytest.raises(ValueError, match=r"bad\.gz.*magic number 2050"):
        read_idx(path)


@pytest.mark.parametrize(
    "cut, match",
    [(-1, "holds 59 data bytes"), (10, "truncated idx header"), (2, "too short")],
    ids=["data", "header", "magic"],
)
def test_read_idx_truncated(tmp_path, cut, match):
    data = idx_bytes(np.zeros((5, 4, 3), dtype=np.uint8))  # 16-byte header + 60 data bytes
    path = write_file(tmp_path / "images", data[:cut])
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_extra_bytes(tmp_path):
    path = write_file(tmp_path / "labels", idx_bytes(np.zeros(4, dtype=np.uint8)) + b"\0")
    with pytest.raises(ValueError, match=r"shape \(4,\) \(4 data bytes\).*holds 5"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 4, 3), dtype=np.uint8)))[:-10])
    with pytest.raises(ValueError, match="images.gz: corrupt or truncated gzip"):
        read_idx(path)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_load_idx_dir(tmp_path, suffix):
    arrays = write_idx_dir(tmp_path, {"train": 12, "test": 5}, suffix)
    ds = load_idx_dir(tmp_path, name="tiny")
    check_dataset(ds, 12, 5, features=12, num_classes=10)
    assert ds.name == "tiny"
    np.testing.assert_allclose(ds.x_train * 255, arrays["train"][0].reshape(12, 12), atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, arrays["test"][1])


def test_load_idx_dir_missing_files(tmp_path):
    write_idx_dir(tmp_path, {"train": 3, "test": 2})
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_idx_dir(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "train-images-idx3-ubyte.gz" in message
    assert "train-labels" not in message


def test_load_idx_dir_label_out_of_range(tmp_path):
    write_idx_dir(tmp_path, {"train": 12, "test": 2})
    with pytest.raises(ValueError, match=r"label 9 is outside \[0, 5\)"):
        load_idx_dir(tmp_path, num_classes=5)


def test_load_idx_dir_count_mismatch(tmp_path):
    write_idx_dir(tmp_path, {"train": 3, "test": 2})
    write_file(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(ValueError, match="holds 2 images but .* holds 4 labels"):
        load_idx_dir(tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_datasets(name):
    directory = default_data_dir(name)
    if directory is None:
        pytest.skip(f"shared data folder ../shared/data/{name} is absent")
    ds = load_idx_dir(directory, name=name)
    check_dataset(ds, 60000, 10000, features=784, num_classes=10)
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(ds.y_train), np.arange(10))


# ---------------------------------------------------------------------------------------------
# generated datasets


def test_mnist1d_shapes_and_determinism():
    ds = load_mnist1d(num_samples=500, seed=3)
    check_dataset(ds, 400, 100, features=40, num_classes=10)
    assert ds.name == "mnist1d"
    assert_datasets_equal(ds, load_mnist1d(num_samples=500, seed=3))
    assert not np.array_equal(ds.x_train, load_mnist1d(num_samples=500, seed=4).x_train)


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)  # noqa: NPY002 - the legacy global RNG is what must stay untouched
    random.seed(123)
    expected = (np.random.random(3), random.random())  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    load_mnist1d(num_samples=100, seed=0)
    np.testing.assert_array_equal(np.random.random(3), expected[0])  # noqa: NPY002
    assert random.random() == expected[1]


def test_mnist1d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d(num_samples=5)
    with pytest.raises(ValueError, match="train_split"):
        load_mnist1d(num_samples=100, train_split=1.0)


def test_gaussian_mixture():
    ds = gaussian_mixture(num_samples=203, dim=6, num_classes=4, seed=1)
    check_dataset(ds, 162, 41, features=6, num_classes=4)
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=4)
        assert counts.max() - counts.min() <= 1
    assert_datasets_equal(ds, gaussian_mixture(num_samples=203, dim=6, num_classes=4, seed=1))
    assert not np.array_equal(ds.x_train, gaussian_mixture(203, 6, 4, seed=2).x_train)
    # Samples scatter with unit variance around their class mean.
    centred = (
        ds.x_train - np.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(4)])[ds.y_train]
    )
    assert 0.8 < centred.std() < 1.2
    with pytest.raises(ValueError, match="empty split"):
        gaussian_mixture(num_samples=3, train_split=0.1)


# ---------------------------------------------------------------------------------------------
# batching


def test_microbatches_numpy_exact():
    tree = {"x": np.arange(30.0).reshape(10, 3), "y": np.arange(10)}
    out = microbatches(tree, 5)
    assert out["x"].shape == (2, 5, 3) and out["y"].shape == (2, 5)
    np.testing.assert_array_equal(out["x"][1, 0], [15.0, 16.0, 17.0])
    assert isinstance(out["y"], np.ndarray)


def test_microbatches_jax_remainder_warns():
    x, y = jnp.ones((11, 2, 2)), jnp.arange(11)
    with pytest.warns(UserWarning, match="dropping the last 3 of 11 samples"):
        bx, by = microbatches((x, y), 4)
    assert bx.shape == (2, 4, 2, 2) and by.shape == (2, 4)
    assert isinstance(by, jnp.ndarray)
    np.testing.assert_array_equal(by[1], [4, 5, 6, 7])


@pytest.mark.parametrize(
    "tree, size, match",
    [
        (np.zeros(4), 0, "microbatch_size must be >= 1"),
        (np.zeros(4), 5, "exceeds the number of samples 4"),
        ({}, 2, "without array leaves"),
        (np.zeros((0, 3)), 2, "empty data"),
        ((np.zeros(4), np.zeros(5)), 2, r"different leading sizes \[4, 5\]"),
        ((np.zeros(4), np.float32(1.0)), 2, "scalar leaf"),
    ],
    ids=["size<1", "n<size", "no-leaves", "empty", "mismatch", "scalar"],
)
def test_microbatches_errors(tree, size, match):
    with pytest.raises(ValueError, match=match):
        microbatches(tree, size)


def test_class_balanced_subset():
    y = np.repeat(np.arange(10), [7, 5, 9, 6, 5, 8, 5, 6, 5, 10])
    x = np.arange(len(y)) * 10  # row i of x is 10 * i, so rows can be traced back to y
    xs, ys = class_balanced_subset(x, y, per_class=5, seed=2)
    assert xs.shape == ys.shape == (50,)
    np.testing.assert_array_equal(np.bincount(ys), np.full(10, 5))
    np.testing.assert_array_equal(y[xs // 10], ys)
    assert len(np.unique(xs)) == 50
    assert not np.all(np.diff(ys) >= 0)  # shuffled, not grouped by class
    again = class_balanced_subset(x, y, per_class=5, seed=2)
    np.testing.assert_array_equal(again[0], xs)
    with pytest.raises(ValueError, match=r"fewer samples: \{0: 7, 1: 5, 3: 6"):
        class_balanced_subset(x, y, per_class=8)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        class_balanced_subset(x, y, per_class=0)


# ---------------------------------------------------------------------------------------------
# TFDS data source (mocked: random examples following the dataset's features)


def test_load_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    # USE_CODE builds the features from the dataset's code; the pip wheel ships no metadata
    # folder, so the default AUTO policy would fall back to it anyway.
    with tfds.testing.mock_data(num_examples=13, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_tfds("mnist")
    check_dataset(ds, 13, 13, features=784, num_classes=10)
    assert ds.name == "mnist"
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.5


def test_load_tfds_missing_data(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(RuntimeError, match="--config.data.dir") as info:
        load_tfds("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "tfds build mnist" in str(info.value)


# ---------------------------------------------------------------------------------------------
# load_dataset dispatch


def test_load_dataset_generated():
    config = ml_collections.ConfigDict(
        {"name": "mnist1d", "dir": "", "source": "auto", "num_samples": 200, "seed": 5}
    )
    assert_datasets_equal(load_dataset(config), load_mnist1d(num_samples=200, seed=5))
    # Plain attribute objects work too; optional gaussian_mixture fields are read when present.
    config = SimpleNamespace(name="gaussian_mixture", num_samples=100, seed=2, dim=3, num_classes=4)
    expected = gaussian_mixture(num_samples=100, dim=3, num_classes=4, seed=2)
    assert_datasets_equal(load_dataset(config), expected)
    ds = load_dataset(ml_collections.ConfigDict({"name": "gaussian_mixture", "seed": 0}))
    assert ds.x_train.shape[1:] == (32,) and ds.num_classes == 10


@pytest.mark.parametrize("source", ["auto", "idx"])
def test_load_dataset_idx(tmp_path, source):
    write_idx_dir(tmp_path, {"train": 6, "test": 4})
    config = ml_collections.ConfigDict({"name": "fashion_mnist", "dir": str(tmp_path)})
    config.source = source
    ds = load_dataset(config)
    check_dataset(ds, 6, 4, features=12, num_classes=10)
    assert ds.name == "fashion_mnist"


def test_load_dataset_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    config = ml_collections.ConfigDict({"name": "mnist", "dir": "", "source": "auto"})
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset(config)
    check_dataset(ds, 4, 4, features=784, num_classes=10)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset name 'cifar10'") as info:
        load_dataset(SimpleNamespace(name="cifar10", dir="", source="auto"))
    assert all(name in str(info.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="unknown data source 'hdf5'.*auto, idx, tfds"):
        load_dataset(SimpleNamespace(name="mnist", dir="", source="hdf5"))
    with pytest.raises(ValueError, match="needs config.dir"):
        load_dataset(SimpleNamespace(name="mnist", dir="", source="idx"))


def test_default_data_dir():
    assert default_data_dir("no_such_dataset") is None
    directory = default_data_dir("mnist")
    if directory is not None:
        assert Path(directory).parts[-3:] == ("shared", "data", "mnist")


def test_load_tfds_without_tensorflow_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match=r"hessjax\[tfds\].*config.data.dir"):
        load_tfds("mnist")
