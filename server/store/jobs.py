"""Fine-tuning jobs, their events and checkpoints, and the `ft:` models they register.

Each repository is a thin typed layer over one table: records are frozen dataclasses whose
JSON columns come back as Python values, lists are cursor-paginated `Page`s in insertion
order (newest first by default, as OpenAI lists jobs, events and checkpoints), and lookups
of something absent return None so that the service picks the API error.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypedDict

from typing_extensions import Unpack

from server.protocol.common import new_id, now
from server.store.db import Database, Order, Page, StoreError, dumps, loads

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]

TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({"validating_files", "queued", "running"})
ORGANIZATION_ID = "org-pomar"

_JOB_JSON_COLUMNS = frozenset(
    {"result_files", "hyperparameters", "method", "error", "integrations", "metadata"}
)


@dataclass(frozen=True)
class JobRecord:
    """One `fine_tuning.job` plus pomar's own bookkeeping (the fields after `metadata`)."""

    id: str
    created_at: int
    updated_at: int
    model: str
    status: JobStatus
    training_file: str
    validation_file: str | None
    fine_tuned_model: str | None
    finished_at: int | None
    organization_id: str
    result_files: list[str]
    hyperparameters: dict[str, Any]
    method: dict[str, Any] | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    seed: int
    suffix: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    # pomar internals, not part of the OpenAI object
    backend: str | None
    base_model_path: str | None
    adapter_path: str | None
    work_dir: str | None
    started_at: int | None
    step: int
    total_steps: int | None
    last_checkpoint_step: int | None

    @property
    def is_terminal(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = {f.name: row[f.name] for f in fields(cls)}
        for key in _JOB_JSON_COLUMNS:
            values[key] = loads(values[key])
        return cls(**values)


class JobChanges(TypedDict, total=False):
    """The fields `JobRepository.update` may change (everything but identity and inputs)."""

    status: JobStatus
    fine_tuned_model: str | None
    finished_at: int | None
    result_files: list[str]
    hyperparameters: dict[str, Any]
    method: dict[str, Any] | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    seed: int
    estimated_finish: int | None
    metadata: dict[str, str] | None
    validation_file: str | None
    backend: str | None
    base_model_path: str | None
    adapter_path: str | None
    work_dir: str | None
    started_at: int | None
    step: int
    total_steps: int | None
    last_checkpoint_step: int | None


class JobRepository:
    """The `jobs` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        model: str,
        training_file: str,
        seed: int,
        hyperparameters: Mapping[str, Any],
        validation_file: str | None = None,
        method: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        status: JobStatus = "validating_files",
        organization_id: str = ORGANIZATION_ID,
        backend: str | None = None,
        base_model_path: str | None = None,
        work_dir: str | None = None,
        created_at: int | None = None,
    ) -> JobRecord:
        """Insert a new job (`ftjob-...`) and return it."""
        job_id = new_id("ftjob")
        created = now() if created_at is None else created_at
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, created_at, updated_at, model, status, training_file,"
                " validation_file, organization_id, hyperparameters, method, seed, suffix,"
                " integrations, metadata, backend, base_model_path, work_dir)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    created,
                    created,
                    model,
                    status,
                    training_file,
                    validation_file,
                    organization_id,
                    dumps(dict(hyperparameters)),
                    dumps(None if method is None else dict(method)),
                    seed,
                    suffix,
                    dumps(integrations),
                    dumps(None if metadata is None else dict(metadata)),
                    backend,
                    base_model_path,
                    work_dir,
                ),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row)

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else JobRecord.from_row(row)

    def list(
        self,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = "desc",
        metadata: Mapping[str, str] | None = None,
    ) -> Page[JobRecord]:
        """Jobs newest first; `metadata` keeps those whose metadata has every given pair."""
        where, params = "1", []
        for key, value in (metadata or {}).items():
            where += " AND json_extract(metadata, ?) = ?"
            params += [_json_path(key), value]
        return self.db.paginate(
            "jobs",
            JobRecord.from_row,
            where=where,
            params=params,
            after=after,
            limit=limit,
            order=order,
        )

    def with_status(self, *statuses: JobStatus) -> builtins.list[JobRecord]:
        """Jobs in any of `statuses`, oldest first (the FIFO queue; start-up recovery)."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.db.query(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq ASC", statuses
        )
        return [JobRecord.from_row(r) for r in rows]

    def update(
        self,
        job_id: str,
        *,
        expect_status: Collection[JobStatus] | None = None,
        **changes: Unpack[JobChanges],
    ) -> JobRecord | None:
        """Change fields of a job and return it; `updated_at` is set to now.

        With `expect_status`, the change only happens if the job's status is one of them
        (compare-and-set, so a cancel and the runner finishing cannot both win). Returns
        None if the job does not exist or its status was not expected.
        """
        columns = [key for key in changes if key in JobChanges.__annotations__]
        if len(columns) != len(changes):
            unknown = sorted(set(changes) - set(columns))
            raise ValueError(f"not updatable job fields: {unknown}")
        values: list[Any] = []
        for key in columns:
            value = changes[key]  # type: ignore[literal-required]
            values.append(dumps(value) if key in _JOB_JSON_COLUMNS else value)
        assignments = "".join(f"{key} = ?, " for key in columns)
        sql = f"UPDATE jobs SET {assignments}updated_at = ? WHERE id = ?"
        values += [now(), job_id]
        if expect_status is not None:
            expected = list(expect_status)
            sql += f" AND status IN ({', '.join('?' for _ in expected)})"
            values += expected
        with self.db.transaction() as conn:
            if conn.execute(sql, values).rowcount == 0:
                return None
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row)


def _json_path(key: str) -> str:
    """SQLite JSON path of one object key, quoted so that any key is taken literally."""
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


@dataclass(frozen=True)
class ModelRecord:
    """A registered fine-tuned model: an adapter on top of a base model."""

    id: str
    created: int
    owned_by: str
    base_model: str
    job_id: str | None
    adapter_path: str
    deleted: bool
    deleted_at: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ModelRecord:
        return cls(
            id=row["id"],
            created=row["created"],
            owned_by=row["owned_by"],
            base_model=row["base_model"],
            job_id=row["job_id"],
            adapter_path=row["adapter_path"],
            deleted=bool(row["deleted"]),
            deleted_at=row["deleted_at"],
        )


class ModelRepository:
    """The `models` table: fine-tuned models, soft-deleted so their ids are never reused."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(
        self,
        model_id: str,
        *,
        base_model: str,
        adapter_path: str,
        job_id: str | None = None,
        owned_by: str = "pomar",
        created: int | None = None,
    ) -> ModelRecord:
        """Add a model; raises `StoreError` if the id is taken (even by a deleted model)."""
        created = now() if created is None else created
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO models (id, created, owned_by, base_model, job_id, adapter_path)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (model_id, created, owned_by, base_model, job_id, adapter_path),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"model id {model_id!r} is already registered") from None
        return ModelRecord(
            model_id, created, owned_by, base_model, job_id, adapter_path, False, None
        )

    def get(self, model_id: str, *, include_deleted: bool = False) -> ModelRecord | None:
        """The model, or None (deleted ones only with `include_deleted`)."""
        row = self.db.query_one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is None or (row["deleted"] and not include_deleted):
            return None
        return ModelRecord.from_row(row)

    def list(self, *, include_deleted: bool = False) -> list[ModelRecord]:
        """Models oldest first."""
        where = "1" if include_deleted else "deleted = 0"
        rows = self.db.query(f"SELECT * FROM models WHERE {where} ORDER BY seq ASC")
        return [ModelRecord.from_row(r) for r in rows]

    def delete(self, model_id: str) -> ModelRecord | None:
        """Mark the model deleted and return it; None if there was no live model."""
        with self.db.transaction() as conn:
            stamp = now()
            cursor = conn.execute(
                "UPDATE models SET deleted = 1, deleted_at = ? WHERE id = ? AND deleted = 0",
                (stamp, model_id),
            )
            if cursor.rowcount == 0:
                return None
            row = conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        return ModelRecord.from_row(row)
