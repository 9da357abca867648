"""Shared test set-up: a hermetic model cache, and where MNIST lives."""

import os
from pathlib import Path

import pytest
import torch

MNIST_DIR = Path(os.environ.get("PET_MNIST_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Zoo models train into a fresh cache once per test session, never into the user's."""
    old = os.environ.get("PET_CACHE_DIR")
    os.environ["PET_CACHE_DIR"] = str(tmp_path_factory.mktemp("pet_cache"))
    yield
    if old is None:
        os.environ.pop("PET_CACHE_DIR", None)
    else:
        os.environ["PET_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def _hermetic_workspace(tmp_path_factory):
    """The run ledger and run weights go to a fresh workspace, never the user's."""
    old = os.environ.get("PET_WORKSPACE")
    os.environ["PET_WORKSPACE"] = str(tmp_path_factory.mktemp("pet_workspace"))
    yield
    if old is None:
        os.environ.pop("PET_WORKSPACE", None)
    else:
        os.environ["PET_WORKSPACE"] = old


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A fresh workspace (ledger and run weights) for one test module; a module may define its own."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("workspace")
        mp.setenv("PET_WORKSPACE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread: tests run many small ops, and on 2 busy cores OpenMP's spin-waits
    make them up to ~50x slower; benchmarks (bench/) use the machine's threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists() and not (MNIST_DIR / "t10k-labels-idx1-ubyte").exists():
        pytest.skip(f"MNIST not found in {MNIST_DIR} (set PET_MNIST_DIR)")
    return MNIST_DIR
