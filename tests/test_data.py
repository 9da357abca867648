"""Datasets: digits split, MNIST IDX parsing (real and synthetic), npz files and their errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_core.data import MNIST_FILES, fit_input, load_dataset
from pet_core.errors import PetError

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def mnist_dir() -> Path | None:
    """Real MNIST folder from $PET_MNIST_DIR or the shared data folder, or None."""
    for cand in (os.environ.get("PET_MNIST_DIR"), SHARED_MNIST):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_standardisation():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.shape == (1347, 1, 8, 8) and ds.x_test.shape == (450, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3
    # stratified: every class has (almost) the same share in train and test
    tr = torch.bincount(ds.y_train, minlength=10).float() / len(ds.y_train)
    te = torch.bincount(ds.y_test, minlength=10).float() / len(ds.y_test)
    assert float((tr - te).abs().max()) < 0.01
    assert load_dataset("digits").fingerprint == ds.fingerprint and len(ds.fingerprint) >= 8


def test_unknown_dataset_name():
    with pytest.raises(PetError, match="unknown dataset"):
        load_dataset("cifar")


def test_fit_input_resizes_only_when_smaller():
    x = torch.randn(3, 1, 8, 8)
    assert fit_input(x, 28).shape == (3, 1, 28, 28)
    assert fit_input(x, 8) is x and fit_input(x, 4) is x


# ---------------------------------------------------------------- MNIST


def test_real_mnist():
    folder = mnist_dir()
    if folder is None:
        pytest.skip(f"real MNIST not found (set PET_MNIST_DIR or provide {SHARED_MNIST})")
    ds = load_dataset("mnist", str(folder))
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and abs(float(ds.x_train.mean())) < 1e-3
    assert load_dataset("mnist", str(folder)) is ds  # parsed once, cached in memory


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, gz: bool) -> None:
    header = np.array([magic, *dims], dtype=">u4").tobytes()
    data = header + payload
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(folder: Path, n_train=20, n_test=10, gz=False, **override) -> Path:
    """Synthetic MNIST-like IDX files (6x6 images); ``override`` replaces (magic, dims, payload) per key."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    spec = {
        "x_train": (2051, (n_train, 6, 6), rng.integers(0, 256, n_train * 36, dtype=np.uint8).tobytes()),
        "y_train": (2049, (n_train,), (np.arange(n_train) % 10).astype(np.uint8).tobytes()),
        "x_test": (2051, (n_test, 6, 6), rng.integers(0, 256, n_test * 36, dtype=np.uint8).tobytes()),
        "y_test": (2049, (n_test,), (np.arange(n_test) % 10).astype(np.uint8).tobytes()),
    }
    spec.update(override)
    for key, (magic, dims, payload) in spec.items():
        write_idx(folder / MNIST_FILES[key], magic, dims, payload, gz)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_idx_parsing(tmp_path, gz):
    ds = load_dataset("mnist", str(make_mnist(tmp_path / "m", gz=gz)))
    assert ds.x_train.shape == (20, 1, 6, 6) and ds.x_test.shape == (10, 1, 6, 6)
    assert ds.y_train.tolist() == [i % 10 for i in range(20)] and ds.num_classes == 10


def test_mnist_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PET_MNIST_DIR", str(make_mnist(tmp_path / "env")))
    assert load_dataset("mnist").x_train.shape == (20, 1, 6, 6)


def test_mnist_no_folder_given(monkeypatch):
    monkeypatch.delenv("PET_MNIST_DIR", raising=False)
    with pytest.raises(PetError, match="--data-dir or set PET_MNIST_DIR"):
        load_dataset("mnist")


def test_mnist_missing_folder(tmp_path):
    with pytest.raises(PetError, match="does not exist") as err:
        load_dataset("mnist", str(tmp_path / "nope"))
    assert_one_line(err)


def test_mnist_missing_file(tmp_path):
    folder = make_mnist(tmp_path / "m")
    (folder / MNIST_FILES["y_test"]).unlink()
    with pytest.raises(PetError, match=r"t10k-labels-idx1-ubyte\(\.gz\) not found in") as err:
        load_dataset("mnist", str(folder))
    assert_one_line(err)


def test_mnist_bad_magic(tmp_path):
    folder = make_mnist(tmp_path / "m", x_train=(1234, (20, 6, 6), bytes(20 * 36)))
    with pytest.raises(PetError, match=r"bad magic number 1234 \(expected 2051\)") as err:
        load_dataset("mnist", str(folder))
    assert "train-images-idx3-ubyte" in assert_one_line(err)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated(tmp_path, gz):
    folder = make_mnist(tmp_path / "m", gz=gz, x_test=(2051, (10, 6, 6), bytes(100)))
    with pytest.raises(PetError, match="t10k-images-idx3-ubyte.* truncated") as err:
        load_dataset("mnist", str(folder))
    assert_one_line(err)


def test_mnist_truncated_header(tmp_path):
    folder = make_mnist(tmp_path / "m")
    (folder / MNIST_FILES["y_train"]).write_bytes(b"\x00\x00\x08")
    with pytest.raises(PetError, match="truncated"):
        load_dataset("mnist", str(folder))


def test_mnist_count_mismatch(tmp_path):
    folder = make_mnist(tmp_path / "m", y_train=(2049, (19,), bytes(19)))
    with pytest.raises(PetError, match="train split has 20 images but 19 labels") as err:
        load_dataset("mnist", str(folder))
    assert_one_line(err)


# ---------------------------------------------------------------- npz


def blobs(n=80, d=16, k=4):
    rng = np.random.default_rng(1)
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)).astype(np.float32) + y[:, None]
    return x, y


def test_npz_flat_square_and_split(tmp_path):
    x, y = blobs(d=16)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "blobs.npz"))
    assert ds.name == "blobs" and ds.input_shape == (1, 4, 4) and ds.num_classes == 4
    assert len(ds.y_train) == 60 and len(ds.y_test) == 20
    assert torch.bincount(ds.y_test).tolist() == [5, 5, 5, 5]  # stratified


def test_npz_flat_non_square(tmp_path):
    x, y = blobs(d=10)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    assert load_dataset(str(tmp_path / "b.npz")).input_shape == (1, 1, 10)


def test_npz_3d_with_test_split(tmp_path):
    x, y = blobs(d=36)
    np.savez(tmp_path / "img.npz", x=x.reshape(-1, 6, 6), y=y, x_test=x[:8].reshape(-1, 6, 6), y_test=y[:8])
    ds = load_dataset(str(tmp_path / "img.npz"))
    assert ds.input_shape == (1, 6, 6) and len(ds.y_train) == 80 and len(ds.y_test) == 8


def test_npz_4d(tmp_path):
    x, y = blobs(d=48)
    np.savez(tmp_path / "rgb.npz", x=x.reshape(-1, 3, 4, 4), y=y)
    assert load_dataset(str(tmp_path / "rgb.npz")).input_shape == (3, 4, 4)


def test_npz_missing_file(tmp_path):
    with pytest.raises(PetError, match="not found") as err:
        load_dataset(str(tmp_path / "none.npz"))
    assert_one_line(err)


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"PK\x03\x04garbage", os.urandom(64)])
def test_npz_corrupt(tmp_path, content):
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(PetError, match="bad.npz") as err:
        load_dataset(str(tmp_path / "bad.npz"))
    assert_one_line(err)


def test_npz_missing_key_names_found_keys(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "k.npz", data=x, y=y)
    with pytest.raises(PetError, match=r"missing array 'x'.*\['data', 'y'\]") as err:
        load_dataset(str(tmp_path / "k.npz"))
    assert_one_line(err)
    np.savez(tmp_path / "k.npz", x=x, labels=y)
    with pytest.raises(PetError, match=r"missing array 'y'.*'labels'"):
        load_dataset(str(tmp_path / "k.npz"))


def test_npz_length_mismatch(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "m.npz", x=x, y=y[:-3])
    with pytest.raises(PetError, match="x has 80 samples but y has 77 labels"):
        load_dataset(str(tmp_path / "m.npz"))


@pytest.mark.parametrize(
    "labels, match",
    [(lambda y: y + 0.5, "must be integers"), (lambda y: y - 1, "negative"), (lambda y: y.astype(str), "integers")],
)
def test_npz_bad_labels(tmp_path, labels, match):
    x, y = blobs()
    np.savez(tmp_path / "l.npz", x=x, y=labels(y))
    with pytest.raises(PetError, match=match) as err:
        load_dataset(str(tmp_path / "l.npz"))
    assert_one_line(err)
