"""The `responses` table: stored `/v1/responses` answers (`store: true`, OpenAI's default).

A row keeps the response object as it was returned and the input items its request sent
(each with an id), so `previous_response_id` can replay a conversation: the chain's
inputs and outputs, oldest first. Deleting a response removes its row; a later response
that names it can no longer be continued.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from server.store.db import Database, StoreError, dumps, loads

#: the longest chain `previous_response_id` replays (a cycle cannot happen: ids are new)
MAX_CHAIN = 100_000


@dataclass(frozen=True)
class ResponseRecord:
    """One stored response."""

    id: str
    created_at: int
    model: str
    previous_response_id: str | None
    #: the response object, as returned
    response: dict[str, Any]
    #: the input items of its own request, ids assigned
    input_items: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ResponseRecord:
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            model=row["model"],
            previous_response_id=row["previous_response_id"],
            response=loads(row["response"]),
            input_items=loads(row["input_items"]),
        )


class ResponseRepository:
    """Stored responses, by id."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, record: ResponseRecord) -> None:
        """Store a response; raises `StoreError` if its id is taken."""
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO responses (id, created_at, model, previous_response_id, "
                    "response, input_items) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.created_at,
                        record.model,
                        record.previous_response_id,
                        dumps(record.response),
                        dumps(record.input_items),
                    ),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"response id {record.id!r} is already stored") from None

    def get(self, response_id: str) -> ResponseRecord | None:
        row = self.db.query_one("SELECT * FROM responses WHERE id = ?", (response_id,))
        return None if row is None else ResponseRecord.from_row(row)

    def delete(self, response_id: str) -> bool:
        """Remove the response; False if there was none."""
        with self.db.transaction() as conn:
            cursor = conn.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def chain(self, response_id: str) -> list[ResponseRecord] | None:
        """The response and every one it continues, oldest first; None if a link is gone."""
        chain: list[ResponseRecord] = []
        next_id: str | None = response_id
        while next_id is not None:
            if len(chain) >= MAX_CHAIN:
                raise StoreError(f"the chain of {response_id!r} is longer than {MAX_CHAIN}")
            record = self.get(next_id)
            if record is None:
                return None
            chain.append(record)
            next_id = record.previous_response_id
        chain.reverse()
        return chain
