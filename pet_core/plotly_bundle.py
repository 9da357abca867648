"""The plotly.js *cartesian* partial bundle that workshop handouts embed, fetched at set-up, never tracked.

``make setup`` runs ``python -m pet_core.plotly_bundle``: it downloads the official npm tarball of
``plotly.js-cartesian-dist-min`` (pinned version, SHA-1 of the tarball and SHA-256 of the file
checked), and writes ``plotly-cartesian.min.js`` gzip-compressed to a git-ignored cache folder
(``.cache/vendor/`` beside this package, or ``$PET_VENDOR_DIR``). The app itself never downloads it:
it makes no request to the internet. License: ``assets/vendor/PLOTLY_LICENSE.txt`` (MIT).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

from pet_core.atomic import atomic_write_bytes
from pet_core.errors import PetError

NAME = "plotly.js-cartesian-dist-min"
VERSION = "4.1.1"                       # the plotly.js the installed python plotly targets (a test checks)
TARBALL = f"https://registry.npmjs.org/{NAME}/-/{NAME}-{VERSION}.tgz"
TARBALL_SHA1 = "4282e25097f00195aa7aeafb3f1678d6bf25a36c"
MEMBER = "package/plotly-cartesian.min.js"
FILE_SHA256 = "79542150855a52c567260e3137095dbe2b744e6d702a5cabe67da246942fba7a"
MAX_TARBALL_BYTES = 32 << 20            # the real one is ~0.5 MB: a bound, not a guess
MAX_FILE_BYTES = 8 << 20


def bundle_path() -> Path:
    folder = os.environ.get("PET_VENDOR_DIR") or Path(__file__).resolve().parents[1] / ".cache" / "vendor"
    return Path(folder) / f"plotly-cartesian-{VERSION}.min.js.gz"


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        data = r.read(MAX_TARBALL_BYTES + 1)
    if len(data) > MAX_TARBALL_BYTES:
        raise PetError(f"{url} is larger than {MAX_TARBALL_BYTES:,} bytes (refused)")
    return data


def extract(tarball: bytes) -> bytes:
    """The bundle file from the npm tarball, after both checksums."""
    if hashlib.sha1(tarball).hexdigest() != TARBALL_SHA1:
        raise PetError(f"{NAME} {VERSION}: the tarball's SHA-1 is not the pinned one (refused)")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        info = tar.getmember(MEMBER)
        if not info.isfile() or info.size > MAX_FILE_BYTES:
            raise PetError(f"{NAME} {VERSION}: {MEMBER} is not a plain file of at most {MAX_FILE_BYTES:,} bytes")
        data = tar.extractfile(info).read()
    if hashlib.sha256(data).hexdigest() != FILE_SHA256:
        raise PetError(f"{NAME} {VERSION}: {MEMBER}'s SHA-256 is not the pinned one (refused)")
    return data


def fetch(path: Path | None = None) -> Path:
    """Download, check and cache the bundle (gzip -9, no timestamp: the same bytes every time)."""
    path = path or bundle_path()
    js = extract(_download(TARBALL))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, gzip.compress(js, compresslevel=9, mtime=0))


def main() -> int:
    path = bundle_path()
    if path.is_file():
        print(f"{path} is there")
        return 0
    try:
        print(f"{fetch(path)} written ({NAME} {VERSION} from the npm registry)")
        return 0
    except (PetError, OSError) as exc:
        print(f"could not fetch {NAME} {VERSION} for workshop handouts: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
