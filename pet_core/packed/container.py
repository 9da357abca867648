"""The packed file's container: a fixed header, a zlib-compressed JSON manifest, then the blobs.

Layout (little-endian)::

    magic    8 bytes  b"PETPACK\\0"
    version  u16      PACKED_VERSION
    reserved u16      0
    length   u32      bytes of the compressed manifest
    sha256   32 bytes of the compressed manifest
    manifest          zlib(JSON), with "blobs": [[offset, length, sha256 prefix], ...]
    payload           the blobs, back to back (offsets relative to the payload's start)

Every blob carries the first 16 hex digits (64 bits) of its SHA-256: plenty to catch damage,
at a quarter of the header bytes of full digests. Blobs are not compressed again: their bits
are already as dense as the size accounting says.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

from pet_core.errors import PetError

MAGIC = b"PETPACK\0"
PACKED_VERSION = 1
FORMAT = "pet-packed"
_HEAD = struct.Struct("<8sHHI32s")
DIGEST_HEX = 16


def digest(data: bytes) -> str:
    """The blob checksum written to the manifest: a SHA-256 prefix."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


def write_container(path: str | Path, manifest: dict, blobs: list[bytes]) -> dict:
    """Write the file atomically; returns {file_bytes, header_bytes, payload_bytes}."""
    table, offset = [], 0
    for blob in blobs:
        table.append([offset, len(blob), digest(blob)])
        offset += len(blob)
    body = dict(manifest, format=FORMAT, version=PACKED_VERSION, payload_bytes=offset, blobs=table)
    packed = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 9)
    head = _HEAD.pack(MAGIC, PACKED_VERSION, 0, len(packed), hashlib.sha256(packed).digest())
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(packed)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    header = _HEAD.size + len(packed)
    return dict(file_bytes=header + offset, header_bytes=header, payload_bytes=offset)


class Container:
    """A packed file read into memory and checked: header, manifest, then each blob on access."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise PetError(f"packed file {path} not found")
        data = path.read_bytes()
        name = path.name
        if len(data) < _HEAD.size or data[:8] != MAGIC:
            raise PetError(f"{name} is not a PET packed file (bad magic {data[:8]!r})")
        _, version, _, length, sha = _HEAD.unpack_from(data)
        if version != PACKED_VERSION:
            raise PetError(f"{name}: packed format version {version} is not supported (this PET Studio "
                           f"reads version {PACKED_VERSION})")
        start = _HEAD.size + length
        if len(data) < start:
            raise PetError(f"{name} is truncated: the manifest needs {start} bytes, the file has {len(data)}")
        packed = data[_HEAD.size:start]
        if hashlib.sha256(packed).digest() != sha:
            raise PetError(f"{name}: the manifest is damaged (checksum mismatch)")
        try:
            self.manifest = json.loads(zlib.decompress(packed))
        except (zlib.error, ValueError) as exc:
            raise PetError(f"{name}: the manifest is unreadable ({type(exc).__name__})") from None
        if self.manifest.get("format") != FORMAT:
            raise PetError(f"{name}: format {self.manifest.get('format')!r} is not {FORMAT!r}")
        self.payload = memoryview(data)[start:]
        expected = self.manifest["payload_bytes"]
        if len(self.payload) != expected:
            what = "truncated" if len(self.payload) < expected else "longer than its manifest says"
            raise PetError(f"{name} is {what}: {len(self.payload)} payload bytes, expected {expected}")
        self.name = name
        self.header_bytes = start
        self.file_bytes = len(data)

    def blob(self, index: int, what: str) -> bytes:
        """Blob ``index`` after its checksum is verified; ``what`` names it in the error."""
        offset, length, sha = self.manifest["blobs"][index]
        blob = bytes(self.payload[offset:offset + length])
        if digest(blob) != sha:
            raise PetError(f"{self.name}: data of {what} is damaged (checksum mismatch)")
        return blob
