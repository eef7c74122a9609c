"""Tool calling in the Hermes / Qwen format: how tools and calls are written into the prompt.

A call is written as::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call; a custom tool's call (free-form input, see `custom_call_text`) is
written raw::

    <tool_call>
    <function=apply_patch>
    *** Begin Patch
    ...
    </function>
    </tool_call>

Models whose chat template takes `tools` get them through the
template; for the others the functions are described in a system-prompt block (the
text Qwen2.5's template uses), earlier calls are written back in the same format and
tool results go back as a user turn wrapped in `<tool_response>` tags. The model's
calls in this format are read back by `chatfmt.callstream.ToolCallParser`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

#: the tags around each call; the grammar puts a newline inside each tag, and between calls
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
#: a custom tool's raw input sits between `<function=NAME>\n` and `\n</function>`
CUSTOM_CLOSE = "\n</function>"

_SYSTEM_BLOCK = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

Message = dict[str, Any]


@functools.lru_cache(maxsize=64)
def template_takes_tools(template: str) -> bool:
    """Whether a Jinja chat template reads a `tools` variable (it has its own tool format).

    Cached: every rendered prompt asks, and parsing the template again took ~8 ms of a
    request's time to first token (the embedded model's, profiled on 2 cores).
    """
    import jinja2
    from jinja2 import meta

    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in meta.find_undeclared_variables(parsed)


def call_text(name: str, arguments: str) -> str:
    """One call in the default format (arguments are the JSON text the client sent back)."""
    body = f'{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}'
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def custom_call_text(name: str, text: str) -> str:
    """One custom tool call in the default format: its input raw, not JSON."""
    return f"{OPEN_TAG}\n<function={name}>\n{text}{CUSTOM_CLOSE}\n{CLOSE_TAG}"


def _history_call_text(call: Message) -> str:
    if call.get("type") == "custom":
        return custom_call_text(call["custom"]["name"], call["custom"]["input"])
    return call_text(call["function"]["name"], call["function"]["arguments"])


def render_messages(
    messages: Sequence[Message], tools: Sequence[Message] | None, *, native: bool
) -> list[Message]:
    """Messages ready for the chat template, tools included.

    `messages` are OpenAI-shaped dicts (`tool_calls` with JSON-string arguments, `tool`
    messages with `tool_call_id`); `tools` are OpenAI function tools, or None when the
    request offers none (or `tool_choice` is "none"). With `native`, the template gets
    Hugging Face's tool-use shapes and the caller passes `tools` to it; otherwise the
    conversation is rewritten into plain system / user / assistant turns.
    """
    if native:
        return _hf_messages(messages)
    out: list[Message] = []
    results: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            results.append(f"<tool_response>\n{message.get('content') or ''}\n</tool_response>")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        calls = message.get("tool_calls") or []
        if message["role"] == "assistant" and calls:
            parts = [message.get("content") or ""]
            parts += [_history_call_text(c) for c in calls]
            message = {"role": "assistant", "content": "\n".join(p for p in parts if p)}
        out.append({k: v for k, v in message.items() if k in ("role", "content", "name")})
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    if tools:
        block = _SYSTEM_BLOCK.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _hf_messages(messages: Sequence[Message]) -> list[Message]:
    """OpenAI messages in the shape Hugging Face tool-use templates expect."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            # a custom call reaches the template as a function of one string, `input`
            calls = [_as_function_call(c) for c in calls]
            message["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _json_or_text(c["function"]["arguments"]),
                    },
                }
                for c in calls
            ]
            names.update({c.get("id") or "": c["function"]["name"] for c in calls})
        if message["role"] == "tool" and "name" not in message:
            name = names.get(message.get("tool_call_id") or "")
            if name:
                message["name"] = name
        message.setdefault("content", "")
        if message["content"] is None:
            message["content"] = ""
        out.append(message)
    return out


def _as_function_call(call: Message) -> Message:
    if call.get("type") != "custom":
        return call
    body = call["custom"]
    arguments = json.dumps({"input": body["input"]})
    return {**call, "type": "function", "function": {"name": body["name"], "arguments": arguments}}


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, json.JSONDecodeError):
        return arguments
