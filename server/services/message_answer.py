"""The chat service's `chat.completion` as Anthropic's `message`, and the pieces a stream shares.

Ids (`msg_…`, `toolu_…`), the stop reason, the usage (prompt tokens read from the cache
counted apart), and the `message` itself: thinking, text, then tool_use blocks. The
stream's events are built in `server.services.messages`.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from server.protocol.chat import ChatCompletion
from server.protocol.common import Usage
from server.protocol.message_answer import (
    ContentBlock,
    Message,
    MessageUsage,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from server.protocol.tools import ToolCall

log = logging.getLogger(__name__)


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_…` id for the chat service's `call_…` id."""
    return "toolu_" + call_id.removeprefix("call_")


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as `input`: the grammar makes them a JSON object."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        log.warning("tool call arguments are not JSON: %.200s", arguments)
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(finish: str | None, stop_sequence: str | None) -> StopReason:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def message_usage(usage: Usage) -> MessageUsage:
    """Anthropic counts the prompt tokens read from the cache apart from `input_tokens`."""
    cached = usage.prompt_tokens_details.cached_tokens
    return MessageUsage(
        input_tokens=usage.prompt_tokens - cached,
        output_tokens=usage.completion_tokens,
        cache_read_input_tokens=cached,
    )


def to_message(done: ChatCompletion, model: str) -> Message:
    """The `message` for a `chat.completion`: thinking, text, then tool_use blocks."""
    choice = done.choices[0]
    reply = choice.message
    content: list[ContentBlock] = []
    thought = reply.reasoning_content or reply.reasoning
    if thought:
        content.append(ThinkingBlock(thinking=thought))
    if reply.content:
        content.append(TextBlock(text=reply.content))
    for call in reply.tool_calls or []:
        if isinstance(call, ToolCall):
            name, arguments = call.function.name, call.function.arguments
            content.append(
                ToolUseBlock(id=tool_use_id(call.id), name=name, input=_input(arguments))
            )
    return Message(
        id=new_message_id(),
        model=model,
        content=content,
        stop_reason=stop_reason(choice.finish_reason, choice.stop_sequence),
        stop_sequence=choice.stop_sequence,
        usage=message_usage(done.usage),
    )
