"""Prompt rendering through the model's own chat template, ChatML when it has none.

Tools go through the template when it reads a `tools` variable (its own tool format);
otherwise `server.engine.tools` describes them in a system block and rewrites calls and
tool results into plain turns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.engine.tools import render_messages, template_takes_tools
from server.errors import InvalidRequest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplate:
    """Renders messages to prompt token ids with one tokenizer and one template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.template: str = tokenizer.chat_template or CHATML_TEMPLATE
        self.is_fallback = tokenizer.chat_template is None
        #: the template renders `tools` itself
        self.native_tools = template_takes_tools(self.template)

    def render(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> str:
        """The prompt text, ending with the assistant's generation prompt.

        `messages` are OpenAI-shaped (assistant `tool_calls`, `tool` results); `tools` are
        OpenAI function tools to offer, or None.
        """
        turns = render_messages(messages, tools, native=self.native_tools)
        extra = {"tools": list(tools)} if tools and self.native_tools else {}
        try:
            text = self._tokenizer.apply_chat_template(
                turns,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=True,
                **extra,
            )
        except Exception as exc:  # jinja raises on conversations a template refuses
            raise InvalidRequest(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        return str(text)

    def encode(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt token ids; the template already holds any special tokens it needs."""
        ids = self._tokenizer.encode(self.render(messages, tools), add_special_tokens=False)
        return list(ids)


def end_of_turn_ids(tokenizer: Any, model_path: Path) -> frozenset[int]:
    """Token ids that end a completion: eos, generation_config's eos, and `<|im_end|>`."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_config = model_path / "generation_config.json"
    if gen_config.is_file():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    # a ChatML model that opens a new turn has finished its own
    for marker in ("<|im_end|>", "<|im_start|>"):
        token = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return frozenset(int(i) for i in ids)


def sampling_defaults(model_path: Path) -> dict[str, float]:
    """The model's own temperature / top_p from generation_config.json, if it has them.

    Used when a request names none (OpenAI's own default is 1.0 for both), as vLLM does:
    small instruct models are tuned for lower temperatures than 1.
    """
    path = model_path / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if config.get("do_sample") is False:
        return {}
    return {k: float(config[k]) for k in ("temperature", "top_p") if config.get(k) is not None}
