"""Bound and check a safetensors header before the file is handed to the safetensors library."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from pet_core.errors import PetError

SAFETENSORS_HEADER_MAX_BYTES = 100 * 1024 * 1024
# bits per stored value of each safetensors dtype
_SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
                     "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
                     "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def check_safetensors_header(path: Path) -> None:
    """Check that ``path`` has a bounded JSON header whose tensors lie inside the file and fill dtype x shape.

    Runs before safetensors parses the file, so a huge or lying header costs nothing.

    Raises:
        PetError: one line naming the file and what is wrong.
    """
    size = path.stat().st_size
    bad = f"model file {path.name} is truncated or corrupt safetensors"
    if size < 8:
        raise PetError(f"{bad} (shorter than its 8-byte header length)")
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        limit = min(size - 8, SAFETENSORS_HEADER_MAX_BYTES)
        if n > limit:
            raise PetError(f"{bad} (header of {n:,} bytes exceeds its limit of {limit:,})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise PetError(f"{bad} (its {n:,}-byte header is not JSON)") from None
    if not isinstance(header, dict):
        raise PetError(f"{bad} (header is {type(header).__name__}, not a JSON object)")
    data_bytes = size - 8 - n
    for key, t in header.items():
        if key == "__metadata__":
            continue
        try:
            bits = _SAFETENSORS_BITS[t["dtype"]]
            shape, (begin, end) = [int(d) for d in t["shape"]], [int(o) for o in t["data_offsets"]]
        except (KeyError, TypeError, ValueError):
            raise PetError(f"{bad} (tensor {str(key)[:60]} lacks a known dtype, a shape or two data_offsets)") from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_bytes:
            raise PetError(f"{bad} (tensor {str(key)[:60]} lies outside the file's {data_bytes:,} data bytes)")
        if end - begin != (math.prod(shape) * bits + 7) // 8:
            raise PetError(f"{bad} (tensor {str(key)[:60]} holds {end - begin:,} bytes, "
                           f"not {t['dtype']} x {tuple(shape)})")
