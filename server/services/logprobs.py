"""Sampled tokens -> OpenAI's chat `logprobs` objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.engine.base import Sampled
from server.engine.token_bytes import TokenBytes
from server.protocol.chat import ChoiceLogprobs, TokenLogprob, TopLogprob

#: OpenAI's value for "very unlikely"; JSON has no -inf (masked ids have that)
FLOOR = -9999.0


class LogprobFormatter:
    """Formats logprobs for any served model, keeping one byte table per tokenizer."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[Any, TokenBytes]] = {}

    def token_bytes(self, tokenizer: Any) -> TokenBytes:
        """The (cached) token -> bytes table of this tokenizer."""
        # keyed by identity; the tokenizer is kept alive with its table so ids stay unique
        entry = self._tables.get(id(tokenizer))
        if entry is None:
            entry = (tokenizer, TokenBytes(tokenizer))
            self._tables[id(tokenizer)] = entry
        return entry[1]

    def chat(self, tokenizer: Any, sampled: Sequence[Sampled]) -> ChoiceLogprobs:
        """The `logprobs` of a chat choice (or of one stream chunk) for these tokens."""
        table = self.token_bytes(tokenizer)

        def top(token_id: int, logprob: float) -> TopLogprob:
            text, raw = table(token_id)
            return TopLogprob(token=text, bytes=list(raw), logprob=max(logprob, FLOOR))

        content = []
        for s in sampled:
            text, raw = table(s.token)
            content.append(
                TokenLogprob(
                    token=text,
                    bytes=list(raw),
                    logprob=max(s.logprob if s.logprob is not None else FLOOR, FLOOR),
                    top_logprobs=[top(t, lp) for t, lp in s.top],
                )
            )
        return ChoiceLogprobs(content=content)
