"""pomar's OpenAPI 3.1 document (`GET /openapi.json`), built from the protocol models.

`OPERATIONS` is every route with the models it takes and returns. Deliberate differences
from OpenAI's API are said in `description`s and listed under `x-pomar-extensions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from server.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from server.protocol.common import ErrorResponse, Health
from server.protocol.completions import Completion, CompletionRequest
from server.protocol.embeddings import EmbeddingList, EmbeddingRequest
from server.protocol.files import FileDeleted, FileList, FileObject, FileUploadForm, ListFilesQuery
from server.protocol.fine_tuning import (
    CheckpointList,
    CheckpointPageQuery,
    EventList,
    FineTuningJob,
    JobCreateRequest,
    JobList,
    JobPageQuery,
)
from server.protocol.models import ModelCard, ModelDeleted, ModelList

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"
Refs = dict[Any, dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """One route. `stream`: the SSE chunk model; `binary`: answers raw bytes; `public`: no key."""

    method: Literal["get", "post", "delete"]
    path: str
    operation_id: str
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    request: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: tuple[dict[str, Any], ...] = ()
    #: `multipart/form-data` body: these form fields plus a `file` part
    multipart: type[BaseModel] | None = None
    binary: bool = False
    public: bool = False
    description: str = ""


def _path(name: str, about: str) -> tuple[dict[str, Any]]:
    param = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    return ({**param, "description": about},)


_MODEL = _path("model_id", "A model id; ids of local folders may hold '/'.")
_FILE = _path("file_id", "A file id (`file-...`).")
_JOB = _path("job_id", "A fine-tuning job id (`ftjob-...`).")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/health", "health", "The default model is loaded", "pomar",
        response=Health, public=True,
        description="A pomar endpoint (not in OpenAI's API): 200 once the default model "
        "is loaded; the models in memory now.",
    ),
    Operation(
        "get", "/openapi.json", "openapi", "This document", "pomar", public=True,
        description="A pomar endpoint (not in OpenAI's API): this OpenAPI document.",
    ),
    Operation("get", "/v1/models", "listModels", "List models", "Models", response=ModelList),
    Operation(
        "get", "/v1/models/{model_id}", "retrieveModel", "Retrieve a model", "Models",
        response=ModelCard, path_params=_MODEL,
    ),
    Operation(
        "delete", "/v1/models/{model_id}", "deleteModel", "Delete a fine-tuned model", "Models",
        response=ModelDeleted, path_params=_MODEL,
        description="Only fine-tuned (and checkpoint) models can be deleted; a base model "
        "answers 400 `model_not_deletable`.",
    ),
    Operation(
        "post", "/v1/chat/completions", "createChatCompletion", "Create a chat completion",
        "Chat", request=ChatCompletionRequest, response=ChatCompletion,
        stream=ChatCompletionChunk,
        description="Known OpenAI parameters pomar does not implement (audio, prediction, "
        "web_search_options, functions, ...) are refused with 400 `unsupported_parameter` "
        "unless they carry their 'off' value, never silently dropped.",
    ),
    Operation(
        "post", "/v1/completions", "createCompletion", "Create a completion (legacy)",
        "Completions", request=CompletionRequest, response=Completion, stream=Completion,
        description="`logprobs` goes up to 20 (OpenAI's legacy endpoint stops at 5).",
    ),
    Operation(
        "post", "/v1/embeddings", "createEmbedding", "Create embeddings", "Embeddings",
        request=EmbeddingRequest, response=EmbeddingList,
        description="Served by the embedding model named at start (`--embedding-model`); "
        "404 when the server runs without one.",
    ),
    Operation(
        "post", "/v1/files", "createFile", "Upload a file", "Files",
        multipart=FileUploadForm, response=FileObject,
        description="`expires_after` is refused: pomar keeps files until they are deleted.",
    ),
    Operation(
        "get", "/v1/files", "listFiles", "List files", "Files",
        query=ListFilesQuery, response=FileList,
    ),
    Operation(
        "get", "/v1/files/{file_id}", "retrieveFile", "Retrieve a file", "Files",
        response=FileObject, path_params=_FILE,
    ),
    Operation(
        "delete", "/v1/files/{file_id}", "deleteFile", "Delete a file", "Files",
        response=FileDeleted, path_params=_FILE,
    ),
    Operation(
        "get", "/v1/files/{file_id}/content", "downloadFile", "A file's content", "Files",
        binary=True, path_params=_FILE,
        description="The stored bytes as `application/octet-stream` (OpenAI documents a "
        "JSON string).",
    ),
    Operation(
        "post", "/v1/fine_tuning/jobs", "createFineTuningJob", "Create a fine-tuning job",
        "Fine-tuning", request=JobCreateRequest, response=FineTuningJob,
        description="A LoRA fine-tune run on this machine. Only the `supervised` method; "
        "hyperparameters take pomar's LoRA extensions (lora_rank, lora_alpha, lora_layers, "
        "max_length); `integrations` are refused (pomar runs offline).",
    ),
    Operation(
        "get", "/v1/fine_tuning/jobs", "listPaginatedFineTuningJobs", "List jobs",
        "Fine-tuning", query=JobPageQuery, response=JobList,
    ),
    Operation(
        "get", "/v1/fine_tuning/jobs/{job_id}", "retrieveFineTuningJob", "Retrieve a job",
        "Fine-tuning", response=FineTuningJob, path_params=_JOB,
    ),
    Operation(
        "post", "/v1/fine_tuning/jobs/{job_id}/cancel", "cancelFineTuningJob", "Cancel a job",
        "Fine-tuning", response=FineTuningJob, path_params=_JOB,
    ),
    Operation(
        "get", "/v1/fine_tuning/jobs/{job_id}/events", "listFineTuningEvents", "A job's events",
        "Fine-tuning", query=JobPageQuery, response=EventList, path_params=_JOB,
    ),
    Operation(
        "get", "/v1/fine_tuning/jobs/{job_id}/checkpoints", "listFineTuningJobCheckpoints",
        "A job's checkpoints", "Fine-tuning", query=CheckpointPageQuery,
        response=CheckpointList, path_params=_JOB,
    ),
)  # fmt: skip

#: where pomar's wire format deliberately differs from OpenAI's
EXTENSIONS: tuple[dict[str, str], ...] = (
    {"where": "GET /health, GET /openapi.json", "what": "pomar endpoints, open without a key."},
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
)  # fmt: skip

_ERROR_STATUSES = {
    "400": "Invalid request", "401": "Missing or wrong API key", "500": "Server error",
    "404": "Unknown model, file, job or URL", "413": "Request body or upload too large",
    "503": "The model is busy loading or over the memory budget",
}  # fmt: skip


def _schemas() -> tuple[Refs, dict[str, Any]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for op in OPERATIONS:
        models += [(m, "validation") for m in (op.request, op.multipart, op.query) if m]
        models += [(m, "serialization") for m in (op.response, op.stream) if m]
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


def _operation(op: Operation, refs: Refs, defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    params = list(op.path_params)
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
        content = {"application/octet-stream": {"schema": _BINARY}} if op.binary else _json({})
    if op.stream is not None:
        content["text/event-stream"] = {"schema": _sse(refs[(op.stream, "serialization")])}
    out["responses"] = {"200": {"description": "OK", "content": content}}
    if op.public:
        out["security"] = []
    for status, why in _ERROR_STATUSES.items():
        if status == "500" or not op.public:
            out["responses"][status] = {"description": why, "content": _json(_ERROR)}
    return out


def build_openapi() -> dict[str, Any]:
    """The whole document (OpenAPI 3.1), for `GET /openapi.json`."""
    refs, defs = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs, defs)
    try:
        release = version("pomar")
    except PackageNotFoundError:  # a source checkout that is not installed
        release = "0"
    notes = "; ".join(f"{e['where']}: {e['what']}" for e in EXTENSIONS)
    about = "An OpenAI-compatible local inference and fine-tuning server. The /v1 operations "
    about += f"follow OpenAI's API; deliberate differences (`x-pomar-extensions`): {notes}"
    key = "The API key (`--api-key`, POMAR_API_KEY), required on /v1 when set."
    return {
        "openapi": "3.1.0",
        "info": {"title": "pomar", "version": release, "description": about},
        "servers": [{"url": "/"}],
        "security": [{SECURITY_SCHEME: []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": key}
            },
        },
        "x-pomar-extensions": list(EXTENSIONS),
    }
