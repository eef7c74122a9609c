"""`/v1/responses` input items: the conversation a Responses request carries in `input`.

Messages, earlier `function_call` / `custom_tool_call` items and their outputs, and earlier
`reasoning` items; each has a `text()` the chat core reads. `InputItem` is their union,
told apart by `type` (a bare `{"role", "content"}` is a message). The request that holds
them is `server.protocol.responses_request`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


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
