"""Sampled tokens -> OpenAI's chat `logprobs` objects."""

from __future__ import annotations

import weakref
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
        # weak keys: an unloaded model's tokenizer (and its table) can be freed
        self._tables: weakref.WeakKeyDictionary[Any, TokenBytes] = weakref.WeakKeyDictionary()

    def token_bytes(self, tokenizer: Any) -> TokenBytes:
        """The (cached) token -> bytes table of this tokenizer."""
        table = self._tables.get(tokenizer)
        if table is None:
            table = self._tables[tokenizer] = TokenBytes(tokenizer)
        return table

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
