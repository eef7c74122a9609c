"""Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from PyPI) served by pomar on llama.cpp.

An instruct model with Qwen's own chat template, `<tool_call>` as a single vocabulary
token, and fill-in-the-middle tokens: it answers, calls tools when it decides to, and
completes code between a prefix and a suffix.
"""

from __future__ import annotations

import json

import httpx
import pytest
from live_server import LiveServer, client_for
from openai import OpenAI
from openai.types.chat import ChatCompletion
from pydantic import ValidationError
from realmodel_checks import (
    QWEN_ID,
    TOOLS,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    GetWeather,
    answer_tool_result,
    assert_scoring_prefers,
    assert_stream_equals_whole,
    assert_well_formed_answer,
    chat,
    named_call,
    required_call,
    scored,
    structured_city_facts,
    validated_call,
)

pytestmark = pytest.mark.slow

MODEL = QWEN_ID
PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(qwen_server: LiveServer) -> OpenAI:
    return client_for(qwen_server)


def test_imported_and_served_on_llama_cpp(qwen_server: LiveServer, client: OpenAI) -> None:
    health = httpx.get(f"{qwen_server.base_url}/health").json()
    assert (health["model"], health["backend"]) == (MODEL, "gguf")
    assert MODEL in {m.id for m in client.models.list().data}


def test_chat_answers(client: OpenAI) -> None:
    out = chat(client, MODEL, PARIS, max_tokens=16)
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and 0 < out.usage.completion_tokens < 16


def test_stream_equals_whole(client: OpenAI) -> None:
    text = assert_stream_equals_whole(client, MODEL, PARIS, max_tokens=16)
    assert "Paris" in text


@pytest.fixture(scope="module")
def forced_call(client: OpenAI) -> ChatCompletion:
    """A `tool_choice: "required"` answer (one call that validates: `required_call`), once."""
    return required_call(client, MODEL)


def test_required_tool_call(forced_call: ChatCompletion) -> None:
    call = forced_call.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = validated_call(call)
    assert isinstance(args, GetWeather) and "paris" in args.city.lower()


def test_named_tool_call(client: OpenAI) -> None:
    assert "paris" in named_call(client, MODEL).city.lower()


def test_streamed_tool_call_assembles_to_the_whole_one(
    client: OpenAI, forced_call: ChatCompletion
) -> None:
    """The same request as `forced_call`, streamed."""
    kw = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,
            temperature=0,
            max_tokens=80,
            stream=True,
            **kw,
        )
    )
    name, arguments, finish = "", "", None
    for chunk in chunks:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            if delta.function is not None:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
    call = forced_call.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (name, json.loads(arguments)) == (
        call.function.name,  # type: ignore[union-attr]
        json.loads(call.function.arguments),  # type: ignore[union-attr]
    )
    assert finish == "tool_calls"


def test_auto_tool_round_trip(client: OpenAI) -> None:
    """The model decides to call get_weather; its result goes back and is answered.

    Qwen2.5-Coder-0.5B answers a tool result by writing the call again as bare JSON text
    (no `<tool_call>` token: its logprobs show `{"` first) until max_tokens, so the answer
    is held to form (calls parsed, no markers in the text), not to words. SmolLM2's suite
    checks a worded answer.
    """
    first = chat(client, MODEL, WEATHER_QUESTION, tools=TOOLS, tool_choice="auto", max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.tool_calls, choice.message
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in validated_call(call).model_dump()["city"].lower()
    assert not (choice.message.content or "").strip()

    final = answer_tool_result(client, MODEL, first, max_tokens=40)
    assert_well_formed_answer(final.choices[0])


def test_replayed_tool_result_is_answered(client: OpenAI) -> None:
    """A call and its result replayed by the client (as agents do) get a well-formed answer."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    messages = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(WEATHER_RESULT)},
    ]
    out = chat(client, MODEL, messages, tools=TOOLS, parallel_tool_calls=False, max_tokens=40)
    assert_well_formed_answer(out.choices[0])


def test_structured_output_validates(client: OpenAI) -> None:
    try:
        facts = structured_city_facts(client, MODEL, max_tokens=200)
    except ValidationError as exc:  # pragma: no cover - the message is the point
        raise AssertionError(f"the structured answer does not validate: {exc}") from exc
    assert facts.city == "Paris" and facts.country == "France"
    assert len(facts.landmarks) >= 1


def test_fill_in_the_middle(client: OpenAI) -> None:
    out = client.completions.create(
        model=MODEL,
        prompt="import math\n\n\ndef circle_area(r):\n    return ",
        suffix="\n\n\nprint(circle_area(2.0))\n",
        temperature=0,
        max_tokens=24,
    )
    text = out.choices[0].text
    assert text.splitlines()[0].replace(" ", "").startswith("math.pi*r**2"), text
    assert "<|fim" not in text and "<|endoftext|>" not in text


def test_plain_completion(client: OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=4
    )
    assert "Paris" in out.choices[0].text


def test_prompt_scoring(client: OpenAI) -> None:
    values = scored(client, MODEL, "def add(a, b):\n    return a + b\n")
    assert sum(values) / len(values) > -3  # code this plain is not a surprise to a coder
    assert_scoring_prefers(
        client, MODEL, "The capital of France is Paris.", "The capital of France is Berlin."
    )
