"""Anthropic's Messages API over the chat service: one conversation core, another wire.

A Messages request becomes the chat service's own request (`ChatCompletionRequest`, built
here): the system prompt a system message, `tool_use` blocks an assistant's `tool_calls`,
`tool_result` blocks `tool` messages, `input_schema` a function's parameters, `tool_choice`
auto/any/tool/none the chat's auto/required/named/none, `stop_sequences` its stop strings,
`thinking` its `reasoning_effort`. `ChatService` then does all the work (template, tool
grammars, reasoning, stop strings, prompt cache, usage, errors), and its `chat.completion`
and chunks are translated back into a `message` and Anthropic's stream events.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from server.engine.chatformat import ModelFormat
from server.errors import InvalidRequest
from server.models.residency import LoadedModel
from server.protocol.chat import ChatCompletion, ChatCompletionRequest, ChunkChoice
from server.protocol.common import Usage
from server.protocol.messages import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    CountTokensRequest,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageParam,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    MessageUsage,
    PingEvent,
    RedactedThinkingBlockParam,
    StopReason,
    TextBlock,
    TextBlockParam,
    TextDelta,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingBlockParam,
    ThinkingDelta,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
)
from server.protocol.tools import ToolCall
from server.services.chat import ChatService, PreparedChat

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Anthropic's `output_config.effort` as a `reasoning_effort` (OpenAI has no "max")
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


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


# -- request: Messages -> chat ------------------------------------------------------------


def chat_request(
    request: CountTokensRequest, fmt: ModelFormat, *, fold_system: bool = False
) -> ChatCompletionRequest:
    """The chat service's request for this Messages request (a count: no sampling).

    `fold_system`: system messages within the conversation become user text.
    """
    messages = _messages(request, fold_system)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    tools = request.tools or []
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.input_schema,
                        "strict": tool.strict,
                    }.items()
                    if v is not None
                },
            }
            for tool in tools
        ]
    choice = request.tool_choice
    if choice is not None and (tools or not isinstance(choice, ToolChoiceNone)):
        if isinstance(choice, ToolChoiceNone):
            body["tool_choice"] = "none"
        elif isinstance(choice, ToolChoiceTool):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = "required" if isinstance(choice, ToolChoiceAny) else "auto"
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
    effort = _reasoning_effort(request, fmt)
    if effort is not None:
        body["reasoning_effort"] = effort
    output = request.output_config
    if output is not None and output.format is not None:
        spec = {"name": "output", "schema": output.format.schema_, "strict": True}
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    if isinstance(request, MessagesRequest):
        body["max_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "top_k"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if request.stop_sequences:
            body["stop"] = request.stop_sequences
        if request.metadata is not None and request.metadata.user_id:
            body["user"] = request.metadata.user_id
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # the Messages request validated: say what, not where
        first = exc.errors(include_url=False)[0]
        raise InvalidRequest(f"The request could not be served: {first['msg']}") from None


def _turns(messages: Sequence[MessageParam], fold_system: bool) -> Iterator[tuple[str, list[Any]]]:
    """(role, blocks) per turn: consecutive messages of one role are one turn (system
    messages each their own, or user text with `fold_system`)."""
    role, blocks = "", list[Any]()
    for message in messages:
        now = "user" if fold_system and message.role == "system" else message.role
        if (now != role or now == "system") and blocks:
            yield role, blocks
            blocks = []
        role = now
        blocks += message.blocks()
    if blocks:
        yield role, blocks


def _messages(request: CountTokensRequest, fold_system: bool) -> list[dict[str, Any]]:
    """The conversation in the chat service's (OpenAI's) message shapes."""
    out: list[dict[str, Any]] = []
    system = request.system_text()
    if system:
        out.append({"role": "system", "content": system})
    turns = list(_turns(request.messages, fold_system))
    if turns and turns[-1][0] == "assistant":
        raise InvalidRequest(
            "The last message is an assistant turn (a prefill): pomar does not continue an "
            "assistant turn; end the conversation with a user turn.",
            param="messages",
        )
    for role, blocks in turns:
        if role == "assistant":
            out.append(_assistant(blocks))
            continue
        if role == "system":
            if not all(isinstance(block, TextBlockParam) for block in blocks):
                raise InvalidRequest("A system message holds text blocks only.", param="messages")
            out.append({"role": "system", "content": "\n".join(b.text for b in blocks)})
            continue
        text: list[str] = []
        for block in blocks:
            if isinstance(block, ToolResultBlockParam):
                if text:
                    out.append({"role": "user", "content": "\n".join(text)})
                    text = []
                out.append(
                    {"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()}
                )
            elif isinstance(block, TextBlockParam):
                text.append(block.text)
            else:  # tool_use, thinking: an assistant's blocks in a user turn
                raise InvalidRequest(
                    f"A user turn may not hold '{block.type}' blocks.", param="messages"
                )
        if text or not any(isinstance(b, ToolResultBlockParam) for b in blocks):
            out.append({"role": "user", "content": "\n".join(text)})
    return out


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    text, thinking, calls = [], [], []
    for block in blocks:
        if isinstance(block, TextBlockParam):
            text.append(block.text)
        elif isinstance(block, ThinkingBlockParam):
            thinking.append(block.thinking)
        elif isinstance(block, ToolUseBlockParam):
            arguments = json.dumps(block.input, ensure_ascii=False)
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif not isinstance(block, RedactedThinkingBlockParam):  # tool_result
            raise InvalidRequest(
                f"An assistant turn may not hold '{block.type}' blocks.", param="messages"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(text)}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        # earlier thinking, for templates that show it (Qwen3 within a tool loop)
        message["reasoning_content"] = "\n".join(thinking)
    return message


def _reasoning_effort(request: CountTokensRequest, fmt: ModelFormat) -> str | None:
    """`thinking` (and `output_config.effort`) as the chat's `reasoning_effort`.

    Only for a model whose template has a thinking switch (or reads `reasoning_effort`):
    a model without one thinks, or not, as it always does. `budget_tokens` picks the
    effort of a template that takes one (under 4,096: low; under 16,384: medium; else
    high); it does not cap the thinking, which counts toward `max_tokens` as at Anthropic.
    """
    switch = fmt.reasoning is not None and fmt.reasoning.switch is not None
    if not (switch or "reasoning_effort" in fmt.variables):
        return None
    thinking = request.thinking
    if isinstance(thinking, ThinkingDisabled):
        return "none"
    output = request.output_config
    if output is not None and output.effort is not None:
        return _EFFORT[output.effort]
    if isinstance(thinking, ThinkingEnabled):
        budget = thinking.budget_tokens
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if isinstance(thinking, ThinkingAdaptive):
        return "medium"
    return None


# -- answer: chat -> Messages ---------------------------------------------------------------


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
