"""`/v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API requests.

Validation only: `server.services.message_request` turns a request into the chat
service's own request, and the answers go back in `server.protocol.message_answer`'s
shapes. The `anthropic` SDK's types are the reference (`anthropic.types`); unknown extra
fields (`cache_control`, `container`, betas...) are accepted and ignored, as pomar does on
its OpenAI routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.protocol.tools import NAME_PATTERN

#: content a pomar model cannot read (images, files) or tools only Anthropic runs: refused
#: by name rather than dropped
_UNREADABLE = Literal[
    "image",
    "document",
    "search_result",
    "container_upload",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
]


class _Block(BaseModel):
    """A content block: unknown extra fields (`cache_control`, `citations`) are ignored."""

    model_config = ConfigDict(extra="allow")


class TextBlockParam(_Block):
    type: Literal["text"]
    text: str


class UnreadableBlockParam(_Block):
    """A block pomar's text models cannot take: a 400 that names its type."""

    type: _UNREADABLE

    @model_validator(mode="after")
    def _refuse(self) -> UnreadableBlockParam:
        raise ValueError(
            f"content blocks of type '{self.type}' are not supported: pomar's models read "
            "text, and run no server tools (send text, tool_use and tool_result blocks)"
        )


class ToolUseBlockParam(_Block):
    """A call the assistant made, sent back with the conversation."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ToolResultContent = Annotated[TextBlockParam | UnreadableBlockParam, Field(discriminator="type")]


class ToolResultBlockParam(_Block):
    """What a tool returned, in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content if isinstance(part, TextBlockParam))


class ThinkingBlockParam(_Block):
    """Earlier thinking sent back (its `signature` is not checked: pomar signs nothing)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(_Block):
    """Thinking Anthropic redacted: nothing a local model can read; left out of the prompt."""

    type: Literal["redacted_thinking"]
    data: str | None = None


ContentBlockParam = Annotated[
    TextBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | UnreadableBlockParam,
    Field(discriminator="type"),
]


class MessageParam(BaseModel):
    """One turn; consecutive turns of one role are one turn, as Anthropic combines them.

    A `system` message within the conversation (Anthropic's mid-conversation system
    messages, which Claude Code sends) holds text only.
    """

    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]

    def blocks(self) -> list[Any]:
        if isinstance(self.content, str):
            return [TextBlockParam(type="text", text=self.content)]
        return list(self.content)


class ToolParam(BaseModel):
    """A client tool: `name`, `description`, `input_schema` (a JSON schema of an object).

    Anthropic's server tools (`web_search_…`, `bash_…`, `text_editor_…`, `code_execution_…`)
    run in Anthropic's cloud only: a 400 that names the type.
    """

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _client_tool(self) -> ToolParam:
        if self.type not in (None, "custom"):
            raise ValueError(
                f"tool type '{self.type}' is one of Anthropic's server tools, which pomar "
                "cannot run; give a custom tool (name, description, input_schema) instead"
            )
        if self.input_schema is None:
            raise ValueError("a custom tool needs an 'input_schema'")
        if self.input_schema.get("type") != "object":
            raise ValueError("'input_schema' must be a JSON schema of type 'object'")
        return self


class _ToolChoiceBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_ToolChoiceBase):
    type: Literal["auto"]


class ToolChoiceAny(_ToolChoiceBase):
    type: Literal["any"]


class ToolChoiceTool(_ToolChoiceBase):
    type: Literal["tool"]
    name: str = Field(min_length=1)


class ToolChoiceNone(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(BaseModel):
    """Think before answering (a reasoning model); `budget_tokens` is not enforced."""

    model_config = ConfigDict(extra="allow")

    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingAdaptive(BaseModel):
    """Let the model decide: its thinking switch on."""

    model_config = ConfigDict(extra="allow")

    type: Literal["adaptive"]


class ThinkingDisabled(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["disabled"]


ThinkingParam = Annotated[
    ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")
]

#: Anthropic's `output_config.effort`
Effort = Literal["low", "medium", "high", "xhigh", "max"]


class JSONOutputFormat(BaseModel):
    """Structured output: the answer is JSON that validates against `schema`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: Effort | None = None
    format: JSONOutputFormat | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None


#: known Anthropic parameters pomar cannot honour: refused by name unless "off"
_UNSUPPORTED: dict[str, Any] = {
    "mcp_servers": lambda v: v in (None, []),
}


class CountTokensRequest(BaseModel):
    """The body of `POST /v1/messages/count_tokens`: a conversation without sampling."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}
            ]
        },
    )

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> CountTokensRequest:
        extras = self.model_extra or {}
        for name, is_off in _UNSUPPORTED.items():
            if name in extras and not is_off(extras[name]):
                raise ValueError(f"'{name}' is not supported by this server")
        return self

    def system_text(self) -> str | None:
        """The system prompt as one string (text blocks joined by newlines)."""
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n".join(block.text for block in self.system) or None


class MessagesRequest(CountTokensRequest):
    """The body of `POST /v1/messages`. Extra unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "smollm2-135m-instruct",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Hi"}],
                },
                {
                    "model": "smollm2-135m-instruct",
                    "max_tokens": 64,
                    "system": "Answer briefly.",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "stream": True,
                },
            ]
        }
    )

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=4)
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = False
    metadata: Metadata | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value and any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty")
        return value
