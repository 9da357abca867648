"""Fuzzing what a user can hand the engine: only PetError escapes, and valid recipes round-trip.

10,500 cases a run (``CASES``): generated and mutated recipes (dicts, YAML and JSON text), share
tokens, packed manifests and packed blobs. Hypothesis drives the runs, derandomized (every run
tries the same cases) and without an example database; each case is built from one drawn seed
by the small generators below, which is ~10x faster than composing Hypothesis strategies of the
same shape. The oracle is the contract itself: the call returns (and a recipe that validates
round-trips through YAML, JSON and a share link), or raises a one-line PetError; nothing else.
Cases that crashed while these tests were written are replayed from ``tests/fuzz_corpus/``.
``FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import math
import os
import random
import struct
import zlib
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pet_core.errors import PetError
from pet_core.finetune.config import TECHNIQUES, Finetune
from pet_core.packed import save_packed
from pet_core.packed.container import MAGIC, PACKED_VERSION, Container
from pet_core.packed.decode import model_from_container
from pet_core.recipe import Recipe, dumps, from_token, loads, to_token
from pet_core.steps import STEPS
from pet_core.workbench import Workbench
from pet_core.zoo import build_model

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "recipes"
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
CASES = {k: max(1, int(v * SCALE)) for k, v in
         dict(recipe_dicts=3500, yaml_text=2000, json_text=1000, tokens=1500, manifests=2000, blobs=500).items()}
MAX_MESSAGE_CHARS = 500
seeds = st.integers(0, 2**64 - 1)


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def only_pet_error(fn, *args):
    """``fn(*args)``, or None when it raised a PetError of one short line (any other exception fails)."""
    try:
        return fn(*args)
    except PetError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message[:2000]
        return None


def assert_round_trips(recipe: Recipe) -> None:
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert loads(dumps(recipe, "yaml")) == recipe
    assert loads(dumps(recipe, "json"), "json") == recipe
    assert from_token(to_token(recipe)) == recipe


# --- generators: one seeded Random builds one case ------------------------------------------------

EDGES = [None, True, False, 0, 1, -1, 2, 4, 8, 16, 17, 256, 257, 2**31, 2**53 + 1, 10**400, -10**400,
         0.0, -0.0, 0.5, 1.0, 1.5, 1e-300, 5e-324, 1e308, math.nan, math.inf, -math.inf, "", "x", "*", "fc1",
         "magnitude", "l1_channel", "layer", "asymmetric", "per_tensor", "early", "sgd", "constant", "float32",
         "relative", "shared", "bitmask", "lenet_300_100", "<<", "null", "x" * 5000, [], {}, [0], {"": None},
         datetime.date(2001, 1, 1), b"\x00"]
ALPHABET = "abcxyz019 .*?[]{}:,-_'\"\\\n\t\x00\x1f\x7f\x85\u00e9\u2028\ufeff\U0001f600"


def nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def text(rng: random.Random, longest: int = 8) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest)))


def leaf(rng: random.Random):
    r = rng.random()
    if r < 0.5:
        return rng.choice(EDGES)
    if r < 0.65:
        return rng.randint(-(2 ** rng.choice([4, 16, 64, 200])), 2 ** rng.choice([4, 16, 64, 200]))
    if r < 0.8:
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] if rng.random() < 0.3 \
            else rng.uniform(-2, 2)
    return text(rng)


def key(rng: random.Random):
    return rng.choice([text(rng, 6), rng.randint(-5, 5), None, True, 1.5, "fc1", "prune", "bits", "x" * 300])


def junk(rng: random.Random, depth: int = 0, deepest: int = 3000):
    """Any JSON-like value: edges, numbers, text, small lists and mappings, rarely very deep lists."""
    r = rng.random()
    if depth >= 3 or r < 0.6:
        return leaf(rng)
    if r < 0.8:
        return [junk(rng, depth + 1, deepest) for _ in range(rng.randint(0, 3))]
    if r < 0.97:
        return {key(rng): junk(rng, depth + 1, deepest) for _ in range(rng.randint(0, 3))}
    return nested(rng.choice([30, deepest // 6, deepest]))


def valid_value(rng: random.Random, meta: dict):
    """A value the field accepts: one of its choices, or a number in its range."""
    if meta.get("choices"):
        return rng.choice(meta["choices"])
    if meta["kind"] is bool:
        return rng.random() < 0.5
    if meta["kind"] is str:
        return rng.choice(["*", "fc*", "fc1"])
    lo, hi = meta["lo"], min(meta["hi"], 1e6)
    if meta["kind"] is int:
        return rng.randint(int(lo), int(hi))
    value = rng.choice([lo, hi, rng.uniform(lo, hi), rng.uniform(lo, min(hi, lo + 1))])
    return value if not (meta["lo_open"] and value == lo) else hi


def maybe_junk(rng: random.Random, value):
    return value if rng.random() < 0.8 else junk(rng)


def options(rng: random.Random, cls) -> dict:
    """Some of ``cls``'s fields, mostly valid."""
    return {f.name: maybe_junk(rng, valid_value(rng, f.metadata))
            for f in fields(cls) if f.name not in ("techniques", "given") and rng.random() < 0.4}


def with_junk_key(rng: random.Random, data: dict) -> dict:
    if rng.random() < 0.05:
        data[key(rng)] = junk(rng)
    return data


def steps(rng: random.Random, nulls: bool) -> dict:
    out = {}
    for name, methods in STEPS.items():
        if rng.random() < 0.4:
            cls = rng.choice(methods).config         # any registered method of the step
            out[name] = None if nulls and rng.random() < 0.15 else maybe_junk(rng, options(rng, cls))
    return with_junk_key(rng, out)


def finetune(rng: random.Random) -> dict:
    out = options(rng, Finetune)
    if rng.random() < 0.6:
        out["techniques"] = maybe_junk(rng, {name: None if rng.random() < 0.1 else maybe_junk(rng, options(rng, cls))
                                             for name, cls in TECHNIQUES.items() if rng.random() < 0.3})
    return with_junk_key(rng, out)


def recipe_dict(rng: random.Random) -> dict:
    """A recipe-shaped mapping: the right keys mostly, values valid four times in five."""
    out = {"pet_recipe": maybe_junk(rng, 1)} if rng.random() < 0.97 else {}
    if rng.random() < 0.5:
        out["model"] = maybe_junk(rng, rng.choice(["lenet_300_100", "my model.pt"]))
    if rng.random() < 0.3:
        out["dataset"] = maybe_junk(rng, "digits")
    if rng.random() < 0.9:
        out["default"] = maybe_junk(rng, steps(rng, nulls=False))
    if rng.random() < 0.5:
        patterns = ["fc1", "fc*", "*", "<<", "fc 3", "", "x" * 2000]
        out["layers"] = maybe_junk(rng, {rng.choice(patterns) if rng.random() < 0.9 else key(rng):
                                         maybe_junk(rng, steps(rng, nulls=True)) for _ in range(rng.randint(0, 3))})
    if rng.random() < 0.3:
        out["finetune"] = maybe_junk(rng, finetune(rng))
    return with_junk_key(rng, out)


@fuzz(CASES["recipe_dicts"])
@given(seeds)
def test_fuzz_recipe_dicts(seed):
    data = recipe_dict(random.Random(seed))
    recipe = only_pet_error(Recipe.from_dict, data)
    if recipe is not None:
        assert_round_trips(recipe)


# --- recipe text ----------------------------------------------------------------------------------

BASE_TEXTS = [p.read_text() for p in sorted(ASSETS.glob("*.yaml"))]
BASE_JSON = [json.dumps(loads(t).to_dict()) for t in BASE_TEXTS]
SNIPPETS = ["&a ", "*a", "&b [*a, *a, *a]", "[", "]", "{", "}", ":", ": ", "\n", "  ", "- ", "? ", "|", ">", "'",
            '"', "#", ",", "!!python/object/apply:os.system ['true']", "!!binary ", "!!set ", "!!float ",
            "9" * 400, "9" * 5000, ".nan", ".inf", "-.inf", "2001-13-45", "<<: *a", "%YAML 1.1\n", "---\n",
            "...\n", "\t", "\x00", "\ufeff", "1e999", "0x1F", "0o17", "~", "null", "true", "1_000", "190:20:30",
            "[" * 60, "{a: " * 30, "\\u0000", "\\ud800", "NaN", "Infinity", "-Infinity", "1" * 30, "-0"]


def mutate(rng: random.Random, text_in: str) -> str:
    """One to four edits: insert or overwrite a snippet, delete a few characters, or cut the rest."""
    out = text_in
    for _ in range(rng.randint(1, 4)):
        at, op = rng.randint(0, len(out)), rng.random()
        piece = rng.choice(SNIPPETS) if rng.random() < 0.7 else text(rng, 6)
        if op < 0.4:
            out = out[:at] + piece + out[at:]
        elif op < 0.7:
            out = out[:at] + piece + out[at + len(piece):]
        elif op < 0.95:
            out = out[:at] + out[at + rng.randint(1, 8):]
        else:
            out = out[:at]
    return out


def anchor_bomb(levels: int, fanout: int, where: int) -> str:
    """A billion-laughs recipe: ``fanout ** levels`` strings through ``levels`` anchors, under 1 KB."""
    lines = ['      - &a0 ["lol", "lol"]']
    lines += [f"      - &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    at = ["default:\n  prune:\n    sparsity:\n", "layers:\n  fc1:\n    quantize:\n      bits:\n",
          "finetune:\n  lr:\n", "model:\n"][where]
    return f"pet_recipe: 1\n{at}" + "\n".join(lines) + "\n"


def yaml_case(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.1:
        return anchor_bomb(rng.randint(1, 12), rng.randint(1, 12), rng.randint(0, 3))
    if r < 0.2:
        return text(rng, 40)
    if r < 0.35:                            # a generated recipe, written out by PyYAML, then mutated
        import yaml
        try:
            base = yaml.safe_dump(recipe_dict(rng))
        except (yaml.YAMLError, RecursionError, TypeError, ValueError):
            base = rng.choice(BASE_TEXTS)
        return mutate(rng, base) if rng.random() < 0.5 else base
    return mutate(rng, rng.choice(BASE_TEXTS))


@fuzz(CASES["yaml_text"])
@given(seeds)
def test_fuzz_yaml_text(seed):
    recipe = only_pet_error(loads, yaml_case(random.Random(seed)))
    if recipe is not None:
        assert_round_trips(recipe)


@fuzz(CASES["json_text"])
@given(seeds)
def test_fuzz_json_text(seed):
    rng = random.Random(seed)
    recipe = only_pet_error(loads, mutate(rng, rng.choice(BASE_JSON)), "json")
    if recipe is not None:
        assert_round_trips(recipe)


# --- share tokens ---------------------------------------------------------------------------------

BASE_TOKENS = [to_token(loads(t)) for t in BASE_TEXTS]


def token_of(value) -> str:
    try:
        raw = json.dumps(value, default=str).encode()
    except (RecursionError, TypeError, ValueError):          # deeper than json.dumps goes, odd keys
        raw = b"[" * 3000 + b"]" * 3000
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


def token_case(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return mutate(rng, rng.choice(BASE_TOKENS))
    if r < 0.6:
        return token_of(recipe_dict(rng))
    if r < 0.8:
        return token_of(junk(rng))
    if r < 0.9:
        return text(rng, 60)
    return base64.urlsafe_b64encode(rng.randbytes(rng.randint(0, 200))).decode()


@fuzz(CASES["tokens"])
@given(seeds)
def test_fuzz_share_tokens(seed):
    recipe = only_pet_error(from_token, token_case(random.Random(seed)))
    if recipe is not None:
        assert_round_trips(recipe)


# --- packed files ---------------------------------------------------------------------------------

PACKED_RECIPES = [   # between them: relative, bitmask and dense layouts, Huffman or not, flags, low rank, raw
    ({"prune": {"sparsity": 0.9}, "share": {"clusters": 16}},
     {"fc3": {"low_rank": {"rank": 4}, "quantize": {"bits": 4, "scheme": "asymmetric"}}}, True),
    ({"quantize": {"bits": 3, "scheme": "asymmetric", "granularity": "per_channel"}},
     {"fc2": {"prune": {"method": "l1_channel", "sparsity": 0.5}, "quantize": {"bits": 8}},
      "fc3": {"quantize": None}}, False),
    ({"prune": {"sparsity": 0.95, "scope": "layer"}, "quantize": {"bits": 1}}, {"fc1": {"share": {"clusters": 2}}},
     True),
]


def split(data: bytes) -> tuple[dict, bytes]:
    """(manifest, payload) of a packed file's bytes."""
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(zlib.decompress(data[48:48 + length])), data[48 + length:]


def pack(manifest, payload: bytes) -> bytes:
    """A packed file with this manifest (as given, blob table included) and payload; checksums valid."""
    body = zlib.compress(json.dumps(manifest, separators=(",", ":"), default=str).encode(), 1)
    return struct.pack("<8sHHI32s", MAGIC, PACKED_VERSION, 0, len(body), hashlib.sha256(body).digest()) + body + payload


def pack_blobs(manifest: dict, blobs: list[bytes]) -> bytes:
    """A packed file whose blob table and checksums describe ``blobs``."""
    table, offset = [], 0
    for blob in blobs:
        table.append([offset, len(blob), hashlib.sha256(blob).hexdigest()[:16]])
        offset += len(blob)
    return pack(dict(manifest, blobs=table, payload_bytes=offset), b"".join(blobs))


class Files(list):
    def __repr__(self) -> str:                    # Hypothesis prints the arguments of a failing case
        return f"<{len(self)} packed files>"


@pytest.fixture(scope="module")
def packed_files(tmp_path_factory) -> list[tuple[dict, bytes]]:
    """(manifest, payload) of three small packed files: random lenet_300_100 on 1x4x4 inputs, 3 classes."""
    model = build_model("lenet_300_100", (1, 4, 4), 3)
    x, y = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    out = []
    for i, (default, layers, huffman) in enumerate(PACKED_RECIPES):
        wb = Workbench(model, x, y)
        wb.apply(Recipe(default=default, layers=layers))
        path = tmp_path_factory.mktemp("packed") / f"{i}.pet"
        save_packed(wb, path, huffman=huffman, model_info=dict(arch="lenet_300_100", input_shape=(1, 4, 4),
                                                               num_classes=3))
        out.append(split(path.read_bytes()))
    return Files(out)


def load_bytes(data: bytes):
    """Read and decode a packed file from bytes, with no catch-all guard: the checks must hold alone."""
    box = only_pet_error(Container.from_bytes, data, "fuzz.pet")
    return None if box is None else only_pet_error(model_from_container, box)


def test_the_packed_files_load(packed_files):
    for manifest, payload in packed_files:
        model, info = load_bytes(pack(manifest, payload))
        assert info["payload_bytes"] == len(payload)


def paths(value, prefix=()) -> list[tuple]:
    """Every path into a JSON tree (mapping keys and list indices), down to 12 levels."""
    out = [prefix]
    if len(prefix) < 12 and isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif len(prefix) < 12 and isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def patch(manifest, path, op: str, value):
    """``manifest`` with the value at ``path`` replaced, deleted, or copied next to itself (in place)."""
    if not path:
        return value if op == "replace" else manifest
    parent = manifest
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    else:
        parent[f"{last}_"] = copy.deepcopy(parent[last])
    return manifest


def edited(rng: random.Random, manifest: dict):
    """A copy of ``manifest`` with one to three random fields replaced, deleted or copied."""
    manifest = copy.deepcopy(manifest)
    for _ in range(rng.randint(1, 3)):
        if not isinstance(manifest, (dict, list)):
            break
        value = junk(rng, deepest=400) if rng.random() < 0.6 else rng.choice([rng.randint(-10, 10**7),
                                                                               rng.randint(0, 40)])
        op = rng.choice(["replace", "replace", "delete", "copy"])
        manifest = patch(manifest, rng.choice(paths(manifest)), op, value)    # 400 levels: json.dumps can write
    return manifest


@fuzz(CASES["manifests"])
@given(seeds)
def test_fuzz_packed_manifests(packed_files, seed):
    rng = random.Random(seed)
    manifest, payload = packed_files[rng.randrange(len(packed_files))]
    load_bytes(pack(edited(rng, manifest), payload))


@fuzz(CASES["blobs"])
@given(seeds)
def test_fuzz_packed_blobs(packed_files, seed):
    rng = random.Random(seed)
    manifest, payload = packed_files[rng.randrange(len(packed_files))]
    blobs = [bytearray(payload[o:o + n]) for o, n, _ in manifest["blobs"]]
    for _ in range(rng.randint(1, 3)):
        blob = rng.choice(blobs)
        at, amount = rng.randint(0, len(blob)), rng.randint(1, 64)
        op = rng.choice(["flip", "cut", "grow", "zero", "ones", "random"])
        if op == "flip" and blob:
            blob[at % len(blob)] ^= 1 << rng.randrange(8)
        elif op == "cut":
            del blob[at:at + amount]
        elif op == "grow":
            blob[at:at] = rng.randbytes(amount)
        else:
            n = len(blob[at:at + amount])
            blob[at:at + amount] = {"zero": b"\x00" * n, "ones": b"\xff" * n}.get(op) or rng.randbytes(n)
    load_bytes(pack_blobs(manifest, [bytes(b) for b in blobs]))


def test_fuzz_file_bytes(packed_files):
    """Every header byte cut off or flipped, and manifests that are not a JSON object at all."""
    data = pack(*packed_files[0])
    for n in range(64):
        load_bytes(data[:n])
        flipped = bytearray(data)
        flipped[n] ^= 0xFF
        load_bytes(bytes(flipped))
    for body in (b"", b"null", b"[]", b"7", b'"x"', b"{" * 5000, b"[" * 100000, b"\xff\xfe", b'{"format": 1}',
                 b'{"format": "pet-packed", "version": 1}', b"1" * 5000):
        packed = zlib.compress(body)
        load_bytes(struct.pack("<8sHHI32s", MAGIC, PACKED_VERSION, 0, len(packed),
                               hashlib.sha256(packed).digest()) + packed)


# --- the corpus: cases that crashed while these tests were written --------------------------------

@pytest.mark.parametrize("path", sorted(CORPUS.glob("recipe_*")), ids=lambda p: p.name)
def test_corpus_recipe_is_refused(path):
    with pytest.raises(PetError) as err:
        loads(path.read_text(encoding="utf-8"), "json" if path.suffix == ".json" else "yaml")
    assert "\n" not in str(err.value) and len(str(err.value)) <= MAX_MESSAGE_CHARS


def expand(value):
    """Corpus JSON with ``{"__nested__": n}`` standing for a list nested n deep (too deep for json)."""
    if isinstance(value, dict):
        return nested(value["__nested__"]) if "__nested__" in value else {k: expand(v) for k, v in value.items()}
    return [expand(v) for v in value] if isinstance(value, list) else value


def test_corpus_recipe_dicts_are_refused():
    cases = json.loads((CORPUS / "recipe_dicts.json").read_text())
    assert cases
    for case in cases:
        with pytest.raises(PetError) as err:
            Recipe.from_dict(expand(case))
        assert "\n" not in str(err.value) and len(str(err.value)) <= MAX_MESSAGE_CHARS


def test_corpus_tokens_are_refused():
    lines = (CORPUS / "tokens.txt").read_text().splitlines()
    assert lines
    for line in lines:
        with pytest.raises(PetError):
            from_token(line)


def test_corpus_manifests_are_refused(packed_files):
    cases = json.loads((CORPUS / "manifest_edits.json").read_text())
    assert cases
    for case in cases:
        manifest, payload = packed_files[case["file"]]
        manifest = copy.deepcopy(manifest)
        for path, op, value in case["edits"]:
            manifest = patch(manifest, tuple(path), op, expand(value))
        with pytest.raises(PetError):
            model_from_container(Container.from_bytes(pack(manifest, payload), "corpus.pet"))
