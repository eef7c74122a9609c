"""Tool calling and structured-output shapes of chat completions (OpenAI wire format)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.errors import InvalidRequest
from server.protocol.common import OpenAIModel

#: OpenAI's rule for function and response-format names
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    """A function the model may call; `parameters` is a JSON schema (omitted: no arguments)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def arguments_schema(self) -> dict[str, Any]:
        """The schema its arguments must follow; a function without one takes none."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self.parameters


class FunctionTool(BaseModel):
    """A function entry of `tools`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition

    @property
    def definition(self) -> FunctionDefinition:
        return self.function


#: the longest custom-tool grammar accepted (Codex's apply_patch Lark grammar is ~1 KB)
MAX_GRAMMAR_CHARS = 65536


class CustomGrammar(BaseModel):
    """A custom tool's input grammar: Lark (llguidance's dialect) or a regular expression."""

    definition: str = Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)
    syntax: Literal["lark", "regex"]


class CustomFormat(BaseModel):
    """`{"type": "text"}` (free text) or `{"type": "grammar", "grammar": {...}}`."""

    type: Literal["text", "grammar"]
    grammar: CustomGrammar | None = None

    @model_validator(mode="after")
    def _grammar_when_asked(self) -> CustomFormat:
        if self.type == "grammar" and self.grammar is None:
            raise ValueError("a 'grammar' format needs 'grammar': {definition, syntax}")
        return self


#: how a custom call's input is read back as a one-parameter function (JSON formats)
CUSTOM_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
    "additionalProperties": False,
}


class CustomDefinition(BaseModel):
    """A custom tool: free-form text input, optionally constrained by a grammar."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    format: CustomFormat | None = None

    #: custom inputs are read back exactly as the grammar made them
    strict: bool = True

    def arguments_schema(self) -> dict[str, Any]:
        """The input as a one-string-parameter function (`input`), for the JSON formats."""
        return CUSTOM_INPUT_SCHEMA

    def grammar(self) -> CustomGrammar | None:
        """The input's grammar; None for free text."""
        return self.format.grammar if self.format is not None else None


class CustomTool(BaseModel):
    """A custom entry of `tools`: `{"type": "custom", "custom": {name, description, format}}`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["custom"]
    custom: CustomDefinition

    @property
    def definition(self) -> CustomDefinition:
        return self.custom


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]
ToolDefinition = FunctionDefinition | CustomDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: call exactly this function."""

    type: Literal["function"]
    function: FunctionName

    @property
    def tool_name(self) -> str:
        return self.function.name


class NamedCustomChoice(BaseModel):
    """`{"type": "custom", "custom": {"name": ...}}`: call exactly this custom tool."""

    type: Literal["custom"]
    custom: FunctionName

    @property
    def tool_name(self) -> str:
        return self.custom.name


NamedChoice = Annotated[NamedToolChoice | NamedCustomChoice, Field(discriminator="type")]


class AllowedTools(BaseModel):
    mode: Literal["auto", "required"]
    tools: list[NamedChoice] = Field(min_length=1)


class AllowedToolsChoice(BaseModel):
    """`{"type": "allowed_tools", ...}`: `auto` or `required` over a subset of `tools`."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        NamedToolChoice | NamedCustomChoice | AllowedToolsChoice, Field(discriminator="type")
    ]
)


@dataclass(frozen=True)
class ToolUse:
    """How tools take part in one completion (`tool_choice` resolved against `tools`)."""

    #: every tool of the request (functions and custom tools): all are described in the prompt
    offered: tuple[ToolDefinition, ...]
    #: the tools a call may name (a subset with a named or allowed_tools choice)
    callable: tuple[ToolDefinition, ...]
    #: auto: text or calls; required: calls only
    mode: Literal["auto", "required"]
    #: whether several calls may come in one turn
    parallel: bool

    @classmethod
    def of(
        cls,
        tools: Sequence[FunctionTool | CustomTool],
        choice: ToolChoice | None,
        parallel: bool | None,
    ) -> ToolUse | None:
        """Resolve a request's tool fields; None when no tool may be called.

        Raises a 400 for a `tool_choice` without `tools`, one that names a function not
        offered, and for two tools of the same name.
        """
        if not tools:
            if choice not in (None, "none"):
                raise InvalidRequest(
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                    "'tools' are specified.",
                    param="tool_choice",
                )
            return None
        functions = tuple(tool.definition for tool in tools)
        by_name = {f.name: f for f in functions}
        if len(by_name) != len(functions):
            raise InvalidRequest("Tool names must be unique.", param="tools")
        many = parallel is not False
        if choice is None or choice == "auto":
            return cls(functions, functions, "auto", many)
        if choice == "none":
            return None
        if choice == "required":
            return cls(functions, functions, "required", many)
        if isinstance(choice, NamedToolChoice | NamedCustomChoice):
            return cls(functions, _pick(by_name, [choice]), "required", False)
        allowed = choice.allowed_tools
        return cls(functions, _pick(by_name, allowed.tools), allowed.mode, many)

    @property
    def custom_names(self) -> frozenset[str]:
        """The callable custom tools (their calls carry free-form `input`, not arguments)."""
        return frozenset(t.name for t in self.callable if isinstance(t, CustomDefinition))

    @property
    def grammar_names(self) -> frozenset[str]:
        """The callable custom tools whose input follows a grammar."""
        return frozenset(
            t.name for t in self.callable if isinstance(t, CustomDefinition) and t.grammar()
        )


def _pick(
    by_name: dict[str, ToolDefinition], chosen: Sequence[NamedToolChoice | NamedCustomChoice]
) -> tuple[ToolDefinition, ...]:
    for item in chosen:
        kind = "custom" if isinstance(item, NamedCustomChoice) else "function"
        tool = by_name.get(item.tool_name)
        if tool is None or isinstance(tool, CustomDefinition) != (kind == "custom"):
            what = "custom tool" if kind == "custom" else "function"
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': no {what} named '{item.tool_name}' "
                "is among the tools.",
                param="tool_choice",
            )
    return tuple(by_name[item.tool_name] for item in chosen)


class ToolCallFunction(BaseModel):
    """The function of a call: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class CustomCallInput(BaseModel):
    """A custom tool call: the tool's name and its free-form input."""

    name: str
    input: str


class MessageToolCall(BaseModel):
    """A call in an assistant message sent back by the client (function or custom)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function", "custom"] = "function"
    function: ToolCallFunction | None = None
    custom: CustomCallInput | None = None

    @model_validator(mode="after")
    def _body_of_its_type(self) -> MessageToolCall:
        if getattr(self, self.type) is None:
            raise ValueError(f"a '{self.type}' tool call needs '{self.type}'")
        return self

    def prompt_dict(self) -> dict[str, Any]:
        """The call as the conversation format reads it (`chatfmt`)."""
        if self.type == "custom":
            assert self.custom is not None
            return {"id": self.id, "type": "custom", "custom": self.custom.model_dump()}
        assert self.function is not None
        return {"id": self.id, "type": "function", "function": self.function.model_dump()}


class ToolCall(OpenAIModel):
    """A function call in a `chat.completion` message."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class CustomCall(OpenAIModel):
    name: str
    input: str


class CustomToolCall(OpenAIModel):
    """A custom tool call in a `chat.completion` message (OpenAI's shape)."""

    id: str
    type: Literal["custom"] = "custom"
    custom: CustomCall


class DeltaFunction(OpenAIModel):
    name: str | None = None
    arguments: str | None = None


class DeltaCustom(OpenAIModel):
    name: str | None = None
    input: str | None = None


class DeltaToolCall(OpenAIModel):
    """A fragment of a call in a stream: `id`, `type` and name come in the first one.

    A custom tool's call carries `custom` (`name`, then pieces of `input`) instead of
    `function`.
    """

    index: int
    id: str | None = None
    type: Literal["function", "custom"] | None = None
    function: DeltaFunction | None = None
    custom: DeltaCustom | None = Field(None, exclude_if=lambda part: part is None)


class JSONSchemaSpec(BaseModel):
    """`json_schema` of a response format; `schema` omitted means any JSON value."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text`, `json_object` (JSON mode: one JSON object) or `json_schema` (structured output).

    One model rather than a tagged union, so that errors name `response_format.json_schema`
    and not the tag.
    """

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequest(
                "Missing required parameter: 'response_format.json_schema'.",
                param="response_format.json_schema",
            )
        return self
