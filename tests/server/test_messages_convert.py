"""The Messages API's conversion into the chat service's request, and its stream's error
event, without a model: what `test_messages_live.py` cannot reach cheaply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from server.errors import InvalidRequest
from server.protocol.message_answer import MessageStartEvent
from server.protocol.messages import MessagesRequest
from server.routes.common import event_stream
from server.routes.messages import _error_event, _event, _ping
from server.services.message_request import chat_request
from server.services.messages import _folding

PLAIN = SimpleNamespace(reasoning=None, variables=frozenset())
SWITCH = SimpleNamespace(reasoning=SimpleNamespace(switch="enable_thinking"), variables=frozenset())
EFFORT = SimpleNamespace(reasoning=None, variables=frozenset({"reasoning_effort"}))
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


def convert(fmt: Any = PLAIN, **body: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 5, **body}
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = MessagesRequest.model_validate(body)
    return chat_request(request, fmt).model_dump(exclude_none=True, by_alias=True)


def test_a_tool_loop_becomes_chat_messages() -> None:
    out = convert(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "user", "content": [{"type": "text", "text": "In Paris."}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Call it.", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        tools=[TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        top_k=5,
        metadata={"user_id": "u1"},
    )
    messages = out["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[0]["content"] == "Be brief.\nBe kind."
    assert messages[1]["content"] == "Weather?\nIn Paris."  # consecutive user turns: one turn
    assistant = messages[2]
    assert assistant["content"] == "Checking." and assistant["reasoning_content"] == "Call it."
    (call,) = assistant["tool_calls"]
    assert call["id"] == "toolu_1" and json.loads(call["function"]["arguments"]) == {"c": 1}
    assert messages[3]["tool_call_id"] == "toolu_1" and messages[3]["content"] == "Sunny"
    assert out["tools"][0]["function"]["parameters"] == TOOL["input_schema"]
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False
    assert out["stop"] == ["END"] and out["top_k"] == 5 and out["user"] == "u1"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = convert(tools=[TOOL], tool_choice=choice)
    assert out["tool_choice"] == expected


def test_thinking_drives_the_switch_only_where_there_is_one() -> None:
    enabled = {"type": "enabled", "budget_tokens": 2000}
    assert convert(SWITCH, thinking=enabled)["reasoning_effort"] == "low"
    assert convert(SWITCH, thinking={"type": "disabled"})["reasoning_effort"] == "none"
    assert convert(SWITCH, thinking={"type": "adaptive"})["reasoning_effort"] == "medium"
    big = {"type": "enabled", "budget_tokens": 20000}
    assert convert(EFFORT, thinking=big)["reasoning_effort"] == "high"
    effort = {"effort": "max"}
    assert (
        convert(EFFORT, thinking={"type": "adaptive"}, output_config=effort)["reasoning_effort"]
        == "xhigh"
    )
    # a model without a switch thinks (or not) as it always does
    assert "reasoning_effort" not in convert(PLAIN, thinking=enabled)
    assert "reasoning_effort" not in convert(SWITCH)


def test_output_format_is_a_json_schema_answer() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = convert(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert out["response_format"]["type"] == "json_schema"
    assert out["response_format"]["json_schema"]["schema"] == schema


def test_a_prefill_and_misplaced_blocks_are_400s() -> None:
    with pytest.raises(InvalidRequest, match="prefill"):
        convert(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(InvalidRequest, match="tool_result"):
        convert(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]},
                {"role": "user", "content": "c"},
            ]
        )


def test_inner_system_messages_fold_into_user_turns_when_the_template_refuses() -> None:
    """Claude Code sends a system message after the user's; Gemma's template refuses one."""
    request = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Agents: none."},
            ],
        }
    )
    seen: list[list[str]] = []

    def use(chat: Any) -> str:
        roles = [m.role for m in chat.messages]
        seen.append(roles)
        if roles != ["user"]:
            raise InvalidRequest(
                "The model's chat template rejected the messages: roles", param="messages"
            )
        return chat.messages[0].text()

    model = SimpleNamespace(template=SimpleNamespace(format=PLAIN))
    assert _folding(request, model, use) == "hi\nAgents: none."  # type: ignore[arg-type]
    assert seen == [["user", "system"], ["user"]]


async def _failing() -> AsyncIterator[Any]:
    yield MessageStartEvent.model_validate(
        {
            "message": {
                "id": "msg_1",
                "model": "m",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 1, "output_tokens": 0},
            }
        }
    )
    raise InvalidRequest("the model went away")


async def _endpoint(_request: Request) -> Response:
    return event_stream(_failing(), _event, _error_event, ping=_ping)


def test_an_error_mid_stream_is_an_anthropic_error_event() -> None:
    app = Starlette(routes=[Route("/s", _endpoint)])
    with TestClient(app) as client:
        text = client.get("/s").text
    events = [
        dict(line.split(": ", 1) for line in b.splitlines()) for b in text.strip().split("\n\n")
    ]
    named = [e for e in events if "event" in e and e["event"] != "ping"]
    assert [e["event"] for e in named] == ["message_start", "error"]
    error = json.loads(named[-1]["data"])
    assert error == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "the model went away"},
    }
    assert "[DONE]" not in text


async def test_closing_the_stream_closes_the_chat_stream_at_once() -> None:
    """A client that goes away stops generation: the chat stream is closed, not left to GC."""
    from server.protocol.chat import ChatCompletionChunk
    from server.services.messages import _stream

    closed: list[bool] = []

    class Chat:
        async def stream(self, _prepared: Any) -> AsyncIterator[ChatCompletionChunk]:
            try:
                for i in range(1000):
                    yield ChatCompletionChunk.model_validate(
                        {
                            "id": "c",
                            "created": 0,
                            "model": "m",
                            "system_fingerprint": "fp",
                            "choices": [{"index": 0, "delta": {"content": f"w{i}"}}],
                        }
                    )
            finally:
                closed.append(True)

    prepared = SimpleNamespace(
        request=SimpleNamespace(model="m"), chat=SimpleNamespace(prompt_ids=[1])
    )
    events = _stream(Chat(), prepared)  # type: ignore[arg-type]
    kinds = [(await anext(events)).model_dump()["type"] for _ in range(4)]
    assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta"]
    await events.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
