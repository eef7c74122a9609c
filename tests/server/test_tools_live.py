"""Tool calling through a real server, driven by the `openai` SDK and its own parsing.

On the tiny random model only constrained decoding can produce a call, so `required`
and named tool choices show the guarantee on both backends; the embedded model makes
one realistic round trip.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from live_server import LiveServer, client_for
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel
from schemas import Add, GetWeather

TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Add)]
ARGS: dict[str, type[BaseModel]] = {"GetWeather": GetWeather, "Add": Add}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


def check_call(call: Any, names: set[str]) -> BaseModel:
    """A valid call: OpenAI's id and type, an offered name, arguments that validate."""
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in names
    return ARGS[call.function.name].model_validate_json(call.function.arguments)


def test_required_yields_one_valid_call(tiny_server: LiveServer) -> None:
    out = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        n=3,
        seed=3,
        temperature=1.0,
    )
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        check_call(calls[0], {"GetWeather", "Add"})


def test_named_choice_calls_that_function(tiny_server: LiveServer) -> None:
    out = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Add"}},
        max_tokens=60,
        temperature=0,
    )
    (call,) = out.choices[0].message.tool_calls or []
    assert isinstance(check_call(call, {"Add"}), Add)


def test_streamed_call_fragments_as_openai_sends_them(tiny_server: LiveServer) -> None:
    stream = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    fragments = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or []]
    first, rest = fragments[0], fragments[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.type == "function" and first.function and first.function.name == "GetWeather"
    assert rest and all(f.index == 0 and f.id is None and f.function for f in rest)
    arguments = "".join((f.function.arguments or "") for f in fragments if f.function)
    GetWeather.model_validate_json(arguments)


def test_sdk_parse_with_pydantic_function_tools(tiny_server: LiveServer) -> None:
    out = client_for(tiny_server).chat.completions.parse(
        model=tiny_server.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # a random model may repeat calls up to max_tokens
        max_tokens=100,
        temperature=0,
    )
    calls = out.choices[0].message.tool_calls or []
    assert calls and all(isinstance(c.function.parsed_arguments, GetWeather | Add) for c in calls)


def round_trip(client: openai.OpenAI, model: str, *, stream: bool) -> tuple[Any, Any]:
    """Call (required) -> tool result -> answer; returns (call completion, answer)."""
    if stream:
        with client.chat.completions.stream(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,  # one call, then the grammar ends the turn
            max_tokens=80,
            temperature=0,
            stream_options={"include_usage": True},
        ) as events:
            kinds = {event.type for event in events}
            first = events.get_final_completion()
        assert "tool_calls.function.arguments.done" in kinds
        assert first.choices[0].message.tool_calls[0].function.parsed_arguments is not None
    else:
        first = client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            temperature=0,
        )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    results: list[ChatCompletionMessageParam] = [
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": "22C"})}
        for call in message.tool_calls
    ]
    assistant: ChatCompletionMessageParam = {
        "role": "assistant",
        "tool_calls": [
            {"id": c.id, "type": "function", "function": c.function.model_dump()}  # type: ignore[typeddict-item]
            for c in message.tool_calls
        ],
    }
    answer = client.chat.completions.create(
        model=model,
        messages=[*ASK, assistant, *results],
        tools=TOOLS,  # auto: the model may call again or answer
        max_tokens=5,
        temperature=0,
    )
    return first, answer


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip(tiny_server: LiveServer, stream: bool) -> None:
    client = client_for(tiny_server)
    first, answer = round_trip(client, tiny_server.model, stream=stream)
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)
    # the call and its result went back into the prompt
    grown = answer.usage.prompt_tokens - first.usage.prompt_tokens
    assert grown > first.usage.completion_tokens


def test_auto_round_trip_on_the_embedded_model(embedded_server: LiveServer) -> None:
    client = client_for(embedded_server)
    tools = [TOOLS[0]]
    call = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=ASK,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,  # a 135M model repeats calls when it may
        max_tokens=40,
        temperature=0,
    )
    assert call.choices[0].finish_reason == "tool_calls"
    (made,) = call.choices[0].message.tool_calls or []
    weather = check_call(made, {"GetWeather"})
    assert isinstance(weather, GetWeather) and "Paris" in weather.city
    answer = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[
            *ASK,
            call.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": made.id, "content": "Sunny, 22 degrees Celsius."},
        ],
        tools=tools,  # auto: the model may call again or answer
        max_tokens=40,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    # the tool result reached the model (this small one mostly echoes it back)
    assert "22" in (choice.message.content or ""), choice.message.content


@pytest.mark.parametrize(
    ("kw", "param", "needle"),
    [
        ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools'"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "Nope"}}},
            "tool_choice",
            "Nope",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "x"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
            "'f'",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "unique"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "'function', 'custom'"),
        (
            {
                "tools": [
                    {
                        "type": "custom",
                        "custom": {
                            "name": "c",
                            "format": {
                                "type": "grammar",
                                "grammar": {"syntax": "lark", "definition": "start: nowhere"},
                            },
                        },
                    }
                ]
            },
            "tools[0].custom.format",
            "'c'",
        ),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "not supported"),
    ],
)
def test_tool_errors_are_400s(
    tiny_server: LiveServer, kw: dict[str, Any], param: str, needle: str
) -> None:
    client = client_for(tiny_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=tiny_server.model,
            messages=ASK,
            max_tokens=4,
            extra_body=kw if "functions" in kw else None,
            **({} if "functions" in kw else kw),
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert needle in error["message"], error
