"""What the real-model suites ask of every model, through the official `openai` SDK.

Schemas are written as a user would write them (strings and numbers without bounds, so
the server's own caps must end a runaway value), tools are plain functions, and every
request is greedy (temperature 0) with a short max_tokens.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageToolCall
from pydantic import BaseModel, ConfigDict, Field

#: the ids the families are imported under (`pomar models import FILE --id ID`)
QWEN_ID = "qwen2.5-coder-0.5b-instruct"
GEMMA_ID = "gemma-3-270m"
SMOLLM_ID = "smollm2-135m-gguf"


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    model_config = ConfigDict(extra="forbid")

    city: str
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """Get the current local time in a city."""

    model_config = ConfigDict(extra="forbid")

    city: str


class CityFacts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    city: str
    country: str
    population_millions: float
    #: a bound the user gives (maxItems): without one a small model lists landmarks until
    #: max_tokens, which server-side caps (1,024 items) do not prevent
    landmarks: list[str] = Field(max_length=3)


def function_tool(schema: type[BaseModel], name: str) -> dict[str, Any]:
    """An OpenAI function tool whose parameters are the pydantic model's JSON schema."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": (schema.__doc__ or "").strip(),
            "parameters": schema.model_json_schema(),
        },
    }


WEATHER = function_tool(GetWeather, "get_weather")
TIME = function_tool(GetTime, "get_time")
TOOLS = [WEATHER, TIME]
TOOL_SCHEMAS: dict[str, type[BaseModel]] = {"get_weather": GetWeather, "get_time": GetTime}
WEATHER_QUESTION = [
    # Qwen2.5-Coder-0.5B writes a Markdown JSON block instead of a call without a system prompt
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris right now?"},
]
WEATHER_RESULT = {"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "sunny"}

CITY_FACTS_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city_facts", "schema": CityFacts.model_json_schema(), "strict": True},
}
CITY_FACTS_QUESTION = [
    {
        "role": "user",
        "content": "Give facts about Paris as JSON: the city, its country, its population "
        "in millions and two landmarks.",
    }
]


def chat(client: openai.OpenAI, model: str, messages: list[Any], **kw: Any) -> ChatCompletion:
    """A greedy chat completion."""
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=messages, **kw)


def streamed_text(
    client: openai.OpenAI, model: str, messages: list[Any], max_tokens: int
) -> tuple[str, str | None]:
    """The streamed answer's text and its finish_reason."""
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    return text, next((f for f in reversed(finish) if f), None)


def assert_stream_equals_whole(
    client: openai.OpenAI, model: str, messages: list[Any], max_tokens: int
) -> str:
    """Streamed and whole greedy answers are the same text with the same finish_reason."""
    whole = chat(client, model, messages, max_tokens=max_tokens)
    text, finish = streamed_text(client, model, messages, max_tokens)
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    return text


def validated_call(call: ChatCompletionMessageToolCall) -> BaseModel:
    """The call's arguments: JSON that validates against its function's schema."""
    assert call.type == "function"
    assert call.id, "a tool call needs an id to answer it with"
    schema = TOOL_SCHEMAS[call.function.name]
    return schema.model_validate_json(call.function.arguments)


def required_call(client: openai.OpenAI, model: str, **kw: Any) -> ChatCompletion:
    """`tool_choice: "required"` on the weather question: one call that validates."""
    out = chat(
        client,
        model,
        WEATHER_QUESTION,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        **kw,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1, choice.message
    validated_call(choice.message.tool_calls[0])  # type: ignore[arg-type]
    return out


def named_call(client: openai.OpenAI, model: str) -> GetTime:
    """`tool_choice` naming get_time on the weather question: that function, valid arguments."""
    out = chat(
        client,
        model,
        WEATHER_QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=80,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1, choice.message
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    args = validated_call(call)  # type: ignore[arg-type]
    assert isinstance(args, GetTime)
    return args


def answer_tool_result(
    client: openai.OpenAI, model: str, first: ChatCompletion, **kw: Any
) -> ChatCompletion:
    """Send the tool's result for `first`'s call back (tools still offered, `auto`, one call
    at most: a model that calls again must stop after that call)."""
    message = first.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    messages: list[Any] = [
        *WEATHER_QUESTION,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(WEATHER_RESULT)},
    ]
    kw.setdefault("parallel_tool_calls", False)
    return chat(client, model, messages, tools=TOOLS, tool_choice="auto", **kw)


def assert_well_formed_answer(choice: Any) -> str | None:
    """An answer after a tool result: valid tool calls, or text; its text when it is text.

    A call the model writes with its markers must come back as `tool_calls`: the markers
    never show in the content. (Call-like JSON without them is the model's text.)
    """
    message = choice.message
    if message.tool_calls:
        assert choice.finish_reason == "tool_calls", choice
        for call in message.tool_calls:
            validated_call(call)
        return None
    assert choice.finish_reason in ("stop", "length"), choice
    text: str = message.content or ""
    assert text.strip(), choice
    assert "<tool_call>" not in text and "</tool_call>" not in text, text
    return text


def structured_city_facts(client: openai.OpenAI, model: str, max_tokens: int) -> CityFacts:
    """`response_format` json_schema: the answer parses and validates, and ends by itself."""
    out = chat(
        client, model, CITY_FACTS_QUESTION, response_format=CITY_FACTS_FORMAT, max_tokens=max_tokens
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    return CityFacts.model_validate_json(choice.message.content or "")


def scored(client: openai.OpenAI, model: str, text: str) -> list[float]:
    """Prompt scoring (`echo`, `logprobs: 1`, `max_tokens: 0`): each token's logprob.

    All but the first prompt token have one: finite, at most 0, with the top alternative
    at least as likely. Returns the logprobs of tokens 1.. (the first is left out).
    """
    out = client.completions.create(
        model=model, prompt=text, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    choice = out.choices[0]
    assert choice.text == text
    assert out.usage is not None and out.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs is not None
    assert "".join(lp.tokens) == text
    assert len(lp.token_logprobs) == len(lp.tokens) >= 2
    rest = lp.token_logprobs[1:]
    assert all(v is not None for v in rest), f"null logprobs in {lp.token_logprobs}"
    values = [float(v) for v in rest if v is not None]
    assert all(math.isfinite(v) and v <= 0 for v in values), values
    if lp.top_logprobs is not None:
        for value, top in zip(values, lp.top_logprobs[1:], strict=True):
            if top:
                assert max(top.values()) >= value - 1e-3, (value, top)
    return values


def assert_scoring_prefers(client: openai.OpenAI, model: str, likely: str, unlikely: str) -> None:
    """Scored prompts: the true sentence is more likely than the false one."""
    assert sum(scored(client, model, likely)) > sum(scored(client, model, unlikely))
