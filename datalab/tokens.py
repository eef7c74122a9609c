"""Token statistics with the target model's tokenizer.

Any object with ``encode(text) -> list[int]`` works (:class:`TokenizerLike`); a Hugging Face
tokenizer with a chat template renders conversations exactly as training will, otherwise
they are rendered as ChatML. transformers is imported only by `chatfmt.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

from chatfmt.template import TemplateError, render
from datalab.formats import ChatRecord
from datalab.writers import message_dicts, render_chatml

ROUND_TO = 128


@runtime_checkable
class TokenizerLike(Protocol):
    """Anything that turns text into token ids (a Hugging Face tokenizer qualifies)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        ...


def model_context(tokenizer: Any) -> int | None:
    """The tokenizer's declared context length, if it declares a real one."""
    n = getattr(tokenizer, "model_max_length", None)
    # transformers uses a huge sentinel (1e30) when the length is unknown.
    return int(n) if isinstance(n, int) and 0 < n < 10_000_000 else None


def recommend_max_length(p95: float, context: int | None, cap: int = 2048) -> int:
    """p95 rounded up to a multiple of 128, capped by the model's context and ``cap``."""
    rec = max(ROUND_TO, math.ceil(p95 / ROUND_TO) * ROUND_TO)
    limit = min(cap, context) if context else cap
    return min(rec, limit)


class TokenHistogram(BaseModel):
    """How many conversations fall in each token-length bin: `counts[i]` in
    `[edges[i], edges[i + 1])` (the last bin includes its right edge)."""

    edges: list[int]
    counts: list[int]


def token_histogram(a: np.ndarray, bins: int = 20) -> TokenHistogram:
    """Equal-width bins from 0 to the longest conversation (edges rounded up to tokens)."""
    top = max(int(a.max()), 1)
    edges = np.unique(np.ceil(np.linspace(0, top, bins + 1)).astype(np.int64))
    counts, _ = np.histogram(a, bins=edges)
    return TokenHistogram(edges=[int(e) for e in edges], counts=[int(c) for c in counts])


class TokenSection(BaseModel):
    """Token lengths of the kept conversations, as training will see them."""

    n_examples: int
    min: int
    max: int
    mean: float
    median: float
    p95: float
    total: int
    max_length: int = Field(description="the training max_length the counts are judged by")
    n_over_max_length: int = Field(description="conversations longer than max_length")
    recommended_max_length: int
    model_context: int | None
    rendering: str = Field(description="'chat_template' or 'chatml'")
    histogram: TokenHistogram | None = Field(None, description="token lengths, binned")


class TokenCounter:
    """Counts tokens of records as they stream past."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self.tokenizer = tokenizer
        self.counts: array[int] = array("I")
        # Preference pairs: (prompt, chosen, rejected) tokens per pair, flattened.
        self.pair_counts: array[int] = array("I")
        template = getattr(tokenizer, "chat_template", None)
        self._use_template = bool(template) and hasattr(tokenizer, "apply_chat_template")

    def count_text(self, text: str) -> int:
        """Tokens in a bare text."""
        return len(self.tokenizer.encode(text))

    def render(self, record: ChatRecord) -> str:
        """The conversation as the model's chat template (or ChatML) writes it."""
        if self._use_template:
            try:
                return render(
                    self.tokenizer, message_dicts(record), record.tools, add_generation_prompt=False
                )
            except TemplateError:
                # A template that rejects these messages (e.g. no system role): fall back to
                # ChatML for the whole run rather than failing the report.
                self._use_template = False
        return render_chatml(record)

    def add(self, record: ChatRecord) -> int:
        """Count one record; returns its token count."""
        n = self.count_text(self.render(record))
        self.counts.append(min(n, 0xFFFFFFFF))
        return n

    def add_pair(self, prompt: ChatRecord, chosen: ChatRecord, rejected: ChatRecord) -> int:
        """Count one preference pair; returns its longer sequence (prompt + longer output).

        ``chosen`` and ``rejected`` are whole conversations (the prompt, then each output).
        """
        p, c, r = (self.count_text(self.render(x)) for x in (prompt, chosen, rejected))
        self.pair_counts.extend(min(n, 0xFFFFFFFF) for n in (p, c, r))
        n = max(c, r)
        self.counts.append(min(n, 0xFFFFFFFF))
        return n

    def section(
        self, keep: list[bool] | None, max_length: int | None, context: int | None, cap: int
    ) -> TokenSection | None:
        """The report section over the records flagged in ``keep`` (all when None)."""
        a = np.asarray(self.counts, dtype=np.int64)
        if keep is not None:
            a = a[np.asarray(keep, dtype=bool)]
        if len(a) == 0:
            return None
        p95 = float(np.percentile(a, 95))
        recommended = recommend_max_length(p95, context, cap)
        used = max_length or recommended
        return TokenSection(
            n_examples=len(a),
            min=int(a.min()),
            max=int(a.max()),
            mean=round(float(a.mean()), 1),
            median=float(np.median(a)),
            p95=round(p95, 1),
            total=int(a.sum()),
            max_length=used,
            n_over_max_length=int((a > used).sum()),
            recommended_max_length=recommended,
            model_context=context,
            rendering="chat_template" if self._use_template else "chatml",
            histogram=token_histogram(a),
        )
