"""Room load test: N participants move the Compress sparsity slider of one server process at once.

    PYTHONPATH=. python bench/room.py --quick              # both rooms, 30 s each (about 4 min in all)
    PYTHONPATH=. python bench/room.py --only lenet         # lenet_300_100 on digits, 30 people, 2 min
    python bench/run.py --only room                        # once registered in bench/run.py

**The server** is a real ``streamlit run app.py`` process, started as ``make run`` starts it
(``studio.serve``: the repository's ``.streamlit/config.toml``, glibc's mmap threshold fixed), on a
loopback port, with a fresh workspace so the room's runs go to a ledger of their own. A small hook
installed before Streamlit starts (``python bench/room.py serve ...``; no app file is changed) logs,
for every background exact evaluation that finishes, the session's user, the recipe's sparsity and
the ``ExactRunner``'s ``submitted_at``/``finished_at`` (``time.perf_counter``: CLOCK_MONOTONIC, the
same clock in every process of the machine).

**The participants** are websocket clients in this process, one thread each, speaking Streamlit's
own protocol (protobuf ``BackMsg``/``ForwardMsg`` on ``/_stcore/stream``) as the browser does: a
move is a ``rerun_script`` with the slider's new widget state; a ``st.fragment(run_every=0.25)``
is honoured as the frontend honours it (an ``auto_rerun`` message starts a 0.25 s timer that sends
fragment reruns; a full run's ``new_session`` or ``stop_auto_rerun`` stops it). No page is
rendered, so the client costs the machine little: what is measured is the server.

Why not AppTest from threads (the first choice): it does not work. ``AppTest._run`` resets
process-global state around each run (``PagesManager.uses_pages_directory = None``, then True
because the repository has a ``pages/`` folder, while the app's ``st.navigation`` sets it False;
``Runtime._instance`` set to a fresh mock, then cleared), so a session whose script starts while
another session's run is between those lines executes in the wrong mode: in 25 s with 8 sessions
on lenet, 3 of 19 moves failed with ``KeyError: '$$ID-...-c_prune@2'`` inside AppTest (a widget of
the previous tree missing from the session state). AppTest also has no timer for
``st.fragment(run_every=...)``, and every session shares its session id. And Chromium: 30 pages
rendering the app on the same 2 cores would measure the browsers, not the server.

A participant waits for its move's first number before it moves again (a person watching the
number does not move blind); ticks that pass meanwhile are skipped and counted (``late_ticks``).
While it waits for the exact number, its next tick still comes: the next move cancels the
background evaluation (counted as superseded).

Each participant: opens the app with its own starting recipe (a ``?recipe=`` link and its own
``?user=``), goes to Compress, then every 5 s (its own random phase in [0, 5) s) moves the global
sparsity slider to a new value of its own for the duration (120 s; 30 s with ``ctx.quick``).
Values are multiples of 0.01 in [0.30, 0.95]; 40% of moves pick from a small popular set, and
participants come in three recipe groups (int8 per channel, int4 per channel, int8 per tensor), so
the exact values shared across sessions are hit. Per move:

* first number: from sending the move to receiving the page's first metric (label "Accuracy" or
  "Accuracy (estimate)") of a full run whose recipe (the ``?recipe=`` the page writes before its
  metrics) has the move's sparsity;
* exact number: exact at once: the same; an estimate: the server's ``ExactRunner.finished_at``
  minus the move's start (from the hook's log), and, separately, the exact number *shown* (the
  metric without "(estimate)" received after the page's poll);
* errors: ``st.error`` and exception elements, script compile errors, no number within 60 s, a
  broken connection, tracebacks and ERROR lines in the server's log (except Starlette's traceback
  for a message sent to a websocket the client closed, counted apart); ``st.warning`` texts are
  listed apart;
* the server's resident set (``/proc/<pid>/status`` ``VmRSS``) every second, and its CPU time.

Baseline, same server, just before the room: one participant alone (a recipe group no room
participant uses, so no shared value is warm), ``ctx.reps`` moves, each waiting for its exact
number; ratio = single-participant p50 / room p50.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Context, Goal, Result, load_avg, median  # noqa: E402

APP = str(REPO / "app.py")
INTERVAL_S = 5.0            # one move per participant every 5 s
FULL_S, QUICK_S = 120.0, 30.0
NUMBER_TIMEOUT_S = 60.0     # a move with no number after this is an error
GRID = [round(0.30 + 0.01 * i, 2) for i in range(66)]          # 0.30 .. 0.95
POPULAR = [0.5, 0.6, 0.7, 0.75, 0.8, 0.9]
POPULAR_SHARE = 0.4
GROUPS = [  # the participants' starting recipes: three groups (shared values are per recipe)
    {"bits": 8, "scheme": "symmetric", "granularity": "per_channel"},
    {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"},
    {"bits": 8, "scheme": "symmetric", "granularity": "per_tensor"},
]
SINGLE_GROUP = {"bits": 6, "scheme": "symmetric", "granularity": "per_channel"}   # no room participant's
GOALS = {"lenet_300_100": 1000.0, "mnist_cnn": 2000.0}       # p95 to the first number, ms
# as in .streamlit/config.toml, stated again: a file edited in the working tree mid-run must not reload modules
SERVER_FLAGS = ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class RoomResult(Result):
    """A Result with p95 and the room's details (kept in results.json)."""

    p95: float | None = None
    extra: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if self.p95 is not None:
            d["p95"] = float(f"{self.p95:.4g}")
        if self.extra:
            d["room"] = self.extra
        return d


# --- the server -----------------------------------------------------------------------------------

def serve(port: int, log_path: str) -> None:
    """In the server process: log every finished background exact evaluation, then run Streamlit."""
    from pet_core.evaluation import progressive
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    out = open(log_path, "a", buffering=1, encoding="utf-8")
    lock = threading.Lock()
    submit = progressive.ExactRunner.submit

    def logged_submit(self, key, on_done=None):
        ctx = get_script_run_ctx(suppress_warning=True)
        try:
            user = ctx.session_state["user"] if ctx is not None else None
        except Exception:  # noqa: BLE001
            user = None

        def done(value):
            finished = self.finished_at or time.perf_counter()
            result = on_done(value) if on_done is not None else None
            try:
                recipe = result[0].get("recipe") or {}
                sparsity = recipe["default"]["prune"]["sparsity"]
            except Exception:  # noqa: BLE001
                sparsity = None
            with lock:
                out.write(json.dumps({"user": user, "sparsity": sparsity, "submitted_at": self.submitted_at,
                                      "finished_at": finished, "value": value}) + "\n")
            return result

        return submit(self, key, on_done=done)

    progressive.ExactRunner.submit = logged_submit
    from studio import serve as studio_serve      # what `make run` starts: `streamlit run app.py` and its settings

    sys.argv = ["studio.serve", "--server.port", str(port), "--server.address", "127.0.0.1", *SERVER_FLAGS]
    sys.exit(studio_serve.main())


class Server:
    """``streamlit run app.py`` (through :func:`serve`) in a subprocess, its memory and CPU."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        from bench.app_latency import _free_port

        self.folder, self.port = folder, _free_port()
        self.exact_log = folder / "exact.jsonl"
        self.log_path = folder / "streamlit.log"
        env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        import subprocess

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", str(self.port),
                                          str(self.exact_log)], cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/_stcore/stream"
        self.rss: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f} s")

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def start_sampling(self, every: float = 1.0) -> None:
        def run() -> None:
            while True:
                self.rss.append((time.perf_counter(), self.rss_mb()))
                if self._stop.wait(every):
                    return

        self._sampler = threading.Thread(target=run, name="room-rss", daemon=True)
        self._sampler.start()

    def peak(self, since: float = 0.0, until: float = math.inf) -> float:
        return max((mb for t, mb in self.rss if since <= t <= until), default=float("nan"))

    def exact_entries(self) -> list[dict[str, Any]]:
        if not self.exact_log.is_file():
            return []
        return [json.loads(line) for line in self.exact_log.read_text().splitlines() if line.strip()]

    def log_problems(self) -> tuple[list[str], int]:
        """The server's logged errors: each traceback's exception line and each ERROR line; and how many
        tracebacks were a client's closed websocket (Starlette sending after the close: not the app's)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        errors, closed, in_tb = [], 0, False
        for line in text.splitlines():
            if line.startswith("Traceback"):
                in_tb = True
            elif in_tb and line and not line[0].isspace() and not line.startswith("During handling"):
                in_tb = False
                if "WebSocketDisconnect" in line or "close message has been sent" in line:
                    closed += 1
                else:
                    errors.append(line.strip()[:200])
            elif " ERROR " in line:
                errors.append(line.strip()[:200])
        return errors, closed

    def stop(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(timeout=15)


# --- a participant: Streamlit's protocol over a websocket ------------------------------------------

@dataclass
class Move:
    who: int
    value: float
    start: float                        # perf_counter when the move was sent
    first_ms: float | None = None       # the first metric of the move's recipe arrived
    exact_ms: float | None = None       # ExactRunner.finished_at - start (estimate), or first_ms
    shown_ms: float | None = None       # the exact metric arrived (after the page's poll)
    done_ms: float | None = None        # the run that showed the first number finished (whole page sent)
    run: int = -1                       # that run's number in the participant's session
    estimate: bool = False
    superseded: bool = False            # the next move came before the exact number was shown
    first_text: str = ""
    late_ticks: int = 0                 # ticks skipped because this move outlasted the interval
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def closed(result) -> bool:
    """Whether an act (a Move or an Interaction) ended because the server closed the connection."""
    return any(e.startswith("RuntimeError: connection closed") for e in result.errors)


class Client:
    """One browser tab, as far as the server can tell: Streamlit's protocol over a websocket (see the
    module's docstring). What is particular to a page is left to a subclass: the widget states every
    rerun carries (:meth:`_widgets`), the elements it watches (:meth:`_element`, called for every new
    element after the error/warning checks) and the end of a full run (:meth:`_run_finished`).
    ``sink`` (an object with ``errors`` and ``warnings`` lists) receives the page's problems while a
    participant waits for an answer; problems outside any go to ``stray``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ws = None
        self.query = ""
        self.page_hash = ""
        self.pages: dict[str, str] = {}             # url path -> page script hash
        self.timers: dict[str, list[float]] = {}    # fragment id -> [interval, next fire]
        self.full_run = 0                           # full runs started (new_session without fragments)
        self.finished: int | None = None            # the full run whose script_finished came last
        self.sink: Any = None                       # where errors and warnings go now
        self.stray: list[str] = []                  # errors outside any move

    # -- protocol --

    def connect(self) -> None:
        from websockets.sync.client import connect

        self.ws = connect(self.server.ws_url, subprotocols=["streamlit"], max_size=None, proxy=None,
                          open_timeout=60, ping_interval=None, close_timeout=2, legacy=True)

    def _send(self, *, fragment_id: str = "", auto: bool = False, page_hash: str | None = None,
              page_name: str = "") -> None:
        """A ``rerun_script`` as the frontend sends it: the address's query, the page, the widgets' values."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = self.query
        cs.page_script_hash = self.page_hash if page_hash is None else page_hash
        if page_name:
            cs.page_name = page_name
        if fragment_id:
            cs.fragment_id, cs.is_auto_rerun = fragment_id, auto
        self._widgets(cs.widget_states, fragment_id)
        self.ws.send(msg.SerializeToString())

    def _widgets(self, states, fragment_id: str) -> None:
        """Add the page's widget states to a rerun (``states``: a ``WidgetStates`` proto)."""

    def _element(self, el, kind: str, now: float) -> None:
        """A new element of ``kind`` (the ``Element`` oneof's name) arrived at ``now``."""

    def _run_finished(self, now: float) -> None:
        """Full run ``self.full_run`` finished successfully at ``now``."""

    def _problem(self, text: str, warning: bool = False) -> None:
        if self.sink is None:
            if not warning:
                self.stray.append(text)
        elif warning:
            self.sink.warnings.append(text)
        else:
            self.sink.errors.append(text)

    def _handle(self, data: bytes, now: float) -> None:
        from streamlit.proto.Alert_pb2 import Alert
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = ForwardMsg()
        msg.ParseFromString(data)
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            if not msg.metadata.run.fragment_ids:        # a full run: the frontend stops its auto reruns
                self.full_run += 1
                self.timers.clear()
            ns = msg.new_session
            if ns.page_script_hash:
                self.page_hash = ns.page_script_hash
            for p in ns.app_pages:
                self.pages[p.url_pathname] = p.page_script_hash
        elif kind == "navigation":                       # st.navigation's pages
            for p in msg.navigation.app_pages:
                self.pages[p.url_pathname] = p.page_script_hash
            if msg.navigation.page_script_hash:
                self.page_hash = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "auto_rerun":
            fid, every = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
            if fid and (fid not in self.timers or self.timers[fid][0] != every):
                self.timers[fid] = [every, now + every]
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                self.timers.pop(fid, None)
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                self._problem("script finished with a compile error")
            elif msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                self.finished = self.full_run
                self._run_finished(now)
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            el = msg.delta.new_element
            et = el.WhichOneof("type")
            if et == "exception":
                self._problem(f"exception: {el.exception.type}: {' '.join(el.exception.message.split())[:160]}")
            elif et == "alert" and el.alert.format == Alert.ERROR:
                self._problem(f"st.error: {' '.join(el.alert.body.split())[:160]}")
            elif et == "alert" and el.alert.format == Alert.WARNING:
                self._problem(" ".join(el.alert.body.split())[:160], warning=True)
            self._element(el, et, now)

    def pump(self, until: float, done=None) -> bool:
        """Receive (and fire the fragment timers) until ``until`` or until ``done()``; True if done."""
        from websockets.exceptions import ConnectionClosed

        while True:
            now = time.perf_counter()
            if done is not None and done():
                return True
            for fid, timer in list(self.timers.items()):
                if timer[1] <= now:
                    timer[1] = max(timer[1] + timer[0], now)
                    self._send(fragment_id=fid, auto=True)
            if now >= until:
                return False
            wake = min([until] + [t[1] for t in self.timers.values()])
            try:
                data = self.ws.recv(timeout=max(0.0, wake - now))
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                raise RuntimeError(f"connection closed: {exc}") from exc
            if isinstance(data, bytes):
                self._handle(data, time.perf_counter())

    def paced(self, start: float, duration: float, act: Callable[[float], Any], done: list) -> None:
        """``act(tick)`` every INTERVAL_S from ``start + self.phase`` until ``start + duration``, each result (an
        object with ``errors`` and ``late_ticks``) appended to ``done``. What arrives between ticks belongs to the
        previous act; an act that outlasts the interval skips the ticks it ate; a closed connection ends the play.
        A subclass sets ``phase`` and ``setup_error`` (a participant that failed to open does not play)."""
        if self.setup_error:
            return
        try:
            self.pump(start)
            k = 0
            while True:
                tick = start + self.phase + k * INTERVAL_S
                if tick >= start + duration:
                    break
                self.pump(tick)
                result = act(tick)
                done.append(result)
                if closed(result):
                    return
                k += 1
                while start + self.phase + k * INTERVAL_S < time.perf_counter():
                    k += 1
                    result.late_ticks += 1
            self.pump(start + duration)
        except Exception as exc:  # noqa: BLE001 - reported, the room goes on
            self.stray.append(f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=2).splitlines()[-1]})")

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass


class Participant(Client):
    """A room participant on Compress: moves the global sparsity slider."""

    def __init__(self, who: int, server: Server, model: str, dataset: str, quant: dict, seed: int) -> None:
        super().__init__(server)
        self.who, self.model, self.dataset, self.quant = who, model, dataset, quant
        self.user = f"room{who}" if who >= 0 else "room-single"
        self.rng = random.Random(seed)
        self.phase = self.rng.uniform(0, INTERVAL_S)
        self.value = self.rng.choice(GRID)
        self.slider_id: str | None = None
        self.metric: tuple[float, int, str, str] | None = None   # (arrival, run, label, value) of the latest
        self.sink: Move | None = None
        self.moves: list[Move] = []
        self.setup_error: str | None = None
        self.setup_s: float | None = None
        self.caption = ""

    # -- the page --

    def _widgets(self, states, fragment_id: str) -> None:
        if self.slider_id is not None:
            w = states.widgets.add()
            w.id = self.slider_id
            w.double_array_value.data.append(self.value)

    def _recipe_sparsity(self) -> float | None:
        from pet_core.recipe import from_token

        token = (parse_qs(self.query).get("recipe") or [None])[0]
        if not token:
            return None
        try:
            return from_token(token).default["prune"].sparsity
        except Exception:  # noqa: BLE001
            return None

    def _run_finished(self, now: float) -> None:
        if self.sink is not None and self.sink.run == self.full_run and self.sink.done_ms is None:
            self.sink.done_ms = (now - self.sink.start) * 1e3

    def _element(self, el, kind: str, now: float) -> None:
        if kind == "metric" and el.metric.label.startswith("Accuracy"):
            self.metric = (now, self.full_run, el.metric.label, el.metric.body)
        elif kind == "markdown" and "test items" in el.markdown.body:
            self.caption = el.markdown.body            # says how the metric was evaluated (backend)
        elif kind == "slider" and "c_prune_sparsity@" in el.slider.id:
            self.slider_id = el.slider.id

    # -- a person --

    def open(self) -> None:
        """Home with the participant's link, then Compress (not timed as moves)."""
        from urllib.parse import urlencode

        from pet_core.recipe import to_token
        from studio.state import START_RECIPE

        t0 = time.perf_counter()
        try:
            recipe = START_RECIPE.replace(model=self.model, dataset=self.dataset, default={
                "prune": {"method": "magnitude", "scope": "global", "sparsity": self.value}, "quantize": self.quant})
            self.query = urlencode({"recipe": to_token(recipe), "user": self.user})
            self.connect()
            deadline = t0 + 600
            self._send(page_hash="")
            if not self.pump(deadline, lambda: self.finished is not None and self.metric is not None):
                raise RuntimeError("home page did not finish")
            if "compress" not in self.pages:
                raise RuntimeError(f"no compress page in {sorted(self.pages)}")
            self.finished, self.metric = None, None
            self._send(page_hash=self.pages["compress"])
            if not self.pump(deadline, lambda: self.finished is not None and self.slider_id is not None
                             and self.metric is not None):
                raise RuntimeError("compress page did not finish")
            if self.stray:
                raise RuntimeError(self.stray[0])
            if not self.metric[2].startswith("Accuracy"):
                raise RuntimeError(f"unexpected first metric {self.metric}")
            # the start recipe's exact number, if it was estimated
            self.pump(time.perf_counter() + 120, lambda: "(estimate)" not in self.metric[2])
        except Exception as exc:  # noqa: BLE001 - reported, the room goes on
            self.setup_error = f"{type(exc).__name__}: {exc}"
        self.setup_s = time.perf_counter() - t0

    def next_value(self) -> float:
        while True:
            v = self.rng.choice(POPULAR if self.rng.random() < POPULAR_SHARE else GRID)
            if v != self.value:
                return v

    def move(self, value: float, until: float) -> Move:
        """Set the slider to ``value``; wait for its first number, then for its exact number until ``until``."""
        m = self.sink = Move(self.who, value, 0.0)
        self.value = value
        try:
            runs_before = self.full_run
            m.start = time.perf_counter()
            self._send()

            def mine() -> bool:     # a metric of a full run started after the move, for the move's recipe
                return (self.metric is not None and self.metric[0] > m.start and self.metric[1] > runs_before
                        and self._recipe_sparsity() == value)

            if not self.pump(m.start + NUMBER_TIMEOUT_S, mine):
                m.errors.append(f"no number within {NUMBER_TIMEOUT_S:.0f} s")
                return m
            at, m.run, label, text = self.metric
            m.first_ms, m.first_text = (at - m.start) * 1e3, f"{label}: {text}"
            m.estimate = "(estimate)" in label
            if not m.estimate:
                m.exact_ms = m.shown_ms = m.first_ms
                return m
            if self.pump(max(until, time.perf_counter()),
                         lambda: mine() and "(estimate)" not in self.metric[2]):
                m.shown_ms = (self.metric[0] - m.start) * 1e3
            else:
                m.superseded = True
        except Exception as exc:  # noqa: BLE001
            m.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return m

    def play(self, start: float, duration: float) -> None:
        """Move every INTERVAL_S from ``start + phase`` until ``start + duration``."""
        self.paced(start, duration, lambda tick: self.move(self.next_value(), tick + INTERVAL_S), self.moves)


# --- the room -------------------------------------------------------------------------------------

@dataclass
class RoomRun:
    moves: list[Move]
    setup_errors: list[str]
    stray: list[str]
    setup_s: list[float]
    rss: dict[str, float]
    cpu_pct: float
    client_cpu_pct: float
    load_start: str
    load_end: str
    seconds: float
    backends: list[str] = field(default_factory=list)


def _backend(caption: str) -> list[str]:
    """The evaluation backend the page's caption names ("... test items (onnxruntime)")."""
    import re

    return re.findall(r"test items \(([a-z_]+)\)", caption)


def _exact_from_log(moves: list[Move], users: dict[int, str], entries: list[dict[str, Any]]) -> None:
    """Each estimated move's exact time: the logged finish of its user and sparsity submitted after the
    move and before that participant's next move (which cancels it)."""
    by_who: dict[int, list[Move]] = {}
    for m in moves:
        by_who.setdefault(m.who, []).append(m)
    for own in by_who.values():
        own.sort(key=lambda m: m.start)
        for m, nxt in zip(own, own[1:] + [None]):
            if not m.estimate:
                continue
            stop = math.inf if nxt is None else nxt.start
            hits = [e["finished_at"] for e in entries
                    if e.get("user") == users[m.who] and e.get("sparsity") == m.value
                    and e.get("submitted_at") is not None and m.start <= e["submitted_at"] < stop]
            if hits:
                m.exact_ms = (min(hits) - m.start) * 1e3


def _single(server: Server, model: str, dataset: str, ctx: Context) -> list[Move]:
    """One participant alone: ``ctx.warmup`` then ``ctx.reps`` moves, each waiting for its exact number."""
    p = Participant(-1, server, model, dataset, SINGLE_GROUP, seed=12345)
    p.open()
    try:
        if p.setup_error:
            raise RuntimeError(f"single participant: {p.setup_error}")
        for _ in range(ctx.warmup):
            p.move(p.next_value(), time.perf_counter() + 60)
        out = []
        for _ in range(ctx.reps):
            m = p.move(p.next_value(), time.perf_counter() + 60)
            out.append(m)
            p.pump(time.perf_counter() + 30, lambda: m.done_ms is not None)
            p.pump(time.perf_counter() + 0.2)
        _exact_from_log(out, {-1: p.user}, server.exact_entries())
        return out
    finally:
        p.close()


def in_parallel(people: list, method: str, *args) -> None:
    """``person.<method>(*args)`` for everybody at once, one thread each; returns when all are done."""
    threads = [threading.Thread(target=getattr(p, method), args=args, name=f"room-{method}-{p.who}") for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def play_room(server: Server, people: list, duration: float, ctx: Context, where: str) -> dict[str, Any]:
    """Open every participant at once (logged as "N participants <where> in ..."), let them play for
    ``duration`` seconds, close them all; returns what every room measures alike (the server's CPU and
    RSS over the play, the clients' CPU, load, setup errors and times)."""
    t0 = time.perf_counter()
    in_parallel(people, "open")
    bad = [f"participant {p.who}: {p.setup_error}" for p in people if p.setup_error]
    ctx.log(f"  {len(people)} participants {where} in {time.perf_counter() - t0:.1f} s "
            f"(slowest {max(p.setup_s or 0 for p in people):.1f} s); setup errors: {len(bad)}"
            + (f" ({bad[0]})" if bad else ""))
    load_start = load_avg()
    start = time.perf_counter() + 0.5
    rss_start, cpu0, me0 = server.rss_mb(), server.cpu_s(), time.process_time()
    try:
        in_parallel(people, "play", start, duration)
    finally:
        end = time.perf_counter()
        cpu1, me1, rss_end = server.cpu_s(), time.process_time(), server.rss_mb()
        in_parallel(people, "close")             # a busy server is slow to answer a close
    span = max(1e-9, end - start)
    return {"setup_errors": bad, "stray": [f"participant {p.who}: {s}" for p in people for s in p.stray],
            "setup_s": [p.setup_s or 0.0 for p in people],
            "rss": {"start_mb": rss_start, "peak_mb": server.peak(start, end), "end_mb": rss_end},
            "cpu_pct": 100 * (cpu1 - cpu0) / span, "client_cpu_pct": 100 * (me1 - me0) / span,
            "load_start": load_start, "load_end": load_avg(), "seconds": end - start}


def _room(server: Server, model: str, dataset: str, n: int, duration: float, ctx: Context) -> RoomRun:
    people = [Participant(i, server, model, dataset, GROUPS[i % len(GROUPS)], seed=1000 + i) for i in range(n)]
    played = play_room(server, people, duration, ctx, "on Compress")
    moves = [m for p in people for m in p.moves]
    _exact_from_log(moves, {p.who: p.user for p in people}, server.exact_entries())
    return RoomRun(moves=moves, **played, backends=sorted({b for p in people for b in _backend(p.caption)}))


def stats(xs: list[float]) -> dict[str, float]:
    return {} if not xs else {k: round(v, 1) for k, v in
                              {"p50": median(xs), "p95": pct(xs, 0.95), "min": min(xs), "max": max(xs)}.items()}


def room_rows(model: str, dataset: str, data_dir: str | None, n: int, ctx: Context,
              duration: float | None = None) -> list[Result]:
    duration = duration or (QUICK_S if ctx.quick else FULL_S)
    folder = Path(tempfile.mkdtemp(prefix="pet-bench-room-"))
    env = {**os.environ, "PET_WORKSPACE": str(folder / "workspace")}   # the room's runs: a ledger of their own
    if data_dir:
        env["PET_MNIST_DIR"] = data_dir
    server = Server(env, folder)
    try:
        server.wait_healthy()
        server.start_sampling()
        rss_before = server.rss_mb()
        single = _single(server, model, dataset, ctx)
        ctx.log(f"  single participant: first number p50 "
                f"{median([m.first_ms for m in single if m.first_ms is not None] or [float('nan')]):.0f} ms, exact p50 "
                f"{median([m.exact_ms for m in single if m.exact_ms is not None] or [float('nan')]):.0f} ms")
        run = _room(server, model, dataset, n, duration, ctx)
        log_problems, closed = server.log_problems()
    finally:
        server.stop()
        keep = os.environ.get("PET_ROOM_KEEP")
        if keep:
            shutil.copytree(folder, keep, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    raw = os.environ.get("PET_ROOM_RAW")
    if raw:
        from dataclasses import asdict

        Path(raw).write_text(json.dumps({"single": [asdict(m) for m in single], "room": [asdict(m) for m in run.moves]}))
    return _rows(model, dataset, n, ctx, single, run, rss_before, log_problems, closed)


def _rows(model: str, dataset: str, n: int, ctx: Context, single: list[Move], run: RoomRun,
          rss_before: float, log_problems: list[str], closed: int = 0) -> list[Result]:
    moves = run.moves
    label = "MNIST" if dataset == "mnist" else "digits"
    first = [m.first_ms for m in moves if m.first_ms is not None]
    exact = [m.exact_ms for m in moves if m.exact_ms is not None]
    shown = [m.shown_ms for m in moves if m.shown_ms is not None]
    est_first = [m.first_ms for m in moves if m.estimate and m.first_ms is not None]
    s_first = [m.first_ms for m in single if m.first_ms is not None]
    s_exact = [m.exact_ms for m in single if m.exact_ms is not None]
    errors = [f"move {m.who}/{m.value:g}: {e}" for m in moves for e in m.errors] + run.setup_errors + run.stray
    errors += [f"single: {e}" for m in single for e in m.errors] + [f"server log: {x}" for x in log_problems]
    warnings = sorted({w for m in moves + single for w in m.warnings})
    estimates = sum(m.estimate for m in moves)
    superseded = sum(m.superseded for m in moves)
    no_log = sum(m.estimate and not m.superseded and m.exact_ms is None for m in moves)
    late = sum(m.late_ticks for m in moves)
    if not first or not s_first:
        raise RuntimeError(f"room {model}: no number came back; errors: {errors[:3]}")
    goal_ms = GOALS[model]
    room = {
        "participants": n, "duration_s": round(run.seconds, 1), "moves": len(moves),
        "first_ms": stats(first), "first_estimate_ms": stats(est_first), "exact_ms": stats(exact),
        "exact_shown_ms": stats(shown), "page_done_ms": stats([m.done_ms for m in moves if m.done_ms]),
        "single_first_ms": stats(s_first), "single_exact_ms": stats(s_exact),
        "single_page_done_ms": stats([m.done_ms for m in single if m.done_ms]),
        "estimates": estimates, "exact_at_once": len(moves) - estimates, "exact_superseded": superseded,
        "late_ticks": late, "errors": len(errors), "error_examples": errors[:5], "warnings": warnings[:5],
        "server_log_closed_websocket_tracebacks": closed,
        "server_rss_mb": {"before_single": round(rss_before, 1), **{k: round(v, 1) for k, v in run.rss.items()}},
        "server_cpu_pct": round(run.cpu_pct), "client_cpu_pct": round(run.client_cpu_pct),
        "server_cpu_ms_per_move": round(10 * run.cpu_pct * run.seconds / max(1, len(moves))),
        "load_avg_start": run.load_start, "load_avg_end": run.load_end,
        "setup_s_max": round(max(run.setup_s), 1), "eval_backend": run.backends,
    }
    nan = float("nan")
    ctx.log(f"  room {model}/{label}, {n} people, {run.seconds:.0f} s, {len(moves)} moves: first number "
            f"p50 {median(first):.0f} / p95 {pct(first, 0.95):.0f} ms; exact p50 "
            f"{median(exact) if exact else nan:.0f} / p95 {pct(exact, 0.95) if exact else nan:.0f} ms (shown p50 "
            f"{median(shown) if shown else nan:.0f} / p95 {pct(shown, 0.95) if shown else nan:.0f}); "
            f"{estimates} estimates, {superseded} superseded; errors {len(errors)}"
            + (f" ({errors[0]})" if errors else "") + f"; server RSS start {run.rss['start_mb']:.0f} peak "
            f"{run.rss['peak_mb']:.0f} end {run.rss['end_mb']:.0f} MB; server CPU {run.cpu_pct:.0f}%, client "
            f"{run.client_cpu_pct:.0f}%; load {run.load_start} -> {run.load_end}")
    how = (f"{n} websocket clients speaking Streamlit's protocol (one thread each) against one `streamlit run "
           f"app.py` process, Compress, {model} on {label}; each moves the global sparsity slider every "
           f"{INTERVAL_S:g} s (own random phase) for {run.seconds:.0f} s: {len(moves)} moves, {estimates} shown "
           f"first as an estimate, {len(moves) - estimates} exact at once, {superseded} estimates whose exact "
           f"number the next move came before, {late} ticks skipped because a move outlasted {INTERVAL_S:g} s; "
           f"errors {len(errors)}" + (f" (e.g. {errors[0]})" if errors else "")
           + (f"; warnings seen: {warnings[:2]}" if warnings else "")
           + f"; evaluation backend {'/'.join(run.backends) or '?'}"
           + f"; server CPU {run.cpu_pct:.0f}% of one core, clients {run.client_cpu_pct:.0f}%; load average "
           f"{run.load_start} -> {run.load_end}.")
    single_desc = (f"one participant alone on the same server just before the room ({len(s_first)} moves, each "
                   f"waiting for its exact number; a recipe group no room participant uses)")
    tag = f"{model}, {label}, {n} participants"
    rows: list[Result] = []
    r = RoomResult(name=f"room: slider move to first number ({tag})", value=median(first), unit="ms",
                   baseline=median(s_first), p90=pct(first, 0.90), min=min(first),
                   baseline_p90=pct(s_first, 0.90), baseline_min=min(s_first), reps=len(first),
                   goals=[Goal(f"p95 <= {goal_ms:.0f} ms", pct(first, 0.95) <= goal_ms),
                          Goal("0 errors", not errors)],
                   baseline_desc=single_desc, notes=f"p95 {pct(first, 0.95):.0f} ms. " + how)
    r.p95, r.extra = pct(first, 0.95), room
    rows.append(r)
    if exact:
        r = RoomResult(name=f"room: slider move to exact number ({tag})", value=median(exact), unit="ms",
                       baseline=median(s_exact) if s_exact else None, p90=pct(exact, 0.90), min=min(exact),
                       baseline_p90=pct(s_exact, 0.90) if s_exact else None, reps=len(exact),
                       baseline_desc=single_desc,
                       notes=(f"p95 {pct(exact, 0.95):.0f} ms. Estimates: the server's ExactRunner.finished_at minus "
                              f"the move's start; exact at once: the first number. Exact number shown (after the "
                              f"page's 0.25 s poll and its app rerun): p50 "
                              + (f"{median(shown):.0f} / p95 {pct(shown, 0.95):.0f} ms" if shown else "n/a")
                              + f". {superseded} estimates superseded by the participant's next move before their "
                              f"exact number was shown, {no_log} estimates without a logged finish (not counted)."))
        r.p95 = pct(exact, 0.95)
        rows.append(r)
    r = RoomResult(name=f"room: server RSS peak ({tag})", value=run.rss["peak_mb"], unit="MB",
                   baseline=run.rss["start_mb"], reps=len(moves),
                   baseline_desc="the server's VmRSS when the room started (all participants on Compress)",
                   notes=(f"VmRSS of the streamlit process, sampled every second: before the single participant "
                          f"{rss_before:.0f} MB, room start {run.rss['start_mb']:.0f} MB, peak "
                          f"{run.rss['peak_mb']:.0f} MB, end {run.rss['end_mb']:.0f} MB. ratio = start / peak."))
    rows.append(r)
    return rows


def bench_room_lenet(ctx: Context) -> list[Result]:
    """30 participants on lenet_300_100 / digits (goal: p95 <= 1 s to the first number, 0 errors)."""
    return room_rows("lenet_300_100", "digits", None, 30, ctx)


def bench_room_mnist_cnn(ctx: Context) -> list[Result]:
    """10 participants on mnist_cnn / MNIST (goal: p95 <= 2 s to the first number, 0 errors)."""
    from bench.app_latency import mnist_dir

    d = mnist_dir(ctx)
    if d is None:
        ctx.log("  skipped: MNIST not found (set PET_MNIST_DIR or --data-dir)")
        return []
    return room_rows("mnist_cnn", "mnist", d, 10, ctx)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.app_latency import mnist_dir
    from bench.common import setup_torch

    parser = argparse.ArgumentParser(description="room load test")
    parser.add_argument("--quick", action="store_true", help="30 s rooms, 5 single moves")
    parser.add_argument("--only", choices=["lenet", "mnist_cnn"])
    parser.add_argument("--participants", type=int)
    parser.add_argument("--duration", type=float, help="seconds (default 120, --quick 30)")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    setup_torch()
    ctx = Context(quick=args.quick, reps=5 if args.quick else 20, warmup=1 if args.quick else 2,
                  data_dir=args.data_dir, log=lambda m: print(m, flush=True))
    print(f"load average {load_avg()}", flush=True)
    rows: list[Result] = []
    if args.only in (None, "lenet"):
        rows += room_rows("lenet_300_100", "digits", None, args.participants or 30, ctx, args.duration)
    if args.only in (None, "mnist_cnn"):
        d = mnist_dir(ctx)
        if d is None:
            print("mnist_cnn room skipped: MNIST not found")
        else:
            rows += room_rows("mnist_cnn", "mnist", d, args.participants or 10, ctx, args.duration)
    for r in rows:
        print(json.dumps(r.as_dict(), indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    sys.exit(main())
