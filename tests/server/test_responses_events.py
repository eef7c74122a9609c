"""The Responses wire over the chat core, without a model: requests become chat messages,
chat chunks become Responses events (each validated against the openai SDK's types),
and stored chains replay in order. The live tests drive the same code on a real server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from server.errors import EngineError, InvalidRequest, NotFound
from server.protocol.chat import ChatCompletionChunk, ChunkChoice, Delta
from server.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from server.protocol.responses_request import ResponseCreateRequest
from server.protocol.tools import DeltaCustom, DeltaFunction, DeltaToolCall
from server.services.responses import PreparedResponse, ResponseService, _drop_oldest
from server.store import Store

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


class FakeChat:
    """The chat service's stream, replayed from chunks (then an error, if given)."""

    def __init__(self, chunks: list[ChatCompletionChunk], error: Exception | None = None):
        self.chunks, self.error = chunks, error

    async def stream(self, _prepared: Any) -> AsyncIterator[ChatCompletionChunk]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


def chunk(delta: Delta | None = None, finish: str | None = None, usage: Usage | None = None) -> Any:
    choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
    return ChatCompletionChunk(
        id="c", created=0, model="m", choices=choices, system_fingerprint="fp", usage=usage
    )


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path)


def run(
    store: Store, chunks: list[Any], error: Exception | None = None, **body: Any
) -> list[BaseModel]:
    service = ResponseService(FakeChat(chunks, error), store.responses)  # type: ignore[arg-type]
    request = ResponseCreateRequest.model_validate({"model": "m", "input": "hi", **body})
    turn = service.turn(request)
    prepared = PreparedResponse(
        turn, SimpleNamespace(params=SimpleNamespace(temperature=0.5, top_p=1.0))
    )  # type: ignore[arg-type]

    async def collect() -> list[BaseModel]:
        return [event async for event in service.stream(prepared)]

    return anyio.run(collect)


def check(events: list[BaseModel]) -> list[str]:
    """Each event validates as one of the SDK's, numbered from 0; their types."""
    for n, event in enumerate(events):
        data = event.model_dump(mode="json")
        EVENT.validate_python(data)
        assert data["sequence_number"] == n
    return [event.model_dump()["type"] for event in events]


def test_reasoning_text_and_both_kinds_of_calls_in_order(store: Store) -> None:
    events = run(
        store,
        [
            chunk(Delta(role="assistant", content="")),
            chunk(Delta(reasoning_content="Let me ")),
            chunk(Delta(reasoning_content="think.")),
            chunk(Delta(content="Calling.")),
            chunk(Delta(tool_calls=[DeltaToolCall(index=0, id="call_a", type="function",
                  function=DeltaFunction(name="f", arguments=""))])),
            chunk(Delta(tool_calls=[DeltaToolCall(index=0,
                  function=DeltaFunction(arguments='{"a": 1}'))])),
            chunk(Delta(tool_calls=[DeltaToolCall(index=1, id="call_b", type="custom",
                  custom=DeltaCustom(name="calc", input="1+"))])),
            chunk(Delta(tool_calls=[DeltaToolCall(index=1, custom=DeltaCustom(input="2"))])),
            chunk(Delta(), finish="tool_calls"),
            chunk(usage=usage(10, 20, cached=4, reasoning=5)),
        ],
    )  # fmt: skip
    names = check(events)
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    final = SDKResponse.model_validate(events[-1].model_dump(mode="json")["response"])
    kinds = [item.type for item in final.output]
    assert kinds == ["reasoning", "message", "function_call", "custom_tool_call"]
    reasoning, _, call, custom = final.output
    assert reasoning.content[0].text == "Let me think."  # type: ignore[union-attr]
    assert final.output_text == "Calling."
    assert (call.call_id, call.arguments) == ("call_a", '{"a": 1}')  # type: ignore[union-attr]
    assert (custom.call_id, custom.input) == ("call_b", "1+2")  # type: ignore[union-attr]
    assert call.id.startswith("fc_") and reasoning.id.startswith("rs_")  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 5
    assert final.temperature == 0.5 and final.status == "completed"
    stored = store.responses.get(final.id)
    assert stored is not None and stored.response["output"][3]["input"] == "1+2"
    assert stored.input_items[0]["content"] == [{"type": "input_text", "text": "hi"}]


def test_length_makes_the_response_and_its_last_item_incomplete(store: Store) -> None:
    events = run(store, [chunk(Delta(content="Once upon")), chunk(Delta(), finish="length")])
    check(events)
    assert events[-1].model_dump()["type"] == "response.incomplete"
    final = events[-1].model_dump(mode="json")["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_user_and_usage_are_left_out_rather_than_null(store: Store) -> None:
    # OpenAI's document types them as a string and an object, never null (a fuzzed
    # request's 200 answer failed its schema with `"user": null`)
    events = run(store, [chunk(Delta(content="Hi")), chunk(Delta(), finish="length")])
    created = events[0].model_dump(mode="json")["response"]
    final = events[-1].model_dump(mode="json")["response"]
    assert "usage" not in created and "user" not in created and "user" not in final
    events = run(store, [chunk(Delta(content="Hi")), chunk(Delta(), finish="stop")], user="u-1")
    assert events[-1].model_dump(mode="json")["response"]["user"] == "u-1"


def test_an_empty_answer_is_an_empty_message(store: Store) -> None:
    events = run(store, [chunk(Delta(role="assistant", content="")), chunk(Delta(), "stop")])
    check(events)
    final = events[-1].model_dump(mode="json")["response"]
    assert [item["type"] for item in final["output"]] == ["message"]
    assert final["output"][0]["content"][0]["text"] == ""


def test_an_error_mid_stream_is_an_error_event_then_failed(store: Store) -> None:
    events = run(store, [chunk(Delta(content="Hel"))], EngineError("The engine failed."))
    names = check(events)
    assert names[-2:] == ["error", "response.failed"]
    error = events[-2].model_dump()
    assert error["message"] == "The engine failed." and error["code"] == "engine_error"
    final = events[-1].model_dump(mode="json")["response"]
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    assert final["output"][0]["status"] == "incomplete"
    assert store.responses.get(final["id"]) is not None  # failed responses are kept too


def messages(store: Store, **body: Any) -> list[dict[str, Any]]:
    service = ResponseService(FakeChat([]), store.responses)  # type: ignore[arg-type]
    return list(
        service.turn(ResponseCreateRequest.model_validate({"model": "m", **body})).chat["messages"]
    )


def test_items_become_the_chat_conversation(store: Store) -> None:
    got = messages(
        store,
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Add 1 and 2"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "content": [{"type": "reasoning_text", "text": "I should add."}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Adding.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": "{}"},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "calc", "input": "1+2"},
            {"type": "function_call_output", "call_id": "call_1", "output": "3"},
            {"type": "custom_tool_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "3"}]},
        ],
    )  # fmt: skip
    assert got == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Add 1 and 2"},
        {
            "role": "assistant",
            "content": "Adding.",
            "reasoning_content": "I should add.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": "{}"},
                },
                {"id": "call_2", "type": "custom", "custom": {"name": "calc", "input": "1+2"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        {"role": "tool", "tool_call_id": "call_2", "content": "3"},
    ]


def test_a_chain_replays_inputs_and_outputs_oldest_first(store: Store) -> None:
    first = run(store, [chunk(Delta(content="One.")), chunk(Delta(), "stop")], input="1?")
    first_id = first[-1].model_dump()["response"]["id"]
    second = run(
        store,
        [chunk(Delta(content="Two.")), chunk(Delta(), "stop")],
        input="2?",
        previous_response_id=first_id,
        instructions="Count.",
    )
    second_id = second[-1].model_dump()["response"]["id"]
    got = messages(store, input="3?", previous_response_id=second_id)
    assert got == [
        {"role": "user", "content": "1?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "2?"},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": "3?"},
    ]  # the earlier instructions are not carried over, as OpenAI does
    store.responses.delete(first_id)
    with pytest.raises(NotFound) as info:
        messages(store, input="3?", previous_response_id=second_id)
    assert info.value.param == "previous_response_id"


def test_truncation_drops_the_oldest_turns_and_orphaned_results() -> None:
    convo = [
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
        {"role": "user", "content": "u"},
    ]
    assert _drop_oldest(convo, 1) == [convo[0], convo[3]]
    assert _drop_oldest([convo[0], convo[3]], 1) is None


def test_truncation_auto_drops_turns_until_the_chat_service_accepts(store: Store) -> None:
    class TightChat(FakeChat):
        """A chat service whose model holds at most two messages."""

        def prepare(self, request: Any, _model: Any) -> Any:
            if len(request.messages) > 2:
                raise InvalidRequest("too long", param="messages", code="context_length_exceeded")
            return request

    def prepared(truncation: str) -> Any:
        service = ResponseService(TightChat([]), store.responses)  # type: ignore[arg-type]
        request = ResponseCreateRequest.model_validate(
            {
                "model": "m",
                "instructions": "Be brief.",
                "input": [
                    {"role": "user", "content": "1"},
                    {"role": "assistant", "content": "one"},
                    {"role": "user", "content": "2"},
                ],
                "truncation": truncation,
            }
        )
        return service.prepare(service.turn(request), None)  # type: ignore[arg-type]

    kept = prepared("auto").chat.messages
    assert [(m.role, m.text()) for m in kept] == [("system", "Be brief."), ("user", "2")]
    with pytest.raises(InvalidRequest) as info:
        prepared("disabled")
    assert info.value.param == "input" and info.value.code == "context_length_exceeded"


def test_the_response_echoes_tools_and_text_format_as_openai_writes_them(store: Store) -> None:
    events = run(
        store,
        [chunk(Delta(content="{}")), chunk(Delta(), "stop")],
        tools=[{"type": "function", "name": "f"}, {"type": "web_search"}],
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    final = events[-1].model_dump(mode="json")["response"]
    assert final["tools"] == [
        {"type": "function", "name": "f", "parameters": None, "strict": True},
        {"type": "web_search"},
    ]
    assert final["text"]["format"] == {"type": "json_schema", "name": "x",
                                       "schema": {"type": "object"}}  # fmt: skip
    assert final["pomar_unserved_tools"] == [{"index": 1, "type": "web_search", "name": None}]
