"""Where a model comes from besides the zoo: an uploaded file, or a path on this server.

A path loads a Hugging Face model folder or a model file too big to upload, where it lies. Paths
are offered only when the server listens on this machine alone (127.0.0.1, localhost) or when its
owner set ``PET_ALLOW_PATHS=1`` (``PET_ALLOW_PATHS=0`` refuses them everywhere): on a shared server
a path would let anyone load any model file the server can read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import streamlit as st

from pet_core.data import Dataset
from pet_core.errors import PetError
from pet_core.loader import Baseline, load_baseline
from pet_core.runs import NO_DATASET
from studio import state
from studio.serve import is_loopback
from studio.session_files import session_dir

ALLOW_ENV = "PET_ALLOW_PATHS"
WEIGHTS_ONLY = "none: weights only"
UPLOAD_DATASET = "upload .npz/.txt"
PATH_DATASET = "file on this server"


def paths_allowed(environ: dict | None = None, address: str | None = None) -> bool:
    """True when a path on this server may be loaded: ``PET_ALLOW_PATHS`` (1/0) decides, else a
    loopback server address."""
    flag = (os.environ if environ is None else environ).get(ALLOW_ENV, "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    if address is None:
        from streamlit import config

        address = config.get_option("server.address") or ""   # unset: every interface
    return is_loopback(address)


def upload_limit_mb() -> int:
    """The server's upload cap in MB (``server.maxUploadSize``; ``PET_MAX_UPLOAD_MB`` sets it)."""
    return int(st.get_option("server.maxUploadSize"))


def datasets(allow_paths: bool) -> list[str]:
    """The Model page's dataset choices."""
    return ["digits", "mnist", UPLOAD_DATASET, *([PATH_DATASET] if allow_paths else []), WEIGHTS_ONLY]


def dataset_choice(spec: str | None) -> str:
    """The choice that shows the session's dataset ``spec``."""
    if spec in ("digits", "mnist"):
        return spec
    if spec in (None, NO_DATASET):
        return WEIGHTS_ONLY
    return PATH_DATASET if Path(spec).parent != _uploads() and paths_allowed() else UPLOAD_DATASET


def _uploads() -> Path:
    return session_dir() / "uploads"


def save_upload(f) -> str:
    """The upload, kept in this session's folder (removed when the session ends) under its content hash."""
    data = f.getvalue()
    folder = _uploads() / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(f.name).name
    path.write_bytes(data)
    return str(path)


def dataset_spec(choice: str, upload, path: str) -> str:
    """The dataset as the loader takes it (a name, a file path, or :data:`NO_DATASET`); PetError when missing."""
    if choice == WEIGHTS_ONLY:
        return NO_DATASET
    if choice == UPLOAD_DATASET:
        if upload is None:
            raise PetError("choose an .npz (or, for a language model, a .txt) file to use an uploaded dataset")
        return save_upload(upload)
    if choice == PATH_DATASET:
        if not paths_allowed():
            raise PetError("this server does not load datasets by path")
        if not path.strip():
            raise PetError("give the path of a dataset file on this server")
        return _existing(path, "dataset")
    return choice


def _existing(path: str, what: str) -> str:
    p = Path(path.strip()).expanduser()
    if not p.exists():
        raise PetError(f"no {what} file or folder at {path.strip()[:200]}")
    return str(p.resolve())


def load_user_model(model: str, dataset: str, data_dir: str | None, *, arch: str | None, task: str | None,
                    trust_code: bool, by_path: bool = False) -> Baseline:
    """Load an uploaded file or a path (a Hugging Face folder or a model file) and make it the session's
    baseline; on PetError the session keeps its model."""
    if by_path:
        if not paths_allowed():
            raise PetError("this server does not load models by path; upload the file instead")
        model = _existing(model, "model")
    loaded = load_baseline(model, None if dataset == NO_DATASET else dataset, data_dir, arch=arch, task=task,
                           trust_code=trust_code)
    st.session_state["user_baseline"] = loaded
    st.session_state["source_by_path"] = by_path
    state.set_source(model, dataset, data_dir, task=task)
    return loaded


def describe_dataset(ds: Dataset) -> str:
    """One line on a dataset: its splits and what one sample is."""
    if ds.task == "causal_lm":
        return (f"{len(ds.x_train):,} training / {len(ds.x_test):,} test blocks of {ds.x_test.shape[1]} tokens "
                f"(perplexity on the test blocks).")
    what = "token sequences" if ds.task == "sequence_classification" else "images"
    return (f"{len(ds.y_train):,} training / {len(ds.y_test):,} test {what} of {list(ds.input_shape)}, "
            f"{ds.num_classes} classes.")
