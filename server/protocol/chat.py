"""`/v1/chat/completions`: request validation and response shapes (OpenAI wire format)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.errors import InvalidRequest, UnsupportedParameter
from server.protocol.common import OpenAIModel, Usage
from server.protocol.sampling import SamplingRequest
from server.protocol.tools import (
    CustomToolCall,
    DeltaToolCall,
    MessageToolCall,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolUse,
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class TextPart(BaseModel):
    """A text content part; other part types are refused by name."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _only_text(self) -> TextPart:
        if self.type != "text":
            raise ValueError(f"content part type '{self.type}' is not supported (only 'text')")
        if self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


class ChatMessage(BaseModel):
    """One message of the conversation; unknown extra fields are ignored."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    #: an assistant turn's calls, sent back with the conversation
    tool_calls: list[MessageToolCall] | None = None
    #: the call a `tool` message answers
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_result_names_its_call(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        return self

    def text(self) -> str:
        """The message content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


# Known OpenAI parameters not implemented yet: refused with a 400 naming them, unless
# they carry their "off" value. Maps name -> predicate telling whether a value is "off".
# The legacy `functions` / `function_call` stay refused: `tools` / `tool_choice` replace them.
_UNSUPPORTED: dict[str, Any] = {
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}

#: OpenAI's `reasoning_effort` values; "none" and "minimal" turn a thinking switch off
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ChatCompletionRequest(SamplingRequest):
    """The body of `POST /v1/chat/completions`. Extra unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]},
                {
                    "model": "smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ]
        }
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    #: honoured by models whose template has a thinking switch (400 for the others)
    reasoning_effort: ReasoningEffort | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        extras = self.model_extra or {}
        for name, is_off in _UNSUPPORTED.items():
            if name in extras and not is_off(extras[name]):
                raise UnsupportedParameter(name)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest(
                "logprobs must be set to true if top_logprobs is used.", param="top_logprobs"
            )
        self.tool_use()  # a tool_choice that names no offered tool is a 400 now
        return self

    def tool_use(self) -> ToolUse | None:
        """How tools take part in this completion; None when they do not."""
        return ToolUse.of(self.tools or [], self.tool_choice, self.parallel_tool_calls)

    def prompt_messages(self) -> list[dict[str, Any]]:
        """Messages as OpenAI-shaped dicts (`developer` is a system message), calls included."""
        out: list[dict[str, Any]] = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            msg: dict[str, Any] = {"role": role, "content": m.text()}
            if m.name:
                msg["name"] = m.name
            if m.tool_calls:
                msg["tool_calls"] = [call.prompt_dict() for call in m.tool_calls]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            extra = m.model_extra or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            if m.role == "assistant" and isinstance(reasoning, str) and reasoning:
                # earlier reasoning, for templates that show it (Qwen3 in tool loops)
                msg["reasoning_content"] = reasoning
            out.append(msg)
        return out

    def limits(self, default_max_tokens: int) -> tuple[int, int | None]:
        """(tokens to generate at most, alternatives per token's logprobs or None)."""
        limit = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return limit, (self.top_logprobs or 0) if self.logprobs else None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    #: left out when there are none (OpenAI's schema has no null here)
    tool_calls: list[ToolCall | CustomToolCall] | None = Field(
        None, exclude_if=lambda calls: calls is None
    )
    #: a reasoning model's thinking, under the name(s) POMAR_REASONING_FIELD picks;
    #: left out for models that do not reason
    reasoning_content: str | None = Field(None, exclude_if=lambda text: text is None)
    reasoning: str | None = Field(None, exclude_if=lambda text: text is None)


class TopLogprob(OpenAIModel):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprob(OpenAIModel):
    """One sampled token's log probability and the best alternatives at its position."""

    token: str
    bytes: list[int] | None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(OpenAIModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


#: the stop string that ended a choice: not on the OpenAI wire (OpenAI's `finish_reason`
#: says "stop" alone), read by the Messages API for its `stop_sequence`
_MATCHED_STOP = "the stop string that ended the choice (internal, never serialized)"


class Choice(OpenAIModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    stop_sequence: str | None = Field(None, exclude=True, description=_MATCHED_STOP)


class ChatCompletion(OpenAIModel):
    """The `chat.completion` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    service_tier: str = "default"


class Delta(OpenAIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    #: a piece of reasoning (see `AssistantMessage`); left out when there is none
    reasoning_content: str | None = Field(None, exclude_if=lambda text: text is None)
    reasoning: str | None = Field(None, exclude_if=lambda text: text is None)


class ChunkChoice(OpenAIModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_sequence: str | None = Field(None, exclude=True, description=_MATCHED_STOP)


class ChatCompletionChunk(OpenAIModel):
    """The `chat.completion.chunk` object of a stream."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    service_tier: str = "default"
    usage: Usage | None = None
