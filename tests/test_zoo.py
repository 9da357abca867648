"""Zoo models: shapes for every architecture, dataset adaptation, and cached pretraining."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pet_core.data import load_dataset
from pet_core.errors import PetError
from pet_core.pretrained import cache_dir, pretrained
from pet_core.zoo import adapt_dataset, build_model, list_models, model_info

MODEL_NAMES = [m.name for m in list_models()]
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private model cache for this module, restored afterwards."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("zoo_cache")
    mp.setenv("PET_CACHE_DIR", str(path))
    yield path
    mp.undo()


def test_registry_has_the_four_models():
    assert {"lenet_300_100", "lenet5", "mnist_cnn", "resnet_mini"} <= set(MODEL_NAMES)
    assert model_info("lenet5").min_hw == 28
    with pytest.raises(PetError, match="unknown model 'vgg'.*lenet5"):
        model_info("vgg")


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 10)])
def test_build_and_forward(name, shape):
    side = model_info(name).min_hw
    shape = (shape[0], max(shape[1], side), max(shape[2], side))  # what adapt_dataset gives
    model = build_model(name, shape, 7)
    assert not model.training
    assert model(torch.randn(5, *shape)).shape == (5, 7)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_is_seeded(name):
    shape = (1, 28, 28)
    a, b, c = (build_model(name, shape, 10, seed=s) for s in (0, 0, 1))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_layer_names_are_readable():
    assert [k for k in build_model("lenet_300_100", (1, 8, 8), 10).state_dict() if k.endswith("weight")] == [
        "fc1.weight",
        "fc2.weight",
        "fc3.weight",
    ]
    keys = build_model("resnet_mini", (1, 8, 8), 10).state_dict()
    assert {"stem.conv.weight", "block1.conv1.weight", "block2.shortcut.conv.weight", "fc.weight"} <= set(keys)
    assert build_model("lenet5", (1, 28, 28), 10).fc1.in_features == 50 * 4 * 4


def test_too_small_input_is_a_pet_error():
    with pytest.raises(PetError, match="at least 28x28"):
        build_model("lenet5", (1, 8, 8), 10)


def test_adapt_dataset_resizes_only_lenet5_on_digits(digits):
    for name in MODEL_NAMES:
        ds = adapt_dataset(digits, name)
        if name == "lenet5":
            assert ds.input_shape == (1, 28, 28) and ds.x_test.shape == (450, 1, 28, 28)
            assert "8x8 -> 28x28" in ds.note and ds.fingerprint != digits.fingerprint
            assert torch.equal(ds.y_train, digits.y_train)
        else:
            assert ds is digits


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_digits_accuracy_and_cache(name, digits, cache):
    ds = adapt_dataset(digits, name)
    stages = []
    model, info = pretrained(name, ds, progress=lambda d: stages.append(d.get("stage")))
    assert info["accuracy"] >= 0.95, info
    assert info["cached"] is False and "training" in stages and not model.training
    assert info["model"] == name and info["dataset"] == "digits" and info["train_seconds"] > 0
    assert str(cache_dir()) == str(cache)

    stages.clear()
    again, info2 = pretrained(name, ds, progress=lambda d: stages.append(d.get("stage")))
    assert info2["cached"] is True and stages == ["loading"]
    assert info2["accuracy"] == info["accuracy"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_corrupt_cache_is_retrained(digits, cache):
    name = "lenet_300_100"
    model, info = pretrained(name, digits)  # cached by the test above, or trained now
    with open(info["path"], "r+b") as f:
        f.truncate(100)  # a half-written weights file
    again, info2 = pretrained(name, digits)
    assert info2["cached"] is False and info2["accuracy"] >= 0.95
    assert pretrained(name, digits)[1]["cached"] is True


def test_cache_key_depends_on_seed(digits, cache):
    _, a = pretrained("lenet_300_100", digits, seed=0)
    # only compare file names: training seed 1 would cost time for no extra coverage
    from pet_core.pretrained import _cache_stem

    assert _cache_stem("lenet_300_100", digits, 1) not in a["path"]
    assert _cache_stem("lenet_300_100", digits, 0) in a["path"]


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("lenet_300_100", 0.98), ("mnist_cnn", 0.985)])
def test_mnist_accuracy_floors(name, floor, cache):
    folder = os.environ.get("PET_MNIST_DIR") or str(SHARED_MNIST)
    if not Path(folder).is_dir():
        pytest.skip(f"real MNIST not found in {folder} (set PET_MNIST_DIR)")
    ds = adapt_dataset(load_dataset("mnist", folder), name)
    model, info = pretrained(name, ds)
    assert info["accuracy"] >= floor, info
