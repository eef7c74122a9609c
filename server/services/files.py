"""Files: uploads streamed into the store under a size cap, fine-tune files checked at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from datalab.formats import check_jsonl_objects
from server.errors import FileNotFound, FileTooLarge, InvalidFile, InvalidRequest
from server.protocol.files import (
    FileDeleted,
    FileList,
    FileObject,
    FileUploadForm,
    ListFilesQuery,
)
from server.store import BlobWriter, FileRecord, FileStore, UnknownCursor

# Limits on the form around the file, so that the whole request stays bounded too.
MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 2 * 1024 * 1024
WRITE_CHUNK_BYTES = 1024 * 1024


class Upload:
    """A file being received: its bytes go to a temp blob in the store, never past the cap.

    `receive()` is called with each piece as the request streams in and refuses the file as
    soon as it passes `max_bytes`; `flush()` writes what was received on a worker thread.
    Nothing is visible until `FileService.create` commits it; `discard()` deletes it.
    """

    def __init__(self, blob: BlobWriter, filename: str | None, max_bytes: int) -> None:
        self.blob = blob
        self.filename = filename
        self.max_bytes = max_bytes
        self.size = 0
        self._pending = bytearray()

    def receive(self, data: bytes) -> None:
        """Take the next piece of the file; raises `FileTooLarge` (and discards) over the cap."""
        self.size += len(data)
        if self.size > self.max_bytes:
            self.discard()
            raise FileTooLarge(self.max_bytes)
        self._pending += data

    async def flush(self, *, force: bool = False) -> None:
        """Write the received bytes to disk once a chunk's worth has gathered (or `force`)."""
        if self._pending and (force or len(self._pending) >= WRITE_CHUNK_BYTES):
            data = bytes(self._pending)
            self._pending.clear()
            await asyncio.to_thread(self.blob.write, data)

    def discard(self) -> None:
        """Drop the upload and its temp file (a no-op once committed)."""
        self._pending.clear()
        self.blob.abort()


class FileService:
    """Upload, list, read and delete files."""

    def __init__(self, files: FileStore, *, max_upload_bytes: int) -> None:
        self._files = files
        self.max_upload_bytes = max_upload_bytes

    def check_declared_size(self, content_length: int | None) -> None:
        """Refuse at once a request whose declared length cannot hold an allowed file."""
        if content_length is not None and content_length > (
            self.max_upload_bytes + FORM_OVERHEAD_BYTES
        ):
            raise FileTooLarge(self.max_upload_bytes)

    def check_form(self, fields: Mapping[str, str]) -> FileUploadForm:
        """Validate the form fields (the purpose) — early, before the file is streamed."""
        if "purpose" not in fields:
            raise InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        return FileUploadForm.model_validate(dict(fields))

    def start_upload(self, filename: str | None) -> Upload:
        """Open a temp blob for an incoming file."""
        return Upload(self._files.open_blob(), filename, self.max_upload_bytes)

    async def create(self, fields: Mapping[str, str], upload: Upload | None) -> FileObject:
        """Check the form and the file, then store it; on any error nothing is kept."""
        try:
            if upload is None:
                raise InvalidRequest(
                    "Missing required parameter: 'file'.",
                    param="file",
                    code="missing_required_parameter",
                )
            form = self.check_form(fields)
            await upload.flush(force=True)
            if form.purpose == "fine-tune":
                await asyncio.to_thread(_check_training_file, upload)
            record = await asyncio.to_thread(
                self._files.commit, upload.blob, filename=upload.filename, purpose=form.purpose
            )
        finally:
            if upload is not None:
                upload.discard()
        return _file_object(record)

    def list(self, query: ListFilesQuery) -> FileList:
        """A page of files, newest first by default."""
        try:
            page = self._files.list(
                after=query.after, limit=query.limit, order=query.order, purpose=query.purpose
            )
        except UnknownCursor as exc:
            raise InvalidRequest(
                f"Invalid value for 'after': no file with id '{exc.cursor}'.",
                param="after",
                code="invalid_value",
            ) from None
        data = [_file_object(r) for r in page.items]
        return FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    def get(self, file_id: str) -> FileObject:
        """One file, or 404."""
        return _file_object(self._record(file_id))

    def content(self, file_id: str) -> tuple[FileObject, Path]:
        """The file and the path of its bytes, or 404."""
        record = self._record(file_id)
        path = self._files.content_path(file_id)
        if path is None:
            raise FileNotFound(file_id)
        return _file_object(record), path

    def delete(self, file_id: str) -> FileDeleted:
        """Delete a file, or 404."""
        if not self._files.delete(file_id):
            raise FileNotFound(file_id)
        return FileDeleted(id=file_id, deleted=True)

    def _record(self, file_id: str) -> FileRecord:
        record = self._files.get(file_id)
        if record is None:
            raise FileNotFound(file_id)
        return record


def _file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        status="processed",
        expires_at=record.expires_at,
        status_details=record.status_details,
    )


def _check_training_file(upload: Upload) -> None:
    """A fine-tune file must be non-empty UTF-8 JSONL, every non-empty line a JSON object."""
    upload.blob.finish()
    if upload.size == 0:
        raise InvalidFile(
            "Invalid file format. The file is empty (0 bytes); a fine-tune file must be JSONL, "
            "one JSON object per line.",
            code="empty_file",
        )
    problems = check_jsonl_objects(upload.blob.temp_path, max_problems=6)
    if not problems:
        return
    message = problems[0].message
    if not message.startswith("Invalid file format."):
        message = f"Invalid file format. {message}"
    others = [str(p.line) for p in problems[1:] if p.line]
    if others:
        more = "…" if len(problems) >= 6 else ""
        message += f" Other lines with problems: {', '.join(others)}{more}."
    raise InvalidFile(message)
