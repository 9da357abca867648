"""The packed manifest, checked against the file and the zoo before a single tensor is allocated.

A manifest is data from the file, so nothing in it is trusted: every field the decoder reads is
checked for type and range here, each tensor's shape must be the one the zoo architecture has
(zoo and Hugging Face architectures are built on the ``meta`` device, which allocates nothing;
:mod:`pet_core.packed.arch`), the model may hold at most
``PET_MAX_PACKED_VALUES`` values, every blob lies inside the payload, a raw tensor's blob holds
exactly its bytes and a coded tensor's blob is no longer than its streams can be. After these
checks, decoding allocates memory in proportion to the (bounded) model, never to a number
written in the file.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable


from pet_core.bounded import shown, shown_key
from pet_core.errors import PetError
from pet_core.packed.huffman import COUNT_BITS, LENGTH_BITS, MAX_CODE_BITS, MAX_WIDTH
from pet_core.packed.streams import coding_methods, overhead_bytes
from pet_core.packed.tensor_blob import huffman_streams, packed_layouts
from pet_core.packed.arch import Architecture, open_architecture, total_values

RAW_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1}
RAW_DTYPES = tuple(RAW_BYTES)
MAX_SIDE = 65536                 # one input dimension (C, H or W)
MAX_CLASSES = 1 << 20
DEFAULT_MAX_VALUES = 1 << 28     # 256 Mi values: 1 GiB as float32 (GPT-2 small holds 124 Mi)


def max_values() -> int:
    """The most values (parameters and buffers) a packed model may declare: $PET_MAX_PACKED_VALUES."""
    text = os.environ.get("PET_MAX_PACKED_VALUES", "").strip()
    if not text:
        return DEFAULT_MAX_VALUES
    if not text.isdigit() or len(text) > 15:
        raise PetError(f"PET_MAX_PACKED_VALUES = {shown(text)} must be a whole number of values")
    return int(text)


def _get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise PetError(f"manifest: {where} must be a mapping, got {shown(obj)}")
    if key not in obj:
        raise PetError(f"manifest: {where}.{key} is missing")
    return obj[key]


def _int(obj: Any, key: str, where: str, lo: int, hi: int) -> int:
    value = _get(obj, key, where)
    if type(value) is not int or not lo <= value <= hi:          # type(): True is not 1 here
        raise PetError(f"manifest: {where}.{key} = {shown(value)} must be an integer in [{lo}, {hi}]")
    return value


def _choice(obj: Any, key: str, where: str, choices: tuple) -> Any:
    value = _get(obj, key, where)
    if type(value) not in (str, int) or value not in choices:
        raise PetError(f"manifest: {where}.{key} = {shown(value)} is not one of {', '.join(map(str, choices))}")
    return value


def _list(obj: Any, key: str, where: str) -> list:
    value = _get(obj, key, where)
    if not isinstance(value, list):
        raise PetError(f"manifest: {where}.{key} must be a list, got {shown(value)}")
    return value


def _shape(obj: Any, key: str, where: str) -> list[int]:
    shape = _list(obj, key, where)
    if len(shape) > 4 or any(type(d) is not int or not 0 <= d <= 1 << 31 for d in shape):
        raise PetError(f"manifest: {where}.{key} = {shown(shape)} is not a tensor shape")
    return shape


def check_container(m: Any, payload_bytes: int) -> list[tuple[int, int, str]]:
    """The blob table ``[(offset, length, digest), ...]`` after checking it lies inside the payload."""
    blobs = []
    for i, row in enumerate(_list(m, "blobs", "")):
        where = f"blobs[{i}]"
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[2], str) and len(row[2]) <= 64
                and all(type(v) is int for v in row[:2])):
            raise PetError(f"manifest: {where} = {shown(row)} is not [offset, length, digest]")
        offset, length, sha = row
        if not (0 <= offset and 0 <= length and offset + length <= payload_bytes):
            raise PetError(f"manifest: {where} spans bytes {shown(offset)}..{shown(offset + length)} "
                           f"of a {payload_bytes}-byte payload")
        blobs.append((offset, length, sha))
    return blobs


def check_zoo_shape(ident: Any, where: str) -> tuple[tuple[int, int, int], int]:
    """A zoo identity's input shape (C, H, W) and class count, checked for type and range."""
    input_shape = _shape(ident, "input_shape", where)
    if len(input_shape) != 3 or not all(1 <= d <= MAX_SIDE for d in input_shape):
        raise PetError(f"manifest: {where}.input_shape = {shown(input_shape)} is not (C, H, W)")
    budget = max_values()
    if math.prod(input_shape) > budget:
        raise PetError(f"manifest: {where}.input_shape = {input_shape} has more than {budget:,} values")
    return tuple(input_shape), _int(ident, "num_classes", where, 1, MAX_CLASSES)


def check_model(m: dict, blobs: list[tuple[int, int, str]], program: Callable[[int], bytes] | None = None, *,
                trust_code: bool = False) -> Architecture:
    """Check the model identity and every tensor entry; returns the opened architecture.

    ``program(i)`` reads blob ``i`` (a ``program`` source's code). Raises PetError naming the first
    field that is missing, of the wrong type or out of range.
    """
    ident = _get(m, "model", "")
    if isinstance(ident, dict) and ident.get("source") == "program":
        _int(ident, "blob", "model", 0, len(blobs) - 1)
    recipe = m.get("recipe")
    if recipe is not None and not isinstance(recipe, dict):
        raise PetError(f"manifest: recipe = {shown(recipe)} must be a mapping or null")
    if m.get("huffman") is not None and type(m.get("huffman")) is not bool:
        raise PetError(f"manifest: huffman = {shown(m.get('huffman'))} must be true, false or null")
    arch = open_architecture(ident, program or (lambda i: b""), trust_code=trust_code, check_shape=check_zoo_shape)
    shapes, budget = arch.shapes, max_values()
    total = total_values(shapes)
    if total > budget:
        raise PetError(f"manifest: {arch.label} has {total:,} values, more than the {budget:,} "
                       f"allowed (PET_MAX_PACKED_VALUES)")
    seen, stored = set(), 0
    for i, entry in enumerate(_list(m, "tensors", "")):
        name = _get(entry, "name", f"tensors[{i}]")
        if not isinstance(name, str) or name not in shapes or name in seen:
            raise PetError(f"manifest: tensors[{i}].name = {shown(name)} is not a {arch.label} tensor (or repeats one)")
        seen.add(name)
        where = f"tensors.{shown_key(name)}"
        shape = _shape(entry, "shape", where)
        if tuple(shape) != shapes[name]:
            raise PetError(f"manifest: {where}.shape = {shape} but {arch.label} has {list(shapes[name])}")
        if "tied" in entry:
            owner = entry["tied"]
            if not isinstance(owner, str) or owner not in seen or owner == name or shapes[owner] != shapes[name]:
                raise PetError(f"manifest: {where}.tied = {shown(owner)} is not an earlier tensor of its shape")
            continue
        if "raw" in entry:
            dtype = _choice(entry, "raw", where, RAW_DTYPES)
            length = _blob(entry, where, blobs)
            if length != math.prod(shape) * RAW_BYTES[dtype]:
                raise PetError(f"manifest: {where} has {length} bytes, not a {dtype} {shape}")
            continue
        if type(entry.get("swapped", False)) is not bool or (entry.get("swapped") and len(shape) < 2):
            raise PetError(f"manifest: {where}.swapped = {shown(entry.get('swapped'))} must be true or false")
        stored += _check_parts(entry, where, shape, blobs)
        if stored > budget:
            raise PetError(f"manifest: the stored tensors have more than {budget:,} values")
    missing = sorted(set(shapes) - seen)
    if missing:
        raise PetError(f"manifest: {arch.label} tensor {shown_key(missing[0])} is missing")
    return arch


def _blob(entry: dict, where: str, blobs: list) -> int:
    return blobs[_int(entry, "blob", where, 0, len(blobs) - 1)][1]


def _check_parts(entry: dict, where: str, shape: list[int], blobs: list) -> int:
    """Check a coded weight's stored tensors (one, or two low-rank factors); returns their values."""
    parts = _list(entry, "parts", where)
    if len(parts) not in (1, 2):
        raise PetError(f"manifest: {where}.parts has {len(parts)} tensors (1, or 2 low-rank factors)")
    dims = [_check_part(p, f"{where}.parts[{j}]", blobs) for j, p in enumerate(parts)]
    n = math.prod(shape)
    if len(dims) == 1 and math.prod(dims[0]) != n:
        raise PetError(f"manifest: {where}.parts[0].shape = {dims[0]} does not hold {shape}")
    if len(dims) == 2:
        first, second = dims
        ok = (len(first) == 2 and len(second) == 2 and first[1] == second[0]
              and 1 <= first[1] <= min(first[0], second[1]) and first[0] * second[1] == n)
        if not ok:
            raise PetError(f"manifest: {where} factors {first} x {second} do not make {shape}")
    return sum(math.prod(d) for d in dims)


def _check_part(p: Any, where: str, blobs: list) -> list[int]:
    """Every field :func:`pet_core.packed.tensor_blob.decode_tensor` reads; returns the part's shape."""
    if not isinstance(_get(p, "name", where), str):
        raise PetError(f"manifest: {where}.name must be text")
    shape = _shape(p, "shape", where)
    n = math.prod(shape)
    codings = coding_methods()
    kind = _choice(p, "kind", where, ("float32", *codings))
    if kind == "float32":
        bits = (32,)
        _int(p, "groups", where, 0, 0)
        _int(p, "codebook", where, 0, 0)
    else:
        bits = codings[kind].packed_check(kind, p, where, n, _int)
    b = _choice(p, "value_bits", where, bits)
    layouts = packed_layouts()
    layout = layouts[_choice(p, "layout", where, tuple(layouts))]
    index, count = layout.check(p, where, n, _int)
    widths = {name: width for name, (width, _) in index.items()}
    counts = {name: c for name, (_, c) in index.items()}
    widths["values"], counts["values"] = b, count
    zero = _get(p, "zero_code", where)
    if zero is not None and (type(zero) is not int or not 0 <= zero < 1 << b):
        raise PetError(f"manifest: {where}.zero_code = {shown(zero)} is not a {b}-bit code")
    flags = _get(p, "flags", where)
    if type(flags) is not bool or (flags and zero is None):
        raise PetError(f"manifest: {where}.flags = {shown(flags)} must be true (with a zero_code) or false")
    coded = _get(p, "huffman", where)
    allowed = huffman_streams(layout)
    if not isinstance(coded, dict) or any(k not in allowed or type(v) is not bool or (v and widths[k] > MAX_WIDTH)
                                          for k, v in coded.items()):
        raise PetError(f"manifest: {where}.huffman = {shown(coded)} is not a Huffman flag per stream")
    overhead = overhead_bytes(p)
    stream_bits = count * (zero is not None and flags)                            # flag bits, at most one per entry
    for stream, width in widths.items():
        if coded.get(stream):
            table = COUNT_BITS + min(1 << width, max(counts[stream], 1)) * (width + LENGTH_BITS)
            stream_bits += table + counts[stream] * MAX_CODE_BITS
        else:
            stream_bits += counts[stream] * width
    length = _blob(p, where, blobs)
    if length > overhead + (stream_bits + 7) // 8:
        raise PetError(f"manifest: {where} blob has {length} bytes, more than its streams can fill")
    return shape
