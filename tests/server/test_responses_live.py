"""OpenAI's Responses API through a real server (the embedded model), driven by the
`openai` SDK and the openai-agents SDK as their users would.

Tool calls and structured output are grammar-constrained, so they are reliable even on
a 135M model; free text is only checked for shape.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest
from live_server import LiveServer, client_for
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter
from schemas import GetWeather, Person

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": GetWeather.model_json_schema(),
    "strict": True,
}
#: sums of small numbers: `12+7-3`
SUM_GRAMMAR = 'start: NUM (OP NUM)*\nNUM: /[0-9]{1,4}/\nOP: "+" | "-"\n'
SUM = re.compile(r"[0-9]{1,4}([+-][0-9]{1,4})*")
CALC = {
    "type": "custom",
    "name": "calc",
    "description": "Evaluates a sum of integers, e.g. 2+2.",
    "format": {"type": "grammar", "syntax": "lark", "definition": SUM_GRAMMAR},
}


@pytest.fixture(scope="module")
def client(embedded_server: LiveServer) -> openai.OpenAI:
    return client_for(embedded_server)


MODEL = "smollm2-135m-instruct"


def test_string_input(client: openai.OpenAI) -> None:
    out = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16)
    assert out.id.startswith("resp_") and out.object == "response"
    assert out.status in ("completed", "incomplete")
    (message,) = out.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and out.output_text
    usage = out.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_items_input_with_instructions(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL,
        instructions="You answer in one short sentence.",
        input=[
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Name a colour."}],
            },
        ],
        max_output_tokens=16,
        temperature=0,
    )
    assert out.instructions == "You answer in one short sentence."
    assert out.output_text
    items = client.responses.input_items.list(out.id, order="asc")
    assert [i.type for i in items.data] == ["message"] * 3
    assert [getattr(i, "role", None) for i in items.data] == ["user", "assistant", "user"]
    assert all(i.id for i in items.data)


def _raw_events(server: LiveServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event of a streamed create, read off the wire."""
    events: list[tuple[str, dict[str, Any]]] = []
    url = f"{server.base_url}/v1/responses"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                assert line != "data: [DONE]"
                data = json.loads(line[len("data: ") :])
                assert name == data["type"]
                events.append((name, data))
    return events


def _check_sequence(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every event is one of the SDK's types, numbered 0, 1, 2, ...; their names."""
    for n, (_, data) in enumerate(events):
        STREAM_EVENT.validate_python(data)
        assert data["sequence_number"] == n
    return [name for name, _ in events]


def test_stream_event_order_and_final_response(
    client: openai.OpenAI, embedded_server: LiveServer
) -> None:
    body = {"model": MODEL, "input": "Write one sentence about apples.", "temperature": 0}
    events = _raw_events(embedded_server, {**body, "max_output_tokens": 60})
    names = _check_sequence(events)
    deltas = names.count("response.output_text.delta")
    assert deltas > 1
    last = names[-1]
    assert last in ("response.completed", "response.incomplete")
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]
    streamed = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == streamed
    assert events[0][1]["response"]["status"] == "in_progress"

    # the SDK's own stream helper agrees, and its final response is the streamed text
    body = {**body, "input": "Say hi.", "instructions": "Answer in a few words."}
    with client.responses.stream(**body, max_output_tokens=200) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        response = stream.get_final_response()
    assert response.output_text == text and response.status == "completed"


def test_function_tool_round_trip(client: openai.OpenAI, embedded_server: LiveServer) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(
        model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_output_tokens=60,
    )  # fmt: skip
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "get_weather" and call.status == "completed"
    GetWeather.model_validate_json(call.arguments)
    answer = client.responses.create(
        model=MODEL,
        input=[
            *ask,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=16,
    )
    assert answer.output[0].type == "message" and answer.output_text
    items = client.responses.input_items.list(answer.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]

    # streamed: the call's arguments as delta events, then done with the whole JSON
    events = _raw_events(
        embedded_server,
        {"model": MODEL, "input": ask, "tools": [WEATHER],
         "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 60},
    )  # fmt: skip
    names = _check_sequence(events)
    assert "response.function_call_arguments.delta" in names
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    GetWeather.model_validate_json(done["arguments"])
    pieces = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    assert "".join(pieces) == done["arguments"]


def test_custom_tool_input_follows_its_lark_grammar(
    client: openai.OpenAI, embedded_server: LiveServer
) -> None:
    for _ in range(2):  # sampled at temperature 1: the grammar holds every time
        out = client.responses.create(
            model=MODEL, input="What is 12 plus 30?", tools=[CALC],
            tool_choice={"type": "custom", "name": "calc"}, temperature=1.0,
            max_output_tokens=40,
        )  # fmt: skip
        (call,) = out.output
        assert call.type == "custom_tool_call" and call.name == "calc"
        assert call.call_id.startswith("call_")
        assert SUM.fullmatch(call.input), call.input
    events = _raw_events(
        embedded_server,
        {"model": MODEL, "input": "2 plus 2?", "tools": [CALC], "tool_choice": "required",
         "parallel_tool_calls": False, "max_output_tokens": 40},
    )  # fmt: skip
    names = _check_sequence(events)
    assert "response.custom_tool_call_input.delta" in names
    done = next(d for n, d in events if n == "response.custom_tool_call_input.done")
    assert SUM.fullmatch(done["input"])
    # the call goes back as an item, its result as custom_tool_call_output
    call = events[-1][1]["response"]["output"][0]
    again = client.responses.create(
        model=MODEL, tools=[CALC], tool_choice="none", max_output_tokens=30,
        input=[{"role": "user", "content": "2 plus 2?"}, call,
               {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "4"}],
    )  # fmt: skip
    assert again.output_text


def test_a_bad_custom_grammar_is_a_400_naming_the_tool(client: openai.OpenAI) -> None:
    bad = {**CALC, "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=MODEL, input="hi", tools=[{"type": "web_search"}, bad], max_output_tokens=4
        )
    assert info.value.body["param"] == "tools[1].format"  # type: ignore[index]


def test_chat_completions_take_custom_tools_too(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 5 minus 2?"}],
        tools=[{"type": "custom", "custom": {"name": "calc", "format": {
            "type": "grammar", "grammar": {"syntax": "lark", "definition": SUM_GRAMMAR}}}}],
        tool_choice={"type": "custom", "custom": {"name": "calc"}},
        max_tokens=40,
    )  # fmt: skip
    (call,) = out.choices[0].message.tool_calls or []
    assert call.type == "custom" and call.custom.name == "calc"
    assert SUM.fullmatch(call.custom.input)
    assert out.choices[0].finish_reason == "tool_calls"


def test_parse_with_a_pydantic_text_format(client: openai.OpenAI) -> None:
    out = client.responses.parse(
        model=MODEL,
        input="Invent a person.",
        text_format=Person,
        temperature=0,
        max_output_tokens=120,
    )
    assert isinstance(out.output_parsed, Person)
    assert out.text.format.type == "json_schema"


def test_json_object_and_logprobs(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL,
        input="A JSON object about a cat.",
        text={"format": {"type": "json_object"}},
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        max_output_tokens=80,
    )
    if out.status == "completed":
        assert isinstance(json.loads(out.output_text), dict)
    part = out.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs and len(part.logprobs[0].top_logprobs) == 2
    assert "".join(lp.token for lp in part.logprobs) == out.output_text


def test_previous_response_id_continues_through_the_prompt_cache(
    client: openai.OpenAI, embedded_server: LiveServer
) -> None:
    # instructions are not carried over (OpenAI's rule): clients send them every turn
    rules = "You are a helpful assistant."
    first = client.responses.create(
        model=MODEL,
        instructions=rules,
        input="My name is Ada and I like green tea.",
        temperature=0,
        max_output_tokens=30,
    )
    second = client.responses.create(
        model=MODEL,
        instructions=rules,
        input="What is my name?",
        previous_response_id=first.id,
        temperature=0,
        max_output_tokens=30,
    )
    assert second.previous_response_id == first.id
    one, two = first.usage, second.usage
    assert one is not None and two is not None
    # turn 2's prompt holds turn 1 (its input and its answer) before the new question ...
    assert two.input_tokens > one.input_tokens + one.output_tokens
    # ... and the engine read that part from its cache: turn 1's whole prompt at least
    cached = two.input_tokens_details.cached_tokens
    print(f"turn 1: {one.input_tokens} + {one.output_tokens} tokens; turn 2: {two.input_tokens}")
    print(f"turn 2: {cached} of its {two.input_tokens} input tokens read from the cache")
    backend = httpx.get(f"{embedded_server.base_url}/health").json()["backend"]
    if backend != "torch":  # the MLX and GGUF engines keep a prompt cache; torch has none
        assert cached >= one.input_tokens
    items = client.responses.input_items.list(second.id).data
    assert [i.type for i in items] == ["message"]  # its own input, not the chain's
    # without the instructions the template's own default system prompt comes first, and
    # the cache serves only the common start
    third = client.responses.create(
        model=MODEL, input="And what do I like?", previous_response_id=second.id,
        max_output_tokens=8,
    )  # fmt: skip
    assert third.instructions is None and third.usage is not None
    assert third.usage.input_tokens > two.input_tokens


def test_retrieve_input_items_delete_and_404s(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL, input="Hello", metadata={"run": "t1"}, max_output_tokens=8
    )
    again = client.responses.retrieve(out.id)
    assert again.model_dump() == out.model_dump()
    assert again.metadata == {"run": "t1"}
    items = client.responses.input_items.list(out.id)
    (item,) = items.data
    assert item.type == "message" and item.content[0].text == "Hello"  # type: ignore[union-attr]
    assert items.first_id == item.id == items.last_id and not items.has_more
    client.responses.delete(out.id)
    for call in (
        lambda: client.responses.retrieve(out.id),
        lambda: client.responses.delete(out.id),
        lambda: client.responses.input_items.list(out.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=out.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert out.id in info.value.body["message"]  # type: ignore[index]


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    out = client.responses.create(model=MODEL, input="Hi", store=False, max_output_tokens=4)
    assert out.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(out.id)


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL, input="Tell me a long story.", max_output_tokens=3, temperature=0
    )
    assert out.status == "incomplete"
    assert out.incomplete_details is not None
    assert out.incomplete_details.reason == "max_output_tokens"
    assert out.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert out.usage is not None and out.usage.output_tokens == 3


def test_hosted_tools_are_left_out_and_said_so(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL,
        input="Hi",
        tools=[{"type": "web_search"}, WEATHER, {"type": "mcp", "server_label": "deepwiki",
               "server_url": "https://example.com/mcp"}],
        max_output_tokens=8,
    )  # fmt: skip
    unserved = out.model_extra["pomar_unserved_tools"]  # type: ignore[index]
    assert unserved == [
        {"index": 0, "type": "web_search", "name": None},
        {"index": 2, "type": "mcp", "name": "deepwiki"},
    ]
    assert [t.type for t in out.tools] == ["web_search", "function", "mcp"]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=MODEL,
            input="Hi",
            tools=[{"type": "web_search"}],
            tool_choice={"type": "web_search"},  # type: ignore[arg-type,typeddict-item]
        )
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ],
)
def test_refusals_name_the_parameter(
    embedded_server: LiveServer, body: dict[str, Any], param: str
) -> None:
    request = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, **body}
    response = httpx.post(f"{embedded_server.base_url}/v1/responses", json=request, timeout=120)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_an_agents_sdk_agent_with_one_tool_completes_a_run(embedded_server: LiveServer) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
    from agents.models.openai_responses import OpenAIResponsesModel

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    client = openai.AsyncOpenAI(base_url=f"{embedded_server.base_url}/v1", api_key="unused")
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather with the get_weather tool. "
        "After the tool answers, reply in one short sentence.",
        tools=[get_weather],
        # the first turn must call the tool (once); the SDK then resets tool_choice to
        # auto, and the model answers with the tool's result in its context
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=120
        ),
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert calls, "the agent did not call its tool"
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert kinds[-1] == "message_output_item"
    assert isinstance(result.final_output, str) and result.final_output
