"""Chat records → token ids with a loss mask, and the seeded batch plan.

The mask is ours, not mlx-lm's ``mask_prompt`` (which only masks everything before the
*last* message): every assistant message whose ``weight`` is not 0 is trained, including its
end-of-turn token (``<|im_end|>`` for ChatML) so the model learns to stop; system, user and
tool messages and ``weight: 0`` assistant turns are context only.

Conversations are rendered by `chatfmt`, as the server renders them (tool calls and tool
results included). Spans are found on the rendered text — by rendering the conversation up
to each assistant message — and mapped to tokens through the fast tokenizer's character
offsets, so the ids are exactly those of the whole conversation tokenized at once, as at
inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatfmt.template import END_OF_TURN, render
from finetune.config import steps_per_epoch


class TrainingDataError(ValueError):
    """A training or validation file cannot be used; the message names the line."""


@dataclass(frozen=True)
class Example:
    """One tokenized conversation. ``mask[i]`` is True where ``ids[i]`` is a training target."""

    ids: list[int]
    mask: list[bool]
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        """Tokens the loss is computed on."""
        return sum(self.mask)


@dataclass(frozen=True)
class Batch:
    """A right-padded batch. ``targets_mask`` is aligned with ``ids[:, 1:]``."""

    ids: np.ndarray  # (B, L) int32
    targets_mask: np.ndarray  # (B, L - 1) float32: 1 where ids[:, 1:] is trained
    n_tokens: int  # real (non-padding) tokens in the batch


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file; a line that is
    not JSON is a `TrainingDataError` naming it."""
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}: line {line_no} is not valid JSON: {exc}") from exc


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a chat JSONL file (blank lines skipped), each with ``messages``."""
    records: list[dict[str, Any]] = []
    for line_no, record in json_lines(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise TrainingDataError(f"{path}: line {line_no} has no 'messages' list")
        records.append(record)
    if not records:
        raise TrainingDataError(f"{path}: no examples")
    return records


def _render(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    generation_prompt: bool,
) -> str:
    # the server's own rendering, so a model is trained on the prompts it is served with
    return render(tokenizer, messages, tools, add_generation_prompt=generation_prompt)


def _is_trained(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def assistant_spans(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans to train on.

    A span runs from where the template's generation prompt ends to the end of the
    message's end-of-turn token (trailing whitespace after it is left out: the model stops
    at the token and never generates the newline).
    """
    # `weight` is ours, not the template's; templates would ignore it, but keep them clean.
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    full = _render(tokenizer, clean, tools, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if not _is_trained(message):
            continue
        head = _render(tokenizer, clean[:index], tools, True) if index else ""
        upto = _render(tokenizer, clean[: index + 1], tools, False)
        if index and full.startswith(upto) and upto.startswith(head) and len(head) >= cursor:
            start, end = len(head), len(upto)
        else:
            # Templates that rewrite earlier turns (or need a first user turn) break the
            # prefix property: locate the content itself, then its end-of-turn token.
            content = message.get("content") or ""
            start = full.find(content, cursor) if content else -1
            if start < 0:
                raise TrainingDataError(
                    f"message {index}: the chat template does not render the assistant content"
                )
            end = start + len(content)
            if full.startswith(END_OF_TURN, end):
                end += len(END_OF_TURN)
        end = start + len(full[start:end].rstrip())
        spans.append((start, end))
        cursor = end
    return full, spans


def tokenize_example(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    max_length: int,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and the loss mask, truncated to ``max_length``.

    ``mask[i]`` is True when token ``i`` belongs to an assistant message with a non-zero
    ``weight`` (its end-of-turn token included); everything else is context.
    """
    text, spans = assistant_spans(tokenizer, messages, tools)
    ids, mask = _tokenize_with_spans(tokenizer, text, spans)
    return ids[:max_length], mask[:max_length]


def _tokenize_with_spans(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[bool]]:
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [int(i) for i in encoded["input_ids"]]
        mask = [
            any(s < span_end and e > span_start for span_start, span_end in spans) and e > s
            for s, e in encoded["offset_mapping"]
        ]
        return ids, mask
    # Slow tokenizers have no offsets: encode the pieces between span boundaries separately
    # (they meet at special tokens or newlines in chat templates, so merges rarely differ).
    ids, mask = [], []
    position = 0
    for span_start, span_end in [*spans, (len(text), len(text))]:
        for piece, trained in (
            (text[position:span_start], False),
            (text[span_start:span_end], True),
        ):
            if piece:
                piece_ids = tokenizer.encode(piece, add_special_tokens=False)
                ids.extend(int(i) for i in piece_ids)
                mask.extend([trained] * len(piece_ids))
        position = span_end
    return ids, mask


def tokenize_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int, source: str = "data"
) -> list[Example]:
    """Tokenize every record; a record without any trained token is an error naming it."""
    examples: list[Example] = []
    for number, record in enumerate(records, start=1):
        try:
            full_ids, full_mask = tokenize_example(
                tokenizer, record["messages"], 1 << 62, record.get("tools")
            )
        except TrainingDataError as exc:
            raise TrainingDataError(f"{source}: example {number}: {exc}") from exc
        except Exception as exc:  # jinja raises on conversations a template refuses
            raise TrainingDataError(
                f"{source}: example {number}: the chat template rejected it: {exc}"
            ) from exc
        if not any(full_mask):
            raise TrainingDataError(
                f"{source}: example {number} has no assistant message with a non-zero weight"
            )
        ids, mask = full_ids[:max_length], full_mask[:max_length]
        examples.append(Example(ids=ids, mask=mask, truncated=len(full_ids) > max_length))
    return examples


def load_examples(path: Path, tokenizer: Any, max_length: int) -> list[Example]:
    """Read and tokenize a chat JSONL file."""
    return tokenize_records(tokenizer, read_records(path), max_length, source=str(path))


def batch_plan(n_examples: int, n_epochs: int, batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of every step of a run, in order.

    Each epoch is its own seeded permutation (seeded by ``(seed, epoch)``), so the plan —
    and therefore any step's batch — is recomputed identically on resume.
    """
    per_epoch = steps_per_epoch(n_examples, batch_size)
    plan: list[list[int]] = []
    for epoch in range(n_epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n_examples)
        plan.extend(
            [int(i) for i in order[k * batch_size : (k + 1) * batch_size]] for k in range(per_epoch)
        )
    return plan


def collate(examples: Sequence[Example], pad_id: int, pad_multiple: int = 8) -> Batch:
    """Right-pad a batch to a multiple of ``pad_multiple`` tokens.

    Right padding with a causal model leaves real positions untouched, and the padded
    targets are masked out, so no attention mask is needed. Rounding the length up keeps the
    number of distinct shapes (and so of compiled graphs) small.
    """
    longest = max(len(example.ids) for example in examples)
    length = max(2, pad_multiple * math.ceil(longest / pad_multiple))
    ids = np.full((len(examples), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), length), dtype=np.float32)
    for row, example in enumerate(examples):
        ids[row, : len(example.ids)] = example.ids
        mask[row, : len(example.mask)] = example.mask
    return Batch(ids=ids, targets_mask=mask[:, 1:], n_tokens=sum(len(e.ids) for e in examples))


def pad_token_id(tokenizer: Any) -> int:
    """A token id to pad with (its value never matters: padded targets are masked)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
