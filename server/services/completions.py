"""Legacy completions: raw prompts (no chat template), fill-in-the-middle, echo, logprobs.

With `echo` and `logprobs` the prompt is scored too (`Engine.score`): each echoed token
has its logprob under the raw model distribution given the tokens before it, the first
token of the model's input null as OpenAI gives it; `max_tokens: 0` scores without
generating, as lm-evaluation-harness's loglikelihood requests do.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace

from server.engine.base import Engine, GenerationParams, Sampled
from server.engine.generation import Chunk
from server.errors import InvalidRequest
from server.models.residency import LoadedModel
from server.protocol.common import new_id, now
from server.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
)
from server.services.choices import choices_producer, fingerprint, usage
from server.services.completion_tokens import (
    LogprobWriter,
    PromptInput,
    TokenizerFacts,
    join_logprobs,
)
from server.services.observer import GenerationObserver, GenerationTrace, trace
from server.services.sampling import generation_params


@dataclass(frozen=True)
class PreparedCompletion:
    """A validated request bound to a model, its prompts already tokenized."""

    request: CompletionRequest
    model: LoadedModel
    facts: TokenizerFacts
    prompts: list[PromptInput]
    params: GenerationParams
    #: choices returned per prompt, and completions generated per prompt (best_of)
    n: int
    candidates: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    @property
    def scores_prompts(self) -> bool:
        """The echoed prompts' tokens get logprobs: the engine scores them."""
        return bool(self.request.echo) and self.request.logprobs is not None


@dataclass(frozen=True)
class PromptScores:
    """What the worker yields for a scored prompt, before that prompt's choices."""

    prompt: int
    #: `Engine.score` of the prompt's ids: item i is ids[i + 1]
    scores: list[Sampled]


#: the worker's items: (choice index, a piece of it), or a prompt's scores
_Item = tuple[int, Chunk] | PromptScores


@dataclass
class _Result:
    text: str = ""
    finish: str = "length"
    tokens: list[Sampled] = field(default_factory=list)
    completion_tokens: int = 0
    cached_tokens: int = 0


#: a request's prompts × candidates may reach this many times POMAR_MAX_N
MAX_CHOICES_PER_N = 16


class CompletionService:
    """Runs legacy completions on the models the routes lease."""

    def __init__(self, *, max_n: int, observer: GenerationObserver | None = None) -> None:
        self._max_n = max_n
        self._observer = observer
        # per engine (adapter models share their base's); weak keys let unloaded engines go
        self._facts: weakref.WeakKeyDictionary[Engine, TokenizerFacts] = weakref.WeakKeyDictionary()

    def prepare(self, request: CompletionRequest, model: LoadedModel) -> PreparedCompletion:
        """Check everything that can fail before generation starts, on the leased model."""
        for name, value in (("n", request.n), ("best_of", request.best_of)):
            if value is not None and value > self._max_n:
                raise InvalidRequest(f"{name} must be at most {self._max_n} here.", param=name)
        facts = self._facts_of(model.engine)
        params = generation_params(request, *request.limits(), model.sampling)
        if any(token_id >= facts.vocab_size for token_id in params.logit_bias):
            raise InvalidRequest(
                f"logit_bias names a token id outside the vocabulary (size {facts.vocab_size}).",
                param="logit_bias",
            )
        ends = set(facts.document_ends)
        if request.suffix is not None:
            if facts.fim is None:
                raise InvalidRequest(
                    f"The model '{request.model}' has no fill-in-the-middle tokens, so it "
                    "cannot complete with a suffix.",
                    param="suffix",
                    code="fim_not_supported",
                )
            ends |= facts.fim.ends
        raw_prompts = request.prompts()
        # a list of prompts multiplies the work like n does: cap the total as n is capped
        total = len(raw_prompts) * request.candidates_per_prompt
        if total > MAX_CHOICES_PER_N * self._max_n:
            raise InvalidRequest(
                f"This request asks for {total} completions ({len(raw_prompts)} prompts × "
                f"{request.candidates_per_prompt}); this server generates at most "
                f"{MAX_CHOICES_PER_N * self._max_n} per request.",
                param="prompt",
            )
        prompts = [self._prompt(facts, p, request.suffix) for p in raw_prompts]
        context = model.engine.context_length
        # a prompt that is only scored (max_tokens 0) may fill the context; one to be
        # completed leaves a position for the first new token
        room = context if params.max_tokens == 0 else context - 1
        for p in prompts:
            if len(p.ids) > room:
                more = "" if room == context else " and no room for a completion"
                raise InvalidRequest(
                    f"This model's maximum context length is {context} tokens, but the prompt "
                    f"has {len(p.ids)} tokens{more}.",
                    param="prompt",
                    code="context_length_exceeded",
                )
        params = replace(params, stop_token_ids=frozenset(ends - model.engine.eos_token_ids))
        n, candidates = request.choices_per_prompt, request.candidates_per_prompt
        return PreparedCompletion(request, model, facts, prompts, params, n, candidates)

    async def complete(self, job: PreparedCompletion) -> Completion:
        """The whole `text_completion` object."""
        results = [_Result() for _ in range(len(job.prompts) * job.candidates)]
        scores: dict[int, list[Sampled]] = {}
        heard = trace(self._observer, job.model.id)
        async for item in job.model.worker.stream(
            _producer(job, heard), blocking=job.scores_prompts
        ):
            if isinstance(item, PromptScores):
                scores[item.prompt] = item.scores
                continue
            index, chunk = item
            result = results[index]
            result.text += chunk.text
            result.tokens.extend(chunk.tokens)
            if chunk.finish_reason is not None:
                result.finish = chunk.finish_reason
                result.completion_tokens = chunk.completion_tokens
                result.cached_tokens = chunk.cached_tokens
        choices = []
        for p, prompt in enumerate(job.prompts):
            mine = results[p * job.candidates : (p + 1) * job.candidates]
            for j, result in enumerate(_best(mine, job.n)):
                logprobs = None
                if job.request.logprobs is not None:
                    writer = LogprobWriter(job.facts)
                    logprobs = join_logprobs(
                        writer.echo(prompt, scores.get(p)) if job.request.echo else None,
                        writer.add(result.tokens, result.text),
                    )
                text = prompt.echo_text + result.text if job.request.echo else result.text
                choices.append(
                    CompletionChoice(
                        text=text,
                        index=p * job.n + j,
                        logprobs=logprobs,
                        finish_reason=_finish(result.finish),
                    )
                )
        generated = sum(r.completion_tokens for r in results)
        # each prompt is counted once, as its first reading found the prompt cache
        cached = sum(r.cached_tokens for r in results[:: job.candidates])
        return Completion(
            id=new_id("cmpl"),
            created=now(),
            model=job.request.model,
            choices=choices,
            usage=usage(job.prompt_tokens, generated, cached),
            system_fingerprint=fingerprint(job.model),
        )

    async def stream(self, job: PreparedCompletion) -> AsyncIterator[Completion]:
        """`text_completion` chunks: the echoed prompt, text pieces, then the usage."""
        cid, created, fp = new_id("cmpl"), now(), fingerprint(job.model)

        def chunk(choices: list[CompletionChoice], tokens: int | None = None) -> Completion:
            counted = None if tokens is None else usage(job.prompt_tokens, tokens, cached)
            return Completion(
                id=cid,
                created=created,
                model=job.request.model,
                choices=choices,
                system_fingerprint=fp,
                usage=counted,
            )

        want_logprobs = job.request.logprobs is not None
        writers: dict[int, LogprobWriter] = {}
        scores: dict[int, list[Sampled]] = {}
        generated = cached = 0
        heard = trace(self._observer, job.model.id)
        async for item in job.model.worker.stream(
            _producer(job, heard), blocking=job.scores_prompts
        ):
            if isinstance(item, PromptScores):
                scores[item.prompt] = item.scores
                continue
            index, piece = item
            writer = writers.get(index)
            if writer is None:
                writer = writers[index] = LogprobWriter(job.facts)
                if job.request.echo:
                    p = index // job.n
                    prompt = job.prompts[p]
                    logprobs = writer.echo(prompt, scores.get(p)) if want_logprobs else None
                    text = prompt.echo_text
                    yield chunk([CompletionChoice(text=text, index=index, logprobs=logprobs)])
            if piece.finish_reason is None and not piece.text:
                continue
            finish = None
            if piece.finish_reason is not None:
                generated += piece.completion_tokens
                if index % job.n == 0:
                    cached += piece.cached_tokens
                finish = _finish(piece.finish_reason)
            logprobs = writer.add(piece.tokens, piece.text) if want_logprobs else None
            choice = CompletionChoice(
                text=piece.text, index=index, logprobs=logprobs, finish_reason=finish
            )
            yield chunk([choice])
        options = job.request.stream_options
        if options is not None and options.include_usage:
            yield chunk([], generated)

    def _facts_of(self, engine: Engine) -> TokenizerFacts:
        facts = self._facts.get(engine)
        if facts is None:
            facts = self._facts[engine] = TokenizerFacts.of(engine.tokenizer)
        return facts

    @staticmethod
    def _prompt(facts: TokenizerFacts, prompt: str | list[int], suffix: str | None) -> PromptInput:
        tokenizer = facts.tokenizer
        if isinstance(prompt, str):
            lead, body = facts.lead, list(tokenizer.encode(prompt, add_special_tokens=False))
            text = prompt
            start = len(lead)
        else:
            if any(t >= facts.vocab_size for t in prompt):
                raise InvalidRequest(
                    f"The prompt has a token id outside the vocabulary (size {facts.vocab_size}).",
                    param="prompt",
                )
            # the caller's own bos stays in front of the FIM markers
            cut = 1 if facts.lead and prompt[:1] == facts.lead else 0
            lead, body = prompt[:cut], prompt[cut:]
            text = tokenizer.decode(prompt)
            start = 0  # the caller's ids are echoed as given, bos included
        if suffix is not None and facts.fim is not None:
            tail = tokenizer.encode(suffix, add_special_tokens=False)
            return PromptInput(facts.fim.prompt(lead, body, tail), text, body)
        ids = [*lead, *body] or facts.document_start
        if not ids:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        echo_ids = body if isinstance(prompt, str) else list(prompt)
        return PromptInput(ids, text, echo_ids, start)


def _producer(
    job: PreparedCompletion, heard: GenerationTrace
) -> Callable[[Callable[[], bool]], Iterator[_Item]]:
    """The worker job: per prompt its scores (when echoed with logprobs), then its choices.

    Choice `p * candidates + j` is the j-th completion of prompt p, as OpenAI numbers them.
    """
    model, top = job.model, job.request.logprobs or 0

    def produce(should_stop: Callable[[], bool]) -> Iterator[_Item]:
        if job.scores_prompts:
            # on the worker thread, before any scoring: the request's adapter
            model.engine.activate_adapter(model.adapter)
        for p, prompt in enumerate(job.prompts):
            # an echoed token is scored when the model read a token before it
            if job.scores_prompts and len(prompt.ids) > 1 and prompt.echo_ids:
                yield PromptScores(p, model.engine.score(prompt.ids, top))
                if should_stop():
                    return
            base = p * job.candidates
            if job.params.max_tokens == 0:
                # nothing to generate (echo-only requests): skip the prompt pass
                for j in range(job.candidates):
                    yield base + j, Chunk("", 0, "length")
                continue
            one = choices_producer(model, [prompt.ids], job.params, job.candidates, heard)
            for j, piece in one(should_stop):
                yield base + j, piece
            if should_stop():
                return

    return produce


def _best(candidates: list[_Result], n: int) -> list[_Result]:
    """best_of: the n candidates with the highest mean log probability per token."""
    if len(candidates) == n:
        return candidates

    def score(result: _Result) -> float:
        logprobs = [s.logprob for s in result.tokens if s.logprob is not None]
        return sum(logprobs) / len(logprobs) if logprobs else 0.0

    return sorted(candidates, key=score, reverse=True)[:n]


def _finish(reason: str) -> FinishReason:
    return "length" if reason == "length" else "stop"
