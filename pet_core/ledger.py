"""The run ledger: every configuration evaluated, fine-tune run and export, in one SQLite file.

A run is a row: its kind, status, parent run (provenance: baseline → compressed → fine-tuned →
re-compressed), the model and dataset it ran on (names as given plus content hashes), the recipe,
its metrics, its owner and, where it produced new weights, the file holding them. The CLI and the
app share one ledger (``pet_core.workspace``); it survives reloads and restarts. WAL mode lets
worker processes write progress while the app reads.

Example:
    >>> import tempfile, pathlib
    >>> led = Ledger(pathlib.Path(tempfile.mkdtemp()) / "l.sqlite")
    >>> rid = led.record("post-training", model="m", model_hash="h", dataset="digits", dataset_hash="d",
    ...                  recipe={"default": {}}, metrics={"accuracy": 0.9})
    >>> led.get(rid)["metrics"]["accuracy"]
    0.9
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.workspace import ledger_path

SCHEMA_VERSION = 1
KINDS = ("baseline", "post-training", "sweep", "fine-tuned", "export", "sensitivity")
STATUSES = ("queued", "running", "done", "stopped", "failed", "cancelled")
# Kinds whose identical configuration is one run, updated in place, not a new row each time.
UPSERT_KINDS = ("baseline", "post-training", "sweep", "sensitivity")
# Kinds that are one run for everybody (they depend on the model, data and settings only, not on who asked).
SHARED_KINDS = ("baseline", "sensitivity")
MODEL_KINDS = ("baseline", "post-training", "sweep", "fine-tuned", "export")   # runs that describe a model
JSON_COLUMNS = ("recipe", "metrics", "extra")

# Migrations: MIGRATIONS[v] takes a ledger at schema v to v + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            parent_id INTEGER REFERENCES runs(id),
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            model TEXT NOT NULL,
            model_hash TEXT NOT NULL,
            dataset TEXT NOT NULL,
            dataset_hash TEXT NOT NULL,
            recipe TEXT,
            recipe_key TEXT,
            metrics TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}',
            label TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL DEFAULT 'me',
            weights_path TEXT,
            error TEXT,
            stop_requested INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX runs_source ON runs(model_hash, dataset_hash)",
        "CREATE INDEX runs_identity ON runs(kind, model_hash, dataset_hash, recipe_key, owner)",
    ],
]


def canonical_recipe_key(recipe: dict | None) -> str:
    """One string per recipe content (key order does not matter)."""
    return "" if recipe is None else json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def model_hash(model: nn.Module) -> str:
    """A content hash of a model's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")   # 0-d too
    return h.hexdigest()[:16]


def connect(path: Path, what: str) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` (rows as mappings, autocommit, 30 s busy timeout)."""
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as e:
        raise PetError(f"cannot open {what} {path}: {e}") from None
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=30000")
    return db


def open_wal(path: Path, setup, what: str) -> None:
    """Create or open ``path`` in WAL mode and run ``setup(db)`` (schema, migrations), safely while other
    processes do the same; PetError naming ``what`` when it is not a database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with closing(connect(path, what)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                setup(db)
            return
        except sqlite3.OperationalError as e:
            # Switching a new file to WAL needs it alone and SQLite answers "locked" at once, without
            # waiting, while another process creates it: try again for a while.
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise PetError(f"cannot open {what} {path}: {e}") from None
            time.sleep(0.05)
        except sqlite3.DatabaseError as e:    # e.g. "file is not a database"
            raise PetError(f"cannot open {what} {path}: {e}") from None


class Ledger:
    """The run ledger at ``path`` (default: the workspace's ``ledger.sqlite``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else ledger_path()
        open_wal(self.path, self._migrate, "the run ledger")

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, "the run ledger")

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION; refuse a newer one. Safe when processes open it at once."""
        if self._schema(db) == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")       # read the version again under the write lock: another
        try:                                # process may have migrated it in between
            version = self._schema(db)
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _schema(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise PetError(f"the run ledger {self.path} has schema {version}, newer than this PET Studio "
                           f"({SCHEMA_VERSION}); upgrade PET Studio or set PET_WORKSPACE to another folder")
        return version

    # ------------------------------------------------------------------ writing

    def record(self, kind: str, *, model: str, model_hash: str, dataset: str, dataset_hash: str,
               recipe: dict | None = None, metrics: dict | None = None, extra: dict | None = None,
               parent_id: int | None = None, status: str = "done", label: str = "", owner: str = "me",
               weights_path: str | None = None) -> int:
        """Add a run (or, for an already recorded identical configuration, update it); returns its id.

        An update keeps the stored label and parent unless new ones are given.
        """
        if kind not in KINDS:
            raise PetError(f"run kind {kind!r} is not one of {', '.join(KINDS)}")
        if status not in STATUSES:
            raise PetError(f"run status {status!r} is not one of {', '.join(STATUSES)}")
        key = canonical_recipe_key(recipe)
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                existing = self._identical(db, kind, model_hash, dataset_hash, key, owner)
                values = dict(parent_id=parent_id, status=status, metrics=_dump(metrics or {}),
                              extra=_dump(extra or {}), label=label, weights_path=weights_path, updated_at=now)
                if existing is not None:     # an upsert keeps the label and parent it had unless given new ones
                    if not label:
                        values.pop("label")
                    if parent_id is None:
                        values.pop("parent_id")
                    sets = ", ".join(f"{k} = ?" for k in values)
                    db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), existing))
                    run_id = existing
                else:
                    values.update(kind=kind, model=model, model_hash=model_hash, dataset=dataset,
                                  dataset_hash=dataset_hash, recipe=None if recipe is None else _dump(recipe),
                                  recipe_key=key, owner=owner, created_at=now)
                    cols = ", ".join(values)
                    marks = ", ".join("?" for _ in values)
                    run_id = db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(values.values())).lastrowid
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(run_id)

    def find(self, kind: str, *, model_hash: str, dataset_hash: str, recipe: dict | None,
             owner: str = "me") -> int | None:
        """The id of the recorded run ``record`` would update for this configuration, or None.

        Only upserted kinds (baseline, post-training, sweep, sensitivity) have one; a baseline and a
        sensitivity analysis are shared by all owners.
        """
        with closing(self._connect()) as db:
            return self._identical(db, kind, model_hash, dataset_hash, canonical_recipe_key(recipe), owner)

    @staticmethod
    def _identical(db, kind, model_hash, dataset_hash, key, owner) -> int | None:
        if kind not in UPSERT_KINDS:
            return None
        query = "SELECT id FROM runs WHERE kind = ? AND model_hash = ? AND dataset_hash = ? AND recipe_key = ?"
        args: tuple = (kind, model_hash, dataset_hash, key)
        if kind not in SHARED_KINDS:      # a baseline is one run for everybody
            query += " AND owner = ?"
            args += (owner,)
        row = db.execute(query + " ORDER BY id LIMIT 1", args).fetchone()
        return None if row is None else int(row["id"])

    def update(self, run_id: int, *, status: str | None = None, metrics: dict | None = None,
               extra: dict | None = None, weights_path: str | None = None, error: str | None = None,
               label: str | None = None, parent_id: int | None = None) -> None:
        """Change a run: ``metrics`` and ``extra`` are merged into what is stored."""
        if status is not None and status not in STATUSES:
            raise PetError(f"run status {status!r} is not one of {', '.join(STATUSES)}")
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT metrics, extra FROM runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    raise PetError(f"run {run_id} is not in the ledger {self.path}")
                values: dict[str, Any] = {"updated_at": time.time()}
                if status is not None:
                    values["status"] = status
                if metrics:
                    values["metrics"] = _dump({**json.loads(row["metrics"]), **metrics})
                if extra:
                    values["extra"] = _dump({**json.loads(row["extra"]), **extra})
                for k, v in (("weights_path", weights_path), ("error", error), ("label", label),
                             ("parent_id", parent_id)):
                    if v is not None:
                        values[k] = v
                sets = ", ".join(f"{k} = ?" for k in values)
                db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def request_stop(self, run_id: int) -> None:
        """Ask the worker running ``run_id`` to stop at its next check."""
        with closing(self._connect()) as db:
            db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", (run_id,))

    def stop_requested(self, run_id: int) -> bool:
        with closing(self._connect()) as db:
            row = db.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["stop_requested"])

    # ------------------------------------------------------------------ reading

    def get(self, run_id: int) -> dict[str, Any]:
        """One run as a dict; PetError when there is no such run."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise PetError(f"run {run_id} is not in the ledger {self.path}")
        return _row(row)

    def runs(self, *, model_hash: str | None = None, dataset_hash: str | None = None,
             owner: str | None = None, kinds: Iterable[str] | None = None,
             statuses: Iterable[str] | None = None, model: str | None = None,
             dataset: str | None = None) -> list[dict[str, Any]]:
        """Runs matching every filter given, oldest first; ``model``/``dataset`` match the name or the hash."""
        where, args = [], []
        for col, val in (("model", model), ("dataset", dataset)):
            if val is not None:
                where.append(f"({col} = ? OR {col}_hash = ?)")
                args.extend([val, val])
        for col, val in (("model_hash", model_hash), ("dataset_hash", dataset_hash), ("owner", owner)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        for col, vals in (("kind", kinds), ("status", statuses)):
            if vals is not None:
                vals = list(vals)
                where.append(f"{col} IN ({', '.join('?' for _ in vals)})" if vals else "0")
                args.extend(vals)
        query = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with closing(self._connect()) as db:
            return [_row(r) for r in db.execute(query, args).fetchall()]

    def lineage(self, run_id: int) -> list[dict[str, Any]]:
        """The run's ancestors and the run itself, root first."""
        chain, seen = [], set()
        current: int | None = int(run_id)
        while current is not None and current not in seen:
            seen.add(current)
            run = self.get(current)
            chain.append(run)
            current = run["parent_id"]
        return chain[::-1]


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for col in JSON_COLUMNS:
        out[col] = None if out[col] is None else json.loads(out[col])
    out["stop_requested"] = bool(out["stop_requested"])
    return out
