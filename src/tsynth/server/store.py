"""The server's state in SQLite (``DATA_DIR/tsynth.db``): files, jobs, events, checkpoints, models.

Objects are kept as their OpenAI-shaped JSON (``doc``) next to the columns that are searched or
ordered on. Every call opens its own short connection, so the API threads and the worker process
share the database safely (WAL journal, writers wait up to 30 s for each other). File contents live
under ``DATA_DIR/files/<id>``; a path is only ever built from an id that matched :data:`ID_PATTERN`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import string
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    purpose TEXT NOT NULL, digest TEXT, created_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL, digest TEXT, created_at INTEGER NOT NULL, doc TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, base TEXT);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT, doc TEXT NOT NULL, info TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job_id, seq);
"""

# columns added since the first release, added to an older database when it is opened
JOB_COLUMNS = {"attempts": "INTEGER NOT NULL DEFAULT 0", "worker": "TEXT", "base": "TEXT"}
ID_PATTERN = re.compile(r"^(file-|ftjob-|ftevent-|ftckpt_)[A-Za-z0-9]{24}$")
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    """A random OpenAI-style id, e.g. ``file-`` + 24 base62 characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def now() -> int:
    return int(time.time())


class Store:
    """Typed access to the database of one data directory."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir)
        self.files_dir = self.root / "files"
        self.jobs_dir = self.root / "jobs"
        self.models_dir = self.root / "models"
        for d in (self.files_dir, self.jobs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "tsynth.db"
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, kind in JOB_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            conn.commit()
        finally:
            conn.close()

    def remove_partial_writes(self) -> int:
        """Delete what a killed server or worker left half-written (uploads, model directories, result
        files, snapshots: all written under a temporary name first); returns how many."""
        leftovers = [*self.files_dir.glob(".*.upload"), *self.files_dir.glob("*.tmp"),
                     *self.models_dir.glob(".*.tmp-*"), *self.models_dir.glob(".*.old-*"),
                     *self.jobs_dir.glob("*/snapshots/.step-*.tmp")]
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(leftovers)

    def usage(self) -> int:
        """Bytes held under the data directory (files, models, job state, the database)."""
        total = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed meanwhile
                    pass
        return total

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; writes take the lock at the start (``BEGIN IMMEDIATE``)."""
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    # ------------------------------------------------------------------ generic
    def _get(self, table: str, id_: str) -> dict[str, Any] | None:
        if not ID_PATTERN.match(id_):
            return None
        with self.tx() as c:
            row = c.execute(f"SELECT doc FROM {table} WHERE id = ?", (id_,)).fetchone()
        return json.loads(row[0]) if row else None

    def by_digest(self, table: str, digest: str, since: int) -> dict[str, Any] | None:
        """The newest file or job made since ``since`` from a request with this digest (retry detection)."""
        with self.tx() as c:
            row = c.execute(f"SELECT doc FROM {table} WHERE digest = ? AND created_at >= ? ORDER BY seq DESC LIMIT 1",
                            (digest, since)).fetchone()
        return json.loads(row[0]) if row else None

    def page(self, table: str, where: str = "1", args: tuple = (), after: str | None = None, limit: int = 20,
             newest_first: bool = True) -> tuple[list[dict[str, Any]], bool]:
        """One page of a list, ordered by creation; ``after`` is the id of the previous page's last item."""
        op, order = ("<", "DESC") if newest_first else (">", "ASC")
        with self.tx() as c:
            if after:
                row = c.execute(f"SELECT seq FROM {table} WHERE id = ?", (after,)).fetchone()
                if row is None:
                    return [], False
                where, args = f"({where}) AND seq {op} ?", (*args, row[0])
            rows = c.execute(f"SELECT doc FROM {table} WHERE {where} ORDER BY seq {order} LIMIT ?",
                             (*args, limit + 1)).fetchall()
        return [json.loads(r[0]) for r in rows[:limit]], len(rows) > limit

    # ------------------------------------------------------------------ files
    def add_file(self, doc: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
        with self.tx() as c:
            c.execute("INSERT INTO files (id, purpose, digest, created_at, doc) VALUES (?, ?, ?, ?, ?)",
                      (doc["id"], doc["purpose"], digest, doc["created_at"], json.dumps(doc)))
        return doc

    def file(self, file_id: str) -> dict[str, Any] | None:
        return self._get("files", file_id)

    def file_path(self, file_id: str) -> Path:
        if not ID_PATTERN.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.files_dir / file_id

    def delete_file(self, file_id: str) -> bool:
        with self.tx() as c:
            gone = c.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if gone:
            self.file_path(file_id).unlink(missing_ok=True)
        return gone

    # ------------------------------------------------------------------ jobs
    def add_job(self, doc: dict[str, Any], digest: str | None = None, base: str | None = None) -> dict[str, Any]:
        """Record a job; ``base`` is where its base model lives (a path or hub id from the operator's allow-list;
        None for the local presets)."""
        with self.tx() as c:
            c.execute("INSERT INTO jobs (id, status, digest, created_at, doc, base) VALUES (?, ?, ?, ?, ?, ?)",
                      (doc["id"], doc["status"], digest, doc["created_at"], json.dumps(doc), base))
        return doc

    def job_run(self, job_id: str) -> tuple[int, str | None, str | None]:
        """How often a job was started, the worker slot that holds it, and where its base model lives."""
        with self.tx() as c:
            row = c.execute("SELECT attempts, worker, base FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (int(row[0]), row[1], row[2]) if row else (0, None, None)

    def jobs_on_worker(self, worker: str) -> list[dict[str, Any]]:
        """The jobs a worker slot is running."""
        with self.tx() as c:
            rows = c.execute("SELECT doc FROM jobs WHERE status = 'running' AND worker = ? ORDER BY seq",
                             (worker,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._get("jobs", job_id)

    def update_job(self, job_id: str, only_if: tuple[str, ...] | None = None, **fields: Any) -> dict[str, Any] | None:
        """Set fields of a job; with ``only_if``, only while its status is one of those (else None)."""
        with self.tx() as c:
            row = c.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            doc = json.loads(row[0])
            if only_if is not None and doc["status"] not in only_if:
                return None
            doc.update(fields)
            c.execute("UPDATE jobs SET status = ?, doc = ? WHERE id = ?", (doc["status"], json.dumps(doc), job_id))
        return doc

    def claim_job(self, worker: str = "0") -> dict[str, Any] | None:
        """Move the oldest queued job to running on worker slot ``worker``, counting the attempt, and return it
        (atomic across worker processes)."""
        with self.tx() as c:
            row = c.execute("SELECT id, doc FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            doc = json.loads(row[1])
            doc["status"] = "running"
            c.execute("UPDATE jobs SET status = 'running', doc = ?, attempts = attempts + 1, worker = ? WHERE id = ?",
                      (json.dumps(doc), worker, row[0]))
        return doc

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        with self.tx() as c:
            rows = c.execute(f"SELECT doc FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses).fetchall()
        return [json.loads(r[0]) for r in rows]

    # ------------------------------------------------------------------ events and checkpoints
    def add_event(self, job_id: str, message: str, level: str = "info", type_: str = "message",
                  data: dict | None = None) -> dict[str, Any]:
        doc = {"object": "fine_tuning.job.event", "id": new_id("ftevent-"), "created_at": now(), "level": level,
               "message": message, "type": type_, "data": data if data is not None else {}}
        with self.tx() as c:
            c.execute("INSERT INTO events (id, job_id, doc) VALUES (?, ?, ?)", (doc["id"], job_id, json.dumps(doc)))
        return doc

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The ``data`` of a job's metrics events, oldest first, one per step (the latest wins)."""
        with self.tx() as c:
            rows = c.execute("SELECT doc FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        by_step = {}
        for r in rows:
            doc = json.loads(r[0])
            if doc.get("type") == "metrics":
                by_step[doc["data"]["step"]] = doc["data"]
        return [by_step[k] for k in sorted(by_step)]

    def add_checkpoint(self, doc: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO checkpoints (id, job_id, doc) VALUES (?, ?, ?)",
                      (doc["id"], doc["fine_tuning_job_id"], json.dumps(doc)))

    # ------------------------------------------------------------------ models
    def add_model(self, doc: dict[str, Any], job_id: str, info: dict[str, Any]) -> None:
        """Register a fine-tuned model; ``info`` holds where it lives and its chat codec."""
        with self.tx() as c:
            c.execute("INSERT INTO models (id, job_id, doc, info) VALUES (?, ?, ?, ?)",
                      (doc["id"], job_id, json.dumps(doc), json.dumps(info)))

    def model(self, model_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self.tx() as c:
            row = c.execute("SELECT doc, info FROM models WHERE id = ?", (model_id,)).fetchone()
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def models(self) -> list[dict[str, Any]]:
        with self.tx() as c:
            rows = c.execute("SELECT doc FROM models ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_model(self, model_id: str) -> bool:
        with self.tx() as c:
            return c.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0
