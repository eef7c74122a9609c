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
    """An entry of `tools` (only function tools; custom tools are refused by pydantic)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: call exactly this function."""

    type: Literal["function"]
    function: FunctionName


class AllowedTools(BaseModel):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(BaseModel):
    """`{"type": "allowed_tools", ...}`: `auto` or `required` over a subset of `tools`."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[NamedToolChoice | AllowedToolsChoice, Field(discriminator="type")]
)


@dataclass(frozen=True)
class ToolUse:
    """How tools take part in one completion (`tool_choice` resolved against `tools`)."""

    #: every function of the request: all are described in the prompt
    offered: tuple[FunctionDefinition, ...]
    #: the functions a call may name (a subset with a named or allowed_tools choice)
    callable: tuple[FunctionDefinition, ...]
    #: auto: text or calls; required: calls only
    mode: Literal["auto", "required"]
    #: whether several calls may come in one turn
    parallel: bool

    @classmethod
    def of(
        cls, tools: Sequence[FunctionTool], choice: ToolChoice | None, parallel: bool | None
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
        functions = tuple(tool.function for tool in tools)
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
        if isinstance(choice, NamedToolChoice):
            return cls(functions, _pick(by_name, [choice]), "required", False)
        allowed = choice.allowed_tools
        return cls(functions, _pick(by_name, allowed.tools), allowed.mode, many)


def _pick(
    by_name: dict[str, FunctionDefinition], chosen: Sequence[NamedToolChoice]
) -> tuple[FunctionDefinition, ...]:
    for item in chosen:
        if item.function.name not in by_name:
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': no function named '{item.function.name}' "
                "is among the tools.",
                param="tool_choice",
            )
    return tuple(by_name[item.function.name] for item in chosen)


class ToolCallFunction(BaseModel):
    """The function of a call: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class MessageToolCall(BaseModel):
    """A call in an assistant message sent back by the client."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ToolCall(OpenAIModel):
    """A call in a `chat.completion` message."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class DeltaFunction(OpenAIModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIModel):
    """A fragment of a call in a stream: `id`, `type` and name come in the first one."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


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
