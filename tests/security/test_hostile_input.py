"""A generated corpus of hostile requests against one real server: never a 5xx.

Every request of the corpus (built from the tables below: endpoints x mutation kinds, plus
multipart abuse on `/v1/files`) must be answered with a 4xx in the OpenAI error envelope,
or with a 2xx where the request is in fact valid (unknown extra fields, a path as an
upload's filename...). Afterwards the server is still healthy and its file store holds no
partial file. The server runs with small limits (body, upload, messages) so that the
over-limit cases stay cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import API_KEY, LiveServer

MAX_BODY = 64 * 1024
MAX_UPLOAD = 4096
MAX_MESSAGES = 8
#: the tiny test model's context (max_position_embeddings)
CONTEXT = 2048
MODEL = "<model>"  # replaced by the served model's id when sent
MISSING_FILE = "file-" + "0" * 24

#: expectations: "4xx" (refused), "ok" (valid: a 2xx, though a 4xx is tolerated),
#: "any" (either; only never a 5xx) or an exact status
Expect = str


@dataclass
class Case:
    """One request of the corpus."""

    id: str
    method: str
    path: str
    expect: Expect = "4xx"
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: Any = None
    data: dict[str, str] | None = None


def _sub(value: Any, model: str) -> Any:
    """Replace the model placeholder anywhere in a JSON value."""
    if value == MODEL:
        return model
    if isinstance(value, dict):
        return {k: _sub(v, model) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, model) for v in value]
    return value


# -- the JSON endpoints: a valid body each, and the fields to mutate ------------------

MSG = [{"role": "user", "content": "hi"}]
ENDPOINTS: dict[str, tuple[str, dict[str, Any], Expect]] = {
    # name: (path, valid body, what the valid body gets)
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": 1}, "ok"),
    "completions": ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}, "ok"),
    # Anthropic's Messages API: errors in Anthropic's shape (`assert_error_shape`)
    "anthropic": ("/v1/messages", {"model": MODEL, "messages": MSG, "max_tokens": 1}, "ok"),
    "anthropic_count": ("/v1/messages/count_tokens", {"model": MODEL, "messages": MSG}, "ok"),
    "responses": ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 1}, "ok"),
    # the test server serves no embedding model: every embeddings request is a 4xx
    "embeddings": ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hi"}, "4xx"),
    # the training file does not exist: every job request is a 4xx (no job is started)
    "fine_tuning": (
        "/v1/fine_tuning/jobs",
        {"model": MODEL, "training_file": MISSING_FILE},
        "4xx",
    ),
}

FIELDS: dict[str, list[str]] = {
    "chat": [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        "metadata",
    ],
    "completions": [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "n",
        "best_of",
        "echo",
        "logprobs",
        "suffix",
        "stop",
        "seed",
        "logit_bias",
        "stream",
    ],
    "embeddings": ["model", "input", "encoding_format", "dimensions", "user"],
    "anthropic": [
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "thinking",
        "output_config",
        "metadata",
        "stream",
    ],
    "anthropic_count": ["model", "messages", "system", "tools", "tool_choice", "thinking"],
    "responses": [
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "top_logprobs",
        "reasoning",
        "metadata",
        "store",
        "previous_response_id",
        "include",
        "truncation",
        "stream",
        "background",
        "user",
    ],
    "fine_tuning": [
        "model",
        "training_file",
        "validation_file",
        "suffix",
        "seed",
        "hyperparameters",
        "method",
        "metadata",
    ],
}
REQUIRED: dict[str, list[str]] = {
    "chat": ["model", "messages"],
    "completions": ["model", "prompt"],
    "embeddings": ["model", "input"],
    "anthropic": ["model", "messages", "max_tokens"],
    "anthropic_count": ["model", "messages"],
    "responses": ["model", "input"],
    "fine_tuning": ["model", "training_file"],
}
#: values of the wrong type (or shape) tried in every field; some are coerced by the
#: validation (a numeric string, a bool), so these only need "never a 5xx"
WRONG_TYPES: dict[str, Any] = {
    "object": {"nested": {"x": 1}},
    "list": [[1, 2], {"a": None}],
    "string": "not-a-number",
    "float": 3.75,
    "negative": -1,
    "bool": True,
    "null": None,
    "bigint": 10**40,
}


def _json_cases() -> Iterator[Case]:
    for name, (path, valid, valid_expect) in ENDPOINTS.items():
        yield Case(f"{name}-valid", "POST", path, valid_expect, json_body=valid)
        for fld in FIELDS[name]:
            for kind, value in WRONG_TYPES.items():
                body = {**valid, fld: value}
                yield Case(f"{name}-{fld}-{kind}", "POST", path, "any", json_body=body)
        for fld in REQUIRED[name]:
            body = {k: v for k, v in valid.items() if k != fld}
            yield Case(f"{name}-missing-{fld}", "POST", path, "4xx", json_body=body)
            # an empty prompt is valid (the model starts from its BOS token)
            empty = "ok" if (name, fld) == ("completions", "prompt") else "4xx"
            yield Case(f"{name}-empty-{fld}", "POST", path, empty, json_body={**valid, fld: ""})
        # unknown extra fields are accepted and ignored (OpenAI clients send vendor fields)
        extras = {"x_vendor": {"a": [1, 2]}, "zzz": None, "frequency": "high"}
        yield Case(
            f"{name}-extra-fields", "POST", path, valid_expect, json_body={**valid, **extras}
        )
        yield Case(
            f"{name}-huge-extra",
            "POST",
            path,
            valid_expect,
            json_body={**valid, "x_vendor": "x" * (MAX_BODY // 2)},
        )
        # huge strings under the body cap
        for fld in REQUIRED[name]:
            body = {**valid, fld: "y" * (MAX_BODY - 1024)}
            yield Case(f"{name}-huge-{fld}", "POST", path, "4xx", json_body=body)
        # the body cap itself: declared, and chunked (no Content-Length)
        big = json.dumps({**valid, "x_vendor": "z" * (MAX_BODY + 1)}).encode()
        ct = {"content-type": "application/json"}
        yield Case(f"{name}-over-body-cap", "POST", path, "413", content=big, headers=ct)
        yield Case(
            f"{name}-over-body-cap-chunked", "POST", path, "413", content=big, headers=ct
        )  # sent as a stream in _send
        yield from _raw_body_cases(name, path)
        for method in ("GET", "PUT", "PATCH") if name != "fine_tuning" else ("PUT", "PATCH"):
            yield Case(f"{name}-method-{method}", method, path, "405", json_body=valid)


def _raw_body_cases(name: str, path: str) -> Iterator[Case]:
    ct = {"content-type": "application/json"}
    raw: dict[str, bytes] = {
        "empty": b"",
        "whitespace": b" \n\t ",
        "not-json": b"model=x&messages=y",
        "truncated": b'{"model": "x", "messages": [',
        "array": b"[1, 2, 3]",
        "string": b'"hello"',
        "number": b"42",
        "null": b"null",
        "nan": b'{"model": "x", "temperature": NaN}',
        "infinity": b'{"model": "x", "temperature": Infinity}',
        "deep-arrays-100k": b"[" * 100_000 + b"]" * 100_000,
        "deep-objects-5k": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "deep-arrays-60k-in-field": b'{"model": "x", "input": '
        + b"[" * 30_000
        + b"]" * 30_000
        + b"}",
        "deep-1000-in-extra": b'{"model": "x", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "invalid-utf8": b'{"model": "\xff\xfe\xfd", "messages": []}',
        "invalid-utf8-continuation": b'{"model": "x", "prompt": "\xc3\x28"}',
        "overlong-utf8": b'{"model": "\xc0\xaf"}',
        "utf16-bom": '{"model": "x"}'.encode("utf-16"),
        "lone-surrogate": b'{"model": "x", "input": "\\ud800", "prompt": "\\udfff"}',
        "nul-bytes": b'{"model": "x\x00", "input": "\x00"}',
        "bigint-5000-digits": b'{"model": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        "huge-float": b'{"model": "x", "temperature": 1e999}',
        "duplicate-keys": b'{"model": "x", "model": {"a": 1}}',
        "trailing-garbage": b'{"model": "x"} garbage',
    }
    for kind, content in raw.items():
        yield Case(f"{name}-raw-{kind}", "POST", path, "4xx", content=content, headers=ct)
    valid = json.dumps(_sub(ENDPOINTS[name][1], MODEL)).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml", "", "*/*"):
        headers = {"content-type": ctype} if ctype else {}
        yield Case(
            f"{name}-ctype-{ctype or 'none'}", "POST", path, "any", content=valid, headers=headers
        )
    yield Case(
        f"{name}-ctype-multipart",
        "POST",
        path,
        "4xx",
        files={"file": ("a.json", b"{}")},
    )


def _sampling_cases() -> Iterator[Case]:
    """Absurd sizes of the generation parameters."""
    chat_path, chat_valid, _ = ENDPOINTS["chat"]
    comp_path, comp_valid, _ = ENDPOINTS["completions"]
    absurd: list[tuple[str, Any, Expect]] = [
        ("max_tokens", -1, "4xx"),
        ("max_tokens", 0, "4xx"),  # chat: at least 1 (legacy completions allow 0)
        ("max_completion_tokens", -5, "4xx"),
        ("n", 0, "4xx"),
        ("n", 10**6, "4xx"),
        ("n", 9, "4xx"),  # POMAR_MAX_N default 8
        ("top_logprobs", 21, "4xx"),
        ("top_logprobs", -1, "4xx"),
        ("temperature", "NaN", "4xx"),
        ("temperature", "nan", "4xx"),
        ("temperature", "inf", "4xx"),
        ("temperature", "-Infinity", "4xx"),
        ("top_p", "NaN", "4xx"),
        ("top_k", -1, "4xx"),
        ("top_k", 10**30, "ok"),
        ("presence_penalty", "nan", "4xx"),
        ("frequency_penalty", "-inf", "4xx"),
        ("seed", 10**30, "4xx"),
        ("seed", -(10**30), "4xx"),
        ("seed", -1, "ok"),
        ("seed", 2**63 - 1, "ok"),
        ("logit_bias", {"1" * 40: 1}, "4xx"),
        ("logit_bias", {"5": "nan"}, "4xx"),
        ("logit_bias", {str(i): 1 for i in range(3000)}, "4xx"),
        ("stop", ["x"] * 1000, "4xx"),
        ("stop", "s" * 30_000, "ok"),
        ("messages", [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1), "4xx"),
        ("messages", [{"role": "user", "content": "hi"}] * MAX_MESSAGES, "ok"),
        ("messages", [{"role": "user", "content": "hi"}] * 5000, "4xx"),
        ("messages", [{"role": "user", "content": [{"type": "text", "text": "a"}] * 2000}], "ok"),
        ("messages", [{"role": "tool", "content": "x"}], "4xx"),
        ("messages", [{"role": "user", "content": "hi", "tool_calls": "x"}], "4xx"),
        (
            "tools",
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "wizard"}}}],
            "4xx",
        ),
        ("tool_choice", {"type": "function", "function": {"name": "nope"}}, "4xx"),
        (
            "response_format",
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"$ref": "http://example.com/s"}},
            },
            "4xx",
        ),
        (
            "response_format",
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "("}},
            },
            "4xx",
        ),
        ("response_format", {"type": "xml"}, "4xx"),
    ]
    for fld, value, expect in absurd:
        yield Case(
            f"chat-absurd-{fld}-{value!r:.24}",
            "POST",
            chat_path,
            expect,
            json_body={**chat_valid, fld: value},
        )
    legacy: list[tuple[str, Any, Expect]] = [
        ("max_tokens", -1, "4xx"),
        ("max_tokens", 0, "ok"),
        ("n", 0, "4xx"),
        ("n", 10**6, "4xx"),
        ("best_of", 10**6, "4xx"),
        ("logprobs", 21, "4xx"),
        ("logprobs", -1, "4xx"),
        ("prompt", [10**12], "4xx"),
        ("prompt", [-1], "4xx"),
        ("prompt", [[]], "4xx"),
        ("prompt", [["a"]] * 3, "4xx"),
        ("prompt", "p" * (MAX_BODY - 1024), "4xx"),
        ("suffix", "s" * 100, "4xx"),  # the tiny model has no FIM tokens
        ("temperature", "nan", "4xx"),
    ]
    for fld, value, expect in legacy:
        yield Case(
            f"completions-absurd-{fld}-{value!r:.24}",
            "POST",
            comp_path,
            expect,
            json_body={**comp_valid, fld: value},
        )
    yield from _anthropic_cases()


def _anthropic_cases() -> Iterator[Case]:
    """The Messages API's own absurd values: blocks, tools, thinking, limits."""
    path, valid, _ = ENDPOINTS["anthropic"]
    user, assistant = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    tool = {"name": "f", "input_schema": {"type": "object"}}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    #: (field, value, expected, expected of count_tokens if not the same)
    absurd: list[tuple[Any, ...]] = [
        ("max_tokens", 0, "4xx"),
        ("max_tokens", -1, "4xx"),
        ("temperature", 1.5, "4xx"),  # Anthropic's range is 0-1
        ("temperature", "nan", "4xx"),
        ("top_k", -1, "4xx"),
        ("top_k", 10**30, "ok"),
        ("stop_sequences", ["x"] * 1000, "4xx"),
        ("stop_sequences", [""], "4xx"),
        ("stop_sequences", "not-a-list", "4xx"),
        # consecutive turns of one role are one turn: alternate them to count
        ("messages", [user, assistant] * (MAX_MESSAGES // 2) + [user], "4xx", "ok"),
        ("messages", [user] * 300, "ok"),  # one turn
        ("messages", [{"role": "user", "content": [{"type": "text", "text": "a"}] * 500}], "ok"),
        ("messages", [{"role": "user", "content": [image]}], "4xx"),
        ("messages", [{"role": "user", "content": [{"type": "wizard"}]}], "4xx"),
        ("messages", [{"role": "user", "content": [{"type": "text"}]}], "4xx"),
        (
            "messages",
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "x", "content": [image]}],
                }
            ],
            "4xx",
        ),
        (
            "messages",
            [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
            "4xx",
        ),
        (
            "messages",
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}],
                }
            ],
            "4xx",
        ),
        ("messages", [user, assistant], "4xx"),  # a prefill
        ("messages", [{"role": "tool", "content": "x"}], "4xx"),
        ("messages", [{"role": "system", "content": [image]}, user], "4xx"),
        ("messages", [{"role": "system", "content": "be brief"}, user], "ok"),
        (
            "tools",
            [
                {
                    "name": "f",
                    "input_schema": {"type": "object", "properties": {"a": {"type": "wizard"}}},
                }
            ],
            "4xx",
            "ok",  # a count compiles no grammar
        ),
        ("tools", [{"name": "f"}], "4xx"),
        ("tools", [{"name": "f", "input_schema": {"type": "string"}}], "4xx"),
        ("tools", [{"name": "bad name!", "input_schema": {"type": "object"}}], "4xx"),
        ("tools", [{"type": "web_search_20250305", "name": "web_search"}], "4xx"),
        ("tools", [tool, tool], "4xx"),
        ("tools", [tool] * 3000, "4xx"),
        ("tool_choice", {"type": "tool", "name": "nope"}, "4xx"),
        ("tool_choice", {"type": "any"}, "4xx"),  # no tools
        ("tool_choice", {"type": "wizard"}, "4xx"),
        ("thinking", {"type": "enabled"}, "4xx"),
        ("thinking", {"type": "enabled", "budget_tokens": 0}, "4xx"),
        ("thinking", {"type": "enabled", "budget_tokens": 1024}, "ok"),  # no switch: as it is
        ("thinking", {"type": "wizard"}, "4xx"),
        (
            "output_config",
            {"format": {"type": "json_schema", "schema": {"$ref": "http://x/s"}}},
            "4xx",
        ),
        ("output_config", {"effort": "extreme"}, "4xx"),
        ("system", [{"type": "text"}], "4xx"),
        ("system", [image], "4xx"),
        ("mcp_servers", [{"type": "url", "url": "http://example.com", "name": "x"}], "4xx"),
        ("metadata", {"user_id": "u" * 10_000}, "ok"),
    ]
    for fld, value, expect, *count in absurd:
        for name, route in [
            ("anthropic", path),
            ("anthropic_count", ENDPOINTS["anthropic_count"][0]),
        ]:
            body = {**valid, fld: value}
            if name == "anthropic_count":
                if fld not in FIELDS["anthropic_count"]:
                    continue
                body.pop("max_tokens")
                expect = count[0] if count else expect
            yield Case(f"{name}-absurd-{fld}-{value!r:.24}", "POST", route, expect, json_body=body)


def _responses_cases() -> Iterator[Case]:
    """The Responses API's own hostile shapes: items, tools, grammars, chains."""
    path, valid, _ = ENDPOINTS["responses"]
    user = {"role": "user", "content": "hi"}
    grammar = {"type": "custom", "name": "g", "format": {"type": "grammar", "syntax": "lark"}}
    absurd: list[tuple[str, Any, Expect]] = [
        ("input", [user] * (MAX_MESSAGES + 1), "4xx"),
        ("input", [user] * 5000, "4xx"),
        ("input", [], "4xx"),
        ("input", [{"type": "nope"}], "4xx"),
        ("input", [{"type": "item_reference", "id": "msg_1"}], "4xx"),
        ("input", [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "4xx"),
        ("input", [{"role": "wizard", "content": "hi"}], "4xx"),
        ("input", [{"type": "function_call", "call_id": "", "name": "f", "arguments": "{"}], "4xx"),
        ("input", [{"type": "function_call_output", "call_id": "c", "output": "o"}, user], "ok"),
        (
            "input",
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "x"}],
            "any",
        ),
        (
            "input",
            [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]}, user],
            "ok",
        ),
        ("input", "y" * (MAX_BODY - 1024), "4xx"),  # over the tiny model's context
        (
            "tools",
            [{**grammar, "format": {**grammar["format"], "definition": "start: nowhere"}}],
            "4xx",
        ),
        (
            "tools",
            [{**grammar, "format": {**grammar["format"], "definition": "x" * 70_000}}],
            "4xx",
        ),
        (
            "tools",
            [{**grammar, "format": {"type": "grammar", "syntax": "regex", "definition": "("}}],
            "4xx",
        ),
        (
            "tools",
            [{**grammar, "format": {"type": "grammar", "syntax": "cobol", "definition": "x"}}],
            "4xx",
        ),
        ("tools", [{"type": "function", "name": "f", "parameters": {"type": "wizard"}}], "4xx"),
        ("tools", [{"type": "function", "name": "bad name!"}], "4xx"),
        ("tools", [{"type": "web_search"}, {"type": "mcp", "server_label": "x"}], "ok"),
        ("tools", [{"type": "function", "name": "f"}] * 2, "4xx"),
        ("tool_choice", {"type": "web_search"}, "4xx"),
        ("tool_choice", {"type": "function", "name": "nope"}, "4xx"),
        ("tool_choice", "sometimes", "4xx"),
        (
            "text",
            {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wizard"}}},
            "4xx",
        ),
        ("text", {"format": {"type": "xml"}}, "4xx"),
        ("previous_response_id", "resp_" + "0" * 48, "4xx"),
        ("previous_response_id", "../../etc/passwd", "4xx"),
        ("max_output_tokens", 0, "4xx"),
        ("max_output_tokens", 10**30, "any"),
        ("top_logprobs", 21, "4xx"),
        ("metadata", {f"k{i}": "v" for i in range(17)}, "4xx"),
        ("metadata", {"k": "v" * 513}, "4xx"),
        ("include", ["message.output_text.logprobs", "no.such.thing"], "ok"),
        ("background", True, "4xx"),
        ("conversation", {"id": "conv_1"}, "4xx"),
        ("truncation", "sometimes", "4xx"),
        ("reasoning", {"effort": "extreme"}, "4xx"),
    ]
    for fld, value, expect in absurd:
        yield Case(
            f"responses-absurd-{fld}-{value!r:.24}",
            "POST",
            path,
            expect,
            json_body={**valid, fld: value},
        )
    ids = {
        "traversal": "..%2F..%2Fetc%2Fpasswd",
        "nul": "resp_%00",
        "long": "r" * 4000,
        "invalid-utf8": "%ff%fe",
        "unknown": "resp_" + "0" * 48,
    }
    for kind, response_id in ids.items():
        yield Case(f"response-get-{kind}", "GET", f"{path}/{response_id}", "4xx")
        yield Case(f"response-delete-{kind}", "DELETE", f"{path}/{response_id}", "4xx")
        yield Case(f"response-items-{kind}", "GET", f"{path}/{response_id}/input_items", "4xx")
    for query in ("limit=0", "limit=abc", "limit=101", "order=sideways", "after=%ff"):
        yield Case(f"response-items-{query}", "GET", f"{path}/resp_x/input_items?{query}", "4xx")


def _query_cases() -> Iterator[Case]:
    """Query parameters and path ids of the GET / DELETE routes."""
    for query, expect in [
        ("limit=abc", "4xx"),
        ("limit=0", "4xx"),
        ("limit=-1", "4xx"),
        ("limit=" + "9" * 5000, "4xx"),
        ("limit=1e3", "4xx"),
        ("limit=%C2%B2", "4xx"),  # a Unicode digit
        ("order=sideways", "any"),  # files: 400; jobs take no order
        ("after=" + "a" * 2000, "4xx"),
        ("after=../../etc/passwd", "4xx"),
        ("purpose=%00", "ok"),
        ("purpose=" + "p" * 5000, "ok"),
        ("unknown=1", "any"),
        ("limit=1&limit=2", "any"),
        ("%ff%fe=%ff", "any"),
    ]:
        yield Case(f"files-list-{query:.30}", "GET", f"/v1/files?{query}", expect)
        yield Case(f"jobs-list-{query:.30}", "GET", f"/v1/fine_tuning/jobs?{query}", expect)
    ids = {
        "traversal": "..%2F..%2Fetc%2Fpasswd",
        "traversal-file": "file-..%2F..%2Fetc%2Fpasswd",
        "absolute": "%2Fetc%2Fpasswd",
        "backslash": "..%5C..%5Cwindows",
        "nul": "file-%00",
        "long": "f" * 4000,
        "unicode": "%E2%80%AEfile",
        "invalid-utf8": "%ff%fe",
        "uppercase-hex": "file-" + "A" * 24,
        "dotdot": "..",
    }
    for kind, file_id in ids.items():
        yield Case(f"file-get-{kind}", "GET", f"/v1/files/{file_id}", "4xx")
        yield Case(f"file-content-{kind}", "GET", f"/v1/files/{file_id}/content", "4xx")
        yield Case(f"file-delete-{kind}", "DELETE", f"/v1/files/{file_id}", "4xx")
        yield Case(f"job-get-{kind}", "GET", f"/v1/fine_tuning/jobs/{file_id}", "4xx")
        yield Case(f"job-events-{kind}", "GET", f"/v1/fine_tuning/jobs/{file_id}/events", "4xx")
        yield Case(f"job-cancel-{kind}", "POST", f"/v1/fine_tuning/jobs/{file_id}/cancel", "4xx")
        yield Case(f"model-get-{kind}", "GET", f"/v1/models/{file_id}", "4xx")
        yield Case(f"model-delete-{kind}", "DELETE", f"/v1/models/{file_id}", "4xx")
    yield Case("models-list-query", "GET", "/v1/models?limit=abc&x=%ff", "ok")
    yield Case("model-delete-base", "DELETE", f"/v1/models/{MODEL}", "4xx")
    yield Case("unknown-route", "GET", "/v1/nope", "404")
    yield Case("unknown-route-post", "POST", "/v1/chat/completions/x", "404", json_body={})


def _multipart_cases() -> Iterator[Case]:
    jsonl = (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    path = "/v1/files"
    yield Case(
        "files-valid",
        "POST",
        path,
        "ok",
        files={"file": ("t.jsonl", jsonl)},
        data={"purpose": "fine-tune"},
    )
    yield Case("files-no-file", "POST", path, "4xx", data={"purpose": "fine-tune"})
    yield Case(
        "files-two-files",
        "POST",
        path,
        "4xx",
        files=[("file", ("a.jsonl", jsonl)), ("file", ("b.jsonl", jsonl))],
        data={"purpose": "fine-tune"},
    )
    yield Case(
        "files-file-in-other-field",
        "POST",
        path,
        "4xx",
        files={"document": ("a.jsonl", jsonl)},
        data={"purpose": "fine-tune"},
    )
    for kind, name in {
        "traversal": "../../etc/passwd",
        "absolute": "/etc/passwd",
        "windows": "C:\\Windows\\system32\\x.jsonl",
        "dotdot": "..",
        "dotfile": ".bashrc",
        "empty": "",
        "nul": "a\x00b.jsonl",
        "control": "a\r\nX-Injected: 1.jsonl",
        "bidi": "evil\u202egnp.jsonl",
        "long": "n" * 1000 + ".jsonl",
    }.items():
        yield Case(
            f"files-filename-{kind}",
            "POST",
            path,
            "ok",
            files={"file": (name, jsonl)},
            data={"purpose": "fine-tune"},
        )
    yield Case(
        "files-zero-bytes-fine-tune",
        "POST",
        path,
        "4xx",
        files={"file": ("e.jsonl", b"")},
        data={"purpose": "fine-tune"},
    )
    yield Case(
        "files-zero-bytes-user-data",
        "POST",
        path,
        "ok",
        files={"file": ("e.txt", b"")},
        data={"purpose": "user_data"},
    )
    yield Case(
        "files-over-cap",
        "POST",
        path,
        "413",
        files={"file": ("big.jsonl", jsonl * (MAX_UPLOAD // len(jsonl) + 2))},
        data={"purpose": "fine-tune"},
    )
    yield Case(
        "files-over-cap-user-data",
        "POST",
        path,
        "413",
        files={"file": ("big.bin", b"\0" * (MAX_UPLOAD + 1))},
        data={"purpose": "user_data"},
    )
    yield Case(
        "files-not-jsonl",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", b"not json\n")},
        data={"purpose": "fine-tune"},
    )
    yield Case(
        "files-invalid-utf8-jsonl",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", b'{"a": "\xff"}\n')},
        data={"purpose": "fine-tune"},
    )
    yield Case(
        "files-wrong-purpose",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", jsonl)},
        data={"purpose": "root"},
    )
    yield Case(
        "files-purpose-traversal",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", jsonl)},
        data={"purpose": "../../x"},
    )
    yield Case("files-missing-purpose", "POST", path, "4xx", files={"file": ("t.jsonl", jsonl)})
    yield Case(
        "files-many-fields",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", jsonl)},
        data={f"f{i}": "x" for i in range(40)} | {"purpose": "fine-tune"},
    )
    yield Case(
        "files-huge-field",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", jsonl)},
        data={"purpose": "fine-tune", "x": "v" * 70_000},
    )
    yield Case(
        "files-expires-after",
        "POST",
        path,
        "4xx",
        files={"file": ("t.jsonl", jsonl)},
        data={"purpose": "fine-tune", "expires_after[anchor]": "created_at"},
    )
    body = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n' + jsonl
    )
    raw: dict[str, tuple[bytes, str]] = {
        "garbage-boundary": (b"\x00\xff garbage \r\n--\r\n", "multipart/form-data; boundary=B"),
        "no-boundary": (body + b"\r\n--B--\r\n", "multipart/form-data"),
        "empty-boundary": (body + b"\r\n--B--\r\n", "multipart/form-data; boundary="),
        "wrong-boundary": (body + b"\r\n--B--\r\n", "multipart/form-data; boundary=OTHER"),
        "huge-boundary": (body + b"\r\n--B--\r\n", "multipart/form-data; boundary=" + "b" * 5000),
        "truncated": (body, "multipart/form-data; boundary=B"),
        "no-closing-boundary": (body + b"\r\n", "multipart/form-data; boundary=B"),
        "no-disposition": (
            b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n",
            "multipart/form-data; boundary=B",
        ),
        "no-name": (
            b'--B\r\nContent-Disposition: form-data; filename="a"\r\n\r\nx\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),
        "header-garbage": (
            b"--B\r\n\xff\xfe\r\n\r\nx\r\n--B--\r\n",
            "multipart/form-data; boundary=B",
        ),
        "purpose-not-utf8": (
            b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n\xff\xfe\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),
        "empty-body": (b"", "multipart/form-data; boundary=B"),
        "json-body": (b'{"purpose": "fine-tune"}', "application/json"),
        "urlencoded": (b"purpose=fine-tune&file=x", "application/x-www-form-urlencoded"),
        "no-content-type": (body + b"\r\n--B--\r\n", ""),
    }
    for kind, (content, ctype) in raw.items():
        headers = {"content-type": ctype} if ctype else {}
        yield Case(f"files-raw-{kind}", "POST", path, "4xx", content=content, headers=headers)


def corpus() -> list[Case]:
    cases = [*_json_cases(), *_sampling_cases(), *_query_cases(), *_multipart_cases()]
    cases += _responses_cases()
    seen: dict[str, int] = {}
    for case in cases:  # unique ids: number the repeats
        seen[case.id] = seen.get(case.id, 0) + 1
        if seen[case.id] > 1:
            case.id = f"{case.id}-{seen[case.id]}"
    return cases


CORPUS = corpus()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("hostile-home")
    live = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=home,
        api_key=API_KEY,
        extra_args=["--embedding-model", "none"],
        env={
            "POMAR_MAX_BODY_BYTES": str(MAX_BODY),
            "POMAR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "POMAR_MAX_MESSAGES": str(MAX_MESSAGES),
        },
    ).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url,
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=120,
    ) as client:
        yield client


def _send(http: httpx.Client, case: Case, model: str) -> httpx.Response:
    path = case.path.replace(MODEL, model)
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.json_body is not None:
        kwargs["json"] = _sub(case.json_body, model)
    elif case.content is not None:
        content = case.content
        if case.id.endswith("-chunked"):
            kwargs["content"] = iter([content[i : i + 8192] for i in range(0, len(content), 8192)])
        else:
            kwargs["content"] = content
    if case.files is not None:
        kwargs["files"] = case.files
    if case.data is not None:
        if case.files is None:  # a form without a file, still sent as multipart
            kwargs["files"] = [(k, (None, v)) for k, v in case.data.items()]
        else:
            kwargs["data"] = case.data
    return http.request(case.method, path, **kwargs)


def assert_error_shape(path: str, response: httpx.Response) -> dict[str, Any]:
    """A 4xx body is exactly the error shape of the path's wire: Anthropic's on the
    Messages API (`{"type": "error", "error": {"type", "message"}}`), else OpenAI's."""
    if not path.startswith("/v1/messages"):
        return assert_envelope(response)
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    error = body["error"]
    assert body["type"] == "error" and set(error) == {"type", "message"}, body
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return dict(error)


def assert_envelope(response: httpx.Response) -> dict[str, Any]:
    """A 4xx body is exactly the OpenAI error envelope."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return dict(error)


def test_corpus_size() -> None:
    print(f"hostile-input corpus: {len(CORPUS)} requests")
    assert len(CORPUS) >= 300


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_request(http: httpx.Client, server: LiveServer, case: Case) -> None:
    response = _send(http, case, server.model)
    status = response.status_code
    assert status < 500, f"{case.id}: {status} {response.text[:500]}"
    if case.expect == "4xx":
        assert 400 <= status < 500, f"{case.id}: {status} {response.text[:300]}"
    elif case.expect == "ok":
        assert 200 <= status < 500, f"{case.id}: {status}"
        assert status < 300, f"{case.id} is valid: {status} {response.text[:300]}"
    elif case.expect.isdigit():
        assert status == int(case.expect), f"{case.id}: {status} {response.text[:300]}"
    if status >= 400:
        assert_error_shape(case.path, response)
        # no internals: neither the server's paths nor a traceback
        assert str(server.home) not in response.text
        assert "Traceback" not in response.text and 'File "' not in response.text
    elif case.path == "/v1/files" and case.method == "POST":
        name = response.json()["filename"]
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert "\x00" not in name and "\n" not in name and "\u202e" not in name


def _chat_prompt_near_the_context(http: httpx.Client, model: str, room: int) -> list[Any]:
    """Messages whose prompt leaves about `room` tokens of context (measured, not guessed)."""

    def prompt_tokens(words: int) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi " * words}]}
        r = http.post("/v1/chat/completions", json={**body, "max_tokens": 1})
        return int(r.json()["usage"]["prompt_tokens"]) if r.status_code == 200 else CONTEXT

    low, high = prompt_tokens(100), prompt_tokens(200)
    words = 100 + (CONTEXT - room - low) * 100 // max(1, high - low)
    while prompt_tokens(words) >= CONTEXT - 1:
        words -= 5
    return [{"role": "user", "content": "hi " * words}]


@pytest.mark.parametrize("max_tokens", [CONTEXT + 1, 10**12, 10**30])
def test_max_tokens_beyond_the_context_is_clamped(
    http: httpx.Client, server: LiveServer, max_tokens: int
) -> None:
    """Documented (README, The chat API): generation stops at the end of the context.

    The prompts fill the context but for a few tokens, so that running to its end is quick.
    """
    # legacy completions: a token-id prompt has an exact length
    prompt = [5] * (CONTEXT - 4)
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "seed": 1}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == CONTEXT - 4
    assert usage["completion_tokens"] <= 4
    if usage["completion_tokens"] == 4:
        assert r.json()["choices"][0]["finish_reason"] == "length"
    messages = _chat_prompt_near_the_context(http, server.model, room=6)
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "seed": 1}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT
    if usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT:
        assert r.json()["choices"][0]["finish_reason"] == "length"


def test_declared_length_over_the_caps_is_refused_before_the_body(server: LiveServer) -> None:
    """A huge Content-Length is answered 413 at once, without waiting for the bytes."""
    for path, ctype in [
        ("/v1/chat/completions", "application/json"),
        ("/v1/files", "multipart/form-data; boundary=B"),
    ]:
        conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Authorization", f"Bearer {API_KEY}")
            conn.putheader("Content-Type", ctype)
            conn.putheader("Content-Length", str(10**12))
            conn.endheaders(b"{")
            response = conn.getresponse()
            assert response.status == 413
            assert_envelope_text(response.read().decode())
        finally:
            conn.close()


def assert_envelope_text(text: str) -> None:
    body = json.loads(text)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


def test_server_is_healthy_and_the_store_is_clean(http: httpx.Client, server: LiveServer) -> None:
    assert http.get("/health").status_code == 200
    r = http.post(
        "/v1/chat/completions", json={"model": server.model, "messages": MSG, "max_tokens": 1}
    )
    assert r.status_code == 200, r.text
    files_dir = server.home / "files"
    leftovers = [p for p in (files_dir / ".incoming").iterdir()]
    assert leftovers == [], leftovers
    listed = http.get("/v1/files").json()["data"]
    on_disk = {p.name for p in files_dir.iterdir() if p.is_file()}
    assert on_disk == {f["id"] for f in listed}
    for f in listed:
        assert (files_dir / f["id"]).stat().st_size == f["bytes"]
        content = http.get(f"/v1/files/{f['id']}/content")
        assert content.status_code == 200 and len(content.content) == f["bytes"]
    # nothing landed beside the store (a path in a filename never becomes a path)
    assert not (server.home / "passwd").exists() and not (server.home.parent / "passwd").exists()
    assert "Traceback" not in server.log()
