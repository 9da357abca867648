"""A user's ``.npz`` archive read within a memory budget, checked before anything is inflated.

``np.load`` would allocate whatever an array header declares and inflate whatever a member holds:
a 2 MB archive can claim gigabytes. Here each wanted member's declared size (the zip entry's
``file_size`` and the ``.npy`` header's shape x itemsize, counted at >= 4 bytes a value because
training makes a float32 copy) is summed against ``PET_MAX_DATASET_BYTES`` (default 1 GiB)
first; only stored or deflated members are read, never object arrays (no pickle).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from pet_core.bounded import env_bytes, shown
from pet_core.errors import PetError

DEFAULT_MAX_DATASET_BYTES = 1 << 30
NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10_000


def max_dataset_bytes() -> int:
    """The most bytes a dataset may take in memory: $PET_MAX_DATASET_BYTES (e.g. ``512M``), default 1 GiB."""
    return env_bytes("PET_MAX_DATASET_BYTES", DEFAULT_MAX_DATASET_BYTES)


def read_npz(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays named ``keys`` that ``path`` holds, and every array name in it.

    Raises PetError for a file that is not an .npz archive, an array over the budget, an object
    array or a member compressed with anything but deflate.
    """
    limit = max_dataset_bytes()
    size = path.stat().st_size
    if size > limit:
        raise PetError(f"dataset file {path.name} is {size:,} bytes, more than the {limit:,} allowed "
                       f"(PET_MAX_DATASET_BYTES)")
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
            raise PetError(f"dataset file {path.name} is a single .npy array, not an .npz archive with 'x' and 'y'")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {_key(info.filename): info for info in archive.infolist()}
            wanted = [k for k in keys if k in members]
            total = 0
            for key in wanted:
                total += _declared_bytes(archive, members[key], path)
                if total > limit:
                    raise PetError(f"{path.name}: the arrays need {total:,} bytes in memory (at float32), more "
                                   f"than the {limit:,} allowed (PET_MAX_DATASET_BYTES)")
            arrays = {}
            for key in wanted:
                with archive.open(members[key]) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER_BYTES)
    except PetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, UnicodeDecodeError) as exc:
        raise PetError(f"dataset file {path.name} is not a valid .npz archive ({type(exc).__name__})") from None
    return arrays, sorted(members)


def _key(filename: str) -> str:
    return filename[:-4] if filename.endswith(".npy") else filename


def _declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> int:
    """Bytes member ``info`` takes once loaded, from its headers only (nothing inflated but the header)."""
    name = shown(_key(info.filename))
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise PetError(f"{path.name}: array {name} is compressed with method {info.compress_type}; "
                       f"only stored or deflated arrays are read (np.savez, np.savez_compressed)")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
        else:
            raise PetError(f"{path.name}: array {name} uses .npy format {version}, not 1.0 or 2.0")
        header = f.tell()
    if dtype.hasobject:
        raise PetError(f"{path.name}: array {name} holds Python objects (dtype {dtype}); only numeric arrays "
                       f"are read, never pickles")
    if any(d < 0 for d in shape):
        raise PetError(f"{path.name}: array {name} has shape {shown(shape)}")
    count = math.prod(shape)
    if count * dtype.itemsize > info.file_size - header:
        raise PetError(f"{path.name}: array {name} is truncated (its header declares {shown(count)} values of "
                       f"{dtype.itemsize} bytes, the archive holds {info.file_size - header:,} bytes)")
    return max(info.file_size, count * max(dtype.itemsize, 4))
