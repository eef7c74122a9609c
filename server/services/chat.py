"""Chat completions: prompt building, generation on the model's worker, OpenAI objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chatfmt.reasoning import starts_inside
from chatfmt.toolcalls import prompt_tools
from server.engine.base import GenerationParams, Sampled
from server.engine.chatformat import ModelFormat
from server.engine.output_grammar import Thinking
from server.errors import InvalidRequest
from server.models.residency import LoadedModel
from server.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
)
from server.protocol.common import Usage, new_id, now
from server.protocol.tools import ToolUse
from server.services.choices import Producer, choices_producer, fingerprint, usage
from server.services.logprobs import LogprobFormatter
from server.services.observer import GenerationObserver, GenerationTrace, trace
from server.services.reasoning import ReasoningField, ReasoningTracker, reasoning_fields
from server.services.sampling import generation_params
from server.services.structured import (
    ToolCallStream,
    build_constraint,
    finish_reason,
    message_parts,
)


@dataclass(frozen=True)
class PreparedChat:
    """A validated request bound to a model, with its prompt already tokenized."""

    request: ChatCompletionRequest
    model: LoadedModel
    prompt_ids: list[int]
    params: GenerationParams
    n: int
    #: how tools take part (None: the answer is plain text or the response_format's JSON)
    tools: ToolUse | None = None
    #: the model's tool-call and reasoning format
    fmt: ModelFormat | None = None
    #: a reasoning model's block before the answer (None: the model does not reason)
    thinking: Thinking | None = None


class ChatService:
    """Runs chat completions on the models the routes lease."""

    def __init__(
        self,
        *,
        max_n: int,
        default_max_tokens: int,
        max_messages: int = 2048,
        reasoning_field: ReasoningField = "reasoning_content",
        observer: GenerationObserver | None = None,
    ) -> None:
        self._observer = observer
        self._reasoning_field: ReasoningField = reasoning_field
        self._max_n = max_n
        self._max_messages = max_messages
        self._default_max_tokens = default_max_tokens
        self._logprobs = LogprobFormatter()

    def prepare(self, request: ChatCompletionRequest, model: LoadedModel) -> PreparedChat:
        """Check everything that can fail before generation starts, on the leased model."""
        if len(request.messages) > self._max_messages:
            raise InvalidRequest(
                f"A request may carry at most {self._max_messages} messages on this server "
                f"(POMAR_MAX_MESSAGES); this one has {len(request.messages)}.",
                param="messages",
            )
        n = request.n or 1
        if n > self._max_n:
            raise InvalidRequest(f"n must be at most {self._max_n} on this server.", param="n")
        params = generation_params(
            request, *request.limits(self._default_max_tokens), model.sampling
        )
        vocab = len(model.engine.tokenizer)
        if any(token_id >= vocab for token_id in params.logit_bias):
            raise InvalidRequest(
                f"logit_bias names a token id outside the vocabulary (size {vocab}).",
                param="logit_bias",
            )
        tools = request.tool_use()
        fmt = model.template.format
        prompt = self.prompt(request, model)
        prompt_ids = model.template.tokenize(prompt)
        thinking = None
        if fmt.reasoning is not None:
            thinking = Thinking(fmt.reasoning, starts_inside(prompt, fmt.reasoning))
        context = model.engine.context_length
        if len(prompt_ids) >= context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens, but the messages "
                f"have {len(prompt_ids)} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        params = replace(
            params,
            constraint=build_constraint(request, tools, model.engine, fmt, thinking),
            shown_token_ids=fmt.shown_token_ids,
        )
        return PreparedChat(request, model, prompt_ids, params, n, tools, fmt, thinking)

    def prompt(self, request: ChatCompletionRequest, model: LoadedModel) -> str:
        """The text the model reads for this conversation: its template over the messages,
        the tools it may call and its thinking switch (the Messages API counts its tokens)."""
        tools = request.tool_use()
        fmt = model.template.format
        # a custom tool is shown as a function of one string, its call syntax described
        offered = prompt_tools(
            [t.model_dump(exclude_none=True) for t in request.tools or []], fmt.tools
        )
        return model.template.render(
            request.prompt_messages(), offered if tools else None, _switch(request, fmt)
        )

    async def complete(self, chat: PreparedChat) -> ChatCompletion:
        """The whole `chat.completion` object."""
        assert chat.fmt is not None
        answers = [""] * chat.n
        thoughts: list[str | None] = [None] * chat.n
        finish = ["length"] * chat.n
        stops: list[str | None] = [None] * chat.n
        sampled: list[list[Sampled]] = [[] for _ in range(chat.n)]
        trackers = [ReasoningTracker(chat.thinking) for _ in range(chat.n)]
        completion_tokens = cached = reasoning_tokens = 0
        heard = trace(self._observer, chat.model.id)
        async for index, chunk in chat.model.worker.stream(_producer(chat, heard)):
            thought, answer = trackers[index].feed(chunk)
            answers[index] += answer
            sampled[index].extend(chunk.tokens)
            if chat.thinking is not None:
                thoughts[index] = (thoughts[index] or "") + thought
            if chunk.finish_reason is not None:
                thought, answer = trackers[index].finish()
                answers[index] += answer
                if chat.thinking is not None:
                    thoughts[index] = (thoughts[index] or "") + thought
                finish[index] = chunk.finish_reason
                stops[index] = chunk.stop_sequence
                completion_tokens += chunk.completion_tokens
                reasoning_tokens += trackers[index].tokens
                if index == 0:  # the prompt is counted once, as its first reading found it
                    cached = chunk.cached_tokens
        choices = []
        for i in range(chat.n):
            content, calls = message_parts(answers[i], chat.tools, chat.fmt)
            fields = reasoning_fields(thoughts[i] or None, self._reasoning_field)
            choices.append(
                Choice(
                    index=i,
                    message=AssistantMessage(content=content, tool_calls=calls, **fields),
                    finish_reason=finish_reason(finish[i], len(calls or [])),
                    logprobs=self._choice_logprobs(chat, sampled[i]),
                    stop_sequence=stops[i],
                )
            )
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=chat.request.model,
            choices=choices,
            usage=usage(len(chat.prompt_ids), completion_tokens, cached, reasoning_tokens),
            system_fingerprint=fingerprint(chat.model),
        )

    async def stream(self, chat: PreparedChat) -> AsyncIterator[ChatCompletionChunk]:
        """`chat.completion.chunk` objects: role first, then text, then finish, then usage."""
        cid, created, fp = new_id("chatcmpl"), now(), fingerprint(chat.model)

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=cid,
                created=created,
                model=chat.request.model,
                choices=choices,
                system_fingerprint=fp,
                usage=usage,
            )

        assert chat.fmt is not None
        started: set[int] = set()
        calls: dict[int, ToolCallStream] = {}
        trackers: dict[int, ReasoningTracker] = {}
        completion_tokens = cached = reasoning_tokens = 0
        heard = trace(self._observer, chat.model.id)
        async for index, piece in chat.model.worker.stream(_producer(chat, heard)):
            if index not in started:
                started.add(index)
                trackers[index] = ReasoningTracker(chat.thinking)
                if chat.tools is not None:
                    calls[index] = ToolCallStream(chat.tools, chat.fmt)
                yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
            parser = calls.get(index)
            thought, answer = trackers[index].feed(piece)
            text, fragments = parser.feed(answer) if parser else (answer, None)
            if thought or text or fragments or piece.tokens:
                logprobs = self._choice_logprobs(chat, piece.tokens)
                delta = self._delta(thought, text, fragments)
                yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            if piece.finish_reason is not None:
                completion_tokens += piece.completion_tokens
                reasoning_tokens += trackers[index].tokens
                if index == 0:
                    cached = piece.cached_tokens
                thought, answer = trackers[index].finish()
                text, fragments = parser.feed(answer) if parser else (answer, None)
                if parser is not None:
                    more_text, more = parser.finish()
                    text = (text or "") + (more_text or "") or None
                    fragments = (fragments or []) + (more or []) or None
                if thought or text or fragments:
                    yield chunk(
                        [ChunkChoice(index=index, delta=self._delta(thought, text, fragments))]
                    )
                reason = finish_reason(piece.finish_reason, parser.calls if parser else 0)
                end = ChunkChoice(
                    index=index,
                    delta=Delta(),
                    finish_reason=reason,
                    stop_sequence=piece.stop_sequence,
                )
                yield chunk([end])
        options = chat.request.stream_options
        if options is not None and options.include_usage:
            yield chunk(
                [], usage(len(chat.prompt_ids), completion_tokens, cached, reasoning_tokens)
            )

    def _delta(self, thought: str, text: str | None, fragments: Any) -> Delta:
        """A delta with its reasoning piece under the configured field name(s)."""
        fields = reasoning_fields(thought or None, self._reasoning_field)
        return Delta(content=text, tool_calls=fragments, **fields)

    def _choice_logprobs(
        self, chat: PreparedChat, tokens: Sequence[Sampled]
    ) -> ChoiceLogprobs | None:
        """The choice's (or chunk's) logprobs when the request asked for them."""
        if chat.params.top_logprobs is None:
            return None
        return self._logprobs.chat(chat.model.engine.tokenizer, tokens)


def _switch(request: ChatCompletionRequest, fmt: ModelFormat) -> dict[str, Any]:
    """Template variables for `reasoning_effort`: the model's thinking switch.

    "none" and "minimal" turn thinking off where the template reads `enable_thinking`;
    a template that reads `reasoning_effort` itself gets the value. A model without a
    switch refuses the parameter by name.
    """
    effort = request.reasoning_effort
    if effort is None:
        return {}
    if fmt.reasoning is not None and fmt.reasoning.switch:
        return {fmt.reasoning.switch: effort not in ("none", "minimal")}
    if "reasoning_effort" in fmt.variables:
        return {"reasoning_effort": effort}
    raise InvalidRequest(
        "reasoning_effort is not supported by this model: its chat template has no "
        "thinking switch.",
        param="reasoning_effort",
        code="unsupported_parameter",
    )


def _producer(chat: PreparedChat, heard: GenerationTrace) -> Producer:
    return choices_producer(chat.model, [chat.prompt_ids], chat.params, chat.n, heard)
