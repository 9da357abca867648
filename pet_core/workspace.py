"""The workspace: one folder holding the run ledger and the weights runs produced.

``$PET_WORKSPACE`` when set, else the user data folder (``$XDG_DATA_HOME/pet_studio``, by default
``~/.local/share/pet_studio``). The CLI and the app read and write the same workspace.
"""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir() -> Path:
    """The workspace folder, created if missing."""
    env = os.environ.get("PET_WORKSPACE")
    if env:
        path = Path(env).expanduser()
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(data_home).expanduser() / "pet_studio"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ledger_path() -> Path:
    return workspace_dir() / "ledger.sqlite"


def run_weights_dir() -> Path:
    """Where runs that produced new weights keep them (one file per run)."""
    path = workspace_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path
