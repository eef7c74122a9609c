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
