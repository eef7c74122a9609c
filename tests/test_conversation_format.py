"""One conversation format: a model is trained on the very tokens it is served with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatfmt.template import TemplateError, render, render_chatml
from chatfmt.tokenizer import load_tokenizer
from datalab.record import ChatRecord
from datalab.tokens import TokenCounter
from datalab.writers import render_chatml as datalab_chatml
from finetune.data import tokenize_example
from server.engine.templates import ChatTemplate

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Lisboa"}'},
}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You help travellers."},
    {"role": "user", "content": "Weather in Lisboa?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"},
    {"role": "assistant", "content": "It is sunny in Lisboa, 24 C."},
]
# a template that renders tools itself (as Qwen's and Llama 3's do)
NATIVE_TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTOOLS ' + (tools | tojson) + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{{ 'CALL ' + (call['function'] | tojson) }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(params=["chatml", "native-tools"])
def tokenizer(request: pytest.FixtureRequest, tiny_model_path: Path) -> Any:
    loaded = load_tokenizer(tiny_model_path)
    loaded.chat_template = None if request.param == "chatml" else NATIVE_TOOLS_TEMPLATE
    return loaded


def test_training_tokens_are_the_served_prompt_then_the_answer(tokenizer: Any) -> None:
    ids, mask = tokenize_example(tokenizer, CONVERSATION, max_length=4096, tools=TOOLS)
    served = ChatTemplate(tokenizer)
    for index, message in enumerate(CONVERSATION):
        if message["role"] != "assistant":
            continue
        prompt = served.encode(CONVERSATION[:index], TOOLS)
        # the prompt the server builds for this turn is, token for token, what training saw
        # before the turn, and the trained tokens start right where generation starts
        assert ids[: len(prompt)] == prompt
        assert mask[len(prompt)] and not mask[len(prompt) - 1]


def test_the_tool_call_is_trained_as_the_server_parses_it(tokenizer: Any) -> None:
    ids, mask = tokenize_example(tokenizer, CONVERSATION, max_length=4096, tools=TOOLS)
    trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    if tokenizer.chat_template is None:
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisboa"}}' in trained
    else:
        assert 'CALL {"name": "get_weather", "arguments": {"city": "Lisboa"}}' in trained
    assert "It is sunny in Lisboa" in trained


def test_datalab_counts_and_writes_the_same_text(tokenizer: Any) -> None:
    record = ChatRecord.model_validate({"messages": CONVERSATION, "tools": TOOLS})
    whole = render(tokenizer, CONVERSATION, TOOLS, add_generation_prompt=False)
    assert TokenCounter(tokenizer).render(record) == (
        whole if tokenizer.chat_template else render_chatml(CONVERSATION, TOOLS)
    )
    if tokenizer.chat_template is None:
        # ChatML without a tokenizer is the fallback template's text
        assert datalab_chatml(record) == whole


def test_a_template_that_refuses_raises_template_error(tiny_model_path: Path) -> None:
    loaded = load_tokenizer(tiny_model_path)
    loaded.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(TemplateError, match="no system role"):
        render(loaded, CONVERSATION, None, add_generation_prompt=True)
