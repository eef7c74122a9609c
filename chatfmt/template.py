"""Conversations to prompt text through the model's own chat template, ChatML when it has none.

Tools go through the template when it reads a `tools` variable (its own tool format);
otherwise `chatfmt.tools` describes them in a system block and rewrites calls and tool
results into plain turns. Serving renders a prompt (with the generation prompt at the
end), training and the dataset lab whole conversations: the same text either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatfmt.tools import render_messages, template_takes_tools

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Used when the tokenizer has no chat template."""

END_OF_TURN = "<|im_end|>"


class TemplateError(ValueError):
    """The chat template refused the conversation (its message says why)."""


def template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template, or ChatML when it has none."""
    return getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE


def render(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool,
    template: str | None = None,
    variables: dict[str, Any] | None = None,
) -> str:
    """The conversation as the model reads it.

    `messages` are OpenAI-shaped (assistant `tool_calls` with JSON-string arguments,
    `tool` results); `tools` are OpenAI function tools, or None. `template` overrides
    the tokenizer's own; `variables` are extra template variables (e.g. `enable_thinking`).

    Raises:
        TemplateError: the template rejected the conversation.
    """
    chosen = template or template_of(tokenizer)
    native = template_takes_tools(chosen)
    turns = render_messages(messages, tools, native=native)
    extra = {"tools": list(tools)} if tools and native else {}
    extra.update(variables or {})
    try:
        text = tokenizer.apply_chat_template(
            turns,
            chat_template=chosen,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except Exception as exc:  # jinja raises on conversations a template refuses
        raise TemplateError(str(exc)) from exc
    return str(text)


def render_chatml(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
) -> str:
    """The conversation as ChatML text, without a tokenizer (tools as `render` writes them)."""
    parts = []
    for turn in render_messages(messages, tools, native=False):
        parts.append(f"<|im_start|>{turn['role']}\n{turn.get('content') or ''}{END_OF_TURN}\n")
    return "".join(parts)
