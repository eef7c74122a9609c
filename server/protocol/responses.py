"""`/v1/responses`: OpenAI's Responses API, request validation and response shapes.

The Responses wire is translated to and from the chat core (`server.services.responses`):
these models only say what the wire carries. Requests accept unknown fields (OpenAI's
clients send vendor fields such as Codex's `client_metadata`); answers carry exactly
OpenAI's fields, plus `pomar_unserved_tools` when a hosted tool was left out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from server.errors import InvalidRequest, UnsupportedParameter
from server.protocol.chat import ReasoningEffort
from server.protocol.common import OpenAIModel
from server.protocol.tools import NAME_PATTERN

# --- input items ----------------------------------------------------------------------


class ContentPart(BaseModel):
    """A text part of an input message: `input_text`, `output_text` (assistant history)
    or `refusal`. Images, files and audio are refused by name."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _only_text(self) -> ContentPart:
        if self.type == "refusal":
            if self.refusal is None:
                raise ValueError("a refusal content part needs 'refusal'")
            return self
        if self.type not in ("input_text", "output_text", "text", "summary_text"):
            raise ValueError(
                f"content part type '{self.type}' is not supported (only input_text, "
                "output_text and refusal)"
            )
        if self.text is None:
            raise ValueError(f"a {self.type} content part needs 'text'")
        return self

    def value(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


def _joined(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(p.value() for p in content)


class MessageItem(BaseModel):
    """`{"role", "content"}` (an easy input message) or a `message` item."""

    model_config = ConfigDict(extra="allow")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return _joined(self.content)


class FunctionCallItem(BaseModel):
    """An earlier `function_call` output item, sent back with the conversation."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    """The result of a function call (`call_id` names it)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return _joined(self.output)


class CustomToolCallItem(BaseModel):
    """An earlier `custom_tool_call` output item."""

    model_config = ConfigDict(extra="allow")

    type: Literal["custom_tool_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: str
    id: str | None = None


class CustomToolCallOutputItem(BaseModel):
    """The result of a custom tool call."""

    model_config = ConfigDict(extra="allow")

    type: Literal["custom_tool_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    id: str | None = None

    def text(self) -> str:
        return _joined(self.output)


class ReasoningPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str


class ReasoningInputItem(BaseModel):
    """An earlier `reasoning` item: its text goes back to the template with the next
    assistant turn (templates that show earlier reasoning use it)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningPart] = Field(default_factory=list)
    content: list[ReasoningPart] | None = None
    encrypted_content: str | None = None

    def text(self) -> str:
        parts = self.content if self.content else self.summary
        return "".join(p.text for p in parts)


def _item_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) else "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[CustomToolCallItem, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItem, Tag("custom_tool_call_output")]
    | Annotated[ReasoningInputItem, Tag("reasoning")],
    Discriminator(_item_kind),
]

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


# --- the response object ------------------------------------------------------------------


class TopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class OutputText(OpenAIModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Logprob] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(OpenAIModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCall(OpenAIModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class CustomToolCall(OpenAIModel):
    id: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    call_id: str
    name: str
    input: str


class ReasoningText(OpenAIModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(OpenAIModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    status: ItemStatus


OutputItem = Annotated[
    OutputMessage | FunctionCall | CustomToolCall | ReasoningItem, Field(discriminator="type")
]


class InputTokensDetails(OpenAIModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(OpenAIModel):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(OpenAIModel):
    code: str
    message: str


class IncompleteDetails(OpenAIModel):
    reason: Literal["max_output_tokens", "content_filter"]


class UnservedTool(OpenAIModel):
    """A tool of the request pomar left out of the prompt: one only OpenAI's cloud runs."""

    index: int
    type: str
    name: str | None = None


class TextFormatOut(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, exclude_if=lambda v: v is None)
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", serialization_alias="schema", exclude_if=lambda v: v is None
    )
    description: str | None = Field(None, exclude_if=lambda v: v is None)
    strict: bool | None = Field(None, exclude_if=lambda v: v is None)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class TextOut(OpenAIModel):
    format: TextFormatOut = Field(default_factory=TextFormatOut)
    verbosity: Literal["low", "medium", "high"] = "medium"


class ReasoningOut(OpenAIModel):
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class Response(OpenAIModel):
    """The `response` object."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: ReasoningOut | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float | None = None
    text: TextOut = Field(default_factory=TextOut)
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    #: pomar: tools of the request left out of the prompt (hosted tools only OpenAI's
    #: cloud runs); absent when every tool was served
    pomar_unserved_tools: list[UnservedTool] | None = Field(None, exclude_if=lambda v: v is None)


class DeletedResponse(OpenAIModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(OpenAIModel):
    """`GET /v1/responses/{id}/input_items`: a page of the response's input items."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputItemsQuery(BaseModel):
    """Query parameters of `GET /v1/responses/{id}/input_items`."""

    model_config = ConfigDict(extra="allow")

    limit: int = Field(20, ge=1, le=100, description="Items per page, 1 to 100.")
    order: Literal["asc", "desc"] = Field("desc", description="`asc` or `desc` (default).")
    after: str | None = Field(None, description="An item id to list items after.")


# --- stream events ------------------------------------------------------------------------


class _Event(OpenAIModel):
    sequence_number: int


class ResponseLifecycleEvent(_Event):
    """`response.created`, `.in_progress`, `.completed`, `.incomplete`, `.failed`."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: Response


class OutputItemEvent(_Event):
    """`response.output_item.added` / `.done`."""

    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    """`response.content_part.added` / `.done`."""

    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: Annotated[OutputText | ReasoningText, Field(discriminator="type")]


class TextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Logprob] = Field(default_factory=list)


class TextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Logprob] = Field(default_factory=list)


class ReasoningDeltaEvent(_Event):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningDoneEvent(_Event):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class CustomInputDeltaEvent(_Event):
    type: Literal["response.custom_tool_call_input.delta"] = "response.custom_tool_call_input.delta"
    item_id: str
    output_index: int
    delta: str


class CustomInputDoneEvent(_Event):
    type: Literal["response.custom_tool_call_input.done"] = "response.custom_tool_call_input.done"
    item_id: str
    output_index: int
    input: str


class ErrorEvent(_Event):
    """An error once the stream has begun (the status line is already sent)."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None


ResponseStreamEvent = Annotated[
    ResponseLifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ReasoningDeltaEvent
    | ReasoningDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | CustomInputDeltaEvent
    | CustomInputDoneEvent
    | ErrorEvent,
    Field(discriminator="type"),
]


class StreamEvent(RootModel[ResponseStreamEvent]):
    """One server-sent event of a `stream: true` response: its SSE `event` line is its `type`."""
