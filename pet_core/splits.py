"""Array helpers shared by image and token datasets: label checks, fingerprints, the train/test split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pet_core.errors import PetError


def fingerprint(*arrays: np.ndarray) -> str:
    """Short stable hash over array shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=6)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stratified_split(x: np.ndarray, y: np.ndarray):
    """Fixed 75/25 stratified split (random_state=0); falls back to unstratified for tiny classes."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    except ValueError:
        # a class with a single sample cannot be stratified; still give a deterministic split
        return train_test_split(x, y, test_size=0.25, random_state=0)


def check_labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Labels must be a 1-D array of non-negative integers."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # column vectors of labels are common in exported data
    if y.ndim != 1:
        raise PetError(f"{path.name}: labels {key!r} have shape {y.shape}; expected (N,)")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)  # whole-number floats are labels saved with the wrong dtype
        else:
            raise PetError(f"{path.name}: labels {key!r} must be integers 0..K-1, found dtype {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise PetError(f"{path.name}: labels {key!r} must be integers 0..K-1, found negative value {int(y.min())}")
    return y.astype(np.int64)


__all__ = ["check_labels", "fingerprint", "stratified_split"]


def given_or_split(x: np.ndarray, y: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None, where: str,
                   unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): the file's own test split, checked against the training
    one, or a stratified 75/25 split of at least 4 ``unit`` ("samples", "sequences")."""
    if test is None:
        if len(x) < 4:
            raise PetError(f"{where}: only {len(x)} {unit}; need at least 4 to split train/test")
        return stratified_split(x, y)
    x_te, y_te = test
    if len(x_te) != len(y_te):
        raise PetError(f"{where}: x_test has {len(x_te)} {unit} but y_test has {len(y_te)} labels")
    if x_te.shape[1:] != x.shape[1:]:
        raise PetError(f"{where}: x_test {unit} have shape {x_te.shape[1:]} but x has {x.shape[1:]}")
    return x, x_te, y, y_te
