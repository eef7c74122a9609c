"""`/v1/responses`: the `response` object, its output items and its stream events.

The Responses wire is translated to and from the chat core (`server.services.responses`):
these models only say what the wire carries. Answers carry exactly OpenAI's fields, plus
`pomar_unserved_tools` when a hosted tool was left out. Also here: the shapes of the
endpoints that read a stored response back (delete, `input_items` and its query), and the
named events of a `stream: true` answer. The request is `server.protocol.responses_request`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from server.protocol.chat import ReasoningEffort
from server.protocol.common import OpenAIModel

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
    # OpenAI's document types both as present or absent, never null (its API sends null):
    # left out while unknown (usage, before the end) or not given (user)
    usage: ResponseUsage | None = Field(None, exclude_if=lambda v: v is None)
    user: str | None = Field(None, exclude_if=lambda v: v is None)
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
