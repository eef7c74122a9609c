"""Persistent state under `$POMAR_HOME`: `pomar.db` (SQLite, WAL) and blobs under `files/`.

`Store.open(home)` creates the layout, migrates the schema and cleans up after a crash
(`recover()`); its repositories are what services and the job runner use:

    store.files        FileStore            uploaded and generated files
    store.jobs         JobRepository        fine-tuning jobs
    store.events       EventRepository      job events
    store.checkpoints  CheckpointRepository job checkpoints
    store.models       ModelRepository      registered `ft:` models
    store.responses    ResponseRepository   stored `/v1/responses` answers

Safe to share between the event loop and worker threads (see `server.store.db`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from server.store.db import Database, Order, Page, StoreError, UnknownCursor
from server.store.files import BlobWriter, FileRecord, FileStore, Recovery, sanitize_filename
from server.store.history import (
    CheckpointRecord,
    CheckpointRepository,
    EventRecord,
    EventRepository,
)
from server.store.jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    EventLevel,
    EventType,
    JobChanges,
    JobRecord,
    JobRepository,
    JobStatus,
)
from server.store.models import ModelRecord, ModelRepository
from server.store.responses import ResponseRecord, ResponseRepository

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "BlobWriter",
    "CheckpointRecord",
    "CheckpointRepository",
    "Database",
    "EventLevel",
    "EventRecord",
    "EventRepository",
    "EventType",
    "FileRecord",
    "FileStore",
    "JobChanges",
    "JobRecord",
    "JobRepository",
    "JobStatus",
    "ModelRecord",
    "ModelRepository",
    "Order",
    "Page",
    "Recovery",
    "ResponseRecord",
    "ResponseRepository",
    "Store",
    "StoreError",
    "UnknownCursor",
    "sanitize_filename",
]

DB_NAME = "pomar.db"
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")


@dataclass
class Store:
    """The database and blob folders of one pomar home, with one repository per table."""

    home: Path
    db: Database
    files: FileStore
    jobs: JobRepository
    events: EventRepository
    checkpoints: CheckpointRepository
    models: ModelRepository
    responses: ResponseRepository

    @classmethod
    def open(cls, home: Path) -> Store:
        """Open (creating if needed) the store under `home` and migrate its schema.

        Call `recover()` next, before serving, to clean up after a crash.
        """
        home.mkdir(parents=True, exist_ok=True)
        db = Database.open(home / DB_NAME)
        return cls(
            home=home,
            db=db,
            files=FileStore(db, home / "files"),
            jobs=JobRepository(db),
            events=EventRepository(db),
            checkpoints=CheckpointRepository(db),
            models=ModelRepository(db),
            responses=ResponseRepository(db),
        )

    def recover(self) -> Recovery:
        """Remove upload temp files and blobs that no live file row owns."""
        return self.files.recover()

    def job_dir(self, job_id: str) -> Path:
        """`home/jobs/<job id>` (not created): where a job keeps its data and adapters."""
        if JOB_ID.fullmatch(job_id) is None:
            raise ValueError(f"not a job id: {job_id!r}")
        return self.home / "jobs" / job_id

    def close(self) -> None:
        """Close every database connection."""
        self.db.close()
