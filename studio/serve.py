"""Start the app: ``python -m studio.serve [streamlit options]`` (what ``make run`` does).

Streamlit runs a fresh server's first request in its legacy ``pages/`` mode (the page file
alone) until some run has called ``st.navigation``; a deep link opened first would lose the
navigation and layout. The flag is process-wide, so we clear it before the server starts.

The app binds to 127.0.0.1 (``.streamlit/config.toml``); started on another address it prints a
warning to stderr first, since everyone who can reach the port can then use it.

The upload cap is a setting: ``PET_MAX_UPLOAD_MB`` becomes ``--server.maxUploadSize`` (an explicit
flag wins; unset, the config file's value holds). Bigger models load by path instead, where the
Model page offers it (``studio.sources.paths_allowed``).
"""

import ipaddress
import os
import sys
from pathlib import Path

from streamlit.web import cli

from pet_core.memory import release_freed_memory
from pet_core.model_io import env_trusts_code

APP = Path(__file__).resolve().parents[1] / "app.py"
UPLOAD_ENV = "PET_MAX_UPLOAD_MB"


def bound_address(argv: list[str], environ: dict) -> str:
    """The address Streamlit will listen on: the flag, else its env variable, else the config files."""
    for i, arg in enumerate(argv):
        if arg == "--server.address" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--server.address="):
            return arg.split("=", 1)[1]
    if environ.get("STREAMLIT_SERVER_ADDRESS"):
        return environ["STREAMLIT_SERVER_ADDRESS"]
    from streamlit import config

    return config.get_option("server.address") or ""   # unset: Streamlit listens on every interface


def is_loopback(address: str) -> bool:
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:   # "" (every interface), a host name, 0.0.0.0 parses but is not loopback
        return False


def exposure_warning(address: str, trust_code: bool) -> str | None:
    """The warning to print before serving on ``address``; None when only this machine can connect."""
    if is_loopback(address):
        return None
    where = address if address.strip() not in ("", "0.0.0.0", "::") else "every network interface"
    trust = ("PET_TRUST_CODE=1 is set: anyone who can reach it can run code on this machine by uploading a "
             "pickled, TorchScript or torch.export model file." if trust_code else
             "Uploaded model files are not code-trusted: pickle, TorchScript and torch.export uploads are "
             "refused (unless the server is started with PET_TRUST_CODE=1; do not, on a network).")
    return (f"WARNING: PET Studio is listening on {where}, not only on this machine: anyone on the network "
            f"who can reach this port can use the app (upload files, run compression and fine-tuning jobs "
            f"here).\n{trust}\nUse `make run` (127.0.0.1) to keep it local.")


def upload_limit_args(argv: list[str], environ: dict) -> list[str]:
    """``["--server.maxUploadSize", N]`` from ``PET_MAX_UPLOAD_MB``; nothing when unset or given as a flag.

    >>> upload_limit_args([], {"PET_MAX_UPLOAD_MB": "2048"})
    ['--server.maxUploadSize', '2048']

    Raises:
        SystemExit: the variable is not a whole number of megabytes >= 1 (one line).
    """
    text = environ.get(UPLOAD_ENV, "").strip()
    if not text or any(a == "--server.maxUploadSize" or a.startswith("--server.maxUploadSize=") for a in argv):
        return []
    if not text.isdigit() or int(text) < 1:
        raise SystemExit(f"{UPLOAD_ENV}={text[:40]!r}: give the upload cap as a whole number of megabytes, e.g. 2048")
    return ["--server.maxUploadSize", str(int(text))]


def main() -> int:
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except ImportError:  # a Streamlit without the flag needs nothing
        pass
    release_freed_memory()        # the server holds every session's workbench
    args = sys.argv[1:]
    warning = exposure_warning(bound_address(args, dict(os.environ)), env_trusts_code())
    if warning:
        print(warning, file=sys.stderr)
    sys.argv = ["streamlit", "run", str(APP), *args, *upload_limit_args(args, dict(os.environ))]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
