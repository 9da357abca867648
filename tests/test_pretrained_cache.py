"""The model cache: every weights file checked against its SHA-256, and a size bound with LRU eviction.

Oracles: hashlib over the file's bytes; the accuracy of the first training; sizes from os.stat.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from pet_core.data import load_dataset
from pet_core.errors import PetError
from pet_core.pretrained import CHECKSUM_FAILED, cache_max_bytes, evict_cache, pretrained

NAME = "lenet_300_100"   # trains on digits in a few seconds


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("model_cache")
    mp.setenv("PET_CACHE_DIR", str(path))
    mp.delenv("PET_CACHE_MAX_BYTES", raising=False)
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def first(cache, digits):
    """The one clean training of this module: (info, weights bytes)."""
    _, info = pretrained(NAME, digits)
    assert info["cached"] is False and "retrained_reason" not in info
    return info, Path(info["path"]).read_bytes()


def _meta(info: dict) -> dict:
    return json.loads(Path(info["path"]).with_suffix(".json").read_text())


def test_checksum_is_stored_beside_the_weights(first):
    info, data = first
    assert _meta(info)["sha256"] == hashlib.sha256(data).hexdigest() == info["sha256"]


def _retrain_after(first, digits, corrupt) -> dict:
    info, data = first
    path = Path(info["path"])
    path.write_bytes(corrupt(data))
    events = []
    _, again = pretrained(NAME, digits, progress=events.append)
    assert again["cached"] is False and again["retrained_reason"] == CHECKSUM_FAILED
    assert {"stage": "retraining", "reason": CHECKSUM_FAILED} in events
    assert again["accuracy"] == info["accuracy"]                    # the real model again, not the corrupt one
    assert path.read_bytes() == data                                # rewritten bit for bit (seeded training)
    assert pretrained(NAME, digits)[1]["cached"] is True             # and it loads cleanly afterwards
    return again


def test_zeroed_weights_are_retrained(first, digits):
    _retrain_after(first, digits, lambda data: bytes(len(data)))


def test_one_changed_weight_is_retrained(first, digits):
    # still a valid safetensors file that loads: only the checksum can tell
    from safetensors.torch import load

    def flip_last_float(data: bytes) -> bytes:
        changed = data[:-4] + (b"\x00\x00\x80\x3f" if data[-4:] != b"\x00\x00\x80\x3f" else b"\x00\x00\x00\x40")
        assert set(load(changed)) == set(load(data))
        return changed

    _retrain_after(first, digits, flip_last_float)


def _fake_pair(cache: Path, stem: str, size: int, age_s: float) -> None:
    for suffix, n in ((".safetensors", size - 10), (".json", 10)):
        path = cache / f"{stem}{suffix}"
        path.write_bytes(b"x" * n)
        t = time.time() - age_s
        os.utime(path, (t, t))


def _cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".safetensors", ".json"))


def test_lru_eviction_keeps_the_bound(cache, first, digits, monkeypatch):
    info, _ = first
    real = Path(info["path"]).stem
    real_bytes = _cache_bytes(cache)                                # only the real model so far
    for i, age in enumerate([500, 400, 300, 200]):                  # fake_0 is the least recently used
        _fake_pair(cache, f"fake_{i}", 1000, age)
    old = time.time() - 1000
    for suffix in (".safetensors", ".json"):                        # the real model is older than every fake...
        os.utime(cache / f"{real}{suffix}", (old, old))
    assert pretrained(NAME, digits)[1]["cached"] is True            # ...until it is used
    assert (cache / f"{real}.json").stat().st_mtime > time.time() - 60

    limit = real_bytes + 2000
    assert evict_cache(limit=limit) == ["fake_0", "fake_1"]
    assert _cache_bytes(cache) == real_bytes + 2000 <= limit
    assert sorted(p.stem for p in cache.glob("fake_*.json")) == ["fake_2", "fake_3"]

    assert evict_cache(keep=real, limit=0) == ["fake_2", "fake_3"]  # a model over the bound stays usable
    assert _cache_bytes(cache) == real_bytes


def test_eviction_runs_after_each_write(cache, first, digits, monkeypatch):
    info, data = first
    real_bytes = _cache_bytes(cache)                                 # only the real model so far
    _fake_pair(cache, "stale", 1000, 900)
    # The retrained pair is about as big as before, not exactly: its JSON holds train_seconds and the
    # accuracy, whose digits vary run to run. With room for it plus half the stale pair, the stale
    # pair must go whatever those digits are (a bound of "total - 1" failed when the JSON came out shorter).
    monkeypatch.setenv("PET_CACHE_MAX_BYTES", str(real_bytes + 500))
    Path(info["path"]).write_bytes(bytes(len(data)))                 # force a retrain, i.e. a write
    pretrained(NAME, digits)
    assert not (cache / "stale.safetensors").exists() and not (cache / "stale.json").exists()
    assert Path(info["path"]).read_bytes() == data


@pytest.mark.parametrize("raw, want", [("", 2 * 1024**3), ("1000", 1000), ("0", 0)])
def test_cache_max_bytes(monkeypatch, raw, want):
    monkeypatch.setenv("PET_CACHE_MAX_BYTES", raw)
    assert cache_max_bytes() == want


@pytest.mark.parametrize("raw", ["2GB", "-1", "1.5"])
def test_cache_max_bytes_rejects(monkeypatch, raw):
    monkeypatch.setenv("PET_CACHE_MAX_BYTES", raw)
    with pytest.raises(PetError, match="PET_CACHE_MAX_BYTES"):
        cache_max_bytes()
