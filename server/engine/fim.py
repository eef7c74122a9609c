"""Fill-in-the-middle: find a model's FIM tokens, and end completions at extra token ids.

Code models are trained on prefix-suffix-middle (PSM) documents, each family with its
own spelling of the three markers. A model whose vocabulary has none of them was not
trained for infilling, so `suffix` is refused for it rather than faked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FimSpelling:
    """One family's marker tokens, and the tokens that end its middle part."""

    family: str
    prefix: str
    suffix: str
    middle: str
    #: any of these (when in the vocabulary) ends an infill: end of file, padding, next file
    ends: tuple[str, ...]


SPELLINGS: tuple[FimSpelling, ...] = (
    FimSpelling(  # StarCoder 1/2, SantaCoder, Granite code, Refact
        "starcoder",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        ("<|endoftext|>", "<fim_pad>", "<file_sep>", "<filename>", "<reponame>", "<repo_name>"),
    ),
    FimSpelling(  # Qwen2.5-Coder, CodeGemma
        "qwen",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|file_separator|>"),
    ),
    FimSpelling(  # DeepSeek-Coder: begin / hole / end, in that (PSM) order
        "deepseek",
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
        ("<｜end▁of▁sentence｜>", "<|EOT|>"),
    ),
    FimSpelling("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>",)),
    FimSpelling("codellama", "<PRE>", "<SUF>", "<MID>", ("<EOT>",)),
)


@dataclass(frozen=True)
class FimTokens:
    """A model's FIM marker ids and the ids that end an infill."""

    family: str
    prefix: int
    suffix: int
    middle: int
    ends: frozenset[int]

    def prompt(
        self, lead: Sequence[int], prefix: Sequence[int], suffix: Sequence[int]
    ) -> list[int]:
        """PSM order: `lead` (e.g. bos) <prefix> prefix <suffix> suffix <middle>."""
        return [*lead, self.prefix, *prefix, self.suffix, *suffix, self.middle]


def find_fim_tokens(tokenizer: Any) -> FimTokens | None:
    """The first spelling whose three markers are all in the vocabulary, else None."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    for spelling in SPELLINGS:
        markers = [vocab.get(t) for t in (spelling.prefix, spelling.suffix, spelling.middle)]
        if None in markers:
            continue
        prefix, suffix, middle = (int(m) for m in markers if m is not None)
        ends = {vocab[t] for t in spelling.ends if t in vocab}
        # a model that starts another FIM block has finished this one
        ends.update((prefix, suffix, middle))
        return FimTokens(spelling.family, prefix, suffix, middle, frozenset(ends))
    return None


def document_end_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that end a raw (non-chat) completion besides eos: the document separator.

    The detokenizer drops special tokens, so a model that goes on past `<|endoftext|>`
    would write an unrelated next document behind invisible separators.
    """
    vocab: dict[str, int] = tokenizer.get_vocab()
    return frozenset(vocab[t] for t in ("<|endoftext|>",) if t in vocab)
