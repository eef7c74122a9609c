"""Conversations to prompt text through the model's own chat template, else its family's.

A tokenizer without a chat template gets its model family's format (`chatfmt.families`:
Gemma, Llama 3, Mistral, Phi-3, ChatML as the last resort), chosen from the architecture
of the model it was loaded from and the marker tokens of its vocabulary.

Tools go through the template when it reads a `tools` variable (its own tool format);
otherwise `chatfmt.tools` describes them in a system block and rewrites calls and tool
results into plain turns. Serving renders a prompt (with the generation prompt at the
end), training and the dataset lab whole conversations: the same text either way.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from chatfmt.architecture import model_architecture
from chatfmt.families import CHATML_TEMPLATE, FamilyChoice, choose_family
from chatfmt.tools import render_messages, template_takes_tools

__all__ = [
    "CHATML_TEMPLATE",
    "END_OF_TURN",
    "TemplateError",
    "fallback_of",
    "render",
    "render_chatml",
    "template_of",
]

END_OF_TURN = "<|im_end|>"


class TemplateError(ValueError):
    """The chat template refused the conversation (its message says why)."""


def template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template, or its family's format when it has none (`fallback_of`)."""
    return getattr(tokenizer, "chat_template", None) or fallback_of(tokenizer).family.template


# per tokenizer (dropped with it): the choice reads files, and training renders each
# conversation several times
_fallbacks: weakref.WeakKeyDictionary[Any, FamilyChoice] = weakref.WeakKeyDictionary()
_fallbacks_lock = threading.Lock()


def fallback_of(tokenizer: Any) -> FamilyChoice:
    """The family format for this tokenizer when it has no chat template, and why.

    The architecture is read from the folder the tokenizer was loaded from (`config.json`
    or its GGUF file); the vocabulary is asked for each family's marker tokens.
    """
    with _fallbacks_lock:
        try:
            cached = _fallbacks.get(tokenizer)
        except TypeError:  # not weak-referenceable or not hashable: no cache
            cached = None
    if cached is not None:
        return cached
    folder = getattr(tokenizer, "name_or_path", None)
    architecture = model_architecture(folder) if isinstance(folder, str) and folder else None
    choice = choose_family(architecture, lambda token: _has_token(tokenizer, token))
    with _fallbacks_lock, contextlib.suppress(TypeError):
        _fallbacks[tokenizer] = choice
    return choice


def _has_token(tokenizer: Any, token: str) -> bool:
    """Whether `token` is one token of the vocabulary (not the unknown token)."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is None:
        return False
    try:
        token_id = convert(token)
    except (KeyError, TypeError, ValueError):
        return False
    return isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None)


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
