"""Anthropic's Messages API answers: the `message`, its token count, stream events, errors.

The shapes pomar sends back on `/v1/messages` and `/v1/messages/count_tokens`: the
`message` object and its content blocks, the `count_tokens` answer, the named events of a
stream, and Anthropic's error body. `server.services.message_answer` and
`server.services.messages` build them from the chat service's answers; the requests are
in `server.protocol.messages`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, RootModel

from server.protocol.common import OpenAIModel


class TextBlock(OpenAIModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(OpenAIModel):
    """A reasoning model's thinking; `signature` is empty (pomar signs nothing)."""

    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


class ToolUseBlock(OpenAIModel):
    """A call: `id` is `toolu_…`, `input` the arguments (they validate against the schema)."""

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(OpenAIModel):
    """Token counts with the model's own tokenizer; as Anthropic counts them, the prompt is
    `input_tokens` + `cache_read_input_tokens` (read from pomar's prompt cache)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(OpenAIModel):
    """The `message` object."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


class MessageTokensCount(OpenAIModel):
    """`POST /v1/messages/count_tokens`: the prompt tokens the model would read."""

    input_tokens: int


class MessageStartEvent(OpenAIModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(OpenAIModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(OpenAIModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(OpenAIModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(OpenAIModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


BlockDelta = Annotated[TextDelta | InputJSONDelta | ThinkingDelta, Field(discriminator="type")]


class ContentBlockDeltaEvent(OpenAIModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(OpenAIModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(OpenAIModel):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class MessageDeltaUsage(OpenAIModel):
    """The final counts (`input_tokens` less what the prompt cache served)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageDeltaEvent(OpenAIModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(OpenAIModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(OpenAIModel):
    type: Literal["ping"] = "ping"


class AnthropicErrorDetail(OpenAIModel):
    type: str
    message: str


class AnthropicError(OpenAIModel):
    """Anthropic's error body, on every error of the Messages API (and its `error` event)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


class MessageStreamEvent(
    RootModel[
        Annotated[
            MessageStartEvent
            | ContentBlockStartEvent
            | ContentBlockDeltaEvent
            | ContentBlockStopEvent
            | MessageDeltaEvent
            | MessageStopEvent
            | PingEvent
            | AnthropicError,
            Field(discriminator="type"),
        ]
    ]
):
    """One event of a stream: its SSE `event` name is its `type`."""
