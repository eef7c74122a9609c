"""Routes that carry their own OpenAPI metadata: `api_route(...)` declares both at once.

`server.openapi.build_openapi` walks the app's route table and documents every `ApiRoute`,
so a route and its documentation are written in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Method = Literal["GET", "POST", "DELETE"]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """What the document says of one route (its path and method are the route's own).

    `request`: the JSON body; `multipart`: a `multipart/form-data` body, these form fields
    plus a `file` part; `query`: the query parameters; `response`: the JSON answer;
    `stream`: the SSE chunk model; `binary`: answers raw bytes (of `media_type`); `public`: no key;
    `path_params`: each path parameter's description, by name; `named_events`: each SSE
    event is named by its type (`event:`) and no `data: [DONE]` ends the stream (Anthropic's
    wire); `error`: the error body's model (default: OpenAI's envelope); `errors`: statuses
    beyond the usual ones that this operation answers (status -> why), in the error body.
    """

    operation_id: str
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    request: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)
    multipart: type[BaseModel] | None = None
    binary: bool = False
    public: bool = False
    description: str = ""
    named_events: bool = False
    error: type[BaseModel] | None = None
    #: the media type of a `binary` answer
    media_type: str = "application/octet-stream"
    errors: Mapping[str, str] = field(default_factory=dict)


class ApiRoute(Route):
    """A Starlette route for one HTTP method, carrying its documented `Operation`."""

    def __init__(self, path: str, endpoint: Endpoint, method: Method, operation: Operation) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method: Method = method
        self.operation = operation
        mismatched = set(self.param_convertors) ^ set(operation.path_params)
        if mismatched:
            names = ", ".join(sorted(mismatched))
            raise ValueError(
                f"{method} {path}: path_params must name exactly the path's "
                f"parameters (mismatched: {names})"
            )


def api_route(
    path: str,
    endpoint: Endpoint,
    method: Method,
    *,
    operation_id: str,
    summary: str,
    tag: str,
    request: type[BaseModel] | None = None,
    multipart: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    stream: type[BaseModel] | None = None,
    binary: bool = False,
    public: bool = False,
    path_params: Mapping[str, str] | None = None,
    description: str = "",
    named_events: bool = False,
    error: type[BaseModel] | None = None,
    media_type: str = "application/octet-stream",
    errors: Mapping[str, str] | None = None,
) -> ApiRoute:
    """A route for `method` on `path`, documented by the rest (see `Operation`)."""
    operation = Operation(
        operation_id=operation_id,
        summary=summary,
        tag=tag,
        response=response,
        request=request,
        stream=stream,
        query=query,
        path_params=dict(path_params or {}),
        multipart=multipart,
        binary=binary,
        public=public,
        description=description,
        named_events=named_events,
        error=error,
        media_type=media_type,
        errors=dict(errors or {}),
    )
    return ApiRoute(path, endpoint, method, operation)
