"""The `job_events` and `job_checkpoints` tables: what a job reported along the way."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.protocol.common import new_id, now
from server.store.db import Database, Order, Page, dumps, loads
from server.store.jobs import EventLevel, EventType


@dataclass(frozen=True)
class EventRecord:
    """One `fine_tuning.job.event`."""

    id: str
    job_id: str
    created_at: int
    level: EventLevel
    message: str
    type: EventType
    data: Any

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> EventRecord:
        return cls(
            id=row["id"],
            job_id=row["job_id"],
            created_at=row["created_at"],
            level=row["level"],
            message=row["message"],
            type=row["type"],
            data=loads(row["data"]),
        )


class EventRepository:
    """The `job_events` table: append-only, listed newest first."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        job_id: str,
        message: str,
        *,
        level: EventLevel = "info",
        type: EventType = "message",
        data: Any = None,
        created_at: int | None = None,
    ) -> EventRecord:
        """Append an event (`ftevent-...`) to a job; `data` must be JSON-serializable."""
        event = EventRecord(
            id=new_id("ftevent"),
            job_id=job_id,
            created_at=now() if created_at is None else created_at,
            level=level,
            message=message,
            type=type,
            data=data,
        )
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO job_events (id, job_id, created_at, level, message, type, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    job_id,
                    event.created_at,
                    level,
                    message,
                    type,
                    dumps(data),
                ),
            )
        return event

    def list(
        self, job_id: str, *, after: str | None = None, limit: int = 20, order: Order = "desc"
    ) -> Page[EventRecord]:
        """A job's events, newest first; `after` is an event id of the same job."""
        return self.db.paginate(
            "job_events",
            EventRecord.from_row,
            scope="job_id = ?",
            scope_params=(job_id,),
            after=after,
            limit=limit,
            order=order,
        )


@dataclass(frozen=True)
class CheckpointRecord:
    """One `fine_tuning.job.checkpoint`, plus where its adapter lies on disk."""

    id: str
    job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float]
    fine_tuned_model_checkpoint: str
    path: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CheckpointRecord:
        return cls(
            id=row["id"],
            job_id=row["job_id"],
            created_at=row["created_at"],
            step_number=row["step_number"],
            metrics=loads(row["metrics"]),
            fine_tuned_model_checkpoint=row["fine_tuned_model_checkpoint"],
            path=row["path"],
        )


class CheckpointRepository:
    """The `job_checkpoints` table: one row per (job, step)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        job_id: str,
        *,
        step_number: int,
        fine_tuned_model_checkpoint: str,
        path: str,
        metrics: Mapping[str, float] | None = None,
        created_at: int | None = None,
    ) -> CheckpointRecord:
        """Record a checkpoint (`ftckpt-...`); saving the same step again updates it in place
        (keeping its id), so a job resumed after a crash can re-save a step safely."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO job_checkpoints (id, job_id, created_at, step_number, metrics,"
                " fine_tuned_model_checkpoint, path) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, step_number) DO UPDATE SET created_at = excluded.created_at,"
                " metrics = excluded.metrics, path = excluded.path,"
                " fine_tuned_model_checkpoint = excluded.fine_tuned_model_checkpoint",
                (
                    new_id("ftckpt"),
                    job_id,
                    now() if created_at is None else created_at,
                    step_number,
                    dumps(dict(metrics or {})),
                    fine_tuned_model_checkpoint,
                    path,
                ),
            )
            row = conn.execute(
                "SELECT * FROM job_checkpoints WHERE job_id = ? AND step_number = ?",
                (job_id, step_number),
            ).fetchone()
        return CheckpointRecord.from_row(row)

    def get(self, checkpoint_id: str) -> CheckpointRecord | None:
        """The checkpoint, or None."""
        row = self.db.query_one("SELECT * FROM job_checkpoints WHERE id = ?", (checkpoint_id,))
        return None if row is None else CheckpointRecord.from_row(row)

    def by_model(self, model_id: str) -> CheckpointRecord | None:
        """The checkpoint served as model `model_id` (`ft:...:ckpt-step-N`), or None."""
        row = self.db.query_one(
            "SELECT * FROM job_checkpoints WHERE fine_tuned_model_checkpoint = ?", (model_id,)
        )
        return None if row is None else CheckpointRecord.from_row(row)

    def latest(self, job_id: str) -> CheckpointRecord | None:
        """The job's checkpoint with the highest step (what a resumed job starts from)."""
        row = self.db.query_one(
            "SELECT * FROM job_checkpoints WHERE job_id = ? ORDER BY step_number DESC LIMIT 1",
            (job_id,),
        )
        return None if row is None else CheckpointRecord.from_row(row)

    def list(
        self, job_id: str, *, after: str | None = None, limit: int = 10, order: Order = "desc"
    ) -> Page[CheckpointRecord]:
        """A job's checkpoints, newest first; `after` is a checkpoint id of the same job."""
        return self.db.paginate(
            "job_checkpoints",
            CheckpointRecord.from_row,
            scope="job_id = ?",
            scope_params=(job_id,),
            after=after,
            limit=limit,
            order=order,
        )
