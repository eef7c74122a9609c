"""`/v1/completions` (OpenAI's legacy Completions API): request validation, response shapes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from server.errors import InvalidRequest
from server.protocol.common import OpenAIModel, Usage
from server.protocol.sampling import SamplingRequest

#: OpenAI's default for this endpoint (chat has none)
DEFAULT_MAX_TOKENS = 16
#: our chat's top_logprobs limit; OpenAI's legacy endpoint stops at 5
MAX_LOGPROBS = 20

TokenId = Annotated[int, Field(strict=True, ge=0)]
#: a string, strings, token ids, or lists of token ids, as OpenAI accepts
Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(SamplingRequest):
    """The body of `POST /v1/completions`. Extra unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "smollm2-135m-instruct", "prompt": "Once", "logprobs": 2, "echo": True},
                {"model": "smollm2-135m-instruct", "prompt": ["a", "b"], "stream": True},
            ]
        }
    )
    #: None means "the start of a new document", as OpenAI's default `<|endoftext|>` does
    prompt: Prompt | None = Field(union_mode="left_to_right")
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1, le=20)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: object) -> object:
        # one clear message instead of pydantic's error per union member
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            if all(isinstance(p, str) for p in value) or _token_ids(value):
                return value
            if all(_token_ids(p) for p in value):
                return value
        raise ValueError(
            "prompt must be a string, a non-empty list of strings, a non-empty list of "
            "token ids (integers >= 0), or a list of such lists"
        )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CompletionRequest:
        if self.echo and self.suffix is not None:
            raise InvalidRequest("echo cannot be used together with suffix.", param="echo")
        if self.best_of is not None:
            if self.best_of < self.choices_per_prompt:
                raise InvalidRequest("best_of must be greater than or equal to n.", param="best_of")
            if self.stream and self.best_of > self.choices_per_prompt:
                raise InvalidRequest(
                    "best_of greater than n cannot be streamed: the best ones are only "
                    "known at the end.",
                    param="best_of",
                )
        return self

    @property
    def choices_per_prompt(self) -> int:
        """`n`: choices returned for each prompt."""
        return self.n or 1

    @property
    def candidates_per_prompt(self) -> int:
        """Completions generated for each prompt: `best_of` when set, else `n`."""
        return self.best_of or self.choices_per_prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: each a string or a list of token ids."""
        value = self.prompt
        if value is None:
            return [""]
        if isinstance(value, str):
            return [value]
        # the validator allows one shape only: all ints (one prompt) or all prompts
        ids: list[int] = []
        out: list[str | list[int]] = []
        for p in value:
            if isinstance(p, int):
                ids.append(p)
            else:
                out.append(p if isinstance(p, str) else list(p))
        return [ids] if ids else out

    def limits(self) -> tuple[int, int | None]:
        """(tokens to generate at most, alternatives per token's logprobs or None).

        Logprobs are also asked of the engine when best_of needs them to rank the
        candidates.
        """
        top_logprobs = self.logprobs
        if top_logprobs is None and self.candidates_per_prompt > self.choices_per_prompt:
            top_logprobs = 0
        limit = self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS
        return limit, top_logprobs


def _token_ids(value: object) -> bool:
    """A non-empty list of non-negative ints (bools are not token ids)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


FinishReason = Literal["stop", "length", "content_filter"]


class CompletionLogprobs(OpenAIModel):
    """Per-token log probabilities of a choice's text (prompt tokens: null logprobs)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    #: the best alternatives at each position, plus the sampled token itself
    top_logprobs: list[dict[str, float] | None]
    #: character offset of each token in the choice's `text`
    text_offset: list[int]


class CompletionChoice(OpenAIModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    #: null in stream chunks until the choice's last one
    finish_reason: FinishReason | None = None


class Completion(OpenAIModel):
    """The `text_completion` object; stream chunks have the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: Usage | None = None
