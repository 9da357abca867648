"""One temporary folder per browser session (uploads, exports), removed when the session ends."""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from pathlib import Path

import streamlit as st

ROOT = Path(tempfile.gettempdir()) / "pet_studio_sessions"
MAX_AGE_S = 24 * 3600


class _Folder:
    """Held in session state; its finaliser removes the folder when Streamlit drops the session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        weakref.finalize(self, shutil.rmtree, str(path), True)


def _sweep_old() -> None:
    """Remove folders left by sessions of a server that was killed (older than a day)."""
    if not ROOT.is_dir():
        return
    for child in ROOT.iterdir():
        try:
            if time.time() - child.stat().st_mtime > MAX_AGE_S:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            continue


def session_dir() -> Path:
    """This session's folder, created on first use."""
    holder = st.session_state.get("_session_folder")
    if holder is None or not holder.path.is_dir():
        _sweep_old()
        ROOT.mkdir(parents=True, exist_ok=True)
        holder = _Folder(Path(tempfile.mkdtemp(prefix="s_", dir=ROOT)))
        st.session_state["_session_folder"] = holder
    return holder.path
