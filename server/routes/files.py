"""`/v1/files`: upload (multipart, streamed to disk), list, retrieve, content, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from server.errors import InvalidRequest, PomarError
from server.protocol.files import FileDeleted, FileList, FileObject, FileUploadForm, ListFilesQuery
from server.routes.common import json_response
from server.routes.spec import api_route
from server.services.files import MAX_FIELD_BYTES, MAX_FIELDS, FileService, Upload

#: the longest multipart boundary RFC 2046 allows
MAX_BOUNDARY = 70

_FILE_ID = {"file_id": "A file id (`file-...`)."}


def _service(request: Request) -> FileService:
    service: FileService = request.app.state.services.files
    return service


async def create_file(request: Request) -> Response:
    service = _service(request)
    fields, upload = await _read_form(request, service)
    return json_response(await service.create(fields, upload))


async def list_files(request: Request) -> Response:
    query = ListFilesQuery.model_validate(dict(request.query_params))
    return json_response(_service(request).list(query))


async def get_file(request: Request) -> Response:
    return json_response(_service(request).get(request.path_params["file_id"]))


async def delete_file(request: Request) -> Response:
    return json_response(_service(request).delete(request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    file, path = _service(request).content(request.path_params["file_id"])
    return FileResponse(path, media_type="application/octet-stream", filename=file.filename)


class _FormReader:
    """python-multipart callbacks: the `file` part goes to an `Upload`, the rest to fields.

    The file is never held whole in memory: each piece is handed to `Upload.receive`, which
    enforces the size cap as the bytes arrive.
    """

    def __init__(self, service: FileService) -> None:
        self.service = service
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._in_file = False
        self._field = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._name, self._in_file = b"", "", False
        self._field.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("A multipart part has no name in its Content-Disposition.")
        self._name = options[b"name"].decode("utf-8", errors="replace")
        filename = options.get(b"filename")
        if self._name != "file" and filename is None:
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidRequest(f"Too many form fields (at most {MAX_FIELDS}).")
            return
        if self.upload is not None or self._name != "file":
            raise InvalidRequest(
                "Upload exactly one file per request, in the form field 'file'.", param="file"
            )
        if "purpose" in self.fields:
            # refuse a bad purpose before streaming the whole file
            self.service.check_form(self.fields)
        name = None if filename is None else filename.decode("utf-8", errors="replace")
        self.upload = self.service.start_upload(name)
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.upload is not None
            self.upload.receive(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"Form field '{self._name}' is longer than {MAX_FIELD_BYTES} bytes.",
                param=self._name,
            )

    def _part_end(self) -> None:
        if self._in_file:
            return
        try:
            self.fields[self._name] = self._field.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"Form field '{self._name}' is not UTF-8 text.", param=self._name
            ) from None

    def _end(self) -> None:
        self.ended = True


async def _read_form(
    request: Request, service: FileService
) -> tuple[dict[str, str], Upload | None]:
    """Stream the multipart body: fields into a dict, the file into a capped temp blob."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Expected a multipart/form-data body with the fields 'file' and 'purpose'."
        )
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidRequest(
            f"The multipart boundary is longer than {MAX_BOUNDARY} characters (RFC 2046)."
        )
    declared = _content_length(request)
    service.check_declared_size(declared)
    reader = _FormReader(service)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    chunks = request.stream()
    received = 0
    try:
        try:
            async for chunk in chunks:
                received += len(chunk)
                parser.write(chunk)
                if reader.upload is not None:
                    await reader.upload.flush()
            parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"The multipart body could not be parsed: {exc}") from None
        if not reader.ended:
            raise InvalidRequest("The multipart body ended before its closing boundary.")
    except PomarError:
        if reader.upload is not None:
            reader.upload.discard()
        # Read the rest of a bounded body so that the client, still sending, gets the answer.
        await _drain(chunks, (declared or 0) - received)
        raise
    except BaseException:
        if reader.upload is not None:
            reader.upload.discard()
        raise
    return reader.fields, reader.upload


async def _drain(chunks: AsyncIterator[bytes], remaining: int) -> None:
    """Discard up to `remaining` more bytes of the request body (bounded by the size check)."""
    try:
        while remaining > 0:
            remaining -= len(await anext(chunks))
    except Exception:  # the end of the body, or the client gone
        return


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise InvalidRequest("The Content-Length header is not a number.") from None


routes = [
    api_route(
        "/v1/files", create_file, "POST",
        operation_id="createFile", summary="Upload a file", tag="Files",
        multipart=FileUploadForm, response=FileObject,
        description="`expires_after` is refused: pomar keeps files until they are deleted.",
    ),
    api_route(
        "/v1/files", list_files, "GET",
        operation_id="listFiles", summary="List files", tag="Files",
        query=ListFilesQuery, response=FileList,
    ),
    api_route(
        "/v1/files/{file_id}", get_file, "GET",
        operation_id="retrieveFile", summary="Retrieve a file", tag="Files",
        response=FileObject, path_params=_FILE_ID,
    ),
    api_route(
        "/v1/files/{file_id}", delete_file, "DELETE",
        operation_id="deleteFile", summary="Delete a file", tag="Files",
        response=FileDeleted, path_params=_FILE_ID,
    ),
    api_route(
        "/v1/files/{file_id}/content", file_content, "GET",
        operation_id="downloadFile", summary="A file's content", tag="Files",
        binary=True, path_params=_FILE_ID,
        description="The stored bytes as `application/octet-stream` (OpenAI documents a "
        "JSON string).",
    ),
]  # fmt: skip
