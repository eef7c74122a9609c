"""The `models` table: fine-tuned (and checkpoint) models registered for serving."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from server.protocol.common import now
from server.store.db import Database, StoreError


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
