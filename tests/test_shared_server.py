"""Serving to others: loopback by default, a warning otherwise, trust offered only by the server owner,
and one temporary folder per session that goes when the session does."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from studio.serve import bound_address, exposure_warning, is_loopback

ROOT = Path(__file__).resolve().parents[1]


def test_config_binds_loopback():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"


def _make_run_command(*args: str) -> str:
    """The command ``make run`` would start (``make -n``), also when the suite itself runs under make."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "run", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env).stdout
    return next(line for line in out.splitlines() if "studio.serve" in line)


def test_make_run_binds_host_default_loopback():
    assert "--server.address 127.0.0.1" in _make_run_command()
    assert "--server.address 0.0.0.0" in _make_run_command("HOST=0.0.0.0")


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False), ("example.org", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_warning_only_off_loopback_and_says_what_is_open():
    assert exposure_warning("127.0.0.1", trust_code=False) is None
    assert exposure_warning("localhost", trust_code=True) is None
    text = exposure_warning("0.0.0.0", trust_code=False)
    assert "every network interface" in text and "anyone on the network" in text
    assert "not code-trusted" in text and "PET_TRUST_CODE=1" in text
    trusted = exposure_warning("10.0.0.5", trust_code=True)
    assert "10.0.0.5" in trusted and "run code on this machine" in trusted


def test_bound_address_reads_flag_env_then_config():
    assert bound_address(["--server.port", "1", "--server.address", "0.0.0.0"], {}) == "0.0.0.0"
    assert bound_address(["--server.address=10.1.1.1"], {"STREAMLIT_SERVER_ADDRESS": "x"}) == "10.1.1.1"
    assert bound_address([], {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"}) == "0.0.0.0"


def test_serve_prints_the_warning_before_streamlit_starts():
    # --version makes Streamlit exit at once, after main() has checked the address
    code = "import sys; from studio import serve; sys.argv = ['serve', '--server.address', '0.0.0.0', '--version']; serve.main()"
    env = {k: v for k, v in os.environ.items() if k != "PET_TRUST_CODE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "WARNING: PET Studio is listening on every network interface" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-c", code.replace("0.0.0.0", "127.0.0.1")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "WARNING" not in proc.stderr, proc.stderr


# --- the Model page offers trust only when the server was started with PET_TRUST_CODE=1 -----------------

@pytest.mark.parametrize("env, offered", [(None, False), ("0", False), ("1", True)])
def test_model_page_trust_checkbox(monkeypatch, tmp_path, env, offered):
    monkeypatch.setenv("PET_WORKSPACE", str(tmp_path))
    if env is None:
        monkeypatch.delenv("PET_TRUST_CODE", raising=False)
    else:
        monkeypatch.setenv("PET_TRUST_CODE", env)
    at = AppTest.from_file(str(ROOT / "pages" / "model.py"), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    boxes = [c for c in at.checkbox if c.key == "m_trust_code"]
    assert len(boxes) == int(offered)
    if offered:
        assert "runs code" in boxes[0].label or "PET_TRUST_CODE=1" in boxes[0].help


# --- one folder per session ------------------------------------------------------------------------------

def _session_script():
    import streamlit as st

    from studio.session_files import session_dir

    folder = session_dir()
    (folder / "upload.bin").write_bytes(b"x")
    st.session_state["folder"] = str(folder)
    st.session_state["again"] = str(session_dir())


@pytest.fixture
def sessions_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    from studio.session_files import sessions_root as root

    assert root() == tmp_path / "pet_studio_sessions"
    return root()


def test_each_session_gets_its_own_folder_removed_when_it_ends(sessions_root):
    a = AppTest.from_function(_session_script).run()
    b = AppTest.from_function(_session_script).run()
    fa, fb = Path(a.session_state["folder"]), Path(b.session_state["folder"])
    assert fa.parent == fb.parent == sessions_root and fa != fb
    assert a.session_state["again"] == str(fa) and (fa / "upload.bin").is_file()
    del a
    gc.collect()
    assert not fa.exists() and (fb / "upload.bin").is_file()     # only the ended session's folder goes
    del b
    gc.collect()
    assert not fb.exists()


def test_sweep_removes_folders_older_than_a_day(sessions_root):
    from studio.session_files import sweep_old_folders

    old, fresh = sessions_root / "old", sessions_root / "fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "f").write_bytes(b"x")
    t = time.time() - 2 * 24 * 3600
    os.utime(old, (t, t))
    assert sweep_old_folders() == [old]
    assert not old.exists() and (fresh / "f").is_file()
