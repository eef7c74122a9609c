"""Typed domain errors, each mapped once to an OpenAI error envelope.

Services raise these; `server.app` turns them (and framework errors) into
`{"error": {"message", "type", "param", "code"}}` with the right status.
"""

from __future__ import annotations

from typing import Any


class PomarError(Exception):
    """Base of every error the API reports to a client."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_envelope(self) -> dict[str, Any]:
        """The OpenAI error object for this error."""
        return error_envelope(self.message, self.error_type, self.param, self.code)


class InvalidRequest(PomarError):
    """A request the API understood but refuses (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    """A known OpenAI parameter pomar does not implement yet: never dropped silently."""

    code = "unsupported_parameter"

    def __init__(self, param: str, detail: str = "") -> None:
        msg = f"Parameter '{param}' is not supported by this server yet."
        super().__init__(f"{msg} {detail}".strip(), param=param)


class AuthenticationFailed(PomarError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(PomarError):
    """A resource that does not exist (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """An unknown model id: a 404, never a silent fallback to another model."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )


class FileNotFound(NotFound):
    """An unknown file id, in OpenAI's words; `param` names where the id came from."""

    code = "file_not_found"

    def __init__(self, file_id: str, param: str = "file_id") -> None:
        super().__init__(f"No such File object: {file_id}", param=param)


class FileTooLarge(PomarError):
    """An upload over the server's size limit (413); nothing of it is kept."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is too large: this server accepts files of up to {limit:,} bytes "
            "(POMAR_MAX_UPLOAD_BYTES).",
            param="file",
        )


class RequestTooLarge(PomarError):
    """A request body over the server's cap (413)."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ModelTooLarge(InvalidRequest):
    """The model cannot fit the memory budget, even with every other model unloaded."""

    code = "model_too_large"


class ModelNotTrainable(InvalidRequest):
    """The model cannot be fine-tuned (say a GGUF architecture transformers cannot read)."""

    code = "model_not_trainable"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


class ModelBusy(PomarError):
    """Every model that would have to be unloaded is busy; try again shortly (503)."""

    status_code = 503
    error_type = "server_error"
    code = "model_busy"


class ModelInUse(PomarError):
    """A model asked to unload while requests use it (409); nothing is unloaded."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "model_in_use"


class ModelLoadFailed(PomarError):
    """Loading a model on demand failed (the reason is in the server log, not the reply)."""

    error_type = "server_error"
    code = "model_load_failed"


class InvalidFile(InvalidRequest):
    """An upload whose content is refused, e.g. a fine-tune file that is not JSONL."""

    code = "invalid_file_format"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, param="file", code=code)


class MethodNotAllowed(PomarError):
    """An HTTP method the route does not take (405)."""

    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class EngineError(PomarError):
    """The engine failed while generating (500, no internals in the message)."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


class ModelLoadError(RuntimeError):
    """A model could not be resolved or loaded at start-up (not an HTTP error)."""


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build the one error shape every response uses."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


#: the Messages API (Anthropic's wire): its errors take Anthropic's shape
ANTHROPIC_PATH = "/v1/messages"

#: Anthropic's error type for each status pomar answers
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_route(path: str) -> bool:
    """Whether `path` is one of the Messages API's (errors in Anthropic's shape)."""
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def anthropic_envelope(message: str, status: int) -> dict[str, Any]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    kind = _ANTHROPIC_TYPES.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": message}}


def envelope_for(path: str, envelope: dict[str, Any], status: int) -> dict[str, Any]:
    """The error body a route answers: OpenAI's envelope, or Anthropic's on the Messages API."""
    if not anthropic_route(path):
        return envelope
    return anthropic_envelope(str(envelope["error"]["message"]), status)
