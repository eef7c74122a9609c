"""`/v1/responses`: the body of `POST /v1/responses` and its validation.

`ResponseCreateRequest` with its tools (flat function and custom tools; hosted tools are
accepted and left out of the prompt), `text.format` and `reasoning`. The items of `input`
are `server.protocol.responses_input`'s; the answer is `server.protocol.responses`'.
Requests accept unknown fields (OpenAI's clients send vendor fields such as Codex's
`client_metadata`), and a 400 names the item and field at fault.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from server.errors import InvalidRequest, UnsupportedParameter
from server.protocol.chat import ReasoningEffort
from server.protocol.responses_input import InputItem
from server.protocol.tools import NAME_PATTERN

# --- input, validated item by item -------------------------------------------------------

_ITEMS: TypeAdapter[list[Any]] = TypeAdapter(list[InputItem])
_TAGS = frozenset(
    {"message", "function_call", "function_call_output", "custom_tool_call",
     "custom_tool_call_output", "reasoning", "str"}
)  # fmt: skip


def _named_error(exc: ValidationError, root: str) -> InvalidRequest:
    """The most specific error of `exc` (the deepest), as a 400 naming its field."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(e["loc"]))
    param = root
    for part in first["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part not in _TAGS and part.isidentifier():
            param += f".{part}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        tag, expected = (
            (first.get("ctx") or {}).get("tag"),
            (first.get("ctx") or {}).get("expected_tags"),
        )
        message = f"item type '{tag}' is not supported here (expected one of {expected})"
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param)


# --- tools ------------------------------------------------------------------------------


class FunctionToolParam(BaseModel):
    """`{"type": "function", "name", "description", "parameters", "strict"}` (flat, as the
    Responses API writes it; `strict` defaults to true there)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomFormatParam(BaseModel):
    """`{"type": "text"}` or `{"type": "grammar", "syntax": "lark"|"regex", "definition"}`."""

    type: Literal["text", "grammar"]
    syntax: Literal["lark", "regex"] | None = None
    definition: str | None = Field(None, min_length=1, max_length=65536)

    @model_validator(mode="after")
    def _grammar_when_asked(self) -> CustomFormatParam:
        if self.type == "grammar" and (self.syntax is None or self.definition is None):
            raise ValueError("a 'grammar' format needs 'syntax' and 'definition'")
        return self


class CustomToolParam(BaseModel):
    """`{"type": "custom", "name", "description", "format"}`: free-form input."""

    model_config = ConfigDict(extra="allow")

    type: Literal["custom"]
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    format: CustomFormatParam | None = None


class HostedToolParam(BaseModel):
    """A tool OpenAI's cloud runs (`web_search`, `file_search`, `code_interpreter`,
    `image_generation`, `computer_use_preview`, `mcp`, `local_shell`, ...): accepted and
    left out of the prompt (listed in `pomar_unserved_tools`)."""

    model_config = ConfigDict(extra="allow")

    type: str


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "custom") else "hosted"


ToolParam = Annotated[
    Annotated[FunctionToolParam, Tag("function")]
    | Annotated[CustomToolParam, Tag("custom")]
    | Annotated[HostedToolParam, Tag("hosted")],
    Discriminator(_tool_kind),
]

# --- the rest of the request --------------------------------------------------------------


class TextFormatParam(BaseModel):
    """`text.format`: `text`, `json_object` or `json_schema` (flat: `name`, `schema`,
    `strict`, `description`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=NAME_PATTERN)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> TextFormatParam:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise InvalidRequest(
                "A json_schema text format needs 'name' and 'schema'.", param="text.format"
            )
        return self


class TextParam(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormatParam | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(BaseModel):
    """`reasoning.effort` drives a reasoning model's thinking switch; `summary` is
    accepted (pomar returns the reasoning text itself, not a summary)."""

    model_config = ConfigDict(extra="allow")

    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


#: `include` values pomar acts on; the others concern hosted tools, which never run here
INCLUDE_LOGPROBS = "message.output_text.logprobs"


class ResponseCreateRequest(BaseModel):
    """The body of `POST /v1/responses`. Unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "smollm2-135m-instruct", "input": "Say hello"},
                {
                    "model": "smollm2-135m-instruct",
                    "instructions": "Answer in one word.",
                    "input": [{"role": "user", "content": "Capital of France?"}],
                    "stream": True,
                },
            ]
        },
    )

    model: str = Field(min_length=1)
    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[ToolParam] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning: ReasoningParam | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    stream: bool | None = False
    background: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        """Items validated here, so that a 400 names the item and field at fault
        (`input[2].content[0]`), not the union's first member."""
        if not isinstance(value, list):
            return value
        try:
            return _ITEMS.validate_python(value)
        except ValidationError as exc:
            raise _named_error(exc, "input") from None

    @model_validator(mode="after")
    def _check(self) -> ResponseCreateRequest:
        if self.background:
            raise UnsupportedParameter(
                "background",
                "Responses run while the request is open; use stream: true for long ones.",
            )
        extras = self.model_extra or {}
        for name in ("conversation", "prompt"):
            if extras.get(name) is not None:
                raise UnsupportedParameter(name)
        if self.metadata is not None:
            if len(self.metadata) > 16:
                raise InvalidRequest("metadata may have at most 16 keys.", param="metadata")
            for key, value in self.metadata.items():
                if len(key) > 64 or len(value) > 512:
                    raise InvalidRequest(
                        "metadata keys are at most 64 characters, values at most 512.",
                        param="metadata",
                    )
        if isinstance(self.tool_choice, str) and self.tool_choice not in (
            "none",
            "auto",
            "required",
        ):
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': '{self.tool_choice}' (expected none, auto, "
                "required or an object).",
                param="tool_choice",
            )
        return self

    @property
    def logprobs(self) -> bool:
        """Whether the answer's text carries logprobs (`include`)."""
        return INCLUDE_LOGPROBS in (self.include or [])
