"""Packed export: bit packing, Huffman coding, per-tensor layouts, the file against the accounting.

The file must hold exactly the layout the size accounting chose: payload bytes (file minus
manifest and container header) equal the accounted bytes, here to the byte, and the loaded model
is bit-equal (``torch.equal`` on every parameter and buffer) to the workbench's working model.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from pet_core.pipeline import compress_layer, factor_product
from pet_core.errors import PetError
from pet_core.loader import load_baseline, open_workbench
from pet_core.methods import METHODS
from pet_core.packed import PACKED_VERSION, load_packed, packed_model_info, save_packed
from pet_core.packed.bits import pack_bits, unpack_bits
from pet_core.packed.huffman import (MAX_CODE_BITS, BitReader, code_lengths, decode_stream, encode_stream,
                                     huffman_bits, huffman_decode, huffman_encode)
from pet_core.packed.tensor_blob import blob_bytes, decode_tensor, encode_tensor, huffman_tensor_bytes, tensor_streams
from pet_core.recipe import Recipe
from pet_core.size import tensor_size
from pet_core.methods.channel import ChannelConfig
from pet_core.methods.low_rank import LowRankConfig
from pet_core.methods.magnitude import MagnitudeConfig
from pet_core.methods.quantize import QuantizeConfig
from pet_core.methods.share import ShareConfig
from pet_core.steps import LayerSpec
from pet_core.workbench import Workbench

RNG = np.random.default_rng(0)


# --- bits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", list(range(1, 33)))
@pytest.mark.parametrize("count", [0, 1, 7, 1000])
def test_pack_bits_round_trip(bits, count):
    values = RNG.integers(0, 2 ** bits, count, dtype=np.uint64)
    data = pack_bits(values, bits)
    assert len(data) == (count * bits + 7) // 8
    assert np.array_equal(unpack_bits(data, bits, count), values)


def test_pack_bits_is_lsb_first_and_checks_widths():
    assert pack_bits(np.array([1, 2, 3]), 2) == bytes([0b00111001])
    with pytest.raises(PetError, match="does not fit"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(PetError, match="too short"):
        unpack_bits(b"\x00", 3, 3)


# --- Huffman ------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 3, 5, 8, 16])
@pytest.mark.parametrize("count", [0, 1, 2, 500, 5000])
def test_huffman_stream_round_trip_and_exact_bits(width, count):
    symbols = np.minimum(RNG.geometric(0.2, count) - 1, 2 ** width - 1)      # skewed, as gaps are
    stream = encode_stream(symbols, width)
    assert stream.size == huffman_bits(symbols, width)
    reader = BitReader(np.concatenate([stream, np.ones(5, np.uint8)]))      # trailing bits are not read
    assert np.array_equal(decode_stream(reader, width, count), symbols)
    assert reader.pos == stream.size


def test_huffman_dict_api_and_single_symbol():
    table, data = huffman_encode(np.array([0, 0, 0, 1, 2]))
    assert table == {0: 1, 1: 2, 2: 2} and len(data) == 1
    assert huffman_decode(table, data, 5).tolist() == [0, 0, 0, 1, 2]
    table, data = huffman_encode(np.full(100, 7))
    assert table == {7: 0} and data == b""                                   # one symbol costs no bits
    assert huffman_decode(table, data, 100).tolist() == [7] * 100


def test_huffman_lengths_are_limited_and_beat_fixed_width_on_skewed_data():
    freqs = (2 ** np.arange(40)).astype(np.int64)                            # a Fibonacci-like worst case
    assert code_lengths(freqs).max() <= MAX_CODE_BITS
    symbols = np.repeat(np.arange(40), (freqs >> 20) + 1)
    assert np.array_equal(decode_stream(BitReader(encode_stream(symbols, 6)), 6, symbols.size), symbols)
    skewed = np.minimum(RNG.geometric(0.3, 10000) - 1, 31)
    assert huffman_bits(skewed, 5) < 0.75 * skewed.size * 5


def test_huffman_decodes_300k_symbols():
    # LeNet-300-100's fc1 size; its speed is a benchmark's business, not a test's
    symbols = np.minimum(RNG.geometric(0.3, 300_000) - 1, 31)
    stream = encode_stream(symbols, 5)
    out = decode_stream(BitReader(stream), 5, symbols.size)
    assert np.array_equal(out, symbols)


# --- one tensor ---------------------------------------------------------------------------------

SPECS = {
    "prune_int4": LayerSpec(prune=MagnitudeConfig(sparsity=0.9, scope="layer"), quantize=QuantizeConfig(4)),
    "prune_share32": LayerSpec(prune=MagnitudeConfig(sparsity=0.9, scope="layer"), share=ShareConfig(32)),
    "light_prune_share32": LayerSpec(prune=MagnitudeConfig(sparsity=0.1, scope="layer"), share=ShareConfig(32)),
    "light_prune_asym3": LayerSpec(prune=MagnitudeConfig(sparsity=0.1, scope="layer"), quantize=QuantizeConfig(3, "asymmetric")),
    "prune_1bit": LayerSpec(prune=MagnitudeConfig(sparsity=0.95, scope="layer"), quantize=QuantizeConfig(1)),
    "prune_fp32": LayerSpec(prune=MagnitudeConfig(sparsity=0.5, scope="layer")),
    "asym8_tensor": LayerSpec(quantize=QuantizeConfig(8, "asymmetric", "per_tensor")),
    "channel_share8": LayerSpec(prune=ChannelConfig(method="l1_channel", sparsity=0.25), share=ShareConfig(8)),
    "low_rank_int16": LayerSpec(low_rank=LowRankConfig(rank=8), quantize=QuantizeConfig(16)),
    "sparse_asym2": LayerSpec(prune=MagnitudeConfig(sparsity=0.97, scope="layer"), quantize=QuantizeConfig(2, "asymmetric")),
    "identity_fp32": LayerSpec(low_rank=LowRankConfig(rank=3)),
}
# Every registered method's own example, alone and (for prune methods) with int4 codes: a new method
# is in the matrix without editing this file.
for _m in METHODS.values():
    SPECS[f"{_m.name}_example"] = LayerSpec(**{_m.step: _m.make_config(**_m.example)})
    if _m.step == "prune":
        SPECS[f"{_m.name}_example_int4"] = LayerSpec(prune=_m.make_config(**_m.example), quantize=QuantizeConfig(4))


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("shape", [(64, 50), (16, 8, 3, 3)])
def test_tensor_blob_round_trip(spec, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for t in compress_layer(w, None, SPECS[spec]).tensors:
        for huffman in (False, True):
            blob, meta = encode_tensor(t, huffman)
            assert torch.equal(decode_tensor(blob, meta), t.values)
            assert len(blob) == blob_bytes(tensor_streams(t), huffman)
            accounted = tensor_size(t).size_bytes
            # only the zero flags (no free zero code) may exceed the accounting
            assert len(blob) <= (huffman_tensor_bytes(t) if huffman else accounted + (meta["escape_bits"] + 7) // 8)
            if not huffman and meta["escape_bits"] == 0:
                assert len(blob) == accounted
            assert meta["layout"] == tensor_size(t).encoding.split("-")[0]


def test_factor_product_is_the_matmul_in_a_fixed_order():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g).t()   # b not contiguous
    assert torch.allclose(factor_product(a, b), a @ b, atol=1e-5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = factor_product(a, b)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(two, factor_product(a.contiguous(), b.contiguous()))


# --- whole models on digits ---------------------------------------------------------------------

RECIPES = {
    "prune_int4": {"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}},
    "prune_share32": {"prune": {"sparsity": 0.9}, "share": {"clusters": 32}},
    "int8_per_channel": {"quantize": {"bits": 8, "granularity": "per_channel"}},
    "low_rank8_int8": {"low_rank": {"rank": 8}, "quantize": {"bits": 8}},
    "channel_int6": {"prune": {"method": "l1_channel", "sparsity": 0.5}, "quantize": {"bits": 6}},
    **{f"{m.name}_example_int8": {m.step: m.example_fields(), **({"quantize": {"bits": 8}} if m.step == "prune" else {})}
       for m in METHODS.values()},
}
MODELS = ["lenet_300_100", "mnist_cnn", "resnet_mini"]


@pytest.fixture(scope="module")
def baselines():
    return {name: load_baseline(name, "digits") for name in MODELS}


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("name", MODELS)
def test_save_load_bit_equal_and_sized_as_accounted(baselines, tmp_path, name, recipe):
    base = baselines[name]
    wb = open_workbench(base)
    wb.apply(Recipe(model=name, default=RECIPES[recipe]))
    report = wb.report()
    for huffman in (False, True):
        out = save_packed(wb, tmp_path / "m.pet", huffman=huffman, model_info=packed_model_info(base))
        accounted = report["compressed"]["size_bytes_huffman" if huffman else "size_bytes"]
        assert out["accounted_bytes"] == accounted
        assert out["file_bytes"] == (tmp_path / "m.pet").stat().st_size
        assert abs(out["file_bytes"] - accounted - out["header_bytes"]) <= 0.01 * accounted
        model, info = load_packed(tmp_path / "m.pet")
        got, want = model.state_dict(), wb.model.state_dict()
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
        assert wb.evaluate(model) == report["compressed"]["accuracy"]
        assert info["recipe"] == wb.recipe.to_dict() and info["huffman"] is huffman
        assert info["model"]["arch"] == name and info["version"] == PACKED_VERSION
    assert report["compressed"]["size_bytes_huffman"] <= report["compressed"]["size_bytes"]


def test_report_keeps_its_fields_and_adds_the_huffman_size(baselines):
    wb = open_workbench(baselines["lenet_300_100"])
    rep = wb.report(accuracy=0.0)
    assert rep["compressed"]["size_bytes_huffman"] == rep["compressed"]["size_bytes"]   # fp32: nothing to code
    wb.apply(Recipe(default=RECIPES["prune_share32"]))
    rep = wb.report(accuracy=0.0)
    assert rep["compressed"]["size_bytes_huffman"] < 0.95 * rep["compressed"]["size_bytes"]
    assert rep["compressed"]["size_bytes"] == sum(r["size_bytes"] for r in rep["layers"])


# --- refusing damaged files and other models -----------------------------------------------------

@pytest.fixture(scope="module")
def packed_file(baselines, tmp_path_factory):
    base = baselines["lenet_300_100"]
    wb = open_workbench(base)
    wb.apply(Recipe(default=RECIPES["prune_share32"]))
    path = tmp_path_factory.mktemp("packed") / "lenet.pet"
    out = save_packed(wb, path, huffman=True, model_info=packed_model_info(base))
    return path, out


def _damaged(tmp_path, data: bytes) -> str:
    bad = tmp_path / "bad.pet"
    bad.write_bytes(data)
    with pytest.raises(PetError) as err:
        load_packed(bad)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_truncated_file_is_refused(packed_file, tmp_path):
    path, out = packed_file
    data = path.read_bytes()
    assert "truncated" in _damaged(tmp_path, data[:-10])
    assert "truncated" in _damaged(tmp_path, data[:out["header_bytes"] - 5])
    assert "not a PET packed file" in _damaged(tmp_path, data[:5])


def test_flipped_byte_in_a_blob_is_refused(packed_file, tmp_path):
    path, out = packed_file
    data = bytearray(path.read_bytes())
    data[out["header_bytes"] + out["payload_bytes"] // 2] ^= 0x10
    assert "damaged" in _damaged(tmp_path, bytes(data))


def test_flipped_byte_in_the_manifest_is_refused(packed_file, tmp_path):
    path, out = packed_file
    data = bytearray(path.read_bytes())
    data[60] ^= 0x01                                                        # inside the manifest (header is 48)
    assert "manifest is damaged" in _damaged(tmp_path, bytes(data))


def test_wrong_magic_and_version_are_refused(packed_file, tmp_path):
    path, _ = packed_file
    data = path.read_bytes()
    assert "bad magic" in _damaged(tmp_path, b"PK\x03\x04" + data[4:])
    newer = data[:8] + (PACKED_VERSION + 1).to_bytes(2, "little") + data[10:]
    assert "version" in _damaged(tmp_path, newer)
    with pytest.raises(PetError, match="not found"):
        load_packed(tmp_path / "missing.pet")


def test_non_zoo_model_is_refused(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    wb = Workbench(model, torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    wb.apply(Recipe(default=RECIPES["prune_int4"]))
    info = dict(input_shape=(1, 8, 8), num_classes=10)
    for arch in (None, "my_mlp"):
        with pytest.raises(PetError, match="not a zoo architecture") as err:
            save_packed(wb, tmp_path / "x.pet", model_info=dict(info, arch=arch))
        assert "\n" not in str(err.value)
    with pytest.raises(PetError, match="does not match zoo lenet_300_100"):
        save_packed(wb, tmp_path / "x.pet", model_info=dict(info, arch="lenet_300_100"))
    assert not (tmp_path / "x.pet").exists()


def test_packed_file_loads_as_a_user_model(packed_file, baselines):
    from pet_core.model_io import load_model_file

    path, _ = packed_file
    direct, _ = load_packed(path)
    model, info = load_model_file(path, (1, 8, 8), 10)
    assert info["kind"] == "packed" and info["arch"] == "lenet_300_100"
    for (k, v), (_, w) in zip(direct.state_dict().items(), model.state_dict().items()):
        assert torch.equal(v, w), k


# --- bounds: nothing is allocated for what a manifest merely claims --------------------------------

def _with_manifest(data: bytes, header_bytes: int, change) -> bytes:
    """``data`` with its manifest rewritten by ``change(manifest)``; checksums made valid again."""
    import hashlib
    import json
    import struct
    import zlib

    manifest = json.loads(zlib.decompress(data[48:header_bytes]))
    change(manifest)
    body = zlib.compress(json.dumps(manifest).encode())
    head = struct.pack("<8sHHI32s", data[:8], PACKED_VERSION, 0, len(body), hashlib.sha256(body).digest())
    return head + body + data[header_bytes:]


def test_a_manifest_asking_for_a_huge_model_is_refused_before_building_it(packed_file, tmp_path):
    path, out = packed_file
    data = path.read_bytes()
    big = _with_manifest(data, out["header_bytes"], lambda m: m["model"].update(input_shape=[3, 1024, 1024]))
    message = _damaged(tmp_path, big)
    assert "943,749,810 values" in message and "PET_MAX_PACKED_VALUES" in message     # 3*1024*1024*300 + ...


def test_limits_come_from_the_environment(packed_file, monkeypatch):
    path, out = packed_file
    monkeypatch.setenv("PET_MAX_PACKED_VALUES", "1000")
    with pytest.raises(PetError, match="more than the 1,000 allowed"):
        load_packed(path)
    monkeypatch.delenv("PET_MAX_PACKED_VALUES")
    monkeypatch.setenv("PET_MAX_PACKED_BYTES", str(out["file_bytes"] - 1))
    with pytest.raises(PetError, match="PET_MAX_PACKED_BYTES"):
        load_packed(path)
    monkeypatch.setenv("PET_MAX_PACKED_BYTES", str(out["file_bytes"]))
    assert load_packed(path)[1]["file_bytes"] == out["file_bytes"]


def test_a_blob_table_pointing_outside_the_payload_is_refused(packed_file, tmp_path):
    path, out = packed_file
    bad = _with_manifest(path.read_bytes(), out["header_bytes"], lambda m: m["blobs"][0].__setitem__(1, 10**12))
    assert "payload" in _damaged(tmp_path, bad)


def test_the_boundary_turns_an_unexpected_error_into_one_line(packed_file, monkeypatch):
    import pet_core.packed.decode as decode

    def broken(box):
        raise KeyError("somewhere\ndeep")

    monkeypatch.setattr(decode, "model_from_container", broken)
    with pytest.raises(PetError, match="malformed") as err:
        load_packed(packed_file[0])
    assert "\n" not in str(err.value)
