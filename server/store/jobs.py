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
from server.store.db import Database, Order, Page, dumps, loads

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]

TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({"validating_files", "queued", "running"})
ORGANIZATION_ID = "org-pomar"

_JOB_JSON_COLUMNS = frozenset(
    {"result_files", "hyperparameters", "method", "error", "integrations", "metadata", "evaluation"}
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
    base_model: str | None = None  # the base under `model` when that is an `ft:` model
    parent_model: str | None = None  # the `ft:` model the job started from
    parent_adapter: str | None = None  # that model's adapter folder
    evaluation: dict[str, Any] | None = None  # before/after, see server.jobs.evaluation

    @property
    def method_type(self) -> Literal["supervised", "dpo"]:
        """The job's training method (`method.type`)."""
        return "dpo" if (self.method or {}).get("type") == "dpo" else "supervised"

    @property
    def base_id(self) -> str:
        """The base model the job trains on (its `model`, unless that is an `ft:` model)."""
        return self.base_model or self.model

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
    evaluation: dict[str, Any] | None


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
        base_model: str | None = None,
        parent_model: str | None = None,
        parent_adapter: str | None = None,
    ) -> JobRecord:
        """Insert a new job (`ftjob-...`) and return it."""
        job_id = new_id("ftjob")
        created = now() if created_at is None else created_at
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, created_at, updated_at, model, status, training_file,"
                " validation_file, organization_id, hyperparameters, method, seed, suffix,"
                " integrations, metadata, backend, base_model_path, work_dir, base_model,"
                " parent_model, parent_adapter)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    base_model,
                    parent_model,
                    parent_adapter,
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

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (statuses no job is in are left out)."""
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {str(r["status"]): int(r["n"]) for r in rows}

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
