"""`/v1/files` shapes: the `file` object, lists, deletion, and the request parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.errors import InvalidRequest, UnsupportedParameter
from server.protocol.common import OpenAIModel

# What a client may upload for; the server itself also writes `fine-tune-results` files.
#: what `POST /v1/files` takes: OpenAI's upload purposes that its File object can echo.
#: OpenAI also takes "evals" (for its Evals API) but its File object's purpose enum lacks
#: it; pomar has no Evals API and refuses it by name instead of answering off-schema.
FilePurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data"]
FileStatus = Literal["uploaded", "processed", "error"]


class FileObject(OpenAIModel):
    """One `file` object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: FileStatus = "processed"
    #: left out when unset (OpenAI's schema has no null for either)
    expires_at: int | None = Field(None, exclude_if=lambda v: v is None)
    status_details: str | None = Field(None, exclude_if=lambda v: v is None)


class FileList(OpenAIModel):
    """A page of files; `first_id`/`last_id` are null when the page is empty."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(OpenAIModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ListFilesQuery(BaseModel):
    """Query parameters of `GET /v1/files`."""

    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(None, description="List the files after this file id.")
    limit: int = Field(10_000, ge=1, le=10_000, description="Page size.")
    order: Literal["asc", "desc"] = Field("desc", description="By creation time.")
    purpose: str | None = Field(None, description="Only files of this purpose.")


class FileUploadForm(BaseModel):
    """The form fields of `POST /v1/files` (the file itself is streamed to disk apart).

    Unknown fields are ignored, as in chat requests; OpenAI's `expires_after` is refused
    rather than dropped, since pomar keeps files until they are deleted.
    """

    model_config = ConfigDict(extra="ignore")

    purpose: FilePurpose = Field(description="What the file is for.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_expiry(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(str(k).startswith("expires_after") for k in data):
            raise UnsupportedParameter("expires_after", "Files are kept until they are deleted.")
        if isinstance(data, dict) and data.get("purpose") == "evals":
            raise InvalidRequest(
                "purpose 'evals' is not supported: pomar has no Evals API. Upload with purpose "
                "'user_data' to keep a file for your own use.",
                param="purpose",
                code="unsupported_value",
            )
        return data
