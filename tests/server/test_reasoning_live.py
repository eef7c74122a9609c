"""A reasoning model served live: its `<think>` block goes to `reasoning_content` (or
`reasoning`, or both), streamed as reasoning deltas, counted in `reasoning_tokens`, and
`reasoning_effort` drives its template's thinking switch.

The model is the tiny test model with a Qwen3-style template: the generation prompt
opens `<think>` unless `enable_thinking` is false. Its random weights never close the
block, so every completion is reasoning cut by `max_tokens` (`finish_reason: "length"`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.live_server import LiveServer
from tests.tiny_model import IM_END, IM_START

THINKING_TEMPLATE = (
    "{% for m in messages %}" + IM_START + "{{ m.role }}\n{{ m.content }}" + IM_END + "\n"
    "{% endfor %}{% if add_generation_prompt %}" + IM_START + "assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def thinking_model(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("thinking") / "tiny-thinker"
    shutil.copytree(tiny_model_path, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = THINKING_TEMPLATE
    config_path.write_text(json.dumps(config))
    return folder


def _server(model: Path, home: Path, field: str | None) -> Iterator[LiveServer]:
    env = {"POMAR_REASONING_FIELD": field} if field else {}
    server = LiveServer(model=str(model), backend="torch", home=home, env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def thinker(thinking_model: Path, pomar_home: Path) -> Iterator[LiveServer]:
    yield from _server(thinking_model, pomar_home, None)


@pytest.fixture(scope="module")
def thinker_both(thinking_model: Path, pomar_home: Path) -> Iterator[LiveServer]:
    yield from _server(thinking_model, pomar_home, "both")


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def test_reasoning_goes_to_reasoning_content_not_content(thinker: LiveServer) -> None:
    client = _client(thinker)
    done = client.chat.completions.create(
        model=thinker.model,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    choice = done.choices[0]
    extra = choice.message.model_extra or {}
    assert choice.finish_reason == "length"  # cut inside the block, the reasoning kept
    assert isinstance(extra.get("reasoning_content"), str) and extra["reasoning_content"]
    assert "reasoning" not in extra and choice.message.content == ""
    assert done.usage is not None and done.usage.completion_tokens_details is not None
    assert done.usage.completion_tokens_details.reasoning_tokens == 12

    stream = client.chat.completions.create(
        model=thinker.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    thought, content, usage = "", "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            thought += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
    assert thought == extra["reasoning_content"] and content == ""
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 12


def test_the_field_name_is_a_setting(thinker_both: LiveServer) -> None:
    done = _client(thinker_both).chat.completions.create(
        model=thinker_both.model,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    extra = done.choices[0].message.model_extra or {}
    assert extra["reasoning"] and extra["reasoning"] == extra["reasoning_content"]


def test_reasoning_effort_none_turns_thinking_off(thinker: LiveServer) -> None:
    done = _client(thinker).chat.completions.create(
        model=thinker.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        reasoning_effort="none",
    )
    message = done.choices[0].message
    assert message.content  # the template closed the block: all of it is the answer
    assert "reasoning_content" not in (message.model_extra or {})
    assert done.usage is not None and done.usage.completion_tokens_details is not None
    assert done.usage.completion_tokens_details.reasoning_tokens == 0


def test_reasoning_effort_is_refused_by_a_model_without_a_switch(
    tiny_model_path: Path, embedded_server: LiveServer
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(embedded_server).chat.completions.create(
            model="smollm2-135m-instruct",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            reasoning_effort="high",
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "reasoning_effort"
    assert "thinking switch" in error["message"]
