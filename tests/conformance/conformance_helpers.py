"""OpenAI's specification as the conformance tests use it, and bounds on fuzzed requests."""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from live_server import API_KEY
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from server.app import create_app
from server.openapi import api_operation_ids
from server.settings import Settings

#: OpenAI's published document (openai/openai-openapi f85dbe2, MIT, see
#: openai-openapi.LICENSE) trimmed to pomar's operations by scripts/vendor_openai_spec.py
OPENAI_SPEC = Path(__file__).resolve().parent / "openai-openapi.json"

CHECKS = [not_a_server_error, response_schema_conformance]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: fuzzed cases per operation and seed (each one HTTP request; generation ones run the
#: model); `POMAR_FUZZ_EXAMPLES` raises it for long runs (scripts/fuzz)
MAX_EXAMPLES = int(os.environ.get("POMAR_FUZZ_EXAMPLES", "25"))
#: the fixed seeds CI fuzzes with: the one seed the suite used met none of the schema
#: violations a run with another seed found (null checkpoint metrics, null event data, an
#: "evals" file); `POMAR_FUZZ_SEEDS` replaces them (scripts/fuzz draws a fresh one)
SEEDS = tuple(int(s) for s in os.environ.get("POMAR_FUZZ_SEEDS", "0,1,2").split(",") if s)
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

#: OpenAI's operation ids of the operations pomar implements
#: OpenAI's operations pomar serves: its documented /v1 routes (server/openapi.py)
OPENAI_OPERATIONS = tuple(api_operation_ids(create_app(Settings()).routes))

#: request fields whose fuzzed values are capped, so the tiny model answers quickly
_CAPS = {
    "max_tokens": 4,
    "max_completion_tokens": 4,
    "max_output_tokens": 4,
    "n": 2,
    "best_of": 2,
}
_GENERATION_PATHS = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/messages",
    "/messages/count_tokens",
)


def sse_event_schema(chunk_ref: str) -> dict[str, Any]:
    """A `text/event-stream` schema over parsed events: each `data` is a JSON chunk or `[DONE]`.

    OpenAI's document puts the chunk schema itself under `text/event-stream`, which
    schemathesis (rightly, for OpenAPI 3.1) applies to the parsed event objects
    `{"data": "...", "event": "message"}`; this says where the chunk really is.
    """
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}},
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {
            "properties": {
                "data": {
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": chunk_ref},
                }
            }
        },
    }


def named_sse_event_schema(event_ref: str) -> dict[str, Any]:
    """A `text/event-stream` schema over parsed events named by their type (the Responses
    API's: `event: response.created`, `data: {...}`, no `[DONE]`)."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"contentMediaType": "application/json", "contentSchema": {"$ref": event_ref}},
        },
    }


@cache
def _openai_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(OPENAI_SPEC.read_text())
    chat = spec["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"]
    chat["text/event-stream"] = {
        "schema": sse_event_schema("#/components/schemas/CreateChatCompletionStreamResponse")
    }
    # OpenAI streams legacy completions too (as `text_completion` chunks of the response's
    # shape) but documents only the JSON answer.
    legacy = spec["paths"]["/completions"]["post"]["responses"]["200"]["content"]
    legacy["text/event-stream"] = {
        "schema": sse_event_schema("#/components/schemas/CreateCompletionResponse")
    }
    responses = spec["paths"]["/responses"]["post"]["responses"]["200"]["content"]
    responses["text/event-stream"] = {
        "schema": named_sse_event_schema("#/components/schemas/ResponseStreamEvent")
    }
    # OpenAI documents a deleted response's 404 as a bare `Error`; its API (and pomar)
    # answer the error envelope every other 404 has
    gone = spec["paths"]["/responses/{response_id}"]["delete"]["responses"]["404"]
    gone["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/ErrorResponse"}
    # pomar deliberately answers an empty page of files with null first_id / last_id (its
    # document says so): OpenAI's schema wants strings, and there is no id to give.
    page = spec["components"]["schemas"]["ListFilesResponse"]["properties"]
    for name in ("first_id", "last_id"):
        page[name]["type"] = ["string", "null"]
    # With `echo` and `logprobs`, OpenAI's legacy completions answer null for the first
    # prompt token's logprob and top_logprobs (nothing comes before it to score it on);
    # lm-evaluation-harness reads them that way. pomar does the same; the schema says number.
    legacy_logprobs = spec["components"]["schemas"]["CreateCompletionResponse"]["properties"][
        "choices"
    ]["items"]["properties"]["logprobs"]["anyOf"][0]["properties"]
    legacy_logprobs["token_logprobs"]["items"] = {"type": ["number", "null"]}
    top = legacy_logprobs["top_logprobs"]["items"]
    legacy_logprobs["top_logprobs"]["items"] = {"anyOf": [top, {"type": "null"}]}
    # OpenAI's schema describes the embedding as floats only, yet its API (and the openai
    # SDK, which decodes it) answers `encoding_format: "base64"` with a base64 string
    vector = spec["components"]["schemas"]["Embedding"]["properties"]["embedding"]
    spec["components"]["schemas"]["Embedding"]["properties"]["embedding"] = {
        "anyOf": [vector, {"type": "string", "contentEncoding": "base64"}]
    }
    return spec


def load_openai_spec() -> dict[str, Any]:
    """OpenAI's document, its event streams described per event; one deliberate difference."""
    return copy.deepcopy(_openai_spec())


def clamp_generation(case: schemathesis.Case, served: dict[str, str]) -> None:
    """Point most generation requests at a served model and cap their lengths and counts.

    `served` maps `chat` and `embeddings` to the model ids serving them. A request whose
    fuzzed model id has a length divisible by 4 keeps it (the 404 path).
    """
    body = case.body
    if not isinstance(body, dict) or not case.path.endswith(_GENERATION_PATHS):
        return
    model = body.get("model")
    if not (isinstance(model, str) and len(model) % 4 == 0):
        body["model"] = served["embeddings" if case.path.endswith("/embeddings") else "chat"]
    for name, cap in _CAPS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[name] = cap


def configure(schema: Any, seed: int) -> Any:
    """Examples and fuzzing (no coverage phase: its case count is not bounded), few cases,
    drawn from `seed` (the same cases on every run)."""
    schema.config.update(request_timeout=120)
    schema.config.phases.update(phases=["examples", "fuzzing"])
    schema.config.generation.update(max_examples=MAX_EXAMPLES, with_security_parameters=False)
    schema.config.seed = seed
    return schema
