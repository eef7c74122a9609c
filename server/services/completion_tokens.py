"""Legacy completions' tokens as text: a tokenizer's facts, a prompt's ids, the `logprobs` object.

`LogprobWriter` writes a choice's `logprobs` from the echoed prompt (with the scores
`Engine.score` gave its ids) and from the sampled tokens; `TokenizerFacts` and
`PromptInput` are what it reads, and what `server.services.completions` prepares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers.decoders import DecodeStream

from server.engine.base import Sampled
from server.engine.detokenizer import Detokenizer
from server.engine.fim import FimTokens, document_end_ids, find_fim_tokens
from server.engine.token_bytes import TokenBytes
from server.protocol.completions import CompletionLogprobs
from server.services.logprobs import FLOOR


@dataclass(frozen=True)
class TokenizerFacts:
    """What completions need to know about one model's tokenizer, computed once."""

    tokenizer: Any
    vocab_size: int
    #: ids the tokenizer puts before any text (bos), kept out of echoed tokens
    lead: list[int]
    #: the prompt for an empty one: "generate as if from the start of a new document"
    document_start: list[int]
    document_ends: frozenset[int]
    fim: FimTokens | None
    token_bytes: TokenBytes

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerFacts:
        """The facts of `tokenizer` (a Hugging Face tokenizer)."""
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]
        lead = [int(bos)] if adds_bos else []
        ends = document_end_ids(tokenizer)
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        start = lead or sorted(ends)[:1] or eos
        return cls(
            tokenizer, len(tokenizer), lead, start, ends, find_fim_tokens(tokenizer),
            TokenBytes(tokenizer),
        )  # fmt: skip


@dataclass(frozen=True)
class PromptInput:
    """One prompt: what the engine reads, and what `echo` gives back."""

    ids: list[int]
    echo_text: str
    echo_ids: list[int]
    #: where `echo_ids` start in `ids` (after a bos the server put in front)
    echo_start: int = 0


class LogprobWriter:
    """One choice's `logprobs`, piece by piece, with offsets into the choice's `text`.

    Offsets come from decoding the tokens one after another (a token that ends
    inside a UTF-8 character starts where the character does) and never pass the
    text already returned, which a stop string may have cut short.
    """

    def __init__(self, facts: TokenizerFacts) -> None:
        self._facts = facts
        self._detok = Detokenizer(facts.tokenizer)
        self._base = 0  # length of the echoed prompt
        self._decoded = 0  # completion characters decoded so far
        self._returned = 0  # completion characters returned so far

    def echo(
        self, prompt: PromptInput, scores: Sequence[Sampled] | None = None
    ) -> CompletionLogprobs:
        """The prompt's tokens, with the logprobs of `Engine.score` of `prompt.ids`.

        A token with nothing before it in the model's input (the first one, unless the
        server put a bos there), or any token when `scores` is None, has null logprobs.
        """
        stream = DecodeStream(skip_special_tokens=False)
        backend = self._facts.tokenizer.backend_tokenizer
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        decoded = 0
        for k, token in enumerate(prompt.echo_ids):
            out.text_offset.append(min(decoded, len(prompt.echo_text)))
            decoded += len(stream.step(backend, token) or "")
            out.tokens.append(self._text(token))
            # scores[i] is ids[i + 1]: the echoed token at ids[q] is scores[q - 1]
            q = prompt.echo_start + k
            scored = scores[q - 1] if scores is not None and 0 < q <= len(scores) else None
            logprob, top = self._entry(scored) if scored is not None else (None, None)
            out.token_logprobs.append(logprob)
            out.top_logprobs.append(top)
        self._base = len(prompt.echo_text)
        return out

    def add(self, sampled: Sequence[Sampled], text: str) -> CompletionLogprobs:
        """The logprobs of these sampled tokens, which produced `text`."""
        self._returned += len(text)
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for s in sampled:
            out.text_offset.append(self._base + min(self._decoded, self._returned))
            self._decoded += len(self._detok.add(s.token))
            out.tokens.append(self._text(s.token))
            logprob, top = self._entry(s)
            out.token_logprobs.append(logprob)
            out.top_logprobs.append(top)
        return out

    def _entry(self, s: Sampled) -> tuple[float | None, dict[str, float]]:
        """A token's `token_logprobs` and `top_logprobs` entries."""
        logprob = max(s.logprob, FLOOR) if s.logprob is not None else None
        top = {self._text(t): max(lp, FLOOR) for t, lp in s.top}
        # OpenAI always reports the token itself too: up to logprobs + 1 entries
        if logprob is not None:
            top.setdefault(self._text(s.token), logprob)
        return logprob, top

    def _text(self, token: int) -> str:
        """The token as text; a piece of a UTF-8 character as `bytes:\\xNN`, as OpenAI does."""
        _, raw = self._facts.token_bytes(token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def join_logprobs(a: CompletionLogprobs | None, b: CompletionLogprobs) -> CompletionLogprobs:
    """One choice's `logprobs`: the echoed prompt's (`a`, if any) followed by the completion's."""
    if a is None:
        return b
    return CompletionLogprobs(
        tokens=a.tokens + b.tokens,
        token_logprobs=a.token_logprobs + b.token_logprobs,
        top_logprobs=a.top_logprobs + b.top_logprobs,
        text_offset=a.text_offset + b.text_offset,
    )
