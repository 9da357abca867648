"""Netron's browser build, patched to stay offline.

``netron.start()`` is unusable for us: it phones home (an ``ipinfo.io`` look-up,
Google Analytics beacons) and opens a cookie-consent dialog. We serve the static
browser build that ships inside the installed ``netron`` Python package instead,
patching our copies (the installed files are never modified):

* ``browser.js`` -- telemetry object replaced by an inert stub; the start-up
  ``age()`` (update nag, navigates to GitHub after 180 days), ``consent()``
  (``ipinfo.io`` look-up + cookie dialog) and ``telemetry()`` (Google Analytics)
  steps removed; the GA measurement ID, the ``ipinfo.io`` URL and the GitHub
  gist loader neutralised; links open in a new tab instead of navigating the frame.
* ``base.js`` -- the Google Analytics collect URL and its ``sendBeacon`` call
  neutralised.
* ``index.html`` -- a Content-Security-Policy ``<meta>`` that allows nothing but
  this origin (plus ``data:``/``blob:``), so even an unpatched code path cannot
  reach the network; and a same-origin ``pet-studio-offline.js`` loaded first,
  which pre-sets the ``consent`` cookie and turns ``navigator.sendBeacon`` into a
  no-op (belt and braces should a future netron move the code the patches target).

A patch whose target text is not found logs a warning, and ``patch_report()``
shows it (the tests assert every required patch applies).

    >>> files = dict(served_files())          # {"index.html": b"...", "browser.js": b"...", ...}
    >>> OFFLINE_SCRIPT in files["index.html"].decode()
    True
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OFFLINE_SCRIPT = "pet-studio-offline.js"
# The files of netron's browser build that the viewer loads; Python sources are not served.
SERVED_SUFFIXES = (".html", ".js", ".json", ".css", ".ico", ".svg", ".png")

# Nothing but this origin (plus data:/blob: URLs, which never touch the network) may be loaded
# or contacted. A <meta> policy cannot carry frame-ancestors; the viewer is framed by the app.
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self' data: blob:; "
    "img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; font-src 'self' data:; "
    "worker-src 'self' blob:; frame-src 'none'; object-src 'none'; base-uri 'self'; form-action 'none'"
)


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
        "csp-meta",
        r'<meta charset="utf-8">',
        f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{CSP}">',
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
// PET Studio: keep the embedded Netron viewer offline (served by the app itself).
(function () {
    try {
        if (document.cookie.split(';').every(function (c) { return c.trim().indexOf('consent=') !== 0; })) {
            var expires = new Date(Date.now() + 365 * 24 * 3600 * 1000).toUTCString();
            var path = window.location.pathname.replace(/[^\\/]*$/, '');  // this viewer's folder only
            document.cookie = 'consent=' + Date.now() + ';path=' + path + ';expires=' + expires + ';SameSite=Strict';
        }
    } catch (e) { /* cookies disabled: nothing to pre-set */ }
    try {
        if (window.navigator && window.navigator.sendBeacon) {
            window.navigator.sendBeacon = function () { return true; };
        }
    } catch (e) { /* read-only navigator */ }
})();
"""

_lock = threading.Lock()
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


def patches_digest() -> str:
    """A short hash of everything we change, so a new patch set gets a new viewer folder."""
    text = repr(PATCHES) + OFFLINE_JS + repr(SERVED_SUFFIXES)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _apply_patches(name: str, text: str) -> str:
    for patch in PATCHES:
        if patch.file != name:
            continue
        text, count = re.subn(patch.pattern, lambda _m, r=patch.replacement: r, text, count=1)
        key = f"{patch.file}:{patch.name}"
        with _lock:
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


def served_bytes(name: str) -> bytes:
    """The (patched) content of one file of the viewer; FileNotFoundError if it is not served."""
    if name == OFFLINE_SCRIPT:
        return OFFLINE_JS.encode()
    root = netron_dir()
    path = root / name
    if "/" in name or "\\" in name or path.suffix not in SERVED_SUFFIXES or not path.is_file():
        raise FileNotFoundError(name)
    data = path.read_bytes()
    if any(p.file == name for p in PATCHES):
        data = _apply_patches(name, data.decode("utf-8")).encode("utf-8")
    return data


def served_files() -> Iterator[tuple[str, bytes]]:
    """Every file of the viewer as ``(name, content)``, patched where a patch applies."""
    for path in sorted(netron_dir().iterdir()):
        if path.is_file() and path.suffix in SERVED_SUFFIXES:
            yield path.name, served_bytes(path.name)
    yield OFFLINE_SCRIPT, served_bytes(OFFLINE_SCRIPT)


def patch_report() -> dict[str, bool]:
    """``{"file:patch-name": applied}`` for every patch."""
    for name in sorted({p.file for p in PATCHES}):
        served_bytes(name)
    with _lock:
        return {f"{p.file}:{p.name}": _patch_results.get(f"{p.file}:{p.name}", False) for p in PATCHES}


def served_text(name: str) -> str:
    """The patched text of one served file (for tests and debugging)."""
    return served_bytes(name).decode("utf-8")
