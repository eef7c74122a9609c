"""pomar's OpenAPI 3.1 document (`GET /openapi.json`), built from the app's own routes.

Each route declares its documentation where it is declared (`server.routes.spec.api_route`);
`build_openapi` walks the route table, so there is no second list of routes to keep in step.
Deliberate differences from OpenAI's API are said in `description`s and listed under
`x-pomar-extensions`.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute

from server.protocol.common import ErrorResponse
from server.routes.spec import ApiRoute, Operation

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"
Refs = dict[Any, dict[str, Any]]


def documented_routes(routes: Iterable[BaseRoute]) -> list[ApiRoute]:
    """The routes that carry an `Operation`, in the order of the route table.

    Any other route (a plain Starlette `Route`) is left out of the document; the
    conformance tests check that the app has none.
    """
    return [route for route in routes if isinstance(route, ApiRoute)]


#: where pomar's wire format deliberately differs from OpenAI's
EXTENSIONS: tuple[dict[str, str], ...] = (
    {"where": "GET /health, GET /openapi.json", "what": "pomar endpoints, open without a key."},
    {"where": "GET /metrics", "what": "a pomar endpoint: Prometheus metrics (text format), "
     "behind the API key when one is set."},
    {"where": "Model.loaded", "what": "whether the model is in memory now (null for the "
     "embedding model); a request for an unloaded model loads it first."},
    {"where": "Model.parent", "what": "the base model of a fine-tuned or checkpoint model."},
    {"where": "Usage.prompt_tokens_details.cached_tokens", "what": "prompt tokens pomar "
     "reused from its own prompt cache (a KV cache of earlier prompts)."},
    {"where": "Hyperparameters.lora_rank, lora_alpha, lora_layers, max_length", "what":
     "LoRA settings of a pomar fine-tune, echoed back in the job's hyperparameters."},
    {"where": "CreateCompletionRequest.logprobs", "what": "up to 20 (OpenAI: 5)."},
    {"where": "GET /v1/files/{file_id}/content", "what": "answers application/octet-stream."},
    {"where": "ListFilesResponse.first_id, last_id", "what": "null on an empty page."},
    {"where": "unsupported parameters", "what": "OpenAI parameters pomar does not implement "
     "are refused with 400 `unsupported_parameter` (not ignored) unless they are 'off'."},
    {"where": "DELETE /v1/models/{model_id}", "what": "base models cannot be deleted (400)."},
    {"where": "Response.pomar_unserved_tools", "what": "the request's tools pomar left out of "
     "the prompt: hosted tools only OpenAI's cloud runs (web_search, file_search, mcp, ...)."},
    {"where": "GET /v1/responses/{response_id}/input_items", "what": "the input items of "
     "that request itself, not those of the previous_response_id chain it continues."},
    {"where": "ChatCompletionRequest.top_k, CompletionRequest.top_k", "what": "sample among "
     "the k most likely tokens (as vLLM and llama.cpp's server take it)."},
    {"where": "POST /v1/messages, POST /v1/messages/count_tokens", "what": "Anthropic's "
     "Messages API, not OpenAI's: its own bodies, named SSE events and error shape; the key "
     "may also come as `x-api-key`."},
)  # fmt: skip

_ERROR_STATUSES = {
    "400": "Invalid request", "401": "Missing or wrong API key", "500": "Server error",
    "404": "Unknown model, file, job or URL", "413": "Request body or upload too large",
    "503": "The model is busy loading or over the memory budget",
}  # fmt: skip


def _schemas(operations: list[Operation]) -> tuple[Refs, dict[str, Any]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for op in operations:
        models += [(m, "validation") for m in (op.request, op.multipart, op.query) if m]
        models += [(m, "serialization") for m in (op.response, op.stream, op.error) if m]
    refs, top = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    return refs, top.get("$defs", {})


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return defs[ref.rsplit("/", 1)[1]] if isinstance(ref, str) else schema


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(model.model_json_schema(ref_template=REF), defs)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description := model.model_fields[name].description:
            param["description"] = description
        out.append(param)
    return out


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR = {"$ref": REF.format(model="ErrorResponse")}
_BINARY = {"type": "string", "format": "binary"}


def _path_param(name: str, about: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": about,
    }


def _sse(chunk: dict[str, Any]) -> dict[str, Any]:
    """A parsed event: its `data` is a JSON chunk (or an error envelope), or `[DONE]`."""
    payload = {"contentMediaType": "application/json", "contentSchema": {"anyOf": [chunk, _ERROR]}}
    return {
        "description": "Server-sent events: each `data` is a JSON chunk, or an error envelope "
        "if generation fails mid-stream; the stream ends with `data: [DONE]`.",
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}},
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {"properties": {"data": payload}},
    }


def _named_sse(event: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """A parsed event of a stream whose events are named by their type (no `[DONE]`)."""
    payload = {"contentMediaType": "application/json", "contentSchema": {"anyOf": [event, error]}}
    return {
        "description": "Server-sent events: each names its type (`event:`) and its `data` is "
        "that JSON event; an error mid-stream is an `error` event.",
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string"}, "data": {"type": "string", **payload}},
    }


def _operation(op: Operation, refs: Refs, defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    params = [_path_param(name, about) for name, about in op.path_params.items()]
    if op.query is not None:
        params += _query_parameters(op.query, defs)
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": _json(refs[(op.request, "validation")])}
    if op.multipart is not None:
        form = _resolve(refs[(op.multipart, "validation")], defs)
        fields = {"file": {**_BINARY, "description": "The file."}, **form.get("properties", {})}
        required = ["file", *form.get("required", [])]
        schema = {"type": "object", "required": required, "properties": fields}
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    if op.response is not None:
        content = _json(refs[(op.response, "serialization")])
    else:
        content = {op.media_type: {"schema": _BINARY}} if op.binary else _json({})
    error = _ERROR if op.error is None else refs[(op.error, "serialization")]
    if op.stream is not None:
        chunk = refs[(op.stream, "serialization")]
        sse = _named_sse(chunk, error) if op.named_events else _sse(chunk)
        content["text/event-stream"] = {"schema": sse}
    out["responses"] = {"200": {"description": "OK", "content": content}}
    if op.public:
        out["security"] = []
    for status, why in _ERROR_STATUSES.items():
        # a public operation answers 404 too where its path names something
        if status == "500" or not op.public or (status == "404" and op.path_params):
            out["responses"][status] = {"description": why, "content": _json(error)}
    for status, why in op.errors.items():
        out["responses"][status] = {"description": why, "content": _json(error)}
    return out


def api_operation_ids(routes: Iterable[BaseRoute]) -> list[str]:
    """The operation ids of the `/v1` routes: the OpenAI operations pomar serves, by name."""
    return [
        r.operation.operation_id for r in documented_routes(routes) if r.path.startswith("/v1/")
    ]


def build_openapi(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The whole document (OpenAPI 3.1) for `GET /openapi.json`, built from `routes`.

    `routes` is the app's route table: one operation per `ApiRoute`, in the table's order.
    """
    documented = documented_routes(routes)
    operations = [route.operation for route in documented]
    refs, defs = _schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        operation = _operation(route.operation, refs, defs)
        paths.setdefault(route.path_format, {})[route.method.lower()] = operation
    try:
        release = version("pomar")
    except PackageNotFoundError:  # a source checkout that is not installed
        release = "0"
    notes = "; ".join(f"{e['where']}: {e['what']}" for e in EXTENSIONS)
    about = "An OpenAI-compatible local inference and fine-tuning server. The /v1 operations "
    about += f"follow OpenAI's API; deliberate differences (`x-pomar-extensions`): {notes}"
    key = "The API key (`--api-key`, POMAR_API_KEY), required on /v1 and /metrics when set."
    return {
        "openapi": "3.1.0",
        "info": {"title": "pomar", "version": release, "description": about},
        "servers": [{"url": "/"}],
        "security": [{SECURITY_SCHEME: []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": key}
            },
        },
        "x-pomar-extensions": list(EXTENSIONS),
    }
