"""Gemma 3 270M (base, Q4_K_M GGUF from PyPI) served by pomar on llama.cpp.

The file has no chat template: pomar must fall back to Gemma's own turn format
(`<start_of_turn>user ... <end_of_turn>`), not ChatML, whose markers are plain text to
Gemma. A base model says little of use in a chat, so its answers are held to form (the
prompt it was given, tool calls and JSON that validate, no markup leaking into text),
and its knowledge is checked on plain completions and prompt scoring.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from live_server import LiveServer, client_for
from openai import OpenAI
from openai.types.chat import ChatCompletion
from realmodel_checks import (
    GEMMA_ID,
    answer_tool_result,
    assert_scoring_prefers,
    assert_stream_equals_whole,
    assert_well_formed_answer,
    chat,
    named_call,
    required_call,
    structured_city_facts,
)

pytestmark = pytest.mark.slow

MODEL = GEMMA_ID
QUESTION = "What is the capital of France?"
MARKUP = ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="module")
def client(gemma_server: LiveServer) -> OpenAI:
    return client_for(gemma_server)


def prompt_tokens_of_text(client: OpenAI, text: str) -> int:
    """How many tokens the server reads `text` as (BOS included), special markers whole."""
    out = client.completions.create(model=MODEL, prompt=text, echo=True, max_tokens=0, logprobs=0)
    tokens = out.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert tokens is not None
    assert tokens.count("<start_of_turn>") == text.count("<start_of_turn>"), tokens
    assert out.usage is not None
    return out.usage.prompt_tokens


def chat_prompt_tokens(client: OpenAI, messages: list[dict[str, str]]) -> int:
    out = chat(client, MODEL, messages, max_tokens=1)
    assert out.usage is not None
    return out.usage.prompt_tokens


def test_imported_and_served_on_llama_cpp(gemma_server: LiveServer, client: OpenAI) -> None:
    health = httpx.get(f"{gemma_server.base_url}/health").json()
    assert (health["model"], health["backend"]) == (MODEL, "gguf")
    assert MODEL in {m.id for m in client.models.list().data}


def test_chat_prompt_uses_gemma_turns(client: OpenAI) -> None:
    """With no template in the file, the prompt is Gemma 3's format, token for token."""
    gemma = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
    assert chat_prompt_tokens(client, [{"role": "user", "content": QUESTION}]) == (
        prompt_tokens_of_text(client, gemma)
    )


def test_system_and_history_use_gemma_turns(client: OpenAI) -> None:
    """Gemma has no system role: it opens the first user turn; the assistant is `model`."""
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": QUESTION},
    ]
    gemma = (
        "<start_of_turn>user\nAnswer briefly.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
    )
    assert chat_prompt_tokens(client, messages) == prompt_tokens_of_text(client, gemma)


def test_chat_streams_plain_text(client: OpenAI) -> None:
    text = assert_stream_equals_whole(
        client, MODEL, [{"role": "user", "content": QUESTION}], max_tokens=12
    )
    assert text.strip()
    assert not any(marker in text for marker in MARKUP), text


def test_plain_completion_knows_paris(client: OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="The Eiffel Tower is in the city of", temperature=0, max_tokens=4
    )
    assert "Paris" in out.choices[0].text


@pytest.fixture(scope="module")
def forced_call(client: OpenAI) -> ChatCompletion:
    """A `tool_choice: "required"` answer (checked by `required_call`), made once."""
    return required_call(client, MODEL)


def test_required_tool_call(forced_call: ChatCompletion) -> None:
    assert forced_call.choices[0].message.tool_calls


def test_named_tool_call(client: OpenAI) -> None:
    named_call(client, MODEL)


def test_tool_result_round_trip(client: OpenAI, forced_call: ChatCompletion) -> None:
    """A forced call, its result sent back as a `tool` message, and an answer.

    Gemma's turns know only user and model: the call and its result must still be
    rendered (not refused) and the answer be text or calls that validate.
    """
    final = answer_tool_result(client, MODEL, forced_call, max_tokens=24)
    text = assert_well_formed_answer(final.choices[0])
    assert text is None or not any(marker in text for marker in MARKUP), text


def test_structured_output_validates(client: OpenAI) -> None:
    structured_city_facts(client, MODEL, max_tokens=80)


def test_no_fill_in_the_middle(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="def f(", suffix="):\n", max_tokens=4)
    assert "fill-in-the-middle" in str(caught.value)


def test_prompt_scoring(client: OpenAI) -> None:
    assert_scoring_prefers(
        client, MODEL, "The capital of France is Paris.", "The capital of France is Berlin."
    )
