"""A reasoning model's thinking, split from its answer as a choice streams, and counted."""

from __future__ import annotations

from typing import Literal

from chatfmt.reasoning import ReasoningSplitter
from server.engine.generation import Chunk
from server.engine.output_grammar import Thinking

#: where a message carries the reasoning (POMAR_REASONING_FIELD)
ReasoningField = Literal["reasoning_content", "reasoning", "both"]


class ReasoningTracker:
    """One choice's text as (reasoning, answer) pieces, with its reasoning tokens counted."""

    def __init__(self, thinking: Thinking | None) -> None:
        self._splitter = (
            ReasoningSplitter(thinking.fmt, inside=thinking.inside) if thinking else None
        )
        self._counted = 0
        #: completion tokens spent in the reasoning block (its tags included)
        self.tokens = 0

    def feed(self, chunk: Chunk) -> tuple[str, str]:
        """The reasoning and answer text this chunk completes."""
        if self._splitter is None:
            return "", chunk.text
        before = self._splitter.state
        reasoning, answer = self._splitter.feed(chunk.text)
        after = self._splitter.state
        if before in ("opened", "thinking") or after in ("opened", "thinking", "after"):
            self.tokens += chunk.completion_tokens - self._counted
        self._counted = chunk.completion_tokens
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the choice."""
        return self._splitter.finish() if self._splitter else ("", "")


def reasoning_fields(text: str | None, field: ReasoningField) -> dict[str, str | None]:
    """The message (or delta) fields that carry `text` (none when it is None)."""
    if text is None:
        return {}
    if field == "both":
        return {"reasoning_content": text, "reasoning": text}
    return {field: text}
