"""Workshop mode: a code the instructor sets when starting the server, participants by nickname, a board.

The instructor starts the server with ``PET_WORKSHOP_CODE`` (and optionally ``PET_WORKSHOP_BUDGET``,
the leaderboard's size budget: bytes, or a ratio such as ``20x``, and ``PET_WORKSHOP_INSTRUCTOR_KEY``,
which opens the instructor view). A participant joins with the code and a nickname; their runs are
the ledger's runs owned by that nickname, made since they joined. The *room* (``workshop.sqlite`` in
the workspace, beside the ledger) keeps who joined and the guesses of the lessons' exercises: only
names, guesses and metrics are shared, never files or recipes of another participant's model.
"""

from __future__ import annotations

import hmac
import math
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pet_core.errors import PetError

BOARD_KINDS = ("post-training", "fine-tuned", "sweep")
MAX_BOARD_RUNS = 5000          # the newest runs drawn on the board
MAX_MEMBERS = 500
MAX_GUESSES = 20_000


@dataclass(frozen=True)
class Budget:
    """The leaderboard's size budget: at most ``size_bytes``, or at least ``ratio``× smaller than the baseline."""

    size_bytes: int | None = None
    ratio: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Budget | None":
        """``"25000"`` (bytes), ``"20x"`` / ``"20×"`` (ratio); empty: no budget."""
        text = (text or "").strip().lower().replace("×", "x").replace("_", "").replace(",", "")
        if not text:
            return None
        try:
            if text.endswith("x"):
                ratio = float(text[:-1])
                if not math.isfinite(ratio) or not 1 <= ratio <= 10_000:
                    raise ValueError
                return cls(ratio=ratio)
            size = int(float(text[:-1] if text.endswith("b") else text))
            if not 0 < size < 1 << 50:
                raise ValueError
            return cls(size_bytes=size)
        except ValueError:
            raise PetError(f"workshop budget {text[:40]!r}: give bytes (25000) or a ratio (20x)") from None

    def fits(self, run: dict[str, Any]) -> bool:
        m = run.get("metrics") or {}
        if self.size_bytes is not None:
            return m.get("size_bytes") is not None and m["size_bytes"] <= self.size_bytes
        return m.get("compression_ratio") is not None and m["compression_ratio"] >= self.ratio

    def text(self) -> str:
        return f"≤ {self.size_bytes:,} B" if self.size_bytes is not None else f"≥ {self.ratio:g}× smaller"


@dataclass(frozen=True)
class WorkshopConfig:
    code: str | None
    budget: Budget | None
    instructor_key: str | None

    @classmethod
    def from_env(cls) -> "WorkshopConfig":
        code = (os.environ.get("PET_WORKSHOP_CODE") or "").strip() or None
        if code is not None and (len(code) > 32 or not all(c.isalnum() or c in "-_" for c in code)):
            raise PetError("PET_WORKSHOP_CODE may hold letters, digits, '-' and '_' only (at most 32)")
        key = (os.environ.get("PET_WORKSHOP_INSTRUCTOR_KEY") or "").strip() or None
        return cls(code=code, budget=Budget.parse(os.environ.get("PET_WORKSHOP_BUDGET")), instructor_key=key)

    def accepts(self, code: str) -> bool:
        return self.code is not None and hmac.compare_digest(str(code).strip().encode(), self.code.encode())

    def is_instructor(self, key: str | None) -> bool:
        return bool(self.instructor_key and key) and hmac.compare_digest(str(key).encode(),
                                                                          self.instructor_key.encode())


def room_path() -> Path:
    from pet_core.workspace import workspace_dir

    return workspace_dir() / "workshop.sqlite"


class Room:
    """Who joined which workshop, their guesses, the instructor's budget (one small SQLite file)."""

    def __init__(self, path: str | Path | None = None) -> None:
        from pet_core.ledger import open_wal

        self.path = Path(path) if path is not None else room_path()
        open_wal(self.path, self._setup, "the workshop room")

    @staticmethod
    def _setup(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS members (code TEXT, nickname TEXT, joined REAL, "
                   "PRIMARY KEY (code, nickname))")
        db.execute("CREATE TABLE IF NOT EXISTS guesses (id INTEGER PRIMARY KEY, code TEXT, nickname TEXT, "
                   "lesson TEXT, guess REAL, truth REAL, unit TEXT, at REAL)")
        db.execute("CREATE TABLE IF NOT EXISTS settings (code TEXT PRIMARY KEY, budget TEXT)")

    def _connect(self) -> sqlite3.Connection:
        from pet_core.ledger import connect

        return connect(self.path, "the workshop room")

    def join(self, code: str, nickname: str) -> float:
        """Join (again): returns when this nickname first joined."""
        with closing(self._connect()) as db:
            if db.execute("SELECT COUNT(*) FROM members WHERE code = ?", (code,)).fetchone()[0] >= MAX_MEMBERS:
                if db.execute("SELECT 1 FROM members WHERE code = ? AND nickname = ?", (code, nickname)).fetchone() is None:
                    raise PetError(f"this workshop is full ({MAX_MEMBERS} participants)")
            db.execute("INSERT OR IGNORE INTO members VALUES (?, ?, ?)", (code, nickname, time.time()))
            return db.execute("SELECT joined FROM members WHERE code = ? AND nickname = ?",
                              (code, nickname)).fetchone()[0]

    def members(self, code: str) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            return [dict(r) for r in db.execute("SELECT nickname, joined FROM members WHERE code = ? ORDER BY joined",
                                                (code,))]

    def record_guess(self, code: str, nickname: str, lesson: str, guess: float, truth: float, unit: str) -> None:
        with closing(self._connect()) as db:
            if db.execute("SELECT COUNT(*) FROM guesses WHERE code = ?", (code,)).fetchone()[0] >= MAX_GUESSES:
                return
            db.execute("INSERT INTO guesses (code, nickname, lesson, guess, truth, unit, at) VALUES (?,?,?,?,?,?,?)",
                       (code, nickname, lesson, float(guess), float(truth), unit, time.time()))

    def guesses(self, code: str, lesson: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT nickname, lesson, guess, truth, unit, at FROM guesses WHERE code = ?"
        args: list[Any] = [code]
        if lesson is not None:
            query += " AND lesson = ?"
            args.append(lesson)
        with closing(self._connect()) as db:
            return [dict(r) for r in db.execute(query + " ORDER BY id", args)]

    def budget(self, code: str, default: Budget | None) -> Budget | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT budget FROM settings WHERE code = ?", (code,)).fetchone()
        return default if row is None else Budget.parse(row[0])

    def set_budget(self, code: str, text: str) -> Budget | None:
        budget = Budget.parse(text)          # refused before it is stored
        with closing(self._connect()) as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (code, text.strip()))
        return budget


def board(ledger, room: Room, code: str, budget: Budget | None) -> dict[str, Any]:
    """The class board: every member's runs since they joined, grouped by model and dataset, and per
    group a leaderboard (each nickname's best metric within the budget)."""
    from pet_core.metrics import METRICS

    joined = {m["nickname"]: m["joined"] for m in room.members(code)}
    runs = [r for r in ledger.runs(kinds=BOARD_KINDS, statuses=["done"])
            if r["owner"] in joined and r["created_at"] >= joined[r["owner"]] - 1.0][-MAX_BOARD_RUNS:]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["dataset"]), []).append(_public(r))
    out = []
    for (model, dataset), rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        metric = next((METRICS[n] for n in METRICS if any(row["metrics"].get(n) is not None for row in rows)),
                      METRICS["accuracy"])
        best: dict[str, dict] = {}
        for row in rows:
            value = row["metrics"].get(metric.name)
            if value is None or (budget is not None and not budget.fits(row)):
                continue
            held = best.get(row["owner"])
            if held is None or metric.better(value, held["metrics"][metric.name]) or (
                    value == held["metrics"][metric.name] and row["metrics"]["size_bytes"] < held["metrics"]["size_bytes"]):
                best[row["owner"]] = row
        ranked = sorted(best.values(), key=lambda r: ((-1 if metric.higher_is_better else 1) * r["metrics"][metric.name],
                                                      r["metrics"]["size_bytes"], r["id"]))
        board_rows = [{"rank": i + 1, "nickname": r["owner"], metric.name: r["metrics"][metric.name],
                       "size_bytes": r["metrics"]["size_bytes"], "compression_ratio": r["metrics"].get("compression_ratio"),
                       "run": r["id"], "kind": r["kind"],
                       "runs": sum(1 for x in rows if x["owner"] == r["owner"])} for i, r in enumerate(ranked)]
        out.append({"model": model, "dataset": dataset, "metric": metric.to_dict(), "runs": rows,
                    "leaderboard": board_rows})
    return {"code": code, "members": sorted(joined), "budget": None if budget is None else budget.text(),
            "groups": out}


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """What the board shares of a run: names and numbers, no paths, no weights."""
    m = run.get("metrics") or {}
    keep = ("accuracy", "perplexity", "size_bytes", "compression_ratio", "weight_sparsity")
    return {"id": run["id"], "owner": run["owner"], "kind": run["kind"], "label": run.get("label") or "",
            "created_at": run["created_at"], "metrics": {k: m.get(k) for k in keep if m.get(k) is not None}}
