"""The whole app in a real browser: every page renders offline, the Compress slider updates the
numbers, and two browser tabs (two sessions) do not share settings.

Drives Debian's Chromium (``/usr/bin/chromium``) with Playwright against ``streamlit run app.py``
on a free loopback port, with a fresh model cache. Screenshots land in ``artifacts/screenshots/``.
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
SHOTS = ROOT / "artifacts" / "screenshots"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome-extension", "chrome", "file"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {"home": "/", "model": "/model", "weights": "/weights", "compress": "/compress", "plan": "/plan",
         "finetune": "/finetune", "pareto": "/pareto", "compare": "/compare", "export": "/export",
         "learn": "/learn", "board": "/board"}
TITLES = {"home": "PET Studio", "model": "Model", "weights": "Weights", "compress": "Compress",
          "plan": "Sensitivity & plan", "finetune": "Fine-tune", "pareto": "Pareto", "compare": "Compare",
          "export": "Export", "learn": "Lessons", "board": "Class board"}
FIRST_LOAD_MS = 240_000   # the first page load trains the model into the empty cache
RERUN_MS = 60_000


# --- fixtures -------------------------------------------------------------------------------------

def _skip_without_browser() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright not installed (pip install playwright)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cache_dir: Path, extra_env: dict | None = None, timeout_s: float = 120.0,
                 launcher: tuple[str, ...] = ("streamlit", "run", "app.py")
                 ) -> tuple[subprocess.Popen, str, Path]:
    """``python -m <launcher>`` (default ``streamlit run app.py``) on a free loopback port;
    returns (process, base URL, log file)."""
    port = free_port()
    log_path = cache_dir / f"streamlit-{port}.log"
    env = {**os.environ, "PET_CACHE_DIR": str(cache_dir), **(extra_env or {})}
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", *launcher, "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_server(proc)
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, log_path
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pet_browser_cache")


@pytest.fixture(scope="module")
def server(cache_dir):
    _skip_without_browser()
    proc, url, log_path = start_server(cache_dir, launcher=("studio.serve",))   # what `make run` starts
    yield url
    stop_server(proc)


class Browser:
    """A persistent Chromium context that records every request it makes."""

    def __init__(self, context):
        self.context = context
        self.requests: list[str] = []
        self.page_errors: list[str] = []
        context.on("request", lambda r: self.requests.append(r.url))
        context.on("page", self._watch)
        for p in context.pages:
            self._watch(p)

    def _watch(self, page) -> None:
        page.on("websocket", lambda ws: self.requests.append(ws.url))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def new_page(self):
        page = self.context.new_page()
        page.set_default_timeout(RERUN_MS)
        return page

    def offsite(self) -> list[str]:
        out = []
        for u in self.requests:
            parts = urlsplit(u)
            if parts.scheme in LOCAL_SCHEMES:
                continue
            if parts.hostname not in LOOPBACK:
                out.append(u)
        return out


def launch(playwright, profile: Path):
    return playwright.chromium.launch_persistent_context(
        user_data_dir=str(profile), executable_path=CHROMIUM, headless=True,
        viewport={"width": 1400, "height": 1000}, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("pet_chromium_profile")
    with sync_playwright() as p:
        context = launch(p, profile)
        try:
            b = Browser(context)
            yield b
            assert b.requests, "no requests recorded"
            assert not b.offsite(), f"requests left loopback: {b.offsite()}"
        finally:
            context.close()


@pytest.fixture(autouse=True)
def _offline_after_each_test(request):
    yield
    if "browser" in request.fixturenames:
        b = request.getfixturevalue("browser")
        assert not b.offsite(), f"requests left loopback: {b.offsite()}"


# --- helpers --------------------------------------------------------------------------------------

def wait_idle(page, timeout_ms: int = RERUN_MS, settle_s: float = 0.6) -> None:
    """Until the script is not running (and stays so for ``settle_s``) and no status widget runs."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while True:
        state = page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state", timeout=timeout_ms)
        running = page.locator('[data-testid="stStatusWidgetRunningIcon"], '
                               '[data-testid="stStatusWidgetRunningManIcon"]').count() > 0
        spinner = page.locator('[data-testid="stProgress"], [data-testid="stSpinner"]').count() > 0
        if state == "notRunning" and not running and not spinner:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                return
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            raise AssertionError(f"app still busy after {timeout_ms / 1000:.0f} s (script state {state!r})")
        time.sleep(0.1)


def open_page(page, base: str, name: str, timeout_ms: int = RERUN_MS, query: str = "") -> None:
    page.goto(base + PAGES[name] + query)
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.get_by_role("heading", name=re.compile(TITLES[name])).first.wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def assert_no_exception(page, where: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{where}: exception shown: {exc.first.inner_text()[:2000]}"
    err = page.locator('[data-testid="stAlertContentError"], [data-testid="stError"]')
    assert err.count() == 0, f"{where}: st.error shown: {err.first.inner_text()[:2000]}"


def assert_icons_render(page, where: str) -> None:
    """Every icon is a Material Symbol drawn by Streamlit's bundled font, not an emoji (a box without an
    emoji font): the font face loaded offline, and each visible icon is one glyph about as wide as it is tall,
    not its name spelt out in a fallback font."""
    from test_icons import EMOJI

    page.evaluate("() => document.fonts.ready.then(() => true)")
    text = page.evaluate("() => document.body.innerText")
    assert not EMOJI.findall(text), f"{where}: emoji shown: {sorted(set(EMOJI.findall(text)))}"
    loaded = page.evaluate("() => [...document.fonts].filter(f => f.family.includes('Material Symbols')"
                           " && f.status === 'loaded').length")
    assert loaded >= 1, f"{where}: the Material Symbols font did not load"
    icons = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stIconMaterial"]')]
        .map(e => { const r = e.getBoundingClientRect();
                    return {name: e.textContent, w: r.width, h: r.height,
                            nav: !!e.closest('[data-testid="stSidebarNav"]')}; })
        .filter(i => i.w > 0 && i.h > 0)""")
    assert sum(i["nav"] for i in icons) >= 5, f"{where}: sidebar navigation icons: {icons}"
    wide = [i for i in icons if i["w"] > 1.5 * i["h"]]
    assert not wide, f"{where}: icons drawn as text, not glyphs: {wide}"


def screenshot(page, name: str) -> Path:
    """A full-page screenshot: Streamlit scrolls inside stMain, so grow the viewport to its height."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    size = page.viewport_size
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return Math.max(m ? m.scrollHeight : 0, document.documentElement.scrollHeight); }")
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height, size["height"]), 8000))})
    page.wait_for_timeout(400)   # let charts re-layout
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    assert path.stat().st_size > 5000, path
    return path


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
    return box.first.locator('[data-testid="stMetricValue"]').inner_text().strip()


def metrics(page) -> dict[str, str]:
    return {k: metric(page, k) for k in ("Accuracy", "Size", "Compression", "Weight sparsity", "Non-zero params")}


def sparsity_slider(page):
    """The Sparsity slider's thumb: an ``<input type=range>`` (implicit role slider) in Streamlit 1.67,
    an element with an explicit ``role="slider"`` in older versions; ``get_by_role`` finds either."""
    return page.locator('[data-testid="stSlider"]').filter(has_text="Sparsity").first.get_by_role("slider")


def slider_value(slider) -> float:
    value = slider.get_attribute("aria-valuenow")
    return float(value if value is not None else slider.input_value())


def wait_metric_change(page, label: str, old: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            now = metric(page, label)
        except Exception:   # the element is being replaced by a rerun
            now = old
        if now != old:
            return now
        time.sleep(0.05)
    raise AssertionError(f"metric {label!r} stayed {old!r} for {timeout_s:.0f} s")


def layer_table(page) -> bytes:
    """The per-layer result table (the last dataframe on Compress) as pixels: its cells are a canvas."""
    return page.locator('[data-testid="stDataFrame"]').last.screenshot()


# --- tests ----------------------------------------------------------------------------------------

def test_every_page_renders_offline(server, browser):
    page = browser.new_page()
    # The first load trains the model into the empty cache: allow minutes.
    open_page(page, server, "home", FIRST_LOAD_MS)
    for name in PAGES:
        open_page(page, server, name, FIRST_LOAD_MS)
        assert_no_exception(page, name)
        assert_icons_render(page, name)
        screenshot(page, name)
        if name == "compress":
            assert sparsity_slider(page).count() == 1
            assert metric(page, "Size").endswith(" B")
            assert page.locator('[data-testid="stDataFrame"]').count() >= 1
        elif name == "pareto":
            chart = page.locator('[data-testid="stPlotlyChart"], .js-plotly-plot').first
            chart.wait_for(state="visible")
            assert chart.bounding_box()["height"] > 100
            assert page.locator(".js-plotly-plot .scatterlayer .point").count() >= 1, "Pareto chart has no points"
        elif name == "export":
            buttons = page.locator('[data-testid="stDownloadButton"]')
            assert buttons.count() >= 4
            texts = " ".join(buttons.all_inner_texts())
            for what in ("Recipe (YAML)", "Recipe (JSON)", "safetensors", "Report (HTML)"):
                assert what in texts, texts
        elif name == "model":
            page.locator("iframe").first.wait_for(state="attached")
    page.close()


def test_sidebar_navigation(server, browser):
    page = browser.new_page()
    open_page(page, server, "home", FIRST_LOAD_MS)
    nav = page.locator('[data-testid="stSidebarNav"]')
    for name in ("weights", "compress", "plan", "finetune", "pareto", "compare", "export", "model", "home"):
        nav.get_by_role("link", name=re.compile(TITLES[name] if name != "home" else "Home")).first.click()
        page.get_by_role("heading", name=re.compile(TITLES[name])).first.wait_for()
        wait_idle(page)
        assert urlsplit(page.url).path.rstrip("/") == PAGES[name].rstrip("/"), page.url
        assert_no_exception(page, f"{name} via sidebar")
    page.close()


def test_compress_slider_updates_numbers(server, browser):
    page = browser.new_page()
    open_page(page, server, "compress", FIRST_LOAD_MS)
    before = metrics(page)
    table_before = layer_table(page)
    slider = sparsity_slider(page)
    assert slider_value(slider) == pytest.approx(0.7)
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    new_size = wait_metric_change(page, "Size", before["Size"])
    wait_idle(page)
    after = metrics(page)
    assert new_size != before["Size"]
    assert after["Size"] != before["Size"]
    assert after["Non-zero params"] != before["Non-zero params"]
    assert after["Weight sparsity"] != before["Weight sparsity"]
    # Presses that land while a rerun is in flight can be absorbed, so the slider ends between
    # 0.71 and 0.80; what matters is that it moved and the numbers followed.
    assert 0.7 < slider_value(slider) <= 0.8 + 1e-9
    # sparser: fewer bytes
    assert int(after["Size"].replace(",", "").split()[0]) < int(before["Size"].replace(",", "").split()[0])
    assert layer_table(page) != table_before, "the per-layer table did not change"
    assert_no_exception(page, "compress after slider")
    screenshot(page, "compress_after_slider")
    page.close()


def test_two_sessions_are_isolated(server, browser):
    first = browser.new_page()
    open_page(first, server, "compress", FIRST_LOAD_MS)
    s = sparsity_slider(first)
    s.focus()
    for _ in range(5):
        first.keyboard.press("ArrowRight")
    size_first = wait_metric_change(first, "Size", metric(first, "Size"))
    wait_idle(first)
    size_first = metric(first, "Size")
    first_numbers = metrics(first)

    second = browser.new_page()   # a new tab is a new websocket, i.e. a new Streamlit session
    open_page(second, server, "compress", FIRST_LOAD_MS)
    assert slider_value(sparsity_slider(second)) == pytest.approx(0.7), \
        "a new session must start from the start recipe, not from another session's settings"
    start_size = metric(second, "Size")
    assert start_size != size_first
    sparsity_slider(second).focus()
    second.keyboard.press("Home")
    size_second = wait_metric_change(second, "Size", start_size)
    wait_idle(second)
    assert slider_value(sparsity_slider(second)) == pytest.approx(0.0)
    assert_no_exception(second, "second session")

    first.bring_to_front()
    wait_idle(first)                 # any rerun the other session could have caused has finished
    assert metrics(first) == first_numbers, "the other session's slider changed this session's numbers"
    assert slider_value(sparsity_slider(first)) == pytest.approx(0.75)
    assert metric(first, "Size") != metric(second, "Size") == size_second
    assert_no_exception(first, "first session")
    first.close()
    second.close()


def sidebar_text(page) -> str:
    return " ".join(page.locator('[data-testid="stSidebar"]').inner_text().split())


def test_sidebar_summary_follows_the_slider(server, browser):
    """The sidebar summary is filled after the page ran: it shows this run's recipe, not the last."""
    page = browser.new_page()
    open_page(page, server, "compress", FIRST_LOAD_MS)
    assert "magnitude 70%" in sidebar_text(page)
    before = metric(page, "Size")
    sparsity_slider(page).focus()
    page.keyboard.press("ArrowRight")
    wait_metric_change(page, "Size", before)
    wait_idle(page)
    assert slider_value(sparsity_slider(page)) == pytest.approx(0.71)
    text = sidebar_text(page)
    page.close()
    assert "magnitude 71%" in text, text


def _deep_link(browser, url: str) -> str:
    """The sidebar of a fresh server's very first page: a deep link to Compress."""
    page = browser.new_page()
    try:
        page.goto(url + "/compress")
        page.get_by_role("heading", name=re.compile("Compress")).first.wait_for(timeout=FIRST_LOAD_MS)
        wait_idle(page, FIRST_LOAD_MS)
        assert_no_exception(page, "deep link")
        return sidebar_text(page)
    finally:
        page.close()


def test_deep_link_on_a_fresh_server_with_the_launcher(cache_dir, server, browser):
    """``python -m studio.serve`` (what ``make run`` does): a deep link opened first keeps the
    navigation, the sidebar summary and the layout."""
    # `server` first: the model is then already in cache_dir, this server only has to start.
    proc, url, _ = start_server(cache_dir, launcher=("studio.serve",))
    try:
        text = _deep_link(browser, url)
    finally:
        stop_server(proc)
    assert "Home" in text and "Fine-tune" in text and "lenet_300_100 on digits" in text, text


def test_deep_link_on_a_fresh_plain_streamlit_run_still_renders_the_page(cache_dir, server, browser):
    """A plain ``streamlit run app.py`` (not ``make run``): Streamlit's legacy pages/ mode runs a deep
    link's page alone until some session has run app.py, so the sidebar summary and the wide layout
    are missing (README, first lines); the page itself renders, without an exception."""
    proc, url, _ = start_server(cache_dir)
    try:
        _deep_link(browser, url)                 # waits for the Compress heading, fails on an exception
    finally:
        stop_server(proc)


def test_clicking_a_pareto_point_loads_its_recipe(server, browser):
    page = browser.new_page()
    # a user name of its own: Pareto then shows this session's runs only, not those other tests (AppTest
    # sessions in this pytest process share the workspace) recorded as the default user "me"
    open_page(page, server, "compress", FIRST_LOAD_MS, query="?user=pareto-click")   # run 1: sparsity 0.70
    before = metric(page, "Size")
    sparsity_slider(page).focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_metric_change(page, "Size", before)                      # run 2: a higher sparsity
    wait_idle(page)
    moved_to = slider_value(sparsity_slider(page))
    assert moved_to > 0.7
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_role("link", name=re.compile("Pareto")).first.click()   # same session
    page.get_by_role("heading", name=re.compile("Pareto")).first.wait_for()
    wait_idle(page)
    # traces: baseline, then post-training runs in the order they were made; click the first run
    traces = page.locator(".js-plotly-plot .scatterlayer .trace")
    traces.nth(1).locator(".point").first.click(force=True)
    page.get_by_text(re.compile("Loaded .* into Compress")).first.wait_for(timeout=RERUN_MS)
    wait_idle(page)
    assert_no_exception(page, "pareto selection")
    nav.get_by_role("link", name=re.compile("Compress")).first.click()
    page.get_by_role("heading", name=re.compile("Compress")).first.wait_for()
    wait_idle(page)
    assert slider_value(sparsity_slider(page)) == pytest.approx(0.7)
    assert metric(page, "Size") == before
    page.close()
