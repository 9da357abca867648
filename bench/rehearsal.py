"""Workshop rehearsal: N participants join a workshop and work through the Lessons on one server.

    PYTHONPATH=. python bench/rehearsal.py --quick          # 30 participants, 30 s
    PYTHONPATH=. python bench/rehearsal.py --people 10      # 10 participants, 120 s
    python bench/run.py --only rehearsal                    # registered in bench/run.py (not in --quick)

The machinery is the room load test's (``bench/room.py``, read its docstring): the same ``Server`` (a
real ``studio.serve`` process, ``make run``'s settings, on a loopback port, with a fresh workspace so the
workshop's room database and ledger are the rehearsal's own), here started with ``PET_WORKSHOP_CODE=
bench-ws`` and ``PET_WORKSHOP_BUDGET=10x``; and the same protocol client (``room.Client``: protobuf
``BackMsg``/``ForwardMsg`` over ``/_stcore/stream``, one thread per participant, fragment timers
honoured), given here the Lessons and Class board pages' widgets.

The client holds widget values as Streamlit's frontend (1.67) does: every rerun carries the values of
the widgets on the page; a value comes from the participant's input, else from the element (``set_value``)
or its default, and is kept as sent (a radio's value is its option's label, as the frontend keeps it);
a button sends a trigger once; a form's text inputs are sent with its submit button; a page change
clears the query string and sends no page widgets (``onPageChange`` in the frontend).

Each participant (model lenet_300_100 on digits, the app's default; its cache is filled before the
server starts): opens ``/learn`` (the Lessons page, as a browser opening the address does), joins
through the form (code ``bench-ws``, nickname ``p<i>``), then every 5 s (its own random phase in
[0, 5) s) for the duration (120 s; 30 s with ``ctx.quick``) does the next thing on its page:

* on a lesson whose exercise is open: types a guess (``l_guess_<id>``, a random value in the input's
  range) and waits for the commit button to be enabled; then commits (``l_commit_<id>``) and waits for
  the reveal button; then reveals (``l_reveal_<id>``) and waits for the metric "Measured";
* on a revealed lesson: picks another lesson (radio ``l_lesson``; one not done yet when there is one)
  and waits for its header;
* about 1 interaction in 10 instead opens the Class board (``/board``) and waits for the leaderboard
  (``st.dataframe``) or the "No runs yet" info; its next interaction opens Lessons again and waits for a
  lesson's header (counted as "back to Lessons"). On the board the page's ``st.fragment(run_every=2)``
  reruns meanwhile, as in a browser.

Latency: from sending the message until the expected element has arrived and the run that showed it
has finished (``script_finished``: the whole page sent; a lesson's header comes early in its run, its
figure later); the expected element's own arrival is kept apart (``element_ms``). A participant waits for the run to finish before its next interaction; ticks that
pass meanwhile are skipped and counted (``late_ticks``). Errors: ``st.error`` and exception elements, a
compile error, a run that finished without the expected element, no answer within 60 s, a broken
connection, tracebacks and ERROR lines in the server's log.

Nothing is warmed up: the lessons' figures and measured answers (cached once per model for the whole
server) are computed by the first participant who needs them, under the room's load, as in a class.
Baseline, same server, after the room (so it finds those caches warm): one participant alone (its own
nickname) doing the same interactions back to back, at least ``ctx.reps``; ratio = alone p50 / room
p50 (room.py's convention; the p95s are in the notes).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Context, Goal, Result, load_avg, median  # noqa: E402
from bench.room import (FULL_S, INTERVAL_S, NUMBER_TIMEOUT_S, QUICK_S, Client, RoomResult, Server, closed,  # noqa: E402
                        play_room, pct, stats)

MODEL, DATASET = "lenet_300_100", "digits"      # the app's default source
CODE, BUDGET = "bench-ws", "10x"
PEOPLE = 30
BOARD_SHARE = 0.1                                # about 1 interaction in 10 opens the Class board
GOAL_MS = 2000.0                                 # room p95 of the lesson interactions
DONE = " · done"                                 # what the Lessons radio adds to a revealed lesson's title
KINDS = {"lesson": "pick a lesson (radio)", "guess": "type a guess (number input)",
         "commit": "commit the guess (button)", "reveal": "reveal the measured answer (button)",
         "board": "open the Class board", "back": "back to Lessons from the board"}


@dataclass
class Interaction:
    who: int
    kind: str                           # a KINDS key, or "join"
    lesson: str = ""
    start: float = 0.0                  # perf_counter when the message was sent
    element_ms: float | None = None     # the expected element arrived
    ms: float | None = None             # ... and the run that showed it finished (whole page sent): the latency
    late_ticks: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Learner(Client):
    """A workshop participant on the Lessons and Class board pages."""

    def __init__(self, who: int, server: Server, nickname: str, titles: dict[str, str], seed: int) -> None:
        super().__init__(server)
        self.who, self.nickname = who, nickname
        self.ids = {title: lid for lid, title in titles.items()}    # lesson title -> id
        self.rng = random.Random(seed)
        self.phase = self.rng.uniform(0, INTERVAL_S)
        self.tree: dict[str, tuple[str, Any]] = {}       # widget id -> (kind, element) of the current full run
        self.tree_run = -1
        self.values: dict[str, tuple[str, Any]] = {}     # widget id -> (WidgetState field, value), as the frontend
        self.trigger: str | None = None                  # a button pressed: sent once
        self.seen: list[tuple[int, str, Any]] = []       # (run, kind, element) since the interaction was sent
        self.page = ""                                   # "learn" or "board"
        self.lesson: str | None = None                   # the lesson whose header the page showed last
        self.acts: list[Interaction] = []
        self.join: Interaction | None = None
        self.setup_error: str | None = None
        self.setup_s: float | None = None

    # -- the page, as the frontend holds it --

    def _element(self, el, kind: str, now: float) -> None:
        if self.full_run != self.tree_run:
            self.tree, self.tree_run = {}, self.full_run
        self.seen.append((self.full_run, kind, el))
        if kind == "heading" and el.heading.tag == "h2" and el.heading.body in self.ids:
            self.lesson = self.ids[el.heading.body]
        w = getattr(el, kind, None)
        wid = getattr(w, "id", "") if w is not None and kind != "heading" else ""
        if not wid:
            return
        self.tree[wid] = (kind, w)
        if kind == "radio":
            if w.set_value:
                if w.HasField("raw_value"):
                    self.values[wid] = ("string_value", w.raw_value)
                else:
                    self.values.pop(wid, None)
            elif wid not in self.values and w.HasField("default") and w.options:
                self.values[wid] = ("string_value", w.options[w.default])
        elif kind == "number_input":
            if w.set_value:
                if w.HasField("value"):
                    self.values[wid] = ("double_value", w.value)
                else:
                    self.values.pop(wid, None)
            elif wid not in self.values and w.HasField("default"):
                self.values[wid] = ("double_value", w.default)

    def _widgets(self, states, fragment_id: str) -> None:
        for wid, (fld, value) in self.values.items():
            if wid in self.tree:
                w = states.widgets.add()
                w.id = wid
                setattr(w, fld, value)
        if self.trigger is not None and not fragment_id:
            w = states.widgets.add()
            w.id, w.trigger_value = self.trigger, True
            self.trigger = None

    def _find(self, key: str, kind: str | None = None) -> tuple[str, Any] | None:
        """The widget with user key ``key`` on the current page: (id, element)."""
        for wid, (k, w) in self.tree.items():
            if wid.endswith(f"-{key}") and (kind is None or k == kind):
                return wid, w
        return None

    def _radio(self) -> tuple[str, Any] | None:
        return self._find("l_lesson", "radio")

    # -- one interaction --

    def _act(self, kind: str, expected, send, lesson: str = "") -> Interaction:
        """``send()`` a message; wait for ``expected(run, kind, element)`` in a run started after it, then for
        that run to finish. A run that finishes without it is an error; so is no answer in 60 s."""
        a = self.sink = Interaction(self.who, kind, lesson)
        try:
            before = self.full_run
            self.seen = []
            a.start = time.perf_counter()
            send()
            deadline = a.start + NUMBER_TIMEOUT_S

            def hit() -> bool:
                return any(run > before and expected(k, el) for run, k, el in self.seen)

            def finished() -> bool:
                return self.finished is not None and self.finished > before

            if not self.pump(deadline, lambda: hit() or finished()):
                a.errors.append(f"no answer within {NUMBER_TIMEOUT_S:.0f} s")
                return a
            if not hit():
                a.errors.append(f"the page finished without the expected element ({self.page}, "
                                f"lesson {self.lesson}, {kind})")
                return a
            a.element_ms = (time.perf_counter() - a.start) * 1e3
            if self.pump(deadline, lambda: self.finished is not None and self.finished >= self.full_run > before):
                a.ms = (time.perf_counter() - a.start) * 1e3
            else:
                a.errors.append(f"the run did not finish within {NUMBER_TIMEOUT_S:.0f} s")
        except Exception as exc:  # noqa: BLE001
            a.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        finally:
            self.sink = None
        return a

    def _go(self, page: str) -> None:
        """Open ``page`` from the navigation: no query, no page widgets, the fragment timers stopped (the
        frontend's page change)."""
        self.page, self.query, self.tree = page, "", {}
        self.timers.clear()
        self._send(page_hash=self.pages[page])

    def settle(self) -> None:
        """Wait (up to 60 s) until the latest full run has finished: a person acts on a finished page."""
        self.pump(time.perf_counter() + NUMBER_TIMEOUT_S, lambda: self.finished is not None
                  and self.finished >= self.full_run)

    def step(self) -> Interaction:
        """The next thing this participant does on its page (once the page has finished)."""
        self.settle()
        if self.page != "learn":
            return self._act("back", lambda k, el: k == "heading" and el.heading.tag == "h2"
                             and el.heading.body in self.ids, lambda: self._go("learn"))
        if self.rng.random() < BOARD_SHARE:
            def board(k, el) -> bool:
                return k == "dataframe" or (k == "alert" and "No runs yet" in el.alert.body)
            return self._act("board", board, lambda: self._go("board"))
        lid = self.lesson
        guess, commit, reveal = (self._find(f"l_guess_{lid}", "number_input"), self._find(f"l_commit_{lid}", "button"),
                                 self._find(f"l_reveal_{lid}", "button"))
        if guess is not None and (guess[0] not in self.values or commit is None or commit[1].disabled):
            w = guess[1]
            lo, hi = (w.min if w.has_min else 0.0), (w.max if w.has_max else 100.0)
            value = round(self.rng.uniform(lo, hi), 2)

            def send() -> None:
                self.values[guess[0]] = ("double_value", value)
                self._send()
            return self._act("guess", lambda k, el: k == "button" and el.button.id.endswith(f"-l_commit_{lid}")
                             and not el.button.disabled, send, lid)
        if commit is not None:
            def send() -> None:
                self.trigger = commit[0]
                self._send()
            return self._act("commit", lambda k, el: k == "button" and el.button.id.endswith(f"-l_reveal_{lid}"),
                             send, lid)
        if reveal is not None:
            def send() -> None:
                self.trigger = reveal[0]
                self._send()
            return self._act("reveal", lambda k, el: k == "metric" and el.metric.label == "Measured", send, lid)
        radio = self._radio()
        if radio is None:
            a = Interaction(self.who, "lesson", str(lid), time.perf_counter())
            a.errors.append(f"no lesson radio on the page (lesson {lid})")
            return a
        rid, w = radio
        current = self.values.get(rid, ("", ""))[1]
        options = [o for o in w.options if o != current and self.ids.get(o.removesuffix(DONE)) != lid]
        fresh = [o for o in options if not o.endswith(DONE)]
        label = self.rng.choice(fresh or options or list(w.options))
        title = label.removesuffix(DONE)

        def send() -> None:
            self.values[rid] = ("string_value", label)
            self._send()
        return self._act("lesson", lambda k, el: k == "heading" and el.heading.tag == "h2" and el.heading.body == title,
                         send, self.ids.get(title, title))

    # -- a person --

    def open(self) -> None:
        """``/learn`` in a new tab, then join through the form (timed apart, not an interaction)."""
        t0 = time.perf_counter()
        try:
            self.connect()
            self.page = "learn"
            a = self._act("open", lambda k, el: k == "button" and el.button.is_form_submitter,
                          lambda: self._send(page_hash="", page_name="learn"))
            if a.errors:
                raise RuntimeError(f"opening /learn: {a.errors[0]}")
            if "learn" not in self.pages or "board" not in self.pages:
                raise RuntimeError(f"no learn/board page in {sorted(self.pages)}")
            code, nick = self._find("l_code", "text_input"), self._find("l_nick", "text_input")
            submit = next(((wid, w) for wid, (k, w) in self.tree.items() if k == "button" and w.is_form_submitter), None)
            if code is None or nick is None or submit is None:
                raise RuntimeError("no join form on /learn")

            def send() -> None:
                self.values[code[0]] = ("string_value", CODE)
                self.values[nick[0]] = ("string_value", self.nickname)
                self.trigger = submit[0]
                self._send()
            self.join = self._act("join", lambda k, el: k == "markdown" and f"Workshop **{CODE}** as "
                                  f"**{self.nickname}**" in el.markdown.body.replace("\\", ""), send)
            if self.join.errors:
                raise RuntimeError(f"joining: {self.join.errors[0]}")
            if self.lesson is None or self._radio() is None:
                raise RuntimeError("no lesson on the page after joining")
            if self.stray:
                raise RuntimeError(self.stray[0])
        except Exception as exc:  # noqa: BLE001 - reported, the room goes on
            self.setup_error = f"{type(exc).__name__}: {exc}"
        self.setup_s = time.perf_counter() - t0

    def play(self, start: float, duration: float) -> None:
        """An interaction every INTERVAL_S from ``start + phase`` until ``start + duration``."""
        self.paced(start, duration, lambda tick: self.step(), self.acts)

    def alone(self, n: int) -> None:
        """``n`` interactions back to back (0.2 s apart), as the baseline."""
        for _ in range(n):
            self.pump(time.perf_counter() + 0.2)
            a = self.step()
            self.acts.append(a)
            if closed(a):
                return


# --- the rehearsal --------------------------------------------------------------------------------

def ensure_model(ctx: Context) -> None:
    """The model's cache holds lenet_300_100 on the digits before the server starts (bench/run.py's
    prepare_models does it for every zoo model; this is for ``python bench/rehearsal.py``)."""
    from pet_core.data import load_dataset
    from pet_core.loader import load_baseline
    from pet_core.pretrained import is_cached
    from pet_core.zoo import adapt_dataset

    if not is_cached(MODEL, adapt_dataset(load_dataset(DATASET, None), MODEL)):
        ctx.log(f"  pretraining {MODEL} on {DATASET} (cached; not part of any timing)")
        load_baseline(MODEL, DATASET, None)


def _titles() -> dict[str, str]:
    from pet_core.lessons import load_lessons

    lessons, _ = load_lessons()
    return {x.id: x.title for x in lessons}


def rehearse(n: int, duration: float, reps: int, ctx: Context) -> dict[str, Any]:
    """Start the workshop's server, run the room, then the baseline; everything the rows need."""
    ensure_model(ctx)
    titles = _titles()
    folder = Path(tempfile.mkdtemp(prefix="pet-bench-rehearsal-"))
    env = {**os.environ, "PET_WORKSPACE": str(folder / "workspace"), "PET_WORKSHOP_CODE": CODE,
           "PET_WORKSHOP_BUDGET": BUDGET}
    env.pop("PET_WORKSHOP_INSTRUCTOR_KEY", None)
    server = Server(env, folder)
    out: dict[str, Any] = {}
    try:
        server.wait_healthy()
        server.start_sampling()
        out["rss_before_mb"] = server.rss_mb()
        people = [Learner(i, server, f"p{i}", titles, seed=2000 + i) for i in range(n)]
        played = play_room(server, people, duration, ctx, f"joined {CODE} on Lessons")
        out.update(played, room=[a for p in people for a in p.acts], joins=[p.join for p in people if p.join],
                   setup_s=max(played["setup_s"]))
        solo = Learner(-1, server, "solo", titles, seed=4242)
        solo.open()
        try:
            if solo.setup_error:
                raise RuntimeError(f"single participant: {solo.setup_error}")
            solo.alone(reps)
        finally:
            solo.close()
        out.update(single=solo.acts, single_stray=solo.stray)
        out["log_problems"], out["closed"] = server.log_problems()
    finally:
        server.stop()
        keep = os.environ.get("PET_ROOM_KEEP")
        if keep:
            shutil.copytree(folder, keep, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    raw = os.environ.get("PET_ROOM_RAW")
    if raw:
        Path(raw).write_text(json.dumps({k: [asdict(a) for a in out[k]] for k in ("room", "single", "joins")}))
    return out


def _ms(acts: list[Interaction], kind: str | None = None) -> list[float]:
    return [a.ms for a in acts if a.ms is not None and (kind is None or a.kind == kind)]


def rows(n: int, ctx: Context, out: dict[str, Any]) -> list[Result]:
    room, single = out["room"], out["single"]
    every, alone = _ms(room), _ms(single)
    errors = [f"{a.kind} p{a.who}/{a.lesson}: {e}" for a in room for e in a.errors] + out["setup_errors"]
    errors += out["stray"] + [f"join p{a.who}: {e}" for a in out["joins"] for e in a.errors]
    errors += [f"single {a.kind}/{a.lesson}: {e}" for a in single for e in a.errors]
    errors += [f"single: {s}" for s in out["single_stray"]] + [f"server log: {x}" for x in out["log_problems"]]
    warnings = sorted({w for a in room + single + out["joins"] for w in a.warnings})
    if not every or not alone:
        raise RuntimeError(f"rehearsal: no interaction was answered; errors: {errors[:3]}")
    late = sum(a.late_ticks for a in room)
    counts = {k: sum(a.kind == k for a in room) for k in KINDS}
    p95, s_p95 = pct(every, 0.95), pct(alone, 0.95)
    detail = {
        "participants": n, "duration_s": round(out["seconds"], 1), "interactions": len(room), "by_kind": counts,
        "single_interactions": len(single), "room_ms": {k: stats(_ms(room, k)) for k in KINDS},
        "room_all_ms": stats(every), "room_element_ms": {k: stats([a.element_ms for a in room if a.kind == k
                                                                   and a.element_ms is not None]) for k in KINDS},
        "single_ms": {k: stats(_ms(single, k)) for k in KINDS}, "single_all_ms": stats(alone),
        "join_ms": stats(_ms(out["joins"])), "setup_s_max": round(out["setup_s"], 1), "late_ticks": late,
        "errors": len(errors), "error_examples": errors[:8], "warnings": warnings[:5],
        "server_log_closed_websocket_tracebacks": out["closed"],
        "server_rss_mb": {"before": round(out["rss_before_mb"], 1), **{k: round(v, 1) for k, v in out["rss"].items()}},
        "server_cpu_pct": round(out["cpu_pct"]), "client_cpu_pct": round(out["client_cpu_pct"]),
        "load_avg_start": out["load_start"], "load_avg_end": out["load_end"],
    }
    ctx.log(f"  rehearsal, {n} people, {out['seconds']:.0f} s, {len(room)} interactions ({counts}): all p50 "
            f"{median(every):.0f} / p95 {p95:.0f} / max {max(every):.0f} ms; alone ({len(alone)}) p50 "
            f"{median(alone):.0f} / p95 {s_p95:.0f} ms; errors {len(errors)}" + (f" ({errors[0]})" if errors else "")
            + f"; server CPU {out['cpu_pct']:.0f}%, RSS peak {out['rss']['peak_mb']:.0f} MB; load "
            f"{out['load_start']} -> {out['load_end']}")
    for k in KINDS:
        xs, ys = _ms(room, k), _ms(single, k)
        if xs:
            ctx.log(f"    {k:7} n={len(xs):3} p50 {median(xs):6.0f} p95 {pct(xs, 0.95):6.0f} max {max(xs):6.0f} ms"
                    + (f"   alone n={len(ys)} p50 {median(ys):.0f} p95 {pct(ys, 0.95):.0f}" if ys else ""))
    tag = f"{MODEL}, {DATASET}, {n} participants"
    single_desc = (f"one participant alone on the same server after the room ({len(alone)} interactions of the same "
                   f"kinds back to back, the lessons' figures and answers cached by then)")
    how = (f"{n} websocket clients speaking Streamlit's protocol (bench/room.py's Client and Server) against one "
           f"`studio.serve` process with PET_WORKSHOP_CODE={CODE}, PET_WORKSHOP_BUDGET={BUDGET}; each opened /learn, "
           f"joined through the form as p<i>, then every {INTERVAL_S:g} s (own phase) for {out['seconds']:.0f} s did "
           f"its page's next step: pick a lesson, type a guess, commit, reveal; ~1 in 10 opened the Class board "
           f"(then back to Lessons). {len(room)} interactions "
           + ", ".join(f"{c} {k}" for k, c in counts.items()) + f"; {late} ticks skipped because an interaction "
           f"outlasted {INTERVAL_S:g} s. Latency: message sent -> the expected element (lesson header, commit button "
           f"enabled, reveal button, metric 'Measured', leaderboard or 'No runs yet') received and the run that "
           f"showed it finished (the whole page sent). Nothing warmed: figures and "
           f"answers computed under load by the first who needed them. Errors {len(errors)}"
           + (f" (e.g. {errors[0]})" if errors else "") + (f"; warnings seen: {warnings[:2]}" if warnings else "")
           + f"; server CPU {out['cpu_pct']:.0f}% of one core, clients {out['client_cpu_pct']:.0f}%; RSS peak "
           f"{out['rss']['peak_mb']:.0f} MB; load average {out['load_start']} -> {out['load_end']}.")
    r = RoomResult(name=f"rehearsal: lesson interaction, all kinds ({tag})", value=median(every), unit="ms",
                   baseline=median(alone), p90=pct(every, 0.90), min=min(every), baseline_p90=pct(alone, 0.90),
                   baseline_min=min(alone), reps=len(every),
                   goals=[Goal(f"room p95 of lesson interactions < {GOAL_MS / 1000:g} s", p95 < GOAL_MS),
                          Goal("no errors", not errors)],
                   baseline_desc=single_desc,
                   notes=(f"p95 {p95:.0f} ms, max {max(every):.0f} ms (alone: p95 {s_p95:.0f} ms, max "
                          f"{max(alone):.0f} ms; p95 ratio alone/room {s_p95 / p95:.3g}). ratio = alone p50 / room "
                          f"p50. " + how))
    r.p95, r.extra = p95, detail
    out_rows: list[Result] = [r]
    for k, desc in KINDS.items():
        xs, ys = _ms(room, k), _ms(single, k)
        if not xs:
            continue
        r = RoomResult(name=f"rehearsal: {desc} ({tag})", value=median(xs), unit="ms",
                       baseline=median(ys) if ys else None, p90=pct(xs, 0.90), min=min(xs),
                       baseline_p90=pct(ys, 0.90) if ys else None, baseline_min=min(ys) if ys else None,
                       reps=len(xs), baseline_desc=single_desc if ys else "",
                       notes=(f"p95 {pct(xs, 0.95):.0f} ms, max {max(xs):.0f} ms"
                              + (f" (alone: {len(ys)}, p50 {median(ys):.0f} / p95 {pct(ys, 0.95):.0f} ms)" if ys
                                 else " (the baseline participant did none)")
                              + f"; the expected element alone (before the rest of the page) p50 "
                              f"{median([a.element_ms for a in room if a.kind == k and a.element_ms] or [float('nan')]):.0f}"
                              f" ms. See the 'all kinds' row for how."))
        r.p95 = pct(xs, 0.95)
        out_rows.append(r)
    return out_rows


def bench_rehearsal(ctx: Context, people: int = PEOPLE, duration: float | None = None) -> list[Result]:
    """30 participants join the workshop and work through the Lessons (goal: room p95 < 2 s, no errors)."""
    duration = duration or (QUICK_S if ctx.quick else FULL_S)
    return rows(people, ctx, rehearse(people, duration, max(ctx.reps, 20), ctx))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.common import setup_torch

    parser = argparse.ArgumentParser(description="workshop rehearsal")
    parser.add_argument("--quick", action="store_true", help="30 s")
    parser.add_argument("--people", type=int, default=PEOPLE)
    parser.add_argument("--duration", type=float, help="seconds (default 120, --quick 30)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    setup_torch()
    ctx = Context(quick=args.quick, reps=5 if args.quick else 20, warmup=1 if args.quick else 2,
                  log=lambda m: print(m, flush=True))
    print(f"load average {load_avg()}", flush=True)
    out = bench_rehearsal(ctx, args.people, args.duration)
    for r in out:
        print(json.dumps(r.as_dict(), indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in out], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
