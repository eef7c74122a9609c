"""The Responses request's input items and tools in the chat service's shape.

Input becomes stored items (each with an id), and stored items (inputs or outputs of a
chain) become chat messages: `function_call` / `custom_tool_call` items an assistant's
`tool_calls`, their outputs `tool` messages, `reasoning` items the next assistant turn's
`reasoning_content`. Flat `function` and `custom` tools become the chat's tools; hosted
tools are left out (listed as unserved), and a `tool_choice` naming one is a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from server.errors import InvalidRequest
from server.protocol.responses import UnservedTool
from server.protocol.responses_input import (
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningInputItem,
)
from server.protocol.responses_request import (
    CustomToolParam,
    FunctionToolParam,
    HostedToolParam,
    ResponseCreateRequest,
)
from server.services.response_turn import new_id

#: tool_choice types that name a hosted tool (400: pomar cannot call them)
_CHAT_CHOICES = ("function", "custom", "allowed_tools")


def request_items(request: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input as stored items: each with an id, messages in item form."""
    if isinstance(request.input, str):
        if not request.input:
            return []  # no input: with no instructions and no chain, a 400
        text = {"type": "input_text", "text": request.input}
        return [{"id": new_id("msg"), "type": "message", "role": "user", "content": [text]}]
    out: list[dict[str, Any]] = []
    for item in request.input:
        data = item.model_dump(exclude_none=True)
        if isinstance(item, MessageItem):
            kind = "output_text" if item.role == "assistant" else "input_text"
            content = item.content
            parts: list[dict[str, Any]] = (
                [{"type": kind, "text": content}]
                if isinstance(content, str)
                else [p.model_dump(exclude_none=True) for p in content]
            )
            data = {"type": "message", "role": item.role, "content": parts}
            data["status"] = item.status or "completed"
            if item.role == "assistant":
                for part in parts:
                    part.setdefault("annotations", [])
        data["id"] = item.id or new_id(_ITEM_PREFIX.get(item.type, "item"))
        if isinstance(item, FunctionCallItem | FunctionCallOutputItem):
            data.setdefault("status", "completed")
        out.append(data)
    return out


_ITEM_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
}

_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem,
    "custom_tool_call_output": CustomToolCallOutputItem,
    "reasoning": ReasoningInputItem,
}


def add_items(messages: list[dict[str, Any]], items: Sequence[dict[str, Any]], where: str) -> None:
    """Append stored items (inputs or outputs) to the chat conversation.

    Calls join the assistant turn before them (or open one); a reasoning item goes with
    the next assistant turn; call outputs are `tool` messages.
    """
    reasoning: str | None = None
    for data in items:
        kind = data.get("type") or "message"
        model = _ITEM_MODELS.get(kind)
        if model is None:
            raise InvalidRequest(f"Input item type '{kind}' is not supported.", param=where)
        item = model.model_validate(data)
        if isinstance(item, ReasoningInputItem):
            reasoning = (reasoning or "") + item.text()
            continue
        if isinstance(item, MessageItem):
            message: dict[str, Any] = {"role": item.role, "content": item.text()}
            if item.role == "assistant" and reasoning:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
            continue
        if isinstance(item, FunctionCallItem | CustomToolCallItem):
            call: dict[str, Any]
            if isinstance(item, FunctionCallItem):
                body = {"name": item.name, "arguments": item.arguments}
                call = {"id": item.call_id, "type": "function", "function": body}
            else:
                body = {"name": item.name, "input": item.input}
                call = {"id": item.call_id, "type": "custom", "custom": body}
            last: dict[str, Any] | None = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if reasoning:
                last["reasoning_content"], reasoning = reasoning, None
            last.setdefault("tool_calls", []).append(call)
            continue
        assert isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem)
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})


_HOSTED_NAMES = ("name", "server_label")


def chat_tools(
    request: ResponseCreateRequest,
) -> tuple[list[dict[str, Any]], list[UnservedTool], list[int]]:
    """The chat service's tools, the tools left out, and each chat tool's request index."""
    tools: list[dict[str, Any]] = []
    unserved: list[UnservedTool] = []
    index: list[int] = []
    for i, tool in enumerate(request.tools or []):
        if isinstance(tool, FunctionToolParam):
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            if tool.parameters is not None:
                function["parameters"] = tool.parameters
            # the Responses API's functions are strict unless they say otherwise
            function["strict"] = tool.strict is not False
            tools.append({"type": "function", "function": function})
        elif isinstance(tool, CustomToolParam):
            custom: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                custom["description"] = tool.description
            fmt = tool.format
            if fmt is not None and fmt.type == "grammar":
                grammar = {"syntax": fmt.syntax, "definition": fmt.definition}
                custom["format"] = {"type": "grammar", "grammar": grammar}
            tools.append({"type": "custom", "custom": custom})
        else:
            assert isinstance(tool, HostedToolParam)
            extra = tool.model_extra or {}
            name = next((extra[k] for k in _HOSTED_NAMES if isinstance(extra.get(k), str)), None)
            unserved.append(UnservedTool(index=i, type=tool.type, name=name))
            continue
        index.append(i)
    return tools, unserved, index


def chat_tool_choice(
    request: ResponseCreateRequest, tools: list[dict[str, Any]]
) -> str | dict[str, Any] | None:
    """The chat's `tool_choice`; one naming a hosted tool is a 400."""
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        if not tools and choice in ("auto", "none"):
            return None  # only hosted tools (or none): nothing to choose from
        return choice
    kind = choice.get("type")
    if kind not in _CHAT_CHOICES:
        raise InvalidRequest(
            f"tool_choice names the hosted tool type '{kind}', which only OpenAI's cloud runs; "
            "pomar cannot call it (its tools are function and custom tools).",
            param="tool_choice",
        )
    if kind == "allowed_tools":
        chosen = [_named(t) for t in choice.get("tools") or [] if isinstance(t, dict)]
        named = [c for c in chosen if c is not None]
        if not named:
            raise InvalidRequest(
                "tool_choice.tools names no function or custom tool pomar can call.",
                param="tool_choice",
            )
        return {
            "type": "allowed_tools",
            "allowed_tools": {"mode": choice.get("mode"), "tools": named},
        }
    named_choice = _named(choice)
    if named_choice is None:
        raise InvalidRequest("tool_choice needs the 'name' of the tool.", param="tool_choice")
    return named_choice


def _named(choice: dict[str, Any]) -> dict[str, Any] | None:
    """`{"type": "function"|"custom", "name"}` in the chat's shape; None for others."""
    kind, name = choice.get("type"), choice.get("name")
    if kind not in ("function", "custom") or not isinstance(name, str):
        return None
    return {"type": kind, kind: {"name": name}}
