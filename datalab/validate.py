"""Quality rules applied to a cleaned chat record.

Structural rules (types, roles, weights, at least one assistant message) live on the pydantic
models in :mod:`datalab.formats`; the rules here depend on configurable thresholds and run
after cleaning, so that whitespace-only content counts as empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from datalab.config import PipelineConfig
from datalab.formats import ChatRecord
from datalab.problems import Code, Problem

_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+", re.IGNORECASE)


def count_urls(text: str) -> int:
    """How many http(s):// or www. links the text contains."""
    if "http" not in text and "www" not in text and "WWW" not in text:
        return 0
    return len(_URL.findall(text))


def answer_problems(
    text: str,
    config: PipelineConfig,
    count_tokens: Callable[[str], int] | None = None,
    *,
    learned: bool = True,
) -> list[tuple[str, str]]:
    """(code, message) for each threshold a non-empty answer breaks.

    ``learned=False`` (a preference pair's non-preferred answer, which the model is taught
    away from) applies only the too-long rules: a short rejected answer is legitimate.
    """
    out: list[tuple[str, str]] = []
    n_chars = len(text)
    if learned and n_chars < config.min_answer_chars:
        out.append(
            (
                Code.ANSWER_TOO_SHORT,
                f"answer is {n_chars} characters, under the minimum of {config.min_answer_chars}",
            )
        )
    elif config.max_answer_chars is not None and n_chars > config.max_answer_chars:
        out.append(
            (
                Code.ANSWER_TOO_LONG,
                f"answer is {n_chars:,} characters, over the maximum of "
                f"{config.max_answer_chars:,}",
            )
        )
    elif count_tokens is not None and config.max_answer_tokens is not None:
        n_tokens = count_tokens(text)
        if n_tokens > config.max_answer_tokens:
            out.append(
                (
                    Code.ANSWER_TOO_LONG,
                    f"answer is {n_tokens:,} tokens, over the maximum of "
                    f"{config.max_answer_tokens:,}",
                )
            )
    if not learned:
        return out
    # maxsplit stops counting once there are enough words (answers can be long).
    n_words = len(text.split(None, config.min_words)) if config.min_words else 0
    if n_words < config.min_words:
        out.append(
            (
                Code.TOO_FEW_WORDS,
                f"answer has {n_words} word(s), under the minimum of {config.min_words}",
            )
        )
    return out


def check_rules(
    record: ChatRecord,
    line: int,
    config: PipelineConfig,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Problem]:
    """Every threshold rule the record breaks (empty list when it passes).

    ``count_tokens`` enables the ``max_answer_tokens`` rule.
    """
    out: list[Problem] = []

    def add(code: str, field: str | None, message: str) -> None:
        out.append(Problem(line=line, code=code, field=field, message=f"Line {line}: {message}"))

    n_urls = 0
    for i, msg in enumerate(record.messages):
        field = f"messages[{i}].content"
        text = msg.content or ""
        if not text:
            calls_tool = msg.tool_calls is not None or msg.function_call is not None
            if not (msg.role == "assistant" and calls_tool):
                add(Code.EMPTY_CONTENT, field, f"{msg.role} message {i} has no content")
            continue
        n_urls += count_urls(text)
        if not msg.trained:
            continue
        for code, message in answer_problems(text, config, count_tokens):
            add(code, field, message)
    if config.max_urls is not None and n_urls > config.max_urls:
        add(
            Code.TOO_MANY_URLS,
            "messages",
            f"the conversation contains {n_urls} URLs, over the maximum of {config.max_urls}",
        )
    return out
