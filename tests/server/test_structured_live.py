"""Structured output (`response_format`) through a real server and the `openai` SDK.

The tiny model is random: whatever it wants to say, constrained decoding must turn it
into JSON that parses and validates. Every test runs on both backends.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from live_server import LiveServer, client_for
from schemas import Person

HI = [{"role": "user", "content": "Describe a person as JSON."}]


def json_schema_format(strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": Person.model_json_schema(), "strict": strict},
    }


def test_json_schema_output_validates(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = client.chat.completions.create(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        response_format=json_schema_format(),  # type: ignore[arg-type]
        max_tokens=120,
        n=4,
        temperature=1.0,
        seed=7,
    )
    assert len(out.choices) == 4
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice.message.content
        Person.model_validate_json(choice.message.content or "")


def test_streamed_json_schema_output_validates(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    stream = client.chat.completions.create(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        response_format=json_schema_format(strict=False),  # type: ignore[arg-type]
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Person.model_validate_json(text)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_mode_answers_one_object(tiny_server: LiveServer) -> None:
    from transformers import AutoTokenizer

    # a random model writes endless keys in JSON mode; a bias for "}" ends the object,
    # and the mask must beat the bias for "[" (JSON, but not an object)
    tokenizer = AutoTokenizer.from_pretrained(tiny_server.model)
    bias = {str(tokenizer.convert_tokens_to_ids(t)): b for t, b in [("[", 100), ("{", 50)]}
    bias[str(tokenizer.convert_tokens_to_ids("}"))] = 90
    out = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        logit_bias=bias,
        max_tokens=20,
        temperature=0,
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == "{}"
    # without the mask the bias wins
    free = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        logit_bias=bias,
        max_tokens=2,
        temperature=0,
    )
    assert (free.choices[0].message.content or "").startswith("[")


def test_sdk_parse_fills_the_pydantic_model(tiny_server: LiveServer) -> None:
    out = client_for(tiny_server).chat.completions.parse(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        response_format=Person,
        max_tokens=120,
        temperature=0,
    )
    assert isinstance(out.choices[0].message.parsed, Person)


def test_text_format_is_plain_text(tiny_server: LiveServer) -> None:
    out = client_for(tiny_server).chat.completions.create(
        model=tiny_server.model,
        messages=HI,  # type: ignore[arg-type]
        response_format={"type": "text"},
        max_tokens=6,
        temperature=0,
    )
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("response_format", "param", "needle"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
            "response_format",
            "strin",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
            "response_format",
            "nope",
        ),
        ({"type": "json_schema"}, "response_format.json_schema", "required"),
        ({"type": "yaml"}, "response_format.type", "json_schema"),
    ],
)
def test_bad_response_formats_are_400s(
    tiny_server: LiveServer, response_format: dict[str, Any], param: str, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_for(tiny_server).chat.completions.create(
            model=tiny_server.model,
            messages=HI,  # type: ignore[arg-type]
            response_format=response_format,  # type: ignore[arg-type]
            max_tokens=4,
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert needle in error["message"]
