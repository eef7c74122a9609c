"""Structured output and tool calls of chat completions.

Builds the grammar a request asks for (`response_format`, `tools` + `tool_choice`) and
turns the constrained model text back into OpenAI's `tool_calls`, whole or streamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatfmt.callstream import ArgumentsDelta, CallStart, Event, TextDelta
from chatfmt.toolcalls import CallParser, call_parser, parse_calls
from server.engine.base import Engine
from server.engine.chatformat import ModelFormat
from server.engine.constraints import (
    ConstraintFactory,
    CustomInput,
    Grammar,
    GrammarCompiler,
    ToolSpec,
    compiler_for,
    json_schema_grammar,
)
from server.engine.output_grammar import Thinking, ToolGrammar, custom_lark, output_grammar
from server.errors import InvalidRequest
from server.protocol.chat import ChatCompletionRequest
from server.protocol.tools import (
    CustomCall,
    CustomDefinition,
    CustomToolCall,
    DeltaCustom,
    DeltaFunction,
    DeltaToolCall,
    ToolCall,
    ToolCallFunction,
    ToolDefinition,
    ToolUse,
)


def build_constraint(
    request: ChatCompletionRequest,
    tools: ToolUse | None,
    engine: Engine,
    fmt: ModelFormat,
    thinking: Thinking | None = None,
) -> ConstraintFactory | None:
    """The grammar of this request, compiled for the model; None when output is free.

    `required` / named tool choices: calls only. `auto`: text (or the JSON answer
    `response_format` asks for) or valid calls. No tools: the response format alone.
    Calls follow the model's own format (`fmt.tools`); a reasoning model may think first
    (`thinking`), the constraint applies after its reasoning block.
    """
    schema, strict = _answer_schema(request)
    if tools is None and schema is None:
        return None
    param = "response_format" if tools is None else "tools"
    compiler = compiler_for(engine.tokenizer, engine.eos_token_ids, param)
    if schema is not None and (tools is None or tools.mode == "auto"):
        # a bad response_format schema is named as such
        answer = compiler.compile(json_schema_grammar(schema, strict=strict))
        if tools is None and thinking is None:
            return answer
    specs = [tool_spec(f) for f in tools.callable] if tools else []
    calls = ToolGrammar(specs, tools.mode, tools.parallel, fmt.tools) if tools else None
    grammar = output_grammar(
        marks=fmt.marks,
        tools=calls,
        answer=schema if tools is None or tools.mode == "auto" else None,
        answer_strict=strict,
        thinking=thinking,
    )
    try:
        return compiler.compile(grammar)
    except InvalidRequest:
        _name_bad_tool(compiler, request, specs)
        raise


def tool_spec(tool: ToolDefinition) -> ToolSpec:
    """What the grammar needs of a function or custom tool."""
    custom = None
    if isinstance(tool, CustomDefinition):
        grammar = tool.grammar()
        custom = CustomInput(grammar.syntax, grammar.definition) if grammar else CustomInput()
    return ToolSpec(tool.name, tool.arguments_schema(), bool(tool.strict), custom)


def _answer_schema(request: ChatCompletionRequest) -> tuple[dict[str, Any] | None, bool]:
    """The JSON schema the answer must follow (None: free text) and its strictness."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None, False
    if fmt.json_schema is None or fmt.type == "json_object":
        return {"type": "object"}, False
    spec = fmt.json_schema
    return (spec.schema_ if spec.schema_ is not None else {}), bool(spec.strict)


def _answer_grammar(request: ChatCompletionRequest) -> Grammar | None:
    schema, strict = _answer_schema(request)
    return None if schema is None else json_schema_grammar(schema, strict=strict)


def _name_bad_tool(
    compiler: GrammarCompiler, request: ChatCompletionRequest, specs: Sequence[ToolSpec]
) -> None:
    """Raise a 400 naming the first tool whose parameters schema (or grammar) does not compile."""
    names = [tool.definition.name for tool in request.tools or []]
    for spec in specs:
        if spec.custom is not None:
            _check_custom(compiler, spec, names.index(spec.name))
            continue
        try:
            compiler.compile(json_schema_grammar(spec.parameters, strict=spec.strict))
        except InvalidRequest as exc:
            i = names.index(spec.name)
            raise InvalidRequest(
                f"Invalid parameters schema for function '{spec.name}': "
                f"{exc.message.split(': ', 1)[-1]}",
                param=f"tools[{i}].function.parameters",
            ) from None


def _check_custom(compiler: GrammarCompiler, spec: ToolSpec, i: int) -> None:
    """A 400 naming `tools[i].custom.format` when the custom tool's grammar does not compile."""
    custom = spec.custom
    if custom is None or custom.syntax == "text":
        return
    try:
        compiler.compile(Grammar(custom_lark(custom), f"tools[{i}].custom.format"))
    except InvalidRequest as exc:
        raise InvalidRequest(
            f"Invalid {custom.syntax} grammar for custom tool '{spec.name}': "
            f"{exc.message.split(': ', 1)[-1]}",
            param=f"tools[{i}].custom.format",
        ) from None


def finish_reason(reason: str, calls: int) -> str:
    """`tool_calls` when a turn that ended by itself made calls."""
    return "tool_calls" if calls and reason == "stop" else reason


def message_parts(
    text: str, tools: ToolUse | None, fmt: ModelFormat
) -> tuple[str | None, list[ToolCall | CustomToolCall] | None]:
    """A whole completion's `content` and `tool_calls` (None when it made no call).

    With calls, blank text becomes null content, as OpenAI's tool-call messages have.
    A custom tool's call is a `custom` call carrying its raw `input`.
    """
    if tools is None:
        return text, None
    auto, custom = tools.mode == "auto", tools.custom_names
    parsed = parse_calls(
        text,
        fmt.tools,
        _names(tools),
        _schemas(tools),
        bare_json=auto,
        custom=custom,
        grammars=tools.grammar_names,
    )
    if not parsed.calls:
        return parsed.content, None
    calls: list[ToolCall | CustomToolCall] = [
        CustomToolCall(id=cid, custom=CustomCall(name=name, input=args))
        if name in custom
        else ToolCall(id=cid, function=ToolCallFunction(name=name, arguments=args))
        for cid, name, args in parsed.calls
    ]
    return parsed.content or None, calls


class ToolCallStream:
    """Turns one choice's streamed text into `content` and `delta.tool_calls` pieces."""

    def __init__(self, tools: ToolUse, fmt: ModelFormat) -> None:
        self._custom = tools.custom_names
        self._parser: CallParser = call_parser(
            fmt.tools,
            _names(tools),
            _schemas(tools),
            bare_json=tools.mode == "auto",
            custom=self._custom,
            grammars=tools.grammar_names,
        )
        self._kinds: dict[int, bool] = {}  # call index -> whether it is a custom call

    @property
    def calls(self) -> int:
        """Calls begun so far."""
        return self._parser.calls

    def feed(self, text: str) -> tuple[str | None, list[DeltaToolCall] | None]:
        """The content and tool-call fragments this text completes."""
        return self._deltas(self._parser.feed(text))

    def finish(self) -> tuple[str | None, list[DeltaToolCall] | None]:
        """What was held back, at the end of the choice."""
        return self._deltas(self._parser.finish())

    def _deltas(self, events: Sequence[Event]) -> tuple[str | None, list[DeltaToolCall] | None]:
        for event in events:
            if isinstance(event, CallStart):
                self._kinds[event.index] = event.name in self._custom
        return _deltas(events, self._kinds)


def _names(tools: ToolUse) -> list[str]:
    return [f.name for f in tools.callable]


def _schemas(tools: ToolUse) -> dict[str, dict[str, Any]]:
    return {f.name: f.arguments_schema() for f in tools.callable}


def _deltas(
    events: Sequence[Event], custom: dict[int, bool]
) -> tuple[str | None, list[DeltaToolCall] | None]:
    """Events as one chunk's content and fragments (one fragment per call touched).

    A call's first fragment carries `id`, `type` and the function name with the
    arguments so far (maybe ""), later ones only argument pieces, as OpenAI sends them.
    A custom call (`custom[index]`) carries `custom` with its name, then `input` pieces.
    """
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    fragments: dict[int, DeltaToolCall] = {}
    for event in events:
        if isinstance(event, CallStart):
            if custom.get(event.index):
                fragments[event.index] = DeltaToolCall(
                    index=event.index,
                    id=event.id,
                    type="custom",
                    custom=DeltaCustom(name=event.name, input=""),
                )
            else:
                fragments[event.index] = DeltaToolCall(
                    index=event.index,
                    id=event.id,
                    type="function",
                    function=DeltaFunction(name=event.name, arguments=""),
                )
        elif isinstance(event, ArgumentsDelta):
            fragment = fragments.get(event.index)
            if fragment is None:
                if custom.get(event.index):
                    fragment = DeltaToolCall(index=event.index, custom=DeltaCustom(input=""))
                else:
                    fragment = DeltaToolCall(
                        index=event.index, function=DeltaFunction(arguments="")
                    )
                fragments[event.index] = fragment
            if fragment.custom is not None:
                fragment.custom.input = (fragment.custom.input or "") + event.text
            else:
                assert fragment.function is not None
                fragment.function.arguments = (fragment.function.arguments or "") + event.text
    return (text or None), (list(fragments.values()) or None)
