"""Model files: state_dict / safetensors / TorchScript round trips, trusted pickle, bounded headers, broken files."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from pet_core.errors import PetError
from pet_core.model_io import load_model_file, save_state_dict
from pet_core.zoo import build_model

SHAPE = (1, 8, 8)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape=SHAPE) -> bool:
    x = torch.randn(4, *shape)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def one_line_error(path, **kw) -> str:
    with pytest.raises(PetError) as err:
        load_model_file(path, SHAPE, 10, **kw)
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
@pytest.mark.parametrize("arch", ["lenet_300_100", "mnist_cnn", "resnet_mini"])
def test_state_dict_round_trip_infers_arch(tmp_path, suffix, arch):
    model = build_model(arch, SHAPE, 10, seed=3)
    path = tmp_path / f"m{suffix}"
    save_state_dict(model, path)
    loaded, info = load_model_file(path, SHAPE, 10)
    kind = "safetensors" if suffix == ".safetensors" else "state_dict"
    assert info == {"kind": kind, "arch": arch, "path": str(path)}
    assert not loaded.training and same_outputs(model, loaded)


def test_lenet5_state_dict_for_small_inputs(tmp_path):
    # lenet5 runs on 28x28 (adapt_dataset resizes 8x8 digits), so its weights load for 8x8 data too
    model = build_model("lenet5", (1, 28, 28), 10)
    save_state_dict(model, tmp_path / "l5.safetensors")
    _, info = load_model_file(tmp_path / "l5.safetensors", SHAPE, 10)
    assert info["arch"] == "lenet5"


def test_nested_checkpoint_and_explicit_arch(tmp_path):
    model = build_model("mnist_cnn", SHAPE, 10)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "optimizer": {"lr": 0.1}}, path)
    loaded, info = load_model_file(path, SHAPE, 10, arch="mnist_cnn")
    assert info["arch"] == "mnist_cnn" and same_outputs(model, loaded)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, how):
    model = build_model("resnet_mini", SHAPE, 10)
    example = torch.randn(2, *SHAPE)
    ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, example)
    path = tmp_path / "ts.pt"
    ts.save(str(path))
    loaded, info = load_model_file(path, SHAPE, 10, trust_code=True)
    assert info == {"kind": "torchscript", "arch": None, "path": str(path)}
    assert same_outputs(model, loaded)


def test_pickled_module_needs_trust(tmp_path):
    model = build_model("lenet_300_100", SHAPE, 10)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    msg = one_line_error(path)
    assert "whole.pt holds a pickled module" in msg and "--trust-code" in msg and "PET_TRUST_CODE=1" in msg
    loaded, info = load_model_file(path, SHAPE, 10, trust_code=True)
    assert info["kind"] == "pickle" and same_outputs(model, loaded)
    loaded, info = load_model_file(path, SHAPE, 10, allow_pickle=True)  # the deprecated name still works
    assert info["kind"] == "pickle" and same_outputs(model, loaded)


def test_missing_and_empty(tmp_path):
    assert "not found" in one_line_error(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty.pt is empty" in one_line_error(tmp_path / "empty.pt")


def test_text_file(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights\n" * 5)
    assert "notes.pt is a text file" in one_line_error(tmp_path / "notes.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    save_state_dict(build_model("lenet_300_100", SHAPE, 10), good)
    data = good.read_bytes()
    bad = tmp_path / f"half{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    msg = one_line_error(bad)
    assert f"half{suffix}" in msg and "truncated or corrupt" in msg


def test_truncated_torchscript(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.script(build_model("lenet_300_100", SHAPE, 10)).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "zip archive ended early" in one_line_error(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x07\x00" + os.urandom(4000))
    assert "noise.bin" in one_line_error(path)


def test_state_dict_matching_nothing_names_closest_arch(tmp_path):
    model = build_model("lenet_300_100", SHAPE, 10)
    state = model.state_dict()
    state["fc2.weight"] = torch.zeros(50, 300)  # a narrower hidden layer than the zoo model
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    msg = one_line_error(path)
    assert "matches no zoo architecture" in msg and "closest is lenet_300_100" in msg and "fc2.weight" in msg


def test_wrong_num_classes_and_wrong_arch(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_dict(build_model("mnist_cnn", SHAPE, 10), path)
    with pytest.raises(PetError, match="fc2.weight"):
        load_model_file(path, SHAPE, 3)
    msg = one_line_error(path, arch="lenet_300_100")
    assert "does not match architecture lenet_300_100" in msg


def test_torchscript_with_wrong_output_size(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.script(build_model("lenet_300_100", SHAPE, 5)).save(str(path))
    assert "expected (1, 10)" in one_line_error(path, trust_code=True)


# --- safetensors headers are bounded and checked before the library parses them --------------------

def _safetensors(path, header: dict, data: bytes, length: int | None = None) -> None:
    """A hand-made safetensors file: u64 header length, JSON header, data (the format's spec)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def test_hand_made_safetensors_matches_the_library(tmp_path):
    # the oracle for the cases below: a file written from the spec loads like the library's own
    path = tmp_path / "hand.safetensors"
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    _safetensors(path, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, w.numpy().tobytes())
    from safetensors.torch import load_file

    from pet_core.model_io import _load_safetensors

    assert torch.equal(load_file(str(path))["w"], w) and torch.equal(_load_safetensors(path)["w"], w)


@pytest.mark.parametrize("case, header, data, length, words", [
    ("huge_length", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, 2**62, "exceeds its limit"),
    ("length_past_end", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"", 10_000, "exceeds its limit"),
    ("not_json", None, b"", None, "is not JSON"),
    ("offsets_past_end", {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 40, None,
     "lies outside"),
    ("negative_offset", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4, None, "lies outside"),
    ("size_not_dtype_x_shape", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "not F32 x (3,)"),
    ("unknown_dtype", {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "known dtype"),
    ("not_an_object", [1, 2], b"", None, "not a JSON object"),
])
def test_bad_safetensors_header(tmp_path, case, header, data, length, words):
    path = tmp_path / f"{case}.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", 5) + b"{nope" + data)
    else:
        _safetensors(path, header, data, length)
    msg = one_line_error(path)
    assert f"{case}.safetensors is truncated or corrupt safetensors" in msg and words in msg, msg


def test_safetensors_header_cap(tmp_path, monkeypatch):
    import pet_core.safetensors_header as sh

    path = tmp_path / "big_header.safetensors"
    _safetensors(path, {"__metadata__": {"pad": "x" * 2000}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                 b"\1")
    monkeypatch.setattr(sh, "SAFETENSORS_HEADER_MAX_BYTES", 1000)  # the cap, not the file size, is what refuses
    assert "exceeds its limit of 1,000" in one_line_error(path)
