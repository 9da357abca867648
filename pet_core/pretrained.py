"""Pretrained zoo models: trained once per (model, data, seed) and cached as safetensors + JSON.

The JSON holds the weights' SHA-256: a cached file that fails it is retrained, never loaded. The cache
is bounded (``PET_CACHE_MAX_BYTES``, default 2 GiB): a load touches its files, and after each write
the least recently used weights + JSON pairs are removed until the cache fits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from torch import nn

from pet_core.atomic import atomic_write_bytes, atomic_write_text
from pet_core.data import Dataset
from pet_core.errors import PetError
from pet_core.training import accuracy, train_classifier
from pet_core.zoo import build_model

# bump when an architecture or a training recipe changes, so stale caches are not reused
ZOO_VERSION = 1
CACHE_MAX_BYTES_ENV = "PET_CACHE_MAX_BYTES"
DEFAULT_CACHE_MAX_BYTES = 2 * 1024**3
CHECKSUM_FAILED = "cached weights failed their checksum"

# (epochs, lr, batch_size) per (model, dataset); Adam with a per-step cosine decay to 0.
# Chosen so digits reach >= 95% for every model, and MNIST passes the accuracy floors
# (lenet_300_100 >= 98.0%, mnist_cnn >= 98.5%) with margin in as few epochs as possible.
_RECIPES: dict[tuple[str, str], tuple[int, float, int]] = {
    ("lenet_300_100", "digits"): (20, 2e-3, 64),
    ("lenet5", "digits"): (8, 1e-3, 64),
    ("mnist_cnn", "digits"): (15, 2e-3, 64),
    ("resnet_mini", "digits"): (10, 3e-3, 64),
    ("lenet_300_100", "mnist"): (8, 2e-3, 128),
    ("lenet5", "mnist"): (3, 1e-3, 128),
    ("mnist_cnn", "mnist"): (3, 2e-3, 128),
    ("resnet_mini", "mnist"): (2, 3e-3, 128),
}


def cache_dir() -> Path:
    """$PET_CACHE_DIR, else ~/.cache/pet_studio; created if missing."""
    path = Path(os.environ.get("PET_CACHE_DIR") or Path.home() / ".cache" / "pet_studio").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe(name: str, ds: Dataset) -> tuple[int, float, int]:
    """(epochs, lr, batch_size) used to train ``name`` on ``ds``."""
    if (name, ds.name) in _RECIPES:
        return _RECIPES[(name, ds.name)]
    # user data: aim for roughly 4000 optimiser steps, between 5 and 40 epochs
    steps_per_epoch = max(1, len(ds.y_train) // 128)
    return (min(40, max(5, 4000 // steps_per_epoch)), 2e-3, 128)


def _cache_stem(name: str, ds: Dataset, seed: int) -> str:
    """File stem that changes whenever the model, data, shape, classes, seed or zoo version do."""
    shape = "x".join(str(v) for v in ds.input_shape)
    return f"{name}-{ds.fingerprint}-{shape}-c{ds.num_classes}-s{seed}-v{ZOO_VERSION}"


def cache_max_bytes() -> int:
    """$PET_CACHE_MAX_BYTES, else 2 GiB: the most the model cache may hold."""
    raw = os.environ.get(CACHE_MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise PetError(f"{CACHE_MAX_BYTES_ENV}={raw[:40]!r} is not a whole number of bytes >= 0")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _try_load(name: str, ds: Dataset, seed: int, weights: Path, meta: Path) -> tuple[tuple | None, str | None]:
    """((model, info), None) from the cache; else (None, why it was unusable), the reason None when absent."""
    if not (weights.is_file() and meta.is_file()):
        return None, None
    from safetensors.torch import load_file

    try:
        info = json.loads(meta.read_text())
        digest = _sha256(weights)
    except (OSError, ValueError):
        return None, "cached metadata could not be read"
    if not isinstance(info, dict):
        return None, "cached metadata could not be read"
    if "sha256" not in info:
        return None, "cached weights have no checksum (written by an older version)"
    if info["sha256"] != digest:
        return None, CHECKSUM_FAILED
    try:
        model = build_model(name, ds.input_shape, ds.num_classes, seed=seed)
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception:  # a file that matches its checksum but not the architecture: retrain
        return None, "cached weights do not fit the model"
    for path in (weights, meta):   # least recently used is evicted first
        try:
            os.utime(path)
        except OSError:
            pass
    return (model.eval(), {**info, "cached": True, "path": str(weights)}), None


def evict_cache(keep: str | None = None, limit: int | None = None) -> list[str]:
    """Remove least recently used weights + JSON pairs until the cache holds <= ``limit`` bytes.

    ``keep`` (a file stem) is never removed, so a model larger than the bound stays usable.
    Returns the stems removed, oldest first.
    """
    limit = cache_max_bytes() if limit is None else limit
    pairs: dict[str, list[Path]] = {}
    for path in cache_dir().iterdir():
        if path.suffix in (".safetensors", ".json") and path.is_file():
            pairs.setdefault(path.stem, []).append(path)
    sized = []
    for stem, paths in pairs.items():
        try:
            stats = [p.stat() for p in paths]
        except OSError:   # removed meanwhile by another process
            continue
        sized.append((max(st.st_mtime for st in stats), stem, paths, sum(st.st_size for st in stats)))
    total = sum(entry[3] for entry in sized)
    removed = []
    for _, stem, paths, size in sorted(sized):
        if total <= limit:
            break
        if stem == keep:
            continue
        for path in paths:
            path.unlink(missing_ok=True)
        total -= size
        removed.append(stem)
    return removed


def pretrained(
    name: str, ds: Dataset, *, seed: int = 0, progress: Callable[[dict], None] | None = None
) -> tuple[nn.Module, dict]:
    """A trained ``name`` for the (already adapted) ``ds``: loaded from cache or trained and cached.

    Returns the model (eval mode, CPU) and {accuracy, epochs, train_seconds, dataset, model, cached, path,
    sha256}, plus ``retrained_reason`` when a cached copy existed but could not be used.
    """
    from safetensors.torch import save

    stem = _cache_stem(name, ds, seed)
    weights, meta = cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.json"
    if progress is not None and weights.is_file():
        progress({"stage": "loading"})
    hit, reason = _try_load(name, ds, seed, weights, meta)
    if hit is not None:
        return hit
    if reason is not None and progress is not None:
        progress({"stage": "retraining", "reason": reason})

    epochs, lr, batch_size = recipe(name, ds)
    model = build_model(name, ds.input_shape, ds.num_classes, seed=seed)
    report = (lambda d: progress({**d, "stage": "training"})) if progress is not None else None
    start = time.perf_counter()
    train_classifier(
        model,
        ds.x_train,
        ds.y_train,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=report,
        cosine=True,
    )
    seconds = time.perf_counter() - start
    info = {
        "model": name,
        "dataset": ds.name,
        "accuracy": accuracy(model, ds.x_test, ds.y_test),
        "epochs": epochs,
        "lr": lr,
        "train_seconds": round(seconds, 2),
        "fingerprint": ds.fingerprint,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
        "seed": seed,
        "zoo_version": ZOO_VERSION,
    }
    # safetensors refuses shared or non-contiguous storage, so hand it independent copies
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    info["sha256"] = _sha256(weights)
    atomic_write_text(meta, json.dumps(info, indent=1))
    evict_cache(keep=stem)
    extra = {"retrained_reason": reason} if reason is not None else {}
    return model.eval(), {**info, "cached": False, "path": str(weights), **extra}


def is_cached(name: str, ds: Dataset, *, seed: int = 0) -> bool:
    """Whether ``name`` for ``ds`` is in the model cache and passes its checksum (loading it will not train)."""
    stem = _cache_stem(name, ds, seed)
    weights, meta = cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.json"
    if not (weights.is_file() and meta.is_file()):
        return False
    try:
        info = json.loads(meta.read_text())
        return isinstance(info, dict) and info.get("sha256") == _sha256(weights)
    except (OSError, ValueError):
        return False
