"""The shared helpers: the one top-1 accuracy loop and the one atomic file writer."""

from __future__ import annotations

import doctest
import os
import stat

import numpy as np
import pytest
import torch
from torch import nn

import pet_core.accuracy
import pet_core.atomic
from pet_core.accuracy import top1_accuracy
from pet_core.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from pet_core.training import accuracy


# --- top1_accuracy ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(37, 6)
    y = torch.randint(0, 4, (37,))
    return model, x, y


def _hand_count(model, x, y) -> float:
    """The oracle: one item at a time, plain Python comparisons."""
    hits = 0
    with torch.no_grad():
        for xi, yi in zip(x, y):
            scores = model(xi[None])[0].tolist()
            hits += scores.index(max(scores)) == int(yi)
    return hits / len(y)


@pytest.mark.parametrize("batch_size", [1, 5, 36, 37, 512])
def test_top1_accuracy_is_the_hand_count(tiny, batch_size):
    model, x, y = tiny
    expected = _hand_count(model, x, y)
    assert 0.0 < expected < 1.0  # the oracle is not a trivial 0 or 1
    assert top1_accuracy(model, x, y, batch_size=batch_size) == expected
    assert accuracy(model, x, y, batch_size=batch_size) == expected


def test_top1_accuracy_takes_a_numpy_predict_callable(tiny):
    """The ONNX path: a callable on numpy batches returning numpy logits, numpy labels."""
    model, x, y = tiny
    seen = []

    def predict(xb: np.ndarray) -> np.ndarray:
        seen.append(len(xb))
        with torch.no_grad():
            return model(torch.from_numpy(xb)).numpy()

    assert top1_accuracy(predict, x.numpy(), y.numpy(), batch_size=16) == _hand_count(model, x, y)
    assert seen == [16, 16, 5]


def test_top1_accuracy_of_nothing_is_zero(tiny):
    model, x, y = tiny
    assert top1_accuracy(model, x[:0], y[:0]) == 0.0
    assert accuracy(model, x[:0], y[:0]) == 0.0


def test_top1_accuracy_leaves_the_mode_and_training_accuracy_sets_eval(tiny):
    model, x, y = tiny
    model.train()
    try:
        top1_accuracy(model, x, y)
        assert model.training
        accuracy(model, x, y)
        assert not model.training
    finally:
        model.eval()


# --- atomic_write --------------------------------------------------------------------------------

def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    assert atomic_write(path, lambda f: f.write(b"new"), fsync=True) == path
    assert path.read_bytes() == b"new"
    assert atomic_write_text(tmp_path / "t.json", '{"a": 1}').read_text() == '{"a": 1}'
    assert sorted(os.listdir(tmp_path)) == ["f.bin", "t.json"]  # no temporary file left


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")

    def half_then_fail(f):
        f.write(b"half of the new")
        f.flush()
        assert any(p.name.startswith("f.bin.") and p.suffix == ".tmp" for p in tmp_path.iterdir())
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # the temporary file is gone


def test_atomic_write_with_no_previous_file_leaves_none_on_failure(tmp_path):
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", lambda f: (_ for _ in ()).throw(ValueError("no")))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_prefix_and_mode(tmp_path):
    names = []

    def write(f):
        names.extend(n for n in os.listdir(tmp_path) if n != "m.onnx")
        f.write(b"x")

    path = atomic_write_bytes(tmp_path / "m.onnx", b"", prefix=".tmp-", mode=0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write(tmp_path / "m.onnx", write, prefix=".tmp-")
    assert len(names) == 1 and names[0].startswith(".tmp-") and names[0].endswith(".tmp")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # mkstemp's owner-only default


# --- the docstring examples ------------------------------------------------------------------------

@pytest.mark.parametrize("module", [pet_core.accuracy, pet_core.atomic])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
