"""Reasoning models: the `<think>…</think>` block, told apart from the answer.

Qwen3, the DeepSeek-R1 distills, SmolLM3 and others think in a `<think>…</think>` block
before they answer. Some templates open the block in the generation prompt (the model
starts inside it), others let the model write `<think>` itself; a template that reads
`enable_thinking` takes a switch. `ReasoningSplitter` splits streamed text into the
reasoning and the answer, holding back only what may be the start of a tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chatfmt.callstream import partial_suffix

OPEN = "<think>"
CLOSE = "</think>"


@dataclass(frozen=True)
class ReasoningFormat:
    """How a model thinks: its tags, and the template variable that switches it."""

    open: str = OPEN
    close: str = CLOSE
    #: the template variable that turns thinking on or off (None: no switch)
    switch: str | None = None


def detect_reasoning(
    template: str, variables: frozenset[str], vocab: Mapping[str, int]
) -> ReasoningFormat | None:
    """The model's reasoning format, or None when it does not think in tags.

    A template that writes or strips `</think>` (Qwen3, the R1 distills) or reads a
    thinking switch marks a reasoning model; so does a vocabulary with both tags.
    """
    switch = "enable_thinking" if "enable_thinking" in variables else None
    if CLOSE in template or switch or (OPEN in vocab and CLOSE in vocab):
        return ReasoningFormat(switch=switch)
    return None


def starts_inside(prompt: str, fmt: ReasoningFormat) -> bool:
    """Whether the generation prompt already opened the reasoning block."""
    tail = prompt.rstrip()
    return tail.endswith(fmt.open)


class ReasoningSplitter:
    """Splits one completion's streamed text into (reasoning, answer) pieces.

    The reasoning is the text between the tags (the tags themselves are dropped); the
    answer is what follows the close tag, without the blank lines that separate them.
    A completion that does not begin with the open tag (blank aside) is all answer.
    """

    def __init__(self, fmt: ReasoningFormat, *, inside: bool) -> None:
        self._fmt = fmt
        self._state = "thinking" if inside else "start"
        self._pending = ""

    @property
    def state(self) -> str:
        """Where the text is: `start` (a block may still open), `opened`, `thinking`,
        `after` (the block just closed) or `answer`."""
        return self._state

    def feed(self, text: str) -> tuple[str, str]:
        """Add model text; return (reasoning, answer) text it completes."""
        self._pending += text
        reasoning = answer = ""
        while True:
            if self._state == "start":
                head = self._pending.lstrip()
                if head.startswith(self._fmt.open):
                    self._pending = head[len(self._fmt.open) :]
                    self._state = "opened"
                    continue
                if self._fmt.open.startswith(head):
                    return reasoning, answer  # blank, or a partial open tag: wait
                self._state = "answer"
            if self._state == "opened":
                # the newline after the open tag is the tag's, not the reasoning's
                self._pending = self._pending.lstrip("\n")
                if not self._pending:
                    return reasoning, answer
                self._state = "thinking"
            if self._state == "thinking":
                at = self._pending.find(self._fmt.close)
                if at < 0:
                    keep = partial_suffix(self._pending, self._fmt.close)
                    cut = len(self._pending) - keep
                    reasoning += self._pending[:cut]
                    self._pending = self._pending[cut:]
                    return reasoning, answer
                reasoning += self._pending[:at]
                self._pending = self._pending[at + len(self._fmt.close) :]
                self._state = "after"
            if self._state == "after":
                # the blank lines between the block and the answer are neither
                self._pending = self._pending.lstrip()
                if not self._pending:
                    return reasoning, answer
                self._state = "answer"
            answer += self._pending
            self._pending = ""
            return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the completion."""
        rest, self._pending = self._pending, ""
        if self._state in ("thinking", "opened"):
            return rest, ""
        if self._state == "start":
            return "", rest
        return "", rest if self._state == "answer" else ""


def split_reasoning(text: str, fmt: ReasoningFormat, *, inside: bool) -> tuple[str, str]:
    """A whole completion as (reasoning, answer)."""
    splitter = ReasoningSplitter(fmt, inside=inside)
    reasoning, answer = splitter.feed(text)
    more_reasoning, more_answer = splitter.finish()
    return reasoning + more_reasoning, answer + more_answer
