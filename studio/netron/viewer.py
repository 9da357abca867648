"""The viewer and the models it opens, served by Streamlit itself (same host and port as the app).

Streamlit serves ``<app dir>/static/`` at ``<baseUrlPath>/app/static/`` when
``[server] enableStaticServing = true`` (``.streamlit/config.toml``). We write into
``static/netron/``, which the app owns and git ignores:

* ``viewer-<netron version>-<patch digest>/`` -- the patched browser build, written once
  (built in a temporary folder, then renamed into place, so a half-written viewer is
  never served and concurrent processes agree);
* ``models/<sha256 prefix>/<file name>`` -- each published model, content-addressed; the
  newest ``MAX_MODELS`` files (``MAX_MODEL_BYTES`` in total) are kept.

The URL handed to the iframe is a path on the page's own origin, and the model URL inside
it is relative to the viewer, so the graph shows for a remote browser and through
``ssh -L`` alike::

    >>> publish(b"...", "model.onnx", base_url_path="")   # doctest: +SKIP
    '/app/static/netron/viewer-9.3.3-1a2b3c4d5e/index.html?url=../models/7f.../model.onnx'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

from pet_core.atomic import atomic_write_bytes
from studio.netron.patches import netron_version, patches_digest, patch_report, served_files

log = logging.getLogger(__name__)

# Streamlit serves the folder `static` next to the main script (app.py, one level above studio/).
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_URL = "app/static"
FOLDER = "netron"
MAX_MODELS = 32
# Streamlit switches static serving off at start-up when static/ holds more than 1 GiB and
# refuses single files over 200 MiB; stay well inside both.
MAX_MODEL_BYTES = 512 << 20
MAX_FILE_BYTES = 200 << 20
STALE_S = 3600  # leftovers of another patch set or an interrupted write are removed after this

_lock = threading.Lock()
_ready: set[Path] = set()
_last_mtime_ns = 0


def viewer_name() -> str:
    version = re.sub(r"[^A-Za-z0-9.]", "_", netron_version())
    return f"viewer-{version}-{patches_digest()}"


def ensure_viewer(static_dir: Path | None = None) -> Path:
    """Write the patched viewer under ``static/netron/`` once; return its folder."""
    root = (static_dir or STATIC_DIR) / FOLDER
    final = root / viewer_name()
    with _lock:
        if final in _ready and final.is_dir():
            return final
        if not final.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-viewer-", dir=root))
            try:
                for name, data in served_files():
                    (tmp / name).write_bytes(data)
                tmp.chmod(0o755)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not final.is_dir():  # not another process that got there first
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            missing = [k for k, ok in patch_report().items() if not ok]
            if missing:
                log.warning("Netron offline patches not applied: %s", ", ".join(missing))
            log.info("Netron viewer (netron %s) written to %s", netron_version(), final)
        _remove_stale(root, keep=final.name)
        _ready.add(final)
        return final


def _remove_stale(root: Path, keep: str) -> None:
    now = time.time()
    for path in root.iterdir():
        if path.name == keep or not path.name.startswith(("viewer-", ".tmp-viewer-")):
            continue
        try:
            if now - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:  # removed meanwhile
            pass


def _safe_filename(filename: str) -> str:
    base = os.path.basename(filename.replace("\\", "/")) or "model.onnx"
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".") or "model.onnx"
    return base[:120]


def _url_prefix(base_url_path: str | None) -> str:
    """``/<baseUrlPath>`` of this Streamlit server ('' at the root); checks static serving is on."""
    if base_url_path is None:
        from streamlit import config

        if not config.get_option("server.enableStaticServing"):
            raise RuntimeError("Streamlit static file serving is off "
                               "(set [server] enableStaticServing = true in .streamlit/config.toml)")
        base_url_path = config.get_option("server.baseUrlPath") or ""
    base = base_url_path.strip("/")
    return f"/{base}" if base else ""


def publish(model_bytes: bytes, filename: str, *, static_dir: Path | None = None,
            base_url_path: str | None = None) -> str:
    """Write ``model_bytes`` where Streamlit serves it; return the viewer URL that opens it.

    The URL is a path on the app's own origin (``/<baseUrlPath>/app/static/...``);
    ``base_url_path`` defaults to Streamlit's ``server.baseUrlPath``. Content-addressed,
    so publishing the same file twice gives the same URL (and marks it recently used).
    The file name's extension tells Netron the format (``.onnx``, ``.pt``, ...).

    Raises:
        ValueError: the file is larger than Streamlit serves (``MAX_FILE_BYTES``).
        RuntimeError: Streamlit's static file serving is off.
    """
    global _last_mtime_ns
    prefix = _url_prefix(base_url_path)
    data = bytes(model_bytes)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{len(data):,} bytes is more than the viewer serves ({MAX_FILE_BYTES:,})")
    viewer = ensure_viewer(static_dir)
    models = viewer.parent / "models"
    name = _safe_filename(filename)
    ident = hashlib.sha256(data).hexdigest()[:20]
    path = models / ident / name
    with _lock:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, prefix=".tmp-", mode=0o644)
        # Recency is the file's mtime, strictly increasing within this process.
        _last_mtime_ns = max(time.time_ns(), _last_mtime_ns + 1)
        os.utime(path, ns=(_last_mtime_ns, _last_mtime_ns))
        _evict(models, keep=path)
    return (f"{prefix}/{STATIC_URL}/{FOLDER}/{viewer.name}/index.html"
            f"?url={quote(f'../models/{ident}/{name}', safe='/')}")


def published_files(static_dir: Path | None = None) -> list[Path]:
    """The published model files, most recently published first."""
    models = (static_dir or STATIC_DIR) / FOLDER / "models"
    files = []
    for path in models.glob("*/*"):
        try:
            if path.is_file() and not path.name.startswith(".tmp-"):
                files.append((path.stat().st_mtime_ns, path))
        except OSError:  # evicted meanwhile
            pass
    return [p for _, p in sorted(files, key=lambda t: t[0], reverse=True)]


def _evict(models: Path, keep: Path) -> None:
    """Drop the least recently published files beyond ``MAX_MODELS`` / ``MAX_MODEL_BYTES``."""
    count, total = 0, 0
    for path in [keep, *(p for p in published_files(models.parent.parent) if p != keep)]:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if path != keep and (count >= MAX_MODELS or total + size > MAX_MODEL_BYTES):
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()
            except OSError:  # another file of the same content, or not empty yet
                pass
            continue
        count += 1
        total += size
