"""Anthropic's Messages API through real servers, driven by the official `anthropic` SDK.

One server serves the tiny random model (torch engine, API key set), another the tiny
model with a Qwen3-style `<think>` template (`test_reasoning_live.py`'s). Greedy decoding
makes a stream comparable with a plain create; constrained decoding makes the random
model's tool calls valid.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import (
    Message,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from live_server import API_KEY, LiveServer
from schemas import GetWeather
from tiny_model import IM_END, IM_START

HELLO: list[MessageParam] = [{"role": "user", "content": "hello there, how are you?"}]
GREEDY: dict[str, Any] = {"temperature": 0}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": GetWeather.model_json_schema(),
}
THINKING_TEMPLATE = (
    "{% for m in messages %}" + IM_START + "{{ m.role }}\n{{ m.content }}" + IM_END + "\n"
    "{% endfor %}{% if add_generation_prompt %}" + IM_START + "assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def _serve(model: Path, home: Path, api_key: str | None) -> Iterator[LiveServer]:
    server = LiveServer(model=str(model), backend="torch", home=home, api_key=api_key).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from _serve(tiny_model_path, tmp_path_factory.mktemp("messages-home"), API_KEY)


@pytest.fixture(scope="module")
def thinker(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("messages-thinking") / "tiny-thinker"
    shutil.copytree(tiny_model_path, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = THINKING_TEMPLATE
    config_path.write_text(json.dumps(config))
    yield from _serve(folder, tmp_path_factory.mktemp("thinker-home"), None)


def client_for(server: LiveServer, **kw: Any) -> anthropic.Anthropic:
    """The SDK as Claude Code configures it: the server's root URL, the key as x-api-key."""
    kw.setdefault("api_key", server.api_key or "unused")
    return anthropic.Anthropic(base_url=server.base_url, max_retries=0, **kw)


def create(server: LiveServer, **kw: Any) -> Message:
    body: dict[str, Any] = {"model": server.model, "max_tokens": 8, "messages": HELLO}
    body.update(kw)
    extra = {k: body.pop(k) for k in ("temperature", "top_p", "top_k") if k in body}
    return client_for(server).messages.create(**body, extra_body=extra or None)


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


def prompt_tokens(message: Message) -> int:
    return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


def test_create_text_with_a_system_prompt(server: LiveServer) -> None:
    out = create(server, system="You are terse.", **GREEDY)
    assert out.id.startswith("msg_") and out.type == "message" and out.role == "assistant"
    assert out.model == server.model
    (block,) = out.content
    assert isinstance(block, TextBlock) and block.text
    # the random model does not end its turn within 8 tokens
    assert out.stop_reason == "max_tokens" and out.stop_sequence is None
    assert out.usage.output_tokens == 8 and prompt_tokens(out) > 0
    # the system prompt as text blocks is the same prompt
    blocks = [{"type": "text", "text": "You are"}, {"type": "text", "text": "terse."}]
    again = create(server, system=blocks, **GREEDY)
    assert prompt_tokens(again) == prompt_tokens(create(server, system="You are\nterse.", **GREEDY))
    assert prompt_tokens(again) != prompt_tokens(create(server, **GREEDY))


def test_stream_events_and_final_message_equal_create(server: LiveServer) -> None:
    kw: dict[str, Any] = {"system": "Be brief.", "max_tokens": 10}
    done = create(server, **kw, **GREEDY)
    client = client_for(server)
    body = {"model": server.model, "messages": HELLO, "extra_body": GREEDY, **kw}
    events = list(client.messages.create(**body, stream=True))
    kinds = [type(e) for e in events]
    assert kinds[0] is RawMessageStartEvent and kinds[-1] is RawMessageStopEvent
    assert kinds[-2] is RawMessageDeltaEvent
    assert kinds[1:-2] == [
        RawContentBlockStartEvent,
        *[RawContentBlockDeltaEvent] * (len(kinds) - 5),
        RawContentBlockStopEvent,
    ]
    start = events[0]
    assert isinstance(start, RawMessageStartEvent) and start.message.content == []
    assert start.message.stop_reason is None and start.message.id.startswith("msg_")
    delta = events[-2]
    assert isinstance(delta, RawMessageDeltaEvent) and delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 10

    with client.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in done.content]
    assert final.stop_reason == done.stop_reason and final.stop_sequence is None
    assert final.usage.output_tokens == done.usage.output_tokens
    assert prompt_tokens(final) == prompt_tokens(done)
    assert final.id.startswith("msg_") and final.model == done.model


def test_the_wire_names_each_event_and_pings(server: LiveServer) -> None:
    """Raw SSE: `event:` is each data's `type`, a ping comes early, no `[DONE]`."""
    body = {"model": server.model, "max_tokens": 3, "messages": HELLO, "stream": True}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/messages", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    names, datas = [], []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            names.append(fields["event"])
            datas.append(json.loads(fields["data"]))
    assert [d["type"] for d in datas] == names
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    assert "[DONE]" not in text


def test_tool_use_with_any_and_a_tool_result_round_trip(server: LiveServer) -> None:
    client = client_for(server)
    ask: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    out = client.messages.create(
        model=server.model,
        max_tokens=100,
        messages=ask,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    )
    assert out.stop_reason == "tool_use"
    calls = [b for b in out.content if isinstance(b, ToolUseBlock)]
    assert len(calls) == 1 and calls[0].id.startswith("toolu_") and calls[0].name == "get_weather"
    GetWeather.model_validate(calls[0].input)

    # the same call streamed: input_json_delta pieces build the same input
    with client.messages.stream(
        model=server.model,
        max_tokens=100,
        messages=ask,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    ) as stream:
        streamed = stream.get_final_message()
    (call,) = [b for b in streamed.content if isinstance(b, ToolUseBlock)]
    assert call.input == calls[0].input and streamed.stop_reason == "tool_use"

    history: list[MessageParam] = [
        *ask,
        {"role": "assistant", "content": out.content},  # type: ignore[typeddict-item]
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": calls[0].id, "content": "Sunny, 21 C"},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    answer = client.messages.create(
        model=server.model,
        max_tokens=5,
        messages=history,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.stop_reason == "max_tokens" and text_of(answer)
    assert not [b for b in answer.content if isinstance(b, ToolUseBlock)]
    # the call and its result are in the prompt (under `none` the tools are not)
    asked = client.messages.count_tokens(
        model=server.model,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "none"},  # type: ignore[list-item]
    )
    assert prompt_tokens(answer) > asked.input_tokens + 10


def test_named_tool_choice(server: LiveServer) -> None:
    add = {
        "name": "add",
        "input_schema": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"],
            "additionalProperties": False,
        },
    }
    out = client_for(server).messages.create(
        model=server.model,
        max_tokens=100,
        messages=HELLO,
        tools=[WEATHER, add],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "add"},
        extra_body=GREEDY,
    )
    (call,) = [b for b in out.content if isinstance(b, ToolUseBlock)]
    assert call.name == "add" and 0 <= call.input["a"] <= 9  # type: ignore[operator]


def test_count_tokens_is_the_prompt_of_create(server: LiveServer) -> None:
    client = client_for(server)
    kw: dict[str, Any] = {
        "model": server.model,
        "system": "You help with the weather.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
    }
    counted = client.messages.count_tokens(**kw)
    done = client.messages.create(max_tokens=1, **kw)
    assert counted.input_tokens == prompt_tokens(done) > 0
    assert client.messages.count_tokens(model=server.model, messages=HELLO).input_tokens < (
        counted.input_tokens
    )


def test_stop_sequences(server: LiveServer) -> None:
    text = text_of(create(server, max_tokens=12, **GREEDY))
    stop = text[len(text) // 2 :][:3]
    assert stop.strip(), text
    out = create(server, max_tokens=12, stop_sequences=["\x07never", stop], **GREEDY)
    assert out.stop_reason == "stop_sequence" and out.stop_sequence == stop
    assert text.startswith(text_of(out)) and stop not in text_of(out)
    # streamed, the same stop is reported in message_delta
    body = {"model": server.model, "max_tokens": 12, "messages": HELLO, "extra_body": GREEDY}
    with client_for(server).messages.stream(**body, stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert text_of(final) == text_of(out)


def test_top_k_1_is_greedy(server: LiveServer) -> None:
    assert text_of(create(server, temperature=1.0, top_k=1)) == text_of(create(server, **GREEDY))


def post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    return httpx.post(f"{server.base_url}/v1/messages", json=body, headers=headers, timeout=60)


def _error(caught: pytest.ExceptionInfo[anthropic.APIStatusError], kind: str) -> str:
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert set(body) == {"type", "error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    message = str(body["error"]["message"])
    assert "/tmp" not in message and "Traceback" not in message
    return message


def test_errors_in_anthropic_shape(server: LiveServer) -> None:
    client = client_for(server)
    missing_max = post(server, {"model": server.model, "messages": HELLO})
    assert missing_max.status_code == 400
    error = missing_max.json()
    assert error == {"type": "error", "error": error["error"]}
    assert error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-sonnet-4-5", messages=HELLO, max_tokens=4)
    assert "claude-sonnet-4-5" in _error(missing, "not_found_error")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="nope", messages=HELLO)
    _error(missing, "not_found_error")
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client_for(server, api_key="wrong").messages.create(
            model=server.model, messages=HELLO, max_tokens=4
        )
    assert "x-api-key" in _error(denied, "authentication_error")
    # the key as a bearer token (ANTHROPIC_AUTH_TOKEN) is accepted too
    bearer = anthropic.Anthropic(base_url=server.base_url, auth_token=API_KEY, max_retries=0)
    # (the tiny model's one sampled token may be its end token, with no text and no output
    # token: what is checked is that the bearer key got a real answer)
    reply = bearer.messages.create(model=server.model, messages=HELLO, max_tokens=1)
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.usage.input_tokens > 0 and reply.stop_reason in ("max_tokens", "end_turn")
    refused: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"messages": [*HELLO, {"role": "assistant", "content": "The answer is"}]},
        {"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]},
        {"tools": [{**WEATHER, "input_schema": {"type": "object", "properties": 3}}]},
        {"temperature": 1.5},
        {"stop_sequences": ["a", "b", "c", "d", "e"]},
    ]
    for extra in refused:
        response = post(
            server, {"model": server.model, "messages": HELLO, "max_tokens": 4, **extra}
        )
        assert response.status_code == 400, (extra, response.text)
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    # unknown routes under /v1/messages answer in the same shape
    response = httpx.get(f"{server.base_url}/v1/messages/batches", headers={"x-api-key": API_KEY})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


def test_thinking_block_of_a_reasoning_model(thinker: LiveServer) -> None:
    """The thinker's random weights never close `<think>`: all of a reply is thinking."""
    client = client_for(thinker)
    kw: dict[str, Any] = {"model": thinker.model, "max_tokens": 12, "messages": HELLO}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    out = client.messages.create(**kw, thinking=thinking, extra_body=GREEDY)  # type: ignore[arg-type]
    (block,) = out.content
    assert isinstance(block, ThinkingBlock) and block.thinking and out.stop_reason == "max_tokens"
    with client.messages.stream(**kw, thinking=thinking, extra_body=GREEDY) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    assert any(getattr(e, "type", "") == "thinking" for e in events)  # the SDK's thinking events
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in out.content]

    # thinking off: the template closes the block, the reply is text
    off = client.messages.create(**kw, thinking={"type": "disabled"}, extra_body=GREEDY)
    assert [type(b) for b in off.content] == [TextBlock]
    # thinking sent back in an assistant turn is accepted
    history: list[MessageParam] = [
        *HELLO,
        {"role": "assistant", "content": [block.model_dump(), {"type": "text", "text": "Hi."}]},  # type: ignore[list-item]
        {"role": "user", "content": "And you?"},
    ]
    again = client.messages.create(
        model=thinker.model, max_tokens=2, messages=history, extra_body=GREEDY
    )
    assert again.content and again.stop_reason == "max_tokens"
