"""Prompt-lookup drafting: guess the next tokens by finding the last few tokens earlier on.

An edit of a file, a summary quoting its source or code that repeats a name often
continues the way an earlier passage of the same sequence did. The draft is the tokens
that followed the latest earlier occurrence of the sequence's last n tokens (n from
`longest` down to `shortest`); the engine verifies a draft in one batched step and keeps
the tokens the model would have sampled anyway, so the output is the same with or
without it (Saxena's prompt lookup decoding, as in transformers and llama.cpp's
`--lookup`). Written here because no library drafts over a plain token list.
"""

from __future__ import annotations

from dataclasses import dataclass

#: drafted tokens a sequence's acceptance is judged on; below DRAFT_KEEP of them
#: confirmed, it drafts nothing for DRAFT_PAUSE steps
DRAFT_JUDGED = 16
DRAFT_KEEP = 0.4
DRAFT_PAUSE = 16
#: the size of a sequence's first draft; it doubles while drafts are confirmed in full
FIRST_DRAFT = 2


def lookup_draft(history: list[int], limit: int, longest: int = 3, shortest: int = 2) -> list[int]:
    """Up to `limit` tokens that followed the latest earlier match of the history's end.

    A match so late that fewer than `limit` tokens follow it (a run of one repeated
    token matches one position back) gives way to an earlier one that has them all.
    """
    if limit <= 0:
        return []
    size = len(history)
    for n in range(min(longest, size - 1), shortest - 1, -1):
        tail = history[size - n :]
        best: list[int] = []
        for start in range(size - n - 1, -1, -1):
            if history[start : start + n] == tail:
                follow = history[start + n : start + n + limit]
                if len(follow) > len(best):
                    best = follow
                if len(best) == limit:
                    break
        if best:
            return best
    return []


@dataclass
class DraftSizer:
    """How far one sequence's next draft may reach, from how its drafts fared.

    On a CPU a step of 9 rows costs ~3 one-row steps (the embedded model, 2 cores), so
    refused drafts slow the text down: after a full match the next draft may reach twice
    as far, else as far as was confirmed + 1, and a sequence whose drafts the model
    mostly refuses drafts nothing for a while. The GGUF and MLX engines size by it.
    """

    size: int = FIRST_DRAFT
    #: drafted and confirmed tokens since acceptance was last judged
    judged: int = 0
    confirmed: int = 0
    #: steps left before the sequence drafts again
    pause: int = 0

    def allowed(self) -> int:
        """The most tokens this step's draft may have: 0 while paused (a step of the
        pause passes with each call)."""
        if self.pause:
            self.pause -= 1
            return 0
        return self.size

    def judge(self, drafted: int, confirmed: int) -> None:
        """Count a verified draft of `drafted` tokens, `confirmed` of them kept."""
        self.size = 2 * drafted if confirmed == drafted else confirmed + 1
        self.judged += drafted
        self.confirmed += confirmed
        if self.judged >= DRAFT_JUDGED:
            if self.confirmed < self.judged * DRAFT_KEEP:
                self.pause = DRAFT_PAUSE
            self.judged = self.confirmed = 0
