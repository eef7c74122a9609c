"""SQLite in WAL mode: connections, versioned migrations, transactions, cursor pagination.

Threads: every thread gets its own connection (`Database.connection()`), so the job runner's
worker thread can write while the event loop reads; WAL lets readers go on during a write.
Writes go through `Database.transaction()`, which starts with `BEGIN IMMEDIATE` so a writer
takes the write lock up front (two threads upgrading read locks could otherwise deadlock)
and waits up to `busy_timeout` for another writer instead of failing. Statements are all
short (metadata only; blobs live on disk), so calling them from the event loop is fine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Order = Literal["asc", "desc"]

BUSY_TIMEOUT_S = 10.0


class StoreError(RuntimeError):
    """The store cannot do what was asked (closed, newer schema, inconsistent state)."""


class UnknownCursor(StoreError):
    """A pagination `after` id that names no row of the list."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"no object with id {cursor!r} to page after")
        self.cursor = cursor


# One entry per schema version: MIGRATIONS[i] takes the database from version i to i + 1.
# Append new migrations; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'processed',
        status_details TEXT,
        expires_at INTEGER,
        deleted_at INTEGER
    );
    CREATE INDEX files_purpose ON files (purpose, seq);

    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
        training_file TEXT NOT NULL,
        validation_file TEXT,
        fine_tuned_model TEXT,
        finished_at INTEGER,
        organization_id TEXT NOT NULL,
        result_files TEXT NOT NULL DEFAULT '[]',
        hyperparameters TEXT NOT NULL DEFAULT '{}',
        method TEXT,
        trained_tokens INTEGER,
        error TEXT,
        seed INTEGER NOT NULL,
        suffix TEXT,
        estimated_finish INTEGER,
        integrations TEXT,
        metadata TEXT,
        backend TEXT,
        base_model_path TEXT,
        adapter_path TEXT,
        work_dir TEXT,
        started_at INTEGER,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        last_checkpoint_step INTEGER
    );
    CREATE INDEX jobs_status ON jobs (status, seq);

    CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        level TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
        message TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('message', 'metrics')),
        data TEXT
    );
    CREATE INDEX job_events_job ON job_events (job_id, seq);

    CREATE TABLE job_checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        step_number INTEGER NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        fine_tuned_model_checkpoint TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        UNIQUE (job_id, step_number)
    );
    CREATE INDEX job_checkpoints_job ON job_checkpoints (job_id, seq);

    CREATE TABLE models (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        owned_by TEXT NOT NULL,
        base_model TEXT NOT NULL,
        job_id TEXT,
        adapter_path TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        deleted_at INTEGER
    );
    """,
    # stored responses of /v1/responses: the response object and its own input items
    """
    CREATE TABLE responses (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        previous_response_id TEXT,
        response TEXT NOT NULL,
        input_items TEXT NOT NULL
    );
    """,
    # a job started from a fine-tuned model (its id and adapter folder, and the base model
    # under it), and the job's before/after evaluation (JSON)
    """
    ALTER TABLE jobs ADD COLUMN base_model TEXT;
    ALTER TABLE jobs ADD COLUMN parent_model TEXT;
    ALTER TABLE jobs ADD COLUMN parent_adapter TEXT;
    ALTER TABLE jobs ADD COLUMN evaluation TEXT;
    """,
)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list: the items and whether more follow."""

    items: list[T]
    has_more: bool


class Database:
    """A SQLite file shared by threads, one connection each; `close()` closes them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open (creating if needed) and bring the schema up to date."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(path)
        db.migrate()
        return db

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError("the database is closed")
            # check_same_thread=False only so that close() may close it from another thread;
            # each connection is still used by the thread that opened it.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
            self._connections.append(conn)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable in WAL mode except for the last commits on power loss, never corrupt.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read and fetch every row."""
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """Run a read and fetch the first row, if any."""
        row: sqlite3.Row | None = self.connection().execute(sql, params).fetchone()
        return row

    @property
    def version(self) -> int:
        """The schema version (SQLite's `user_version`)."""
        row = self.query_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    def journal_mode(self) -> str:
        """`wal` once open."""
        row = self.query_one("PRAGMA journal_mode")
        return str(row[0]) if row else ""

    def migrate(self, migrations: Sequence[str] = MIGRATIONS) -> None:
        """Apply the migrations this database has not seen, each in its own transaction."""
        current = self.version
        if current > len(migrations):
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this pomar "
                f"({len(migrations)}); upgrade pomar or use another POMAR_HOME"
            )
        conn = self.connection()
        for version in range(current, len(migrations)):
            # executescript() commits first, so run the statements one by one instead to
            # keep each migration and its version bump in one transaction.
            with self.transaction():
                for statement in _statements(migrations[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")

    def close(self) -> None:
        """Close every thread's connection; later use raises `StoreError`."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def paginate(
        self,
        table: str,
        row_to_item: Callable[[sqlite3.Row], T],
        *,
        scope: str = "1",
        scope_params: Sequence[Any] = (),
        where: str = "1",
        params: Sequence[Any] = (),
        after: str | None = None,
        limit: int,
        order: Order = "desc",
    ) -> Page[T]:
        """A page of `table` in insertion order (`seq`), starting after the row with id `after`.

        `scope` bounds both the list and the cursor (e.g. one job's events); `where` only
        filters the list, so a cursor may name a row it hides (e.g. a deleted file). An
        `after` id outside the scope raises `UnknownCursor`. `table`, `scope` and `where` are
        SQL written by this package, never user input; values go in the params.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        sql = f"SELECT * FROM {table} WHERE ({scope}) AND ({where})"
        args = [*scope_params, *params]
        if after is not None:
            row = self.query_one(
                f"SELECT seq FROM {table} WHERE id = ? AND ({scope})", (after, *scope_params)
            )
            if row is None:
                raise UnknownCursor(after)
            sql += " AND seq < ?" if order == "desc" else " AND seq > ?"
            args.append(row["seq"])
        sql += f" ORDER BY seq {'DESC' if order == 'desc' else 'ASC'} LIMIT ?"
        args.append(limit + 1)
        rows = self.query(sql, args)
        return Page([row_to_item(r) for r in rows[:limit]], has_more=len(rows) > limit)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (ours hold no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def dumps(value: Any) -> str | None:
    """A JSON column value (None stays SQL NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


def loads(text: str | None) -> Any:
    """The Python value of a JSON column."""
    return None if text is None else json.loads(text)
