"""Incremental detokenization through the tokenizers library's `DecodeStream`."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """Turns token ids into text pieces as they arrive, never splitting a UTF-8 character.

    `DecodeStream` (tokenizers >= 0.21) does the prefix bookkeeping in Rust, so the
    cost per token stays constant instead of re-decoding the whole completion.
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        self._backend = hf_tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Feed one token; return the text it completes (maybe empty)."""
        return self._stream.step(self._backend, token_id) or ""
