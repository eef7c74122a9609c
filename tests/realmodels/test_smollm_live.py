"""SmolLM2-135M-Instruct (llama arch, ChatML) imported as a bare GGUF file and served.

The embedded model is tested at length elsewhere through its imported Hugging Face folder;
here its GGUF file goes through `pomar models import FILE.gguf` like any downloaded GGUF
(template and tokenizer from the file's metadata), and answers the matrix's short list.
"""

from __future__ import annotations

import pytest
from live_server import LiveServer, client_for
from openai import OpenAI
from realmodel_checks import (
    SMOLLM_ID,
    answer_tool_result,
    assert_scoring_prefers,
    assert_stream_equals_whole,
    assert_well_formed_answer,
    chat,
    required_call,
    structured_city_facts,
)

from tests.prompts import PARIS_QUESTION

pytestmark = pytest.mark.slow

MODEL = SMOLLM_ID
PARIS = [{"role": "user", "content": PARIS_QUESTION}]


@pytest.fixture(scope="module")
def client(smollm_server: LiveServer) -> OpenAI:
    return client_for(smollm_server)


def test_chat_and_stream(client: OpenAI) -> None:
    out = chat(client, MODEL, PARIS, max_tokens=20)
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason == "stop"
    assert assert_stream_equals_whole(client, MODEL, PARIS, max_tokens=20) == (
        out.choices[0].message.content
    )


def test_tool_round_trip(client: OpenAI) -> None:
    """A required call, its result sent back, and an answer in words that uses it."""
    first = required_call(client, MODEL)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    final = answer_tool_result(client, MODEL, first, max_tokens=40)
    text = assert_well_formed_answer(final.choices[0])
    assert text is not None and "18" in text, final.choices[0]


def test_structured_output_validates(client: OpenAI) -> None:
    structured_city_facts(client, MODEL, max_tokens=80)


def test_prompt_scoring(client: OpenAI) -> None:
    assert_scoring_prefers(
        client, MODEL, "The capital of France is Paris.", "The capital of France is Berlin."
    )
