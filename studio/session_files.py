"""One temporary folder per browser session (uploads, exports), removed when the session ends.

``<tempdir>/pet_studio_sessions/<session id>/``. The folder's owner is an object kept in the session's
state; when Streamlit drops the session (tab closed, session expired, server stopped) the object is
collected and ``weakref.finalize`` removes the folder. Folders a killed server left behind are swept
on the first call in each server process once they are a day old.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import streamlit as st

MAX_AGE_S = 24 * 3600
_KEY = "_session_folder"
_swept = threading.Event()


def sessions_root() -> Path:
    """The server-wide parent of every session folder."""
    return Path(tempfile.gettempdir()) / "pet_studio_sessions"


class _Folder:
    """Owns one session folder: the folder goes when this object is garbage-collected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._remove = weakref.finalize(self, shutil.rmtree, str(path), True)


def sweep_old_folders(now: float | None = None, max_age_s: float = MAX_AGE_S) -> list[Path]:
    """Remove session folders untouched for ``max_age_s`` (left by a killed server); returns them."""
    root, now = sessions_root(), time.time() if now is None else now
    removed = []
    for child in root.iterdir() if root.is_dir() else ():
        try:
            if child.is_dir() and now - child.stat().st_mtime > max_age_s:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        except OSError:   # another server removed it first
            continue
    return removed


def _session_id() -> str:
    """Streamlit's id of this session (a UUID), else one kept in the session state."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        sid = ctx.session_id if ctx is not None else ""
    except ImportError:
        sid = ""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sid or ""):
        sid = st.session_state.setdefault("_session_folder_id", uuid.uuid4().hex)
    return sid


def session_dir() -> Path:
    """This session's folder, created on first use; removed when the session ends."""
    if not _swept.is_set():
        _swept.set()
        sweep_old_folders()
    holder = st.session_state.get(_KEY)
    if holder is None:
        holder = st.session_state[_KEY] = _Folder(sessions_root() / _session_id())
    holder.path.mkdir(parents=True, exist_ok=True)   # again if something removed it meanwhile
    return holder.path
