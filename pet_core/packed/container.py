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

Reading is bounded: the file may be at most ``PET_MAX_PACKED_BYTES`` (default 256 MiB), the
manifest inflates to at most 4 MiB (decompressed with that cap, so a zlib bomb stops there) and
nests at most 20 levels, and every blob must lie inside the payload
(:mod:`pet_core.packed.manifest` checks the rest before anything is allocated).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

from pet_core.atomic import atomic_write
from pet_core.bounded import check_tree, env_bytes, inflate, shown
from pet_core.errors import PetError
from pet_core.packed.manifest import check_container

MAGIC = b"PETPACK\0"
PACKED_VERSION = 1
FORMAT = "pet-packed"
_HEAD = struct.Struct("<8sHHI32s")
DIGEST_HEX = 16
MAX_MANIFEST_BYTES = 4 << 20
DEFAULT_MAX_FILE_BYTES = 256 << 20


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

    def write(f) -> None:
        f.write(head)
        f.write(packed)
        for blob in blobs:
            f.write(blob)

    atomic_write(path, write)
    header = _HEAD.size + len(packed)
    return dict(file_bytes=header + offset, header_bytes=header, payload_bytes=offset)


class Container:
    """A packed file read into memory and checked: header, manifest, then each blob on access."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise PetError(f"packed file {path} not found")
        limit = env_bytes("PET_MAX_PACKED_BYTES", DEFAULT_MAX_FILE_BYTES)
        size = path.stat().st_size
        if size > limit:
            raise PetError(f"{path.name} is {size:,} bytes, more than the {limit:,} allowed (PET_MAX_PACKED_BYTES)")
        self._read(path.read_bytes(), path.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "packed file") -> "Container":
        """The container in ``data`` (a whole file's bytes), checked as a file would be."""
        box = cls.__new__(cls)
        box._read(data, name)
        return box

    def _read(self, data: bytes, name: str) -> None:
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
            self.manifest = _manifest(packed)
        except PetError as exc:
            raise PetError(f"{name}: {exc}") from None
        self.payload = memoryview(data)[start:]
        expected = self.manifest.get("payload_bytes")
        if type(expected) is not int or len(self.payload) != expected:
            what = "truncated" if type(expected) is int and len(self.payload) < expected else "not as its manifest says"
            raise PetError(f"{name} is {what}: {len(self.payload)} payload bytes, expected {shown(expected)}")
        try:
            self.blobs = check_container(self.manifest, expected)
        except PetError as exc:
            raise PetError(f"{name}: {exc}") from None
        self.name = name
        self.header_bytes = start
        self.file_bytes = len(data)

    def blob(self, index: int, what: str) -> bytes:
        """Blob ``index`` after its checksum is verified; ``what`` names it in the error."""
        offset, length, sha = self.blobs[index]
        blob = bytes(self.payload[offset:offset + length])
        if digest(blob) != sha:
            raise PetError(f"{self.name}: data of {what} is damaged (checksum mismatch)")
        return blob


def _manifest(packed: bytes) -> dict:
    """The manifest's JSON, inflated with a cap; PetError for a bomb, bad JSON or another format."""
    try:
        manifest = json.loads(inflate(packed, MAX_MANIFEST_BYTES, "the manifest"))
    except RecursionError:
        raise PetError("the manifest nests too deep") from None
    except ValueError as exc:                 # bad UTF-8 or JSON, 5,000-digit integers (PetError passes)
        if isinstance(exc, PetError):
            raise
        raise PetError(f"the manifest is unreadable ({type(exc).__name__})") from None
    check_tree(manifest, "the manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise PetError(f"format {shown(got)} is not {FORMAT!r}")
    if type(manifest.get("version")) is not int or manifest["version"] != PACKED_VERSION:
        raise PetError(f"manifest version {shown(manifest.get('version'))} is not {PACKED_VERSION}")
    return manifest
