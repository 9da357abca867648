"""App latency: a Compress slider move measured through Streamlit itself, not just the engine.

* **server side** (``bench_server``): ``streamlit.testing.v1.AppTest`` runs ``app.py`` on the
  Compress page; a move is ``slider(key="c_prune_sparsity@<recipe version>").set_value(v)`` then the timed ``at.run()``
  (the whole script: navigation, sidebar, page, engine, elements). Baseline, measured in the same
  run and interleaved: ``at.run()`` with no widget change (a plain rerun: same script, cached report).
* **browser** (``bench_browser``): ``streamlit run app.py`` on a loopback port (a workspace of its
  own), Debian's Chromium driven by Playwright (a fresh context). A move is an ArrowRight key press
  on the focused sparsity slider; times are taken *in the page* (``performance.now()``) from the
  keydown event to: the **first number** of the task's metric (the first metric of the main area:
  its element container back from stale with the new run's content, or its text changed; an
  estimate "≈ 97.85% ± 0.67" or the exact number), the **exact number** (that metric without
  "(estimate)" in its label, after the page's poll of the background evaluation), the mutation
  that puts the new text into the Size metric, and the script state's first return to
  ``notRunning``. Each press waits for the exact number before the next. Baseline, interleaved:
  the ``r`` hotkey (Streamlit's "rerun"), a rerun that changes nothing, from keydown to the script
  state returning to ``notRunning``. ``PET_BENCH_SCREENSHOTS=<folder>``: PNGs of the page showing
  an estimate and the exact number.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import Context, Goal, Result, median, p90

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Consecutive values always differ, so every move really changes the recipe.
SPARSITIES = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
SERVER_GOAL_MS = 150.0    # lenet_300_100 on MNIST
BROWSER_GOAL_MS = 500.0   # lenet_300_100 on MNIST, key press to the new Size metric
BROWSER_FIRST_GOALS_MS = {("lenet_300_100", "mnist"): 400.0, ("mnist_cnn", "mnist"): 600.0}   # to the first number


def mnist_dir(ctx: Context) -> str | None:
    d = ctx.data_dir or os.environ.get("PET_MNIST_DIR") or str(REPO.parent / "shared" / "data" / "mnist")
    p = Path(d)
    ok = p.is_dir() and any((p / f"t10k-labels-idx1-ubyte{ext}").exists() for ext in ("", ".gz"))
    return str(p) if ok else None


# --- server side: AppTest ----------------------------------------------------------------------

def _size(at) -> str:
    return next(m.value for m in at.metric if m.label == "Size")


def _check(at, where: str) -> None:
    if len(at.exception):
        raise RuntimeError(f"{where}: exception in the app: {at.exception[0].value}")
    if len(at.error):
        raise RuntimeError(f"{where}: st.error in the app: {at.error[0].value}")


def server_rows(model: str, dataset: str, data_dir: str | None, ctx: Context) -> Result:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=300)
    at.session_state["source"] = {"model": model, "dataset": dataset, "data_dir": data_dir}
    t0 = time.perf_counter()
    at.run()                                   # home page: loads (or trains) the model
    _check(at, "home")
    at.switch_page("pages/compress.py")
    at.run()
    _check(at, "compress")
    ctx.log(f"  {model} on {dataset}: app ready in {time.perf_counter() - t0:.1f} s, Size {_size(at)}")
    if at.session_state["source"]["dataset"] != dataset:
        raise RuntimeError(f"the app runs on {at.session_state['source']} instead of {dataset}")

    values = iter(SPARSITIES * 100)
    moves: list[float] = []
    plain: list[float] = []
    unchanged_moves = 0

    def move() -> float:
        nonlocal unchanged_moves
        before = _size(at)
        at.slider(key=f"c_prune_sparsity@{at.session_state['recipe_version']}").set_value(next(values))
        t = time.perf_counter()
        at.run()
        dt = (time.perf_counter() - t) * 1e3
        _check(at, "move")
        unchanged_moves += _size(at) == before
        return dt

    def rerun() -> float:
        before = _size(at)
        t = time.perf_counter()
        at.run()
        dt = (time.perf_counter() - t) * 1e3
        _check(at, "rerun")
        if _size(at) != before:
            raise RuntimeError("a plain rerun changed the Size metric")
        return dt

    for _ in range(ctx.warmup):
        move()
        rerun()
    unchanged_moves = 0
    for i in range(ctx.reps):
        if i % 2 == 0:
            moves.append(move())
            plain.append(rerun())
        else:
            plain.append(rerun())
            moves.append(move())

    label = "MNIST" if dataset == "mnist" else "digits"
    goals = []
    if model == "lenet_300_100" and dataset == "mnist":
        goals.append(Goal(f"median <= {SERVER_GOAL_MS:.0f} ms", median(moves) <= SERVER_GOAL_MS))
    seq = ", ".join(f"{s:g}" for s in SPARSITIES)
    return Result(
        name=f"app slider move, server side ({model}, {label})", value=median(moves), unit="ms",
        baseline=median(plain), p90=p90(moves), min=min(moves),
        baseline_p90=p90(plain), baseline_min=min(plain), reps=len(moves), goals=goals,
        baseline_desc="AppTest.run() with no widget change (a plain rerun of app.py on Compress)",
        notes=(f"streamlit.testing.v1.AppTest on app.py, page Compress, recipe = the app's start recipe "
               f"(magnitude global + int8 per_channel); slider c_prune_sparsity set to {seq} in turn, then the "
               f"timed at.run() (navigation, sidebar, page: recipe, Workbench.apply, evaluation, report, "
               f"metrics, tables). Size metric changed on {len(moves) - unchanged_moves}/{len(moves)} "
               f"moves. ratio < 1: what the change costs on top of a plain rerun."),
    )


def bench_server(model: str, ctx: Context) -> list[Result]:
    rows = [server_rows(model, "digits", None, ctx)]
    d = mnist_dir(ctx)
    if d is None:
        ctx.log("  MNIST not found (set PET_MNIST_DIR or --data-dir): MNIST rows skipped")
    else:
        rows.append(server_rows(model, "mnist", d, ctx))
    return rows


# --- browser: Playwright + Chromium against a running server -----------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env: dict, log_path: Path, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    _stop_server(proc)
    raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f} s")


def _offsite(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in ("data", "blob", "about") and parts.hostname not in ("127.0.0.1", "localhost", "::1")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# In the page: timestamps of the last keydown, of the Size metric's next text change, of the first
# number of the task's metric (the first metric of the main area: its element container back from
# stale with the new run's content, or its text changed), of its exact number (that metric, fresh,
# without "(estimate)" in its label) and of the script's next return to notRunning (after having
# run). Streamlit page only, never the netron frame.
INSTRUMENT = """() => {
  if (window.__pet) return;
  const P = window.__pet = {key: null, size: null, end: null, ran: false, text: null, first: null, exact: null,
                            stale: false, before: null, firstLabel: null, firstValue: null, unchanged: false};
  const sizeText = () => {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
      const l = m.querySelector('[data-testid="stMetricLabel"]');
      if (l && l.innerText.trim() === 'Size') {
        const v = m.querySelector('[data-testid="stMetricValue"]');
        return v ? v.innerText.trim() : null;
      }
    }
    return null;
  };
  const firstMetric = () => {
    const main = document.querySelector('[data-testid="stMain"]') || document;
    const m = main.querySelector('[data-testid="stMetric"]');
    if (!m) return null;
    const l = m.querySelector('[data-testid="stMetricLabel"]'), v = m.querySelector('[data-testid="stMetricValue"]');
    const c = m.closest('[data-testid="stElementContainer"]');
    return {label: l ? l.innerText.trim() : '', value: v ? v.innerText.trim() : '',
            stale: !!c && c.getAttribute('data-stale') === 'true'};
  };
  P.text = sizeText();
  document.addEventListener('keydown', () => {
    P.key = performance.now(); P.size = null; P.end = null; P.ran = false; P.first = null; P.exact = null;
    P.stale = false; const f = firstMetric(); P.before = f && (f.label + '|' + f.value);
  }, true);
  const app = document.querySelector('[data-testid="stApp"]');
  new MutationObserver(records => {
    const now = performance.now();
    for (const r of records) {
      if (r.type === 'attributes' && r.attributeName === 'data-test-script-state') {
        if (r.oldValue === 'running' || app.getAttribute('data-test-script-state') === 'running') P.ran = true;
      }
    }
    const s = sizeText();
    if (s !== null && s !== P.text) { P.text = s; if (P.key !== null && P.size === null) P.size = now; }
    const f = firstMetric();
    if (P.key !== null && f) {
      if (f.stale) P.stale = true;
      const t = f.label + '|' + f.value;
      if (P.first === null && ((P.stale && !f.stale) || t !== P.before)) {
        P.first = now; P.firstLabel = f.label; P.firstValue = f.value; P.unchanged = t === P.before;
      }
      if (P.first !== null && P.exact === null && !f.stale && !f.label.includes('(estimate)')) P.exact = now;
    }
    if (P.key !== null && P.ran && P.end === null && app.getAttribute('data-test-script-state') === 'notRunning') P.end = now;
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                              attributeOldValue: true, attributeFilter: ['data-test-script-state', 'data-stale']});
}"""


def _wait_idle(page, timeout_s: float = 300.0, settle_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    quiet = None
    while time.monotonic() < deadline:
        state = page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state")
        busy = page.locator('[data-testid="stProgress"], [data-testid="stStatusWidgetRunningIcon"], '
                            '[data-testid="stStatusWidgetRunningManIcon"]').count() > 0
        if state == "notRunning" and not busy:
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet >= settle_s:
                return
        else:
            quiet = None
        time.sleep(0.05)
    raise RuntimeError(f"the app is still busy after {timeout_s:.0f} s")


def _size_text(page) -> str:
    return page.evaluate("""() => {
      for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
        const l = m.querySelector('[data-testid="stMetricLabel"]');
        if (l && l.innerText.trim() === 'Size') return m.querySelector('[data-testid="stMetricValue"]').innerText.trim();
      }
      return null; }""")


def _first_metric(page) -> tuple[str, str]:
    return tuple(page.evaluate("""() => {
      const main = document.querySelector('[data-testid="stMain"]') || document;
      const m = main.querySelector('[data-testid="stMetric"]');
      if (!m) return ['', ''];
      return [m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
              m.querySelector('[data-testid="stMetricValue"]').innerText.trim()]; }"""))


def browser_rows(model: str, dataset: str, data_dir: str | None, ctx: Context,
                 screenshots: str | None = None) -> list[Result]:
    """Key presses on the Compress sparsity slider in Chromium; ``screenshots``: a folder for PNGs of the
    page showing an estimate and the exact number (or the exact number at once)."""
    from playwright.sync_api import sync_playwright

    from pet_core.recipe import to_token
    from studio.state import START_RECIPE

    token = to_token(START_RECIPE.replace(model=model, dataset=dataset))
    env = {**os.environ}
    if data_dir:
        env["PET_MNIST_DIR"] = data_dir
    tmp = Path(tempfile.mkdtemp(prefix="pet-bench-browser-"))
    env["PET_WORKSPACE"] = str(tmp / "workspace")      # the presses' runs: a ledger of their own
    proc, url = _start_server(env, tmp / "streamlit.log")
    offsite: list[str] = []
    shots: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})   # a fresh profile
                context.on("request", lambda r: _offsite(r.url) and offsite.append(r.url))
                page = context.new_page()
                page.set_default_timeout(60_000)
                t0 = time.perf_counter()
                # Home first: on a fresh server, a deep link's first run executes the page file alone
                # (no st.navigation, no sidebar, no wide layout) until app.py has run once.
                page.goto(url)
                page.get_by_role("heading", name="PET Studio").first.wait_for(timeout=300_000)
                _wait_idle(page)
                page.goto(f"{url}/compress?recipe={token}")
                page.get_by_role("heading", name="Compress").first.wait_for(timeout=300_000)
                page.wait_for_function("""() => { const m = document.querySelector('[data-testid="stMain"] [data-testid="stMetric"]');
                    return m && !m.innerText.includes('(estimate)'); }""", timeout=300_000)
                _wait_idle(page)
                sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
                if f"{model} on {dataset}" not in " ".join(sidebar.split()):
                    raise RuntimeError(f"the app did not load {model} on {dataset}: sidebar {sidebar!r}")
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError("exception on the Compress page")
                ctx.log(f"  browser: Compress ready in {time.perf_counter() - t0:.1f} s "
                        f"({model} on {dataset}, {': '.join(_first_metric(page))}, Size {_size_text(page)})")
                page.evaluate(INSTRUMENT)
                slider = page.locator('[data-testid="stSlider"]').filter(has_text="Sparsity").first.get_by_role("slider")
                title = page.get_by_role("heading", name="Compress").first

                def shoot(kind: str) -> None:
                    if screenshots and not any(kind in s for s in shots):
                        path = str(Path(screenshots) / f"pet_compress_{model}_{dataset}_{kind}.png")
                        page.screenshot(path=path, full_page=True)
                        shots.append(path)

                def press_slider() -> dict:
                    slider.focus()
                    page.keyboard.press("ArrowRight")
                    page.wait_for_function("() => window.__pet.first !== null && window.__pet.size !== null",
                                           timeout=120_000)
                    estimate = "(estimate)" in page.evaluate("() => window.__pet.firstLabel")
                    if estimate:
                        shoot("estimate")
                    page.wait_for_function("() => window.__pet.exact !== null && window.__pet.end !== null",
                                           timeout=300_000)
                    got = page.evaluate("() => ({...window.__pet})")
                    _wait_idle(page, settle_s=0.3)
                    shoot("exact" if estimate else "exact_at_once")
                    k = got["key"]
                    return {"first": got["first"] - k, "exact": got["exact"] - k, "size": got["size"] - k,
                            "end": got["end"] - k, "estimate": estimate, "unchanged": got["unchanged"]}

                def press_rerun() -> float:
                    title.click()                      # focus out of the slider: "r" is the rerun hotkey
                    page.evaluate("() => document.activeElement && document.activeElement.blur()")
                    before = _size_text(page)
                    page.keyboard.press("r")
                    page.wait_for_function("() => window.__pet.end !== null")
                    key, end = page.evaluate("() => [window.__pet.key, window.__pet.end]")
                    _wait_idle(page, settle_s=0.3)
                    if _size_text(page) != before:
                        raise RuntimeError("the no-op rerun changed the Size metric")
                    return end - key

                for _ in range(ctx.warmup):
                    press_slider()
                    press_rerun()
                presses, plain = [], []
                start_value = float(slider.input_value())
                for i in range(ctx.reps):
                    if i % 2 == 0:
                        presses.append(press_slider())
                        plain.append(press_rerun())
                    else:
                        plain.append(press_rerun())
                        presses.append(press_slider())
                end_value = float(slider.input_value())
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError("exception on the Compress page after the presses")
                errors = page.locator('[data-testid="stAlertContentError"]').count()
                if errors:
                    raise RuntimeError(f"{errors} st.error element(s) on the Compress page after the presses")
                backend = page.evaluate("""() => { const m = document.body.innerText.match(/test items \\(([a-z_]+)\\)/);
                                                    return m ? m[1] : '?'; }""")
            finally:
                browser.close()
    finally:
        _stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    if offsite:
        raise RuntimeError(f"requests left loopback: {offsite[:5]}")
    if shots:
        ctx.log("  screenshots: " + ", ".join(shots))

    label = "MNIST" if dataset == "mnist" else "digits"
    first = [x["first"] for x in presses]
    exact = [x["exact"] for x in presses]
    to_size = [x["size"] for x in presses]
    to_done = [x["end"] for x in presses]
    estimates = sum(x["estimate"] for x in presses)
    unchanged = sum(x["unchanged"] for x in presses)
    est_exact = [x["exact"] for x in presses if x["estimate"]]
    common = (f"Chromium (headless, Playwright, a fresh context) against `streamlit run app.py` on loopback; "
              f"ArrowRight on the focused Compress sparsity slider ({start_value:g} -> {end_value:g}, one 0.01 "
              f"step a press, each waiting for the exact number), times taken in the page with performance.now() "
              f"from the keydown event; evaluation backend {backend}; {estimates}/{len(presses)} presses showed an "
              f"estimate first")
    plain_desc = "Streamlit's 'r' hotkey (a rerun that changes nothing), keydown to script state back to notRunning"
    goal_ms = BROWSER_FIRST_GOALS_MS.get((model, dataset))
    rows = [
        Result(name=f"app slider key press to first number, browser ({model}, {label})",
               value=median(first), unit="ms", baseline=median(plain), p90=p90(first), min=min(first),
               baseline_p90=p90(plain), baseline_min=min(plain), reps=len(first),
               goals=[Goal(f"median <= {goal_ms:.0f} ms", median(first) <= goal_ms)] if goal_ms else [],
               baseline_desc=plain_desc,
               notes=common + " to the first metric of the page showing the move's number, estimate or exact (its "
                     "element container back from stale with the new run's content, or its text changed; "
                     f"{unchanged} presses left the text unchanged)."),
        Result(name=f"app slider key press to exact number, browser ({model}, {label})",
               value=median(exact), unit="ms", baseline=median(plain), p90=p90(exact), min=min(exact),
               baseline_p90=p90(plain), baseline_min=min(plain), reps=len(exact), baseline_desc=plain_desc,
               notes=common + " to that metric showing the exact number (label without '(estimate)'; the same "
                     "as the first number when exact at once)"
                     + (f"; the presses that showed an estimate: median {median(est_exact):.0f} ms, p90 "
                        f"{p90(est_exact):.0f} ms." if est_exact else ".")),
        Result(name=f"app slider key press to new Size metric, browser ({model}, {label})",
               value=median(to_size), unit="ms", baseline=median(plain), p90=p90(to_size),
               min=min(to_size), baseline_p90=p90(plain), baseline_min=min(plain), reps=len(to_size),
               goals=[Goal(f"median <= {BROWSER_GOAL_MS:.0f} ms", median(to_size) <= BROWSER_GOAL_MS)]
               if model == "lenet_300_100" and dataset == "mnist" else [],
               baseline_desc=plain_desc, notes=common + " to the DOM mutation that shows the new Size text."),
        Result(name=f"app slider key press to rerun finished, browser ({model}, {label})",
               value=median(to_done), unit="ms", baseline=median(plain), p90=p90(to_done),
               min=min(to_done), baseline_p90=p90(plain), baseline_min=min(plain), reps=len(to_done),
               baseline_desc="the same no-op 'r' rerun",
               notes=common + " to the script state first back to notRunning (the move's run: all elements, "
                              "tables included; with an estimate, before the exact number)."),
    ]
    return rows


def bench_browser(model: str, ctx: Context) -> list[Result]:
    import importlib.util

    if not os.path.exists(CHROMIUM) or importlib.util.find_spec("playwright") is None:
        ctx.log(f"  skipped: needs {CHROMIUM} and playwright")
        return []
    shots = os.environ.get("PET_BENCH_SCREENSHOTS") or None
    d = mnist_dir(ctx)
    if d is None:
        ctx.log("  MNIST not found: browser benchmark runs on digits instead")
        return browser_rows(model, "digits", None, ctx, shots)
    return browser_rows(model, "mnist", d, ctx, shots)
