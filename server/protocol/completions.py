"""`/v1/completions` (OpenAI's legacy Completions API): request validation, response shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.engine.base import GenerationParams
from server.errors import InvalidRequest
from server.protocol.chat import StreamOptions
from server.protocol.common import OpenAIModel, Usage

#: OpenAI's default for this endpoint (chat has none)
DEFAULT_MAX_TOKENS = 16
#: our chat's top_logprobs limit; OpenAI's legacy endpoint stops at 5
MAX_LOGPROBS = 20

TokenId = Annotated[int, Field(strict=True, ge=0)]
#: a string, strings, token ids, or lists of token ids, as OpenAI accepts
Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(BaseModel):
    """The body of `POST /v1/completions`. Extra unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    #: None means "the start of a new document", as OpenAI's default `<|endoftext|>` does
    prompt: Prompt | None = Field(union_mode="left_to_right")
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1, le=20)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None

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

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got '{key}'")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias values must be between -100 and 100")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )
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

    def to_generation_params(self, defaults: Mapping[str, float] | None = None) -> GenerationParams:
        """Map the OpenAI parameters onto the engine's sampling parameters.

        `defaults` (the model's generation_config) fill temperature / top_p when the
        request names none, as chat does. Logprobs are also asked of the engine when
        best_of needs them to rank the candidates.
        """
        defaults = defaults or {}
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        temperature = self.temperature
        if temperature is None:
            temperature = defaults.get("temperature", 1.0)
        top_p = self.top_p if self.top_p is not None else defaults.get("top_p", 1.0)
        top_logprobs = self.logprobs
        if top_logprobs is None and self.candidates_per_prompt > self.choices_per_prompt:
            top_logprobs = 0
        return GenerationParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stops),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            top_logprobs=top_logprobs,
        )


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
