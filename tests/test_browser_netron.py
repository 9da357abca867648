"""The Netron graph on the Model page, served by the app itself: it shows for a browser that reaches
the app on an address other than 127.0.0.1, and every request goes to the app's own origin.

Starts ``python -m studio.serve`` (what ``make run`` starts) bound to 127.0.0.2 with a fresh model
cache and drives Debian's Chromium (``/usr/bin/chromium``) with Playwright. The screenshot lands in
``artifacts/screenshots/model_netron.png``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SHOT = ROOT / "artifacts" / "screenshots" / "model_netron.png"
HOST = "127.0.0.2"  # not 127.0.0.1: a viewer on the server's own loopback would not show here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = {"data", "blob", "about"}
FIRST_LOAD_MS = 240_000  # the first page load trains the model into the empty cache
GRAPH_MS = 120_000
VIEWER = 'iframe[src*="/app/static/netron/"]'


def _skip_without_browser() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright not installed (pip install playwright)")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The app on HOST:<free port>, as ``http://HOST:PORT``."""
    _skip_without_browser()
    try:
        port = _free_port(HOST)
    except OSError as exc:
        pytest.skip(f"cannot bind {HOST}: {exc}")
    cache = tmp_path_factory.mktemp("pet_netron_cache")
    log_path = cache / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "studio.serve", "--server.port", str(port), "--server.address", HOST,
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env={**os.environ, "PET_CACHE_DIR": str(cache)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit not healthy after 120 s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_idle(page, timeout_ms: int) -> None:
    """Until the script has stopped running (and stays stopped for a moment)."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        state = page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state", timeout=timeout_ms)
        if state == "notRunning":
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.6:
                return
        else:
            quiet_since = None
        time.sleep(0.1)
    raise AssertionError(f"app still busy after {timeout_ms / 1000:.0f} s")


def test_model_page_graph_renders_through_the_apps_origin(origin, tmp_path):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1400, "height": 1000}, args=CHROMIUM_ARGS)
        try:
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{origin}/model")
            page.get_by_role("heading", name=re.compile("Model")).first.wait_for(timeout=FIRST_LOAD_MS)
            _wait_idle(page, FIRST_LOAD_MS)

            iframe = page.locator(VIEWER)
            iframe.wait_for(state="attached", timeout=GRAPH_MS)
            src = iframe.get_attribute("src")
            assert src.startswith("/app/static/netron/viewer-") and "url=../models/" in src, src
            viewer = page.frame_locator(VIEWER)
            viewer.locator("#canvas .node").first.wait_for(state="visible", timeout=GRAPH_MS)
            page.wait_for_timeout(500)
            nodes = viewer.locator("#canvas .node").count()
            graph_text = viewer.locator("#canvas").text_content() or ""
            dialog = viewer.locator("#message-text")
            dialog_text = dialog.inner_text() if dialog.count() and dialog.is_visible() else ""
            frame_urls = [f.url for f in page.frames if "/app/static/netron/" in f.url]

            iframe.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOT))
        finally:
            context.close()

    assert frame_urls and all(u.startswith(f"{origin}/app/static/netron/") for u in frame_urls), frame_urls
    assert nodes >= 3, f"{nodes} graph nodes"
    assert any(op in graph_text for op in ("Gemm", "MatMul", "Linear", "linear")), graph_text[:500]
    assert "Relu" in graph_text or "relu" in graph_text, graph_text[:500]
    assert not dialog_text, f"Netron shows a dialog: {dialog_text!r}"
    assert any("/app/static/netron/models/" in u for u in requests), "the model file was never fetched"
    elsewhere = [u for u in requests if urlsplit(u).scheme not in LOCAL_SCHEMES
                 and urlsplit(u).netloc != urlsplit(origin).netloc]
    assert not elsewhere, f"requests to another host than the app's: {elsewhere}"
    assert not errors, errors
    assert SHOT.stat().st_size > 5000
