"""The one atomic file writer: a temporary file in the target's folder, then ``os.replace``.

A reader sees the old file or the new one, never half of one; a writer that raises (or a process
killed mid-write) leaves the previous file as it was. The temporary file is removed on failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, fsync: bool = False,
                 prefix: str | None = None, mode: int | None = None) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then move it over ``path``.

    Args:
        path: the file to (re)place; its folder must exist.
        write: writes the contents to the open file object it is given.
        fsync: flush the data to disk before the rename, so a crash cannot leave an empty file in place.
        prefix: the temporary file's name prefix (default ``"<name>."``; it always ends in ``.tmp``).
        mode: permission bits for the result; None keeps the temporary file's owner-only 0o600.

    Returns the path written.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.bin"
    >>> atomic_write(target, lambda f: f.write(b"hi")).read_bytes()
    b'hi'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}." if prefix is None else prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, **kwargs) -> Path:
    """:func:`atomic_write` of ``data``; keyword arguments as there."""
    return atomic_write(path, lambda f: f.write(data), **kwargs)


def atomic_write_text(path: str | Path, text: str, **kwargs) -> Path:
    """:func:`atomic_write` of ``text`` encoded as UTF-8; keyword arguments as there."""
    return atomic_write_bytes(path, text.encode("utf-8"), **kwargs)


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]
