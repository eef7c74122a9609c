"""Uploaded files: one blob on disk per file under `files/`, one row per file in `files`.

Never half-visible: a blob is written to `files/.incoming/` and only moved to `files/<id>`
(`os.replace`, atomic on one file system) after it is complete and synced; the row is
inserted after the move. A crash in between leaves a blob without a row, which `recover()`
deletes at start-up together with leftover temp files. Deleting marks the row first (so a
list cursor naming a deleted file still works) and then removes the blob.

Only ids of the exact form `file-<24 hex>` ever become a path, so no id can reach outside
the store; the client's filename is a display name only and never touches the disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sqlite3
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from server.protocol.common import new_id, now
from server.store.db import Database, Order, Page

log = logging.getLogger(__name__)

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
INCOMING = ".incoming"
MAX_FILENAME_BYTES = 255
DEFAULT_FILENAME = "upload"


def is_file_id(value: str) -> bool:
    """True only for ids this store generates (`file-` + 24 lowercase hex digits)."""
    return FILE_ID.fullmatch(value) is not None


def sanitize_filename(name: str | None, default: str = DEFAULT_FILENAME) -> str:
    """A display name: no directories, no control or format characters, no leading dots.

    `../../etc/passwd` -> `passwd`, a Windows path keeps its last part, and an empty name
    or `..` becomes `default`.
    Long names are cut to 255 UTF-8 bytes, keeping a short extension.
    """
    text = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    # Unicode category C: control, format (e.g. bidi overrides), surrogates, private, unassigned.
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    text = text.strip().lstrip(". ").strip()
    if not text:
        return default
    if len(text.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        suffix = f".{ext}" if dot and stem and len(ext) <= 16 else ""
        stem = text[: len(text) - len(suffix)]
        budget = MAX_FILENAME_BYTES - len(suffix.encode())
        text = stem.encode()[:budget].decode(errors="ignore") + suffix
    return text


@dataclass(frozen=True)
class FileRecord:
    """One stored file, as the `files` table holds it."""

    id: str
    created_at: int
    filename: str
    purpose: str
    bytes: int
    sha256: str
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> FileRecord:
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            filename=row["filename"],
            purpose=row["purpose"],
            bytes=row["bytes"],
            sha256=row["sha256"],
            status=row["status"],
            status_details=row["status_details"],
            expires_at=row["expires_at"],
        )


@dataclass(frozen=True)
class Recovery:
    """What `FileStore.recover()` cleaned up."""

    temp_files_removed: int
    orphan_blobs_removed: int
    rows_without_blob: tuple[str, ...]


class BlobWriter:
    """A blob being written to a temp file inside the store; invisible until committed.

    Use as a context manager (or call `abort()`): leaving it uncommitted deletes the temp
    file. Not thread-safe; one writer per upload.
    """

    def __init__(self, temp_path: Path) -> None:
        self.temp_path = temp_path
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = temp_path.open("xb")
        self._finished = False

    def write(self, data: bytes) -> None:
        """Append `data` to the blob."""
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """Flush and sync to disk; returns the SHA-256. No write may follow."""
        if not self._finished:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._finished = True
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Discard the blob (idempotent; also after a failed commit)."""
        self._file.close()
        self._finished = True
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a successful commit the temp path no longer exists, so this is a no-op.
        self.abort()


class FileStore:
    """File blobs under `root` and their rows in the database."""

    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        self.incoming = root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)

    def open_blob(self) -> BlobWriter:
        """Start a new blob in the store's temp folder (same file system as the blobs)."""
        return BlobWriter(self.incoming / f"{secrets.token_hex(16)}.part")

    def commit(
        self, blob: BlobWriter, *, filename: str | None, purpose: str, created_at: int | None = None
    ) -> FileRecord:
        """Make a finished blob a file: sync, move into place, then insert its row."""
        sha256 = blob.finish()
        record = FileRecord(
            id=new_id("file"),
            created_at=now() if created_at is None else created_at,
            filename=sanitize_filename(filename),
            purpose=purpose,
            bytes=blob.size,
            sha256=sha256,
        )
        final = self._blob(record.id)
        os.replace(blob.temp_path, final)
        _fsync_dir(self.root)
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO files (id, created_at, filename, purpose, bytes, sha256, status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.created_at,
                        record.filename,
                        record.purpose,
                        record.bytes,
                        record.sha256,
                        record.status,
                    ),
                )
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return record

    def put_bytes(self, data: bytes, *, filename: str, purpose: str) -> FileRecord:
        """Store a small file made by the server itself (e.g. `fine-tune-results` CSV, PNG)."""
        with self.open_blob() as blob:
            blob.write(data)
            return self.commit(blob, filename=filename, purpose=purpose)

    def get(self, file_id: str) -> FileRecord | None:
        """The file, or None if there is none (or it was deleted)."""
        if not is_file_id(file_id):
            return None
        row = self.db.query_one(
            "SELECT * FROM files WHERE id = ? AND deleted_at IS NULL", (file_id,)
        )
        return None if row is None else FileRecord.from_row(row)

    def content_path(self, file_id: str) -> Path | None:
        """Where the file's bytes are, or None if there is no such file."""
        if self.get(file_id) is None:
            return None
        path = self._blob(file_id)
        return path if path.is_file() else None

    def list(
        self,
        *,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
        purpose: str | None = None,
    ) -> Page[FileRecord]:
        """Files newest first (or oldest first), optionally of one purpose.

        `after` may name a deleted file, so pagination survives deletes; an id that never
        existed raises `UnknownCursor`.
        """
        where, params = "deleted_at IS NULL", []
        if purpose is not None:
            where += " AND purpose = ?"
            params.append(purpose)
        return self.db.paginate(
            "files",
            FileRecord.from_row,
            where=where,
            params=params,
            after=after,
            limit=limit,
            order=order,
        )

    def delete(self, file_id: str) -> bool:
        """Delete the file; False if there was none."""
        if not is_file_id(file_id):
            return False
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE files SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (now(), file_id),
            )
        if cursor.rowcount == 0:
            return False
        # A crash before this line leaves a blob of a deleted row: recover() removes it.
        self._blob(file_id).unlink(missing_ok=True)
        return True

    def recover(self) -> Recovery:
        """Start-up clean-up: temp files, blobs without a live row, rows without a blob.

        Run it before serving (it assumes no upload is in flight). Rows whose blob is gone
        are marked deleted, since their content can no longer be served.
        """
        temp_removed = 0
        for entry in self.incoming.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
                temp_removed += 1
        live = {r["id"] for r in self.db.query("SELECT id FROM files WHERE deleted_at IS NULL")}
        orphans = 0
        on_disk: set[str] = set()
        for entry in self.root.iterdir():
            if not is_file_id(entry.name):
                continue
            if entry.name in live:
                on_disk.add(entry.name)
            else:
                entry.unlink(missing_ok=True)
                orphans += 1
        missing = tuple(sorted(live - on_disk))
        if missing:
            with self.db.transaction() as conn:
                conn.executemany(
                    "UPDATE files SET deleted_at = ? WHERE id = ?",
                    [(now(), file_id) for file_id in missing],
                )
            log.warning("%d file(s) had lost their content and were removed", len(missing))
        if temp_removed or orphans:
            log.info("store recovery: %d temp file(s), %d orphan blob(s)", temp_removed, orphans)
        return Recovery(temp_removed, orphans, missing)

    def _blob(self, file_id: str) -> Path:
        # The only place an id becomes a path: refuse anything but our own id format.
        if not is_file_id(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id


def _fsync_dir(path: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
