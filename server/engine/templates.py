"""Prompts for serving: the conversation format (`chatfmt`) over a model's tokenizer,
its end-of-turn tokens and its own sampling defaults."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from chatfmt.families import Family
from chatfmt.template import TemplateError, fallback_of, render, template_of
from chatfmt.tools import template_takes_tools
from server.engine.chatformat import ModelFormat, model_format
from server.errors import InvalidRequest

log = logging.getLogger(__name__)


class ChatTemplate:
    """Renders messages to prompt token ids with one tokenizer and one template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.template: str = template_of(tokenizer)
        self.is_fallback = not getattr(tokenizer, "chat_template", None)
        #: the family format standing in for a missing template (None: the model's own)
        self.family: Family | None = None
        if self.is_fallback:
            choice = fallback_of(tokenizer)
            self.family = choice.family
            log.info("chat template: %s (none in the model; %s)", choice.family.name, choice.reason)
        else:
            log.info("chat template: the model's own")
        #: the template renders `tools` itself
        self.native_tools = template_takes_tools(self.template)

    @cached_property
    def format(self) -> ModelFormat:
        """How this model writes tool calls and reasoning (read from template and vocabulary)."""
        return model_format(self.template, self._tokenizer)

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text, ending with the assistant's generation prompt.

        `messages` are OpenAI-shaped (assistant `tool_calls`, `tool` results); `tools` are
        OpenAI function tools to offer, or None; `variables` are extra template variables
        (a thinking switch). Training renders the same way (`chatfmt.template`).
        """
        try:
            return render(
                self._tokenizer,
                messages,
                tools,
                add_generation_prompt=True,
                template=self.template,
                variables=variables,
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from exc

    def encode(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        """Prompt token ids; the template already holds any special tokens it needs."""
        return self.tokenize(self.render(messages, tools, variables))

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt."""
        return list(self._tokenizer.encode(prompt, add_special_tokens=False))


def end_of_turn_ids(tokenizer: Any, model_path: Path) -> frozenset[int]:
    """Token ids that end a completion: eos, generation_config's eos, and `<|im_end|>`.

    A tokenizer without a chat template is prompted in its family's format
    (`chatfmt.template.fallback_of`): that family's end-of-turn tokens end it too.
    """
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_config = model_path / "generation_config.json"
    if gen_config.is_file():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    # a ChatML model that opens a new turn has finished its own
    markers = ["<|im_end|>", "<|im_start|>"]
    if not getattr(tokenizer, "chat_template", None):
        markers += fallback_of(tokenizer).family.end_of_turn
    for marker in markers:
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
