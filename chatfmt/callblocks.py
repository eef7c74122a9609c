"""Reading one call block of a tool-call format into (name, JSON arguments) pairs.

`chatfmt.blockparser.BlockParser` cuts the model's text into blocks; the readers here
turn a block of each format into calls, or None when it is not one (then it stays
text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatfmt.toolcalls import ToolFormat

#: the calls of a block as (name, JSON arguments), None when the block is not calls
Calls = list[tuple[str, str]] | None
Reader = Callable[[str, "ToolFormat", Mapping[str, dict[str, Any]]], Calls]


def _read_json_calls(block: str, fmt: ToolFormat, _schemas: Any) -> Calls:
    """Llama 3 bare JSON calls (`; ` or newline separated), after an optional python tag."""
    text = block.strip()
    for marker in fmt.markers:
        text = text.removeprefix(marker).strip()
    decoder = json.JSONDecoder()
    calls: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        call = json_call(value, fmt.arguments_key)
        if call is None:
            return None
        calls.append(call)
        while at < len(text) and text[at] in " \t\n;,":
            at += 1
    return calls


def _read_mistral(block: str, fmt: ToolFormat, _schemas: Any) -> Calls:
    """`[TOOL_CALLS][{...}, ...]` (a JSON list) or, with `[ARGS]`, `NAME[ARGS]{...}` runs."""
    text = block.strip().removeprefix("[TOOL_CALLS]").strip()
    if fmt.name == "mistral_args":
        calls: list[tuple[str, str]] = []
        for part in text.split("[TOOL_CALLS]"):
            name, sep, args = part.partition("[ARGS]")
            if not sep:
                return None
            try:
                calls.append((name.strip(), json.dumps(json.loads(args))))
            except json.JSONDecodeError:
                return None
        return calls
    return json_calls(text)


_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def _read_xml(block: str, _fmt: ToolFormat, schemas: Mapping[str, dict[str, Any]]) -> Calls:
    """Qwen3-Coder's `<function=NAME><parameter=P>VALUE</parameter></function>` blocks."""
    calls: list[tuple[str, str]] = []
    for match in _FUNCTION.finditer(block):
        name = match.group(1).strip()
        properties = (schemas.get(name) or {}).get("properties") or {}
        arguments = {
            key.strip(): _xml_value(value, properties.get(key.strip()))
            for key, value in _PARAMETER.findall(match.group(2))
        }
        calls.append((name, json.dumps(arguments)))
    return calls or None


def _xml_value(text: str, schema: Any) -> Any:
    """A parameter's text as its schema's type: strings stay text, the rest is JSON."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def json_call(value: Any, key: str) -> tuple[str, str] | None:
    """A `{"name", key}` object as (name, JSON arguments); None if it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(key, value.get("arguments", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments)


def json_calls(text: str) -> Calls:
    """One JSON call object, or a list of them, as calls; None if `text` is not that."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    out = [json_call(item, "arguments") for item in items]
    return None if any(c is None for c in out) else [c for c in out if c is not None]


READERS: dict[str, Reader] = {
    "qwen3_coder": _read_xml,
    "llama3_json": _read_json_calls,
    "mistral": _read_mistral,
    "mistral_args": _read_mistral,
}
