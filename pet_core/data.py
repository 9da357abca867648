"""Datasets: sklearn digits (offline default), MNIST from IDX files, and user .npz files.

Every image loader returns a :class:`Dataset` with NCHW float32 images standardised with the
training-set mean/std, int64 labels and a short fingerprint used as a cache key. Token datasets
for text models (``task="sequence_classification"`` or ``"causal_lm"``) keep int64 token ids;
they are read by :mod:`pet_core.token_data`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pet_core.bounded import shown
from pet_core.errors import PetError
from pet_core.npz import max_dataset_bytes, read_npz
from pet_core.splits import check_labels as _check_labels
from pet_core.splits import fingerprint as _fingerprint
from pet_core.splits import given_or_split, stratified_split as _stratified_split

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


@dataclass
class Dataset:
    """Train/test tensors of a task, ready for a model."""

    name: str  # "digits", "mnist", or the npz/txt file stem
    x_train: torch.Tensor  # images: (N, C, H, W) float32, standardised with the train mean/std; tokens: (N, L) int64
    y_train: torch.Tensor  # (N,) int64; empty for causal_lm
    x_test: torch.Tensor  # (M, C, H, W) float32 or (M, L) int64
    y_test: torch.Tensor  # (M,) int64; empty for causal_lm
    num_classes: int  # 0 for causal_lm
    fingerprint: str  # short stable hash of the data, used as a cache key
    note: str = ""  # e.g. "resized 8x8 -> 28x28 (bilinear) for lenet5"
    task: str = "image_classification"  # or "sequence_classification", "causal_lm" (pet_core.metrics.TASKS)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image, or (L,) of one token sequence."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def load_dataset(name: str, data_dir: str | None = None, *, task: str | None = None,
                 vocab_size: int | None = None, max_length: int | None = None,
                 tokenizer_dir: str | Path | None = None) -> Dataset:
    """Load "digits", "mnist" (IDX files in ``data_dir`` / $PET_MNIST_DIR) or a ``.npz`` path.

    ``task`` None or "image_classification" reads images (integer arrays become float images);
    a token task ("sequence_classification", "causal_lm") reads token ids with
    :func:`pet_core.token_data.read_token_dataset`, checked against ``vocab_size`` and
    ``max_length``; a causal_lm ``.txt`` file is tokenised with the tokenizer in ``tokenizer_dir``.
    """
    if task not in (None, "image_classification"):
        from pet_core.token_data import read_token_dataset

        return Dataset(**read_token_dataset(name, task, vocab_size=vocab_size, max_length=max_length,
                                            tokenizer_dir=tokenizer_dir))
    key = str(name).strip()
    if key.lower() == "digits":
        return _load_digits()
    if key.lower() == "mnist":
        folder = data_dir or os.environ.get("PET_MNIST_DIR")
        if not folder:
            raise PetError("MNIST: no data folder given; pass --data-dir or set PET_MNIST_DIR")
        return _load_mnist(str(Path(folder).expanduser().resolve()))
    if key.lower().endswith(".npz"):
        return _load_npz(Path(key).expanduser())
    raise PetError(f"unknown dataset {shown(name)}; use 'digits', 'mnist' or a path to a .npz file")


def fit_input(x: torch.Tensor, min_hw: int) -> torch.Tensor:
    """Bilinear-resize (N,C,H,W) to min_hw x min_hw when H or W is smaller; else return x."""
    _, _, h, w = x.shape
    if h >= min_hw and w >= min_hw:
        return x
    # align_corners=False is the usual image-resize convention (matches PIL's bilinear grid)
    return F.interpolate(x, size=(min_hw, min_hw), mode="bilinear", align_corners=False)  # (N,C,min_hw,min_hw)


def fit_image_model(ds: Dataset, image_size: int, num_channels: int, model_name: str) -> Dataset:
    """``ds`` resized (bilinear, up or down) to exactly ``image_size`` and brought to ``num_channels``.

    A model with a fixed input size (a Hugging Face ViT) needs exactly its size; one-channel images
    are repeated to three for a three-channel model (said in ``note``). Other channel counts that
    differ raise a one-line PetError.
    """
    c, h, w = ds.input_shape
    x_tr, x_te, notes = ds.x_train, ds.x_test, []
    if c != num_channels:
        if c != 1:
            raise PetError(f"{ds.name} has {c}-channel images but {model_name} takes {num_channels} channels")
        x_tr, x_te = x_tr.repeat(1, num_channels, 1, 1), x_te.repeat(1, num_channels, 1, 1)  # (N, C, H, W)
        notes.append(f"grayscale repeated to {num_channels} channels")
    if (h, w) != (image_size, image_size):
        size = (image_size, image_size)
        x_tr = F.interpolate(x_tr, size=size, mode="bilinear", align_corners=False)
        x_te = F.interpolate(x_te, size=size, mode="bilinear", align_corners=False)
        notes.insert(0, f"resized {h}x{w} -> {image_size}x{image_size} (bilinear)")
    if not notes:
        return ds
    return with_note(ds, x_tr, x_te, f"{', '.join(notes)} for {model_name}")


def _make_dataset(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, fingerprint: str
) -> Dataset:
    """Standardise with train statistics (scalar mean/std) and wrap as tensors."""
    x_tr = x_tr.astype(np.float32)  # (N, C, H, W)
    x_te = x_te.astype(np.float32)  # (M, C, H, W)
    mean = float(x_tr.mean())
    std = float(x_tr.std()) or 1.0  # a constant image set would divide by zero
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return Dataset(
        name=name,
        x_train=torch.from_numpy((x_tr - mean) / std),
        y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_test=torch.from_numpy((x_te - mean) / std),
        y_test=torch.from_numpy(y_te.astype(np.int64)),
        num_classes=num_classes,
        fingerprint=fingerprint,
    )


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """sklearn's 1797 8x8 digits, pixel values 0..16 scaled to 0..1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)  # (1797,)
    x_tr, x_te, y_tr, y_te = _stratified_split(x, y)
    return _make_dataset("digits", x_tr, y_tr, x_te, y_te, _fingerprint(x_tr, y_tr, x_te, y_te))


# ---------------------------------------------------------------- MNIST (IDX files)


def _find_idx(folder: Path, stem: str) -> Path:
    """The raw or .gz file for ``stem`` in ``folder``."""
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise PetError(f"MNIST: {stem}(.gz) not found in {folder}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header) into uint8 (n,rows,cols) images or (n,) labels."""
    limit = max_dataset_bytes()
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read(limit + 1)                     # a gzip bomb stops one byte past the budget
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise PetError(f"MNIST: {path.name} is not a readable (gzip) file: {e}") from None
    if len(raw) > limit:
        raise PetError(f"MNIST: {path.name} holds more than {limit:,} bytes (PET_MAX_DATASET_BYTES)")
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise PetError(f"MNIST: {path.name} is truncated ({len(raw)} bytes, header needs {header_len})")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise PetError(f"MNIST: {path.name} has bad magic number {int(header[0])} (expected {magic})")
    dims = tuple(int(d) for d in header[1:])
    need = int(np.prod(dims))
    have = len(raw) - header_len
    if have < need:
        raise PetError(f"MNIST: {path.name} is truncated (header says {need} payload bytes, found {have})")
    return np.frombuffer(raw, dtype=np.uint8, count=need, offset=header_len).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load_mnist(folder_str: str) -> Dataset:
    """Parse the four MNIST IDX files in ``folder_str`` (cached per resolved path)."""
    folder = Path(folder_str)
    if not folder.is_dir():
        raise PetError(f"MNIST: data folder {folder} does not exist; pass --data-dir or set PET_MNIST_DIR")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        magic = IDX_IMAGES_MAGIC if key.startswith("x") else IDX_LABELS_MAGIC
        arrays[key] = _read_idx(_find_idx(folder, stem), magic)
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise PetError(f"MNIST: {split} split has {nx} images but {ny} labels in {folder}")
    fp = _fingerprint(*arrays.values())
    x_tr = (arrays["x_train"].astype(np.float32) / 255.0)[:, None]  # (60000, 1, 28, 28)
    x_te = (arrays["x_test"].astype(np.float32) / 255.0)[:, None]  # (10000, 1, 28, 28)
    return _make_dataset("mnist", x_tr, arrays["y_train"], x_te, arrays["y_test"], fp)


# ---------------------------------------------------------------- user .npz files


def _to_nchw(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Bring (N,H,W), (N,C,H,W) or flat (N,D) arrays to (N,C,H,W)."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x[:, None]  # (N, 1, H, W)
    if x.ndim == 2:
        n, d = x.shape
        s = int(round(d**0.5))
        # a perfect-square feature count is most likely a flattened square image
        return x.reshape(n, 1, s, s) if s * s == d else x.reshape(n, 1, 1, d)
    raise PetError(f"{path.name}: array {key!r} has shape {x.shape}; expected (N,D), (N,H,W) or (N,C,H,W)")


def _load_npz(path: Path) -> Dataset:
    """A user .npz with ``x``/``y`` (and optionally ``x_test``/``y_test``)."""
    if not path.is_file():
        raise PetError(f"dataset file {path} not found")
    arrays, found = read_npz(path, ("x", "y", "x_test", "y_test"))      # sizes checked before loading
    for key in ("x", "y"):
        if key not in arrays:
            raise PetError(f"{path.name}: missing array {key!r}; found keys {shown(found)}")
    x, y = _to_nchw(arrays["x"], path, "x"), _check_labels(arrays["y"], path, "y")
    if len(x) != len(y):
        raise PetError(f"{path.name}: x has {len(x)} samples but y has {len(y)} labels")
    if x.dtype.kind not in "iufb":
        raise PetError(f"{path.name}: array 'x' must be numeric, found dtype {x.dtype}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise PetError(f"{path.name}: give both 'x_test' and 'y_test' or neither; found keys {shown(found)}")
    test = None if "x_test" not in arrays else (_to_nchw(arrays["x_test"], path, "x_test"),
                                                _check_labels(arrays["y_test"], path, "y_test"))
    x_tr, x_te, y_tr, y_te = given_or_split(x, y, test, path.name, "samples")
    fp = _fingerprint(x_tr, y_tr, x_te, y_te)
    return _make_dataset(path.stem, x_tr, y_tr, x_te, y_te, fp)


def with_note(ds: Dataset, x_train: torch.Tensor, x_test: torch.Tensor, note: str) -> Dataset:
    """A copy of ``ds`` with new inputs, a note, and a fingerprint that reflects the change."""
    fp = hashlib.blake2b(f"{ds.fingerprint}|{note}".encode(), digest_size=6).hexdigest()
    return replace(ds, x_train=x_train, x_test=x_test, note=note, fingerprint=fp)
