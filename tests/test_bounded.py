"""Bounded parsing: bombs refused by the CLI in little memory, and each budget checked on its own.

The three attacks of issue 8 are rebuilt here byte for byte small: a YAML recipe under 1 KB whose
anchors expand to 12^9 strings, a packed file of ~2 MB whose zlib manifest inflates to 2 GiB,
and a ~2 MB ``.npz`` whose array inflates to 2.2 GB. Each must make ``python -m pet_core``
exit 2 with one line on stderr while the process never holds 1 GiB (its peak RSS, read with
``getrusage(RUSAGE_CHILDREN)`` in a wrapper process that runs only the CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from pet_core.bounded import MAX_ALIASES, MAX_DEPTH, env_bytes, inflate, load_yaml, shown, shown_key
from pet_core.data import load_dataset
from pet_core.errors import PetError
from pet_core.packed.container import MAGIC, PACKED_VERSION
from pet_core.recipe import MAX_TOKEN_CHARS, Recipe, from_token, load, loads, to_token

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
ANCHOR_BOMB = """pet_recipe: 1
default:
  prune:
    sparsity:
      - &a0 ["lolololololololololololol", "lolololololololololololol"]
      - &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
      - &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
      - &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]
      - &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]
      - &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
      - &a6 [*a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5]
      - [*a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6]
"""
# Runs the command given in argv and reports its exit code, stderr and peak RSS: this wrapper's
# only child is the CLI, so RUSAGE_CHILDREN's ru_maxrss is the CLI's own peak.
WRAPPER = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=240)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(dict(rc=proc.returncode, stderr=proc.stderr,
                      peak_bytes=peak if sys.platform == "darwin" else peak * 1024)))
"""


def cli_peak(*args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "pet_core", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_refused_small(out: dict, needle: str) -> None:
    assert out["rc"] == 2, out["stderr"][-2000:]
    lines = out["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out["stderr"][-2000:]
    assert len(lines[0]) < 600
    assert out["peak_bytes"] < GIB, f"peak RSS {out['peak_bytes'] / GIB:.2f} GiB"


def zlib_zeros(n_chunks: int, chunk: int = 1 << 20, raw: bool = False, prefix: bytes = b"") -> bytes:
    """A zlib (or raw deflate) stream of ``prefix`` + ``n_chunks * chunk`` zero bytes, built in milliseconds.

    One chunk is compressed with a full flush (no reference to earlier data), so its deflate
    blocks can be repeated; the zlib trailer's Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    """
    wbits = -15 if raw else 15
    first = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = first.compress(prefix) + first.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(bytes(chunk)) + zeros.flush(zlib.Z_FULL_FLUSH)
    body = head + block * n_chunks + b"\x03\x00"                               # final empty fixed block
    if raw:
        return body
    assert not prefix
    n = n_chunks * chunk
    return body + (((n % 65521) << 16) | 1).to_bytes(4, "big")


def test_zlib_zeros_is_what_it_claims():
    data = zlib_zeros(3, chunk=1000)
    assert zlib.decompress(data) == bytes(3000)
    assert zlib.decompress(zlib_zeros(2, chunk=64, raw=True, prefix=b"ab"), -15) == b"ab" + bytes(128)


def packed_bomb(path: Path, n_chunks: int) -> None:
    manifest = zlib_zeros(n_chunks)
    path.write_bytes(struct.pack("<8sHHI32s", MAGIC, PACKED_VERSION, 0, len(manifest),
                                 hashlib.sha256(manifest).digest()) + manifest)


def npz_bomb(path: Path, values: int, chunk: int = 1 << 20) -> None:
    """An .npz whose x.npy (uint8, ``values`` zeros, deflated) is a tiny file, CRC and sizes all valid."""
    values -= values % chunk
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % values
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy_head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    data = zlib_zeros(values // chunk, chunk, raw=True, prefix=npy_head)
    crc, zeros = zlib.crc32(npy_head), bytes(chunk)
    for _ in range(values // chunk):
        crc = zlib.crc32(zeros, crc)
    size, name = len(npy_head) + values, b"x.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


# --- the three bombs, through the CLI ---------------------------------------------------------------

def test_anchor_bomb_recipe_is_refused_by_the_cli(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(ANCHOR_BOMB)
    assert path.stat().st_size < 1024
    out = cli_peak("evaluate", "--recipe", str(path))
    assert_refused_small(out, "aliases")


def test_packed_manifest_zlib_bomb_is_refused_by_the_cli(tmp_path):
    path = tmp_path / "bomb.petz"
    packed_bomb(path, 2048)                                                    # inflates to 2 GiB
    assert path.stat().st_size < 3 << 20
    out = cli_peak("evaluate", "--model", str(path), "--dataset", "digits")
    assert_refused_small(out, "inflates to more than")


def test_npz_bomb_is_refused_by_the_cli(tmp_path):
    path = tmp_path / "bomb.npz"
    npz_bomb(path, 2_200_000_000)
    assert path.stat().st_size < 3 << 20
    with zipfile.ZipFile(path) as z:                                           # a well-formed archive
        assert z.getinfo("x.npy").file_size > 2_000_000_000
    out = cli_peak("evaluate", "--dataset", str(path))
    assert_refused_small(out, "PET_MAX_DATASET_BYTES")


# --- shown: what a message quotes -----------------------------------------------------------------

@pytest.mark.parametrize("value", [None, True, 0, -3, 2.5, float("nan"), "fc1", "", [1, "a"], {"a": [1, 2]}, (1,),
                                   (), set(), {3}, [[1, [2]], {}]])
def test_shown_is_repr_for_small_values(value):
    assert shown(value) == repr(value)


@pytest.mark.parametrize("make", [lambda: list(range(10**6)), lambda: 10**5000, lambda: "x" * 10**6,
                                  lambda: {i: [i] * 100 for i in range(1000)}, lambda: b"\x00" * 10**6],
                         ids=["list", "int", "str", "dict", "bytes"])
def test_shown_is_short_for_huge_values(make):
    assert len(shown(make())) <= 200


def test_shown_survives_deep_and_self_referencing_values():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep) == "[[[[...]]]]"
    loop: list = []
    loop.append(loop)
    assert len(shown(loop)) <= 200


def test_shown_key_keeps_messages_on_one_line():
    assert shown_key("fc1") == "fc1"
    assert "\n" not in shown_key("a\nb") and "\n" not in shown_key("x" * 1000 + "\n")
    assert len(shown_key("x" * 1000)) == 60


# --- YAML: the same data as safe_load, within budgets ---------------------------------------------

def test_load_yaml_matches_safe_load_with_a_few_anchors():
    text = """
base: &base {prune: {sparsity: 0.5}, quantize: {bits: 4}}
layers:
  fc1: *base
  fc2: {<<: *base, share: {clusters: 8}}
dates: [2001-01-01, 0x1F, 1_000, .inf, ~]
"""
    assert load_yaml(text) == yaml.safe_load(text)


# ten aliases a level, six levels: 10^6 values from 60 aliases, under the alias budget
EXPANDING = "b0: &b0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
    f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 7))


@pytest.mark.parametrize("text, needle", [
    ("a: &a [*a]", "refers to itself"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "deeper"),
    ("a: &a [1]\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]", "aliases"),
    (EXPANDING, "expands to more than"),
    ("pet_recipe: 2001-13-45", "not valid YAML"),
    ("x: " + "9" * 5000, "not valid YAML"),
    ("\x1f", "not valid YAML"),
])
def test_load_yaml_refuses(text, needle):
    with pytest.raises(PetError, match=needle) as err:
        load_yaml(text)
    assert "\n" not in str(err.value)


def test_recipe_text_and_file_over_one_mib_are_refused(tmp_path):
    big = "pet_recipe: 1\n" + "#" * (1 << 20)
    with pytest.raises(PetError, match="more than the 1,048,576 allowed"):
        loads(big)
    (tmp_path / "big.yaml").write_text(big)
    with pytest.raises(PetError, match="big.yaml is .* bytes, more than"):
        load(tmp_path / "big.yaml")


# --- values: huge, non-finite, bools --------------------------------------------------------------

@pytest.mark.parametrize("step, fields, needle", [
    ("prune", {"sparsity": 10**400}, "<integer of about 401 digits> is out of range"),
    ("low_rank", {"rank": 10**400}, "out of range"),
    ("low_rank", {"rank": 2**53 + 1}, "out of range"),
    ("prune", {"threshold": float("inf")}, "inf is out of range (allowed: [0, inf))"),
    ("quantize", {"bits": True}, "must be an integer"),
    ("share", {"clusters": 16.5}, "must be an integer"),
    ("quantize", {"scheme": ["symmetric"]}, "is not allowed"),
])
def test_bad_field_values(step, fields, needle):
    with pytest.raises(PetError) as err:
        Recipe.from_dict({"pet_recipe": 1, "default": {step: fields}})
    assert needle in str(err.value)


@pytest.mark.parametrize("version", [True, 1.0, "1", 10**400], ids=["true", "float", "str", "huge"])
def test_version_must_be_the_integer_one(version):
    with pytest.raises(PetError, match="pet_recipe"):
        Recipe.from_dict({"pet_recipe": version})


def test_messages_quote_at_most_200_characters_of_a_value():
    for data in ({"pet_recipe": 1, "model": "m" * 10**5}, {"pet_recipe": 1, "layers": ["x" * 10**5]},
                 {"pet_recipe": 1, "default": {"prune": {"sparsity": list(range(10**5))}}},
                 {"pet_recipe": 1, "finetune": {"techniques": {"lora": {"layers": "x" * 10**5}}}},
                 {"pet_recipe": 1, "layers": {"x" * 10**5: {"prune": {"sparsity": 2}}}}):
        with pytest.raises(PetError) as err:
            Recipe.from_dict(data)
        assert len(str(err.value)) < 400


# --- share tokens ---------------------------------------------------------------------------------

def test_token_length_and_inflated_size_are_capped():
    with pytest.raises(PetError, match="too long"):
        from_token("A" * (MAX_TOKEN_CHARS + 1))
    import base64
    bomb = base64.urlsafe_b64encode(zlib_zeros(8)).decode()                   # 8 MiB of zeros in ~8 KB
    assert len(bomb) < MAX_TOKEN_CHARS
    with pytest.raises(PetError, match="inflates to more than 1,048,576 bytes"):
        from_token(bomb)
    recipe = Recipe(default={"prune": {"sparsity": 0.5}})
    assert from_token(to_token(recipe)) == recipe


def test_inflate_is_exact_below_the_cap_and_refuses_damage():
    data = zlib.compress(b"abc" * 1000)
    assert inflate(data, 3000, "x") == zlib.decompress(data)
    with pytest.raises(PetError, match="more than 2,999"):
        inflate(data, 2999, "x")
    with pytest.raises(PetError, match="damaged"):
        inflate(data[:-3], 10**6, "x")
    with pytest.raises(PetError, match="damaged"):
        inflate(data + b"tail", 10**6, "x")


def test_env_bytes(monkeypatch):
    for text, expect in (("", 7), ("1024", 1024), ("2K", 2048), ("3M", 3 << 20), ("1g", 1 << 30)):
        monkeypatch.setenv("PET_TEST_LIMIT", text)
        assert env_bytes("PET_TEST_LIMIT", 7) == expect
    monkeypatch.setenv("PET_TEST_LIMIT", "lots")
    with pytest.raises(PetError, match="PET_TEST_LIMIT"):
        env_bytes("PET_TEST_LIMIT", 7)


# --- npz ------------------------------------------------------------------------------------------

def _xy(n: int = 40):
    rng = np.random.default_rng(0)
    return rng.random((n, 4, 4)).astype(np.float32), np.arange(n) % 2


def test_npz_over_the_budget_is_refused_before_loading(tmp_path, monkeypatch):
    x, y = _xy()
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    assert load_dataset(str(tmp_path / "d.npz")).x_train.shape[1:] == (1, 4, 4)
    monkeypatch.setenv("PET_MAX_DATASET_BYTES", str(x.nbytes - 1))
    with pytest.raises(PetError, match="PET_MAX_DATASET_BYTES"):
        load_dataset(str(tmp_path / "d.npz"))


def test_npz_object_array_and_bzip2_member_are_refused(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "o.npz", x=x, y=np.array([object()] * len(y), dtype=object))
    with pytest.raises(PetError, match="Python objects"):
        load_dataset(str(tmp_path / "o.npz"))
    with zipfile.ZipFile(tmp_path / "b.npz", "w", compression=zipfile.ZIP_BZIP2) as z:
        for name, array in (("x", x), ("y", y)):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, array)
    with pytest.raises(PetError, match="only stored or deflated"):
        load_dataset(str(tmp_path / "b.npz"))


def test_npz_header_claiming_more_than_the_member_holds_is_refused(tmp_path):
    """2^30 float64 values (8 GiB) declared, 64 bytes stored: refused before numpy allocates."""
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as z:
        header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1073741824,), }"
        header += " " * (63 - (len(header) + 10) % 64) + "\n"
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64))
        z.writestr("y.npy", b"")
    with pytest.raises(PetError, match="truncated"):
        load_dataset(str(path))
