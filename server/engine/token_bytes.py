"""The bytes behind each token id, as OpenAI's logprobs report them (`token`, `bytes`).

A token can be part of a UTF-8 character, so decoding it alone is lossy; the exact
bytes come from the vocabulary entry: byte-level BPE (GPT-2, Llama 3, SmolLM) maps
each byte to a printable character, SentencePiece spells spaces as "▁" and raw bytes
as "<0xNN>".
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_RAW_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted.

    Written out because neither tokenizers nor transformers (5.x) exposes it; it is
    the fixed table every byte-level BPE vocabulary is spelled in.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """Maps token ids to (text, bytes) for one tokenizer; results are cached."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_level = "ByteLevel" in repr(tokenizer.backend_tokenizer.decoder)
        self._special = set(tokenizer.all_special_ids)
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        """The token's text (lossy for partial characters) and its exact bytes."""
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._bytes(token_id)
            hit = (raw.decode("utf-8", errors="replace"), raw)
            self._cache[token_id] = hit
        return hit

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return str(piece).encode()
        if self._byte_level:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return str(piece).encode()  # an added token spelled in plain text
        if match := _RAW_BYTE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return str(piece).replace("▁", " ").encode()
