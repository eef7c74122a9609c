"""Incremental detokenization through the tokenizers library's `DecodeStream`."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """Turns token ids into text pieces as they arrive, never splitting a UTF-8 character.

    `DecodeStream` (tokenizers >= 0.21) does the prefix bookkeeping in Rust, so the
    cost per token stays constant instead of re-decoding the whole completion. Special
    tokens are skipped, except those in `shown` (markers such as `<tool_call>` that the
    tool-call and reasoning parsers read), which come out as their own text.
    """

    def __init__(self, hf_tokenizer: Any, shown: frozenset[int] = frozenset()) -> None:
        self._backend = hf_tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._shown = {token: hf_tokenizer.convert_ids_to_tokens(token) for token in shown}

    def add(self, token_id: int) -> str:
        """Feed one token; return the text it completes (maybe empty)."""
        text = self._stream.step(self._backend, token_id) or ""
        marker = self._shown.get(token_id)
        if marker is not None and marker not in text:
            # a skipped special token: its text, after whatever the stream completed
            text += marker
        return text
