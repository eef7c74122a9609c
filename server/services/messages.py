"""Anthropic's Messages API over the chat service: one conversation core, another wire.

A Messages request becomes the chat service's own request (`ChatCompletionRequest`, built
by `server.services.message_request`): the system prompt a system message, `tool_use`
blocks an assistant's `tool_calls`, `tool_result` blocks `tool` messages, `input_schema` a
function's parameters, `tool_choice` auto/any/tool/none the chat's auto/required/named/none,
`stop_sequences` its stop strings, `thinking` its `reasoning_effort`. `ChatService` then
does all the work (template, tool grammars, reasoning, stop strings, prompt cache, usage,
errors), and its `chat.completion` and chunks are translated back into a `message`
(`server.services.message_answer`) and, here, Anthropic's stream events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel

from server.errors import InvalidRequest
from server.models.residency import LoadedModel
from server.protocol.chat import ChatCompletionRequest, ChunkChoice
from server.protocol.message_answer import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    MessageUsage,
    PingEvent,
    StopReason,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from server.protocol.messages import CountTokensRequest, MessagesRequest
from server.services.chat import ChatService, PreparedChat
from server.services.message_answer import (
    message_usage,
    new_message_id,
    stop_reason,
    to_message,
    tool_use_id,
)
from server.services.message_request import chat_request

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedMessage:
    """A Messages request, prepared by the chat service on its leased model."""

    request: MessagesRequest
    chat: PreparedChat


class MessagesService:
    """`POST /v1/messages` and its token count, through the chat service."""

    def __init__(self, chat: ChatService) -> None:
        self._chat = chat

    def prepare(self, request: MessagesRequest, model: LoadedModel) -> PreparedMessage:
        """Convert and check everything before generation starts (400s name the field)."""
        return PreparedMessage(
            request, _folding(request, model, lambda chat: self._chat.prepare(chat, model))
        )

    async def complete(self, prepared: PreparedMessage) -> Message:
        """The whole `message`."""
        done = await self._chat.complete(prepared.chat)
        return to_message(done, prepared.request.model)

    def stream(self, prepared: PreparedMessage) -> AsyncIterator[BaseModel]:
        """Anthropic's stream events, from the chat service's chunks."""
        return _stream(self._chat, prepared)

    def count_tokens(self, request: CountTokensRequest, model: LoadedModel) -> MessageTokensCount:
        """The tokens of the prompt a `create` with the same conversation would read."""
        prompt = _folding(request, model, lambda chat: self._chat.prompt(chat, model))
        return MessageTokensCount(input_tokens=len(model.template.tokenize(prompt)))


def _folding(
    request: CountTokensRequest, model: LoadedModel, use: Callable[[ChatCompletionRequest], T]
) -> T:
    """`use` the chat request; with system messages folded into user turns if the model's
    template refuses a system message within the conversation (Gemma's, Mistral's)."""
    fmt = model.template.format
    try:
        return use(chat_request(request, fmt))
    except InvalidRequest as exc:
        inner = any(m.role == "system" for m in request.messages)
        if not (inner and exc.param == "messages" and "template rejected" in exc.message):
            raise
    log.info("the chat template refuses inner system messages: folded into user turns")
    return use(chat_request(request, fmt, fold_system=True))


# -- stream: chat chunks -> Messages events -------------------------------------------------


@dataclass
class _Blocks:
    """The content blocks of a stream: which one is open, and where each call went."""

    index: int = -1
    kind: str | None = None
    calls: dict[int, int] = field(default_factory=dict)

    def open(self, kind: str, block: ContentBlock) -> list[BaseModel]:
        events = self.close()
        self.index += 1
        self.kind = kind
        return [*events, ContentBlockStartEvent(index=self.index, content_block=block)]

    def close(self) -> list[BaseModel]:
        if self.kind is None:
            return []
        self.kind = None
        return [ContentBlockStopEvent(index=self.index)]

    def feed(self, choice: ChunkChoice) -> list[BaseModel]:
        """The events of one chunk's delta: thinking, then text, then call fragments."""
        delta, events = choice.delta, []
        thought = delta.reasoning_content or delta.reasoning
        if thought:
            if self.kind != "thinking":
                events += self.open("thinking", ThinkingBlock(thinking=""))
            events.append(
                ContentBlockDeltaEvent(index=self.index, delta=ThinkingDelta(thinking=thought))
            )
        if delta.content:
            if self.kind != "text":
                events += self.open("text", TextBlock(text=""))
            events.append(
                ContentBlockDeltaEvent(index=self.index, delta=TextDelta(text=delta.content))
            )
        for fragment in delta.tool_calls or []:
            function = fragment.function
            if fragment.id is not None and function is not None and function.name is not None:
                block = ToolUseBlock(id=tool_use_id(fragment.id), name=function.name, input={})
                events += self.open("tool_use", block)
                self.calls[fragment.index] = self.index
            arguments = function.arguments if function is not None else None
            if arguments and fragment.index in self.calls:
                where = self.calls[fragment.index]
                delta_json = InputJSONDelta(partial_json=arguments)
                events.append(ContentBlockDeltaEvent(index=where, delta=delta_json))
        if choice.finish_reason is not None:
            events += self.close()
        return events


async def _stream(chat: ChatService, prepared: PreparedMessage) -> AsyncIterator[BaseModel]:
    """message_start, ping, the content blocks' events, message_delta, message_stop.

    `message_start` counts the whole prompt as `input_tokens`; `message_delta` carries the
    final counts, with what the prompt cache served as `cache_read_input_tokens`.
    """
    request = prepared.request
    prompt_tokens = len(prepared.chat.prompt_ids)
    start = Message(
        id=new_message_id(),
        model=request.model,
        content=[],
        stop_reason=None,
        usage=MessageUsage(input_tokens=prompt_tokens, output_tokens=0),
    )
    yield MessageStartEvent(message=start)
    yield PingEvent()
    blocks = _Blocks()
    reason: StopReason = "end_turn"
    matched: str | None = None
    usage = MessageUsage(input_tokens=prompt_tokens, output_tokens=0)
    chunks = chat.stream(prepared.chat)
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = message_usage(chunk.usage)
            for choice in chunk.choices:
                for event in blocks.feed(choice):
                    yield event
                if choice.finish_reason is not None:
                    reason = stop_reason(choice.finish_reason, choice.stop_sequence)
                    matched = choice.stop_sequence
    finally:  # at once when the client goes away: the engine stops generating
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    for event in blocks.close():
        yield event
    yield MessageDeltaEvent(
        delta=MessageDelta(stop_reason=reason, stop_sequence=matched),
        usage=MessageDeltaUsage(**usage.model_dump()),
    )
    yield MessageStopEvent()
