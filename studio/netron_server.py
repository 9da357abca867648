"""An offline Netron viewer: one small loopback HTTP server per process.

``netron.start()`` is unusable for us: it phones home (an ``ipinfo.io`` look-up,
Google Analytics beacons) and opens a cookie-consent dialog. Instead we serve the
static browser build that ships inside the installed ``netron`` Python package
ourselves, patching the served copies on the fly (the installed files are never
modified):

* ``browser.js`` -- telemetry object replaced by an inert stub; the start-up
  ``age()`` (update nag, navigates to GitHub after 180 days), ``consent()``
  (``ipinfo.io`` look-up + cookie dialog) and ``telemetry()`` (Google Analytics)
  steps removed; the GA measurement ID, the ``ipinfo.io`` URL and the GitHub
  gist loader neutralised.
* ``base.js`` -- the Google Analytics collect URL and its ``sendBeacon`` call
  neutralised.
* ``index.html`` -- a same-origin ``pet-studio-offline.js`` is loaded first: it
  pre-sets the ``consent`` cookie and turns ``navigator.sendBeacon`` into a no-op
  (belt and braces should a future netron move the code the patches target).

Every response also carries a Content-Security-Policy that only allows
same-origin ``connect``/``img``/``font``/``script`` sources, so even an unpatched
code path cannot reach the network. A patch whose target text is not found logs
a warning (and ``patch_report()`` shows it, which the tests assert on).

Public API::

    port = ensure_server()                       # start once, return the port
    url = publish(model_bytes, "model.onnx")     # URL that opens the model
    data, name = model_to_netron_bytes(model, (1, 28, 28))

The URL format is ``http://127.0.0.1:PORT/index.html?url=/models/<id>/<filename>``
where ``<id>`` is a sha256 prefix of the file content. The browser build of
Netron reads the ``url`` query parameter (or the URL hash) in
``browser.Host.start()`` and fetches the model with an XHR.

Note: the URL is on the server machine's loopback interface, so the viewer only
works when the browser runs on the same machine as Streamlit (the normal
local-desktop setup).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import mimetypes
import os
import re
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_MODELS = 32  # bounded LRU of published files
MAX_MODEL_BYTES = 1 << 30  # and at most ~1 GiB of them in total
OFFLINE_SCRIPT = "pet-studio-offline.js"

# Content-Security-Policy for every response: nothing but this origin (plus
# data:/blob: URLs, which never touch the network) may be loaded or contacted.
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self' data: blob:; "
    "img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; font-src 'self' data:; "
    "worker-src 'self' blob:; frame-src 'none'; object-src 'none'; base-uri 'self'; form-action 'none'"
)

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".ico": "image/x-icon",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- patches


@dataclass(frozen=True)
class Patch:
    """Replace the single match of ``pattern`` (a regex) in ``file`` by ``replacement``."""

    file: str
    name: str
    pattern: str
    replacement: str
    required: bool = True


PATCHES: tuple[Patch, ...] = (
    Patch(
        "browser.js",
        "telemetry-stub",
        r"this\._telemetry = new base\.Telemetry\(this\._window\);",
        "this._telemetry = { start: async () => {}, set: () => {}, get: () => undefined, "
        "send: () => {}, session: null }; /* PET Studio: telemetry disabled */",
    ),
    Patch(
        "browser.js",
        "startup-age-consent-telemetry",
        r"await age\(\);\s*await consent\(\);\s*await telemetry\(\);",
        "/* PET Studio: update nag, consent dialog (IP look-up) and telemetry disabled */",
    ),
    Patch(
        "browser.js",
        "measurement-id",
        r"const measurement_id = '[A-Za-z0-9]+';",
        "const measurement_id = '';",
    ),
    Patch(
        "browser.js",
        "ipinfo-url",
        r"'https://ipinfo\.io/json'",
        "'data:application/json,{}'",
    ),
    Patch(
        "browser.js",
        "gist-loader",
        r"const gist = params\.get\('gist'\);",
        "const gist = null; /* PET Studio: no GitHub gist loading */",
    ),
    Patch(
        "browser.js",
        "open-url-new-tab",  # user-initiated links must not navigate the embedded iframe away
        r"openURL\(url\) \{\s*const window = this\.window;\s*window\.location = url;",
        "openURL(url) {\n        const window = this.window;\n        window.open(url, '_blank', 'noopener,noreferrer');",
        required=False,
    ),
    Patch(
        "base.js",
        "analytics-url",
        r"https://analytics\.google\.com/g/collect\?",
        "/__telemetry_disabled__?",
    ),
    Patch(
        "base.js",
        "send-beacon",
        r"this\._navigator\.sendBeacon\(url, body\);",
        "void url; void body; /* PET Studio: no beacon */",
    ),
    Patch(
        "index.html",
        "offline-script",
        r'<script type="text/javascript" src="index\.js"></script>',
        f'<script type="text/javascript" src="{OFFLINE_SCRIPT}"></script>\n'
        '<script type="text/javascript" src="index.js"></script>',
    ),
)

# Strings that must not appear in any served, patched file.
FORBIDDEN = (
    "googletagmanager",
    "google-analytics.com",
    "analytics.google.com",
    "ipinfo.io",
    "848W2NVWVH",
)

OFFLINE_JS = """\
// PET Studio: keep the embedded Netron viewer offline (served from loopback).
(function () {
    try {
        if (document.cookie.split(';').every(function (c) { return c.trim().indexOf('consent=') !== 0; })) {
            var expires = new Date(Date.now() + 365 * 24 * 3600 * 1000).toUTCString();
            document.cookie = 'consent=' + Date.now() + ';path=/;expires=' + expires;
        }
    } catch (e) { /* cookies disabled: nothing to pre-set */ }
    try {
        if (window.navigator && window.navigator.sendBeacon) {
            window.navigator.sendBeacon = function () { return true; };
        }
    } catch (e) { /* read-only navigator */ }
})();
"""

_patch_lock = threading.Lock()
_patched_cache: dict[str, bytes] = {}
_patch_results: dict[str, bool] = {}


def netron_dir() -> Path:
    """The folder of the installed ``netron`` package (its static browser build)."""
    import netron

    return Path(netron.__file__).resolve().parent


def netron_version() -> str:
    try:
        import netron

        return str(getattr(netron, "__version__", "?"))
    except ImportError:  # pragma: no cover
        return "?"


def _apply_patches(name: str, text: str) -> str:
    for patch in PATCHES:
        if patch.file != name:
            continue
        text, count = re.subn(patch.pattern, lambda _m, r=patch.replacement: r, text, count=1)
        key = f"{patch.file}:{patch.name}"
        _patch_results[key] = count == 1
        if count != 1:
            level = logging.WARNING if patch.required else logging.INFO
            log.log(level, "netron %s: patch %s not applied (target text not found); "
                    "the viewer may try to reach the network", netron_version(), key)
            if patch.required:
                warnings.warn(f"Netron offline patch {key} not applied (netron {netron_version()})",
                              RuntimeWarning, stacklevel=2)
    for needle in FORBIDDEN:
        if needle in text:
            log.warning("netron %s: %s still contains %r after patching", netron_version(), name, needle)
    return text


def _static_bytes(name: str) -> bytes | None:
    """The (patched) content of a file of netron's browser build, or None."""
    if name == OFFLINE_SCRIPT:
        return OFFLINE_JS.encode()
    if not _SAFE_NAME.match(name) or Path(name).suffix not in MIME_TYPES:
        return None
    with _patch_lock:
        if name in _patched_cache:
            return _patched_cache[name]
    root = netron_dir()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    data = path.read_bytes()
    if any(p.file == name for p in PATCHES):
        data = _apply_patches(name, data.decode("utf-8")).encode("utf-8")
    with _patch_lock:
        _patched_cache[name] = data
    return data


def patch_report() -> dict[str, bool]:
    """``{"file:patch-name": applied}`` for every patch (loads the patched files)."""
    for name in sorted({p.file for p in PATCHES}):
        _static_bytes(name)
    return {f"{p.file}:{p.name}": _patch_results.get(f"{p.file}:{p.name}", False) for p in PATCHES}


def served_text(name: str) -> str:
    """The patched text of one served file (for tests and debugging)."""
    data = _static_bytes(name)
    if data is None:
        raise FileNotFoundError(name)
    return data.decode("utf-8")


# --------------------------------------------------------------------------- models


_models: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
_models_lock = threading.Lock()


def _safe_filename(filename: str) -> str:
    base = os.path.basename(filename.replace("\\", "/")) or "model.onnx"
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".") or "model.onnx"
    return base[:120]


def publish(model_bytes: bytes, filename: str) -> str:
    """Keep ``model_bytes`` in memory and return the URL that opens it in the viewer.

    Content-addressed (sha256 prefix), so publishing the same file twice gives the
    same URL; the newest ``MAX_MODELS`` files are kept. The file name's extension
    tells Netron the format (``.onnx``, ``.pt``, ...).
    """
    port = ensure_server()
    name = _safe_filename(filename)
    data = bytes(model_bytes)
    ident = hashlib.sha256(data).hexdigest()[:20]
    key = f"{ident}/{name}"
    with _models_lock:
        _models[key] = (name, data)
        _models.move_to_end(key)
        total = sum(len(v[1]) for v in _models.values())
        while len(_models) > MAX_MODELS or (total > MAX_MODEL_BYTES and len(_models) > 1):
            _, (_, evicted) = _models.popitem(last=False)
            total -= len(evicted)
    return f"http://{HOST}:{port}/index.html?url={quote(f'/models/{key}', safe='/')}"


def _get_model(key: str) -> bytes | None:
    with _models_lock:
        item = _models.get(key)
        if item is None:
            return None
        _models.move_to_end(key)
        return item[1]


# --------------------------------------------------------------------------- server


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "PETStudioNetron/1.0"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("netron server: " + format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path in ("", "/"):
            self.send_response(302)
            self.send_header("Location", "/index.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/models/"):
            data = _get_model(path[len("/models/"):])
            if data is None:
                return self._error(404)
            return self._send(data, "application/octet-stream", "private, max-age=3600", head)
        name = path[1:]
        data = _static_bytes(name) if "/" not in name and "\\" not in name else None
        if data is None:
            return self._error(404)
        if name == "index.html":
            cache = "no-cache"
        elif name == OFFLINE_SCRIPT or any(p.file == name for p in PATCHES):
            cache = "no-cache"
        else:
            cache = "public, max-age=86400"
        ctype = MIME_TYPES.get(Path(name).suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(data, ctype, cache, head)

    def _send(self, data: bytes, ctype: str, cache: str, head: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the browser went away
                pass

    def _error(self, code: int) -> None:
        body = f"{code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


_server: _Server | None = None
_server_lock = threading.Lock()


def ensure_server() -> int:
    """Start the shared server once (thread-safe) and return its port."""
    global _server
    with _server_lock:
        if _server is None:
            server = _Server((HOST, 0), _Handler)
            thread = threading.Thread(target=server.serve_forever, name="netron-server", daemon=True)
            thread.start()
            _server = server
            log.info("Netron viewer (netron %s) served on http://%s:%d/", netron_version(), HOST, server.server_address[1])
            missing = [k for k, ok in patch_report().items() if not ok]
            if missing:
                log.warning("Netron offline patches not applied: %s", ", ".join(missing))
        return int(_server.server_address[1])


# --------------------------------------------------------------------------- export


def model_to_netron_bytes(model, input_shape) -> tuple[bytes, str]:
    """Serialise ``model`` for Netron: ONNX if possible, else TorchScript.

    ``input_shape`` is one sample's shape without the batch dimension, e.g.
    ``(1, 28, 28)``; a batch of one is used for tracing/export. Returns
    ``(file_bytes, filename)`` with filename ``model.onnx`` or ``model.pt``.
    """
    import torch

    shape = tuple(int(v) for v in input_shape)
    try:
        param = next(model.parameters())
        device, dtype = param.device, (param.dtype if param.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    example = torch.zeros((1, *shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        try:
            return _export_onnx(model, example), "model.onnx"
        except Exception as exc:  # noqa: BLE001 - any exporter failure -> fallback
            log.info("ONNX export failed (%s: %s); falling back to TorchScript", type(exc).__name__, exc)
        return _export_torchscript(model, example), "model.pt"
    finally:
        model.train(was_training)


def _export_onnx(model, example) -> bytes:
    import contextlib

    import torch

    with tempfile.TemporaryDirectory(prefix="pet-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), external_data=False)
        data = path.read_bytes()
    if not data:
        raise RuntimeError("empty ONNX export")
    return data


def _export_torchscript(model, example) -> bytes:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()
