"""Anthropic's Messages request as the chat service's own request (`ChatCompletionRequest`).

The system prompt becomes a system message, `tool_use` blocks an assistant's `tool_calls`,
`tool_result` blocks `tool` messages, `input_schema` a function's parameters,
`tool_choice` auto/any/tool/none the chat's auto/required/named/none, `stop_sequences`
its stop strings, `thinking` (and `output_config.effort`) its `reasoning_effort`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import ValidationError

from server.engine.chatformat import ModelFormat
from server.errors import InvalidRequest
from server.protocol.chat import ChatCompletionRequest
from server.protocol.messages import (
    CountTokensRequest,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlockParam,
    TextBlockParam,
    ThinkingAdaptive,
    ThinkingBlockParam,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)

#: Anthropic's `output_config.effort` as a `reasoning_effort` (OpenAI has no "max")
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


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
