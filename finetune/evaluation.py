"""The before/after evaluation of a run: the model as the run starts, and as it ends.

When a run has a validation set, :func:`finetune.trainer.train` measures the model on it
twice — before the first step and after the last — with :class:`Evaluator`. Each
measurement is a flat dict (JSON-ready), every key optional for a reader:

``step``
    the steps trained when measured: 0 before, the run's last step after (set by the
    trainer).
``valid_loss``, ``valid_mean_token_accuracy``
    the objective's own validation pass (:meth:`finetune.objective.Objective.evaluate`,
    the same numbers as the loop's validation rows): cross-entropy per trained token for
    supervised runs; DPO's sigmoid loss for DPO runs (``log 2`` ≈ 0.693 before the first
    step, where the policy *is* the reference).
``n_examples``
    validation examples (DPO: pairs) those figures cover.
``exact_match``, ``normalized_match``, ``n_generated``
    greedy answers: for at most :data:`MAX_GENERATED` validation conversations the prompt
    is the conversation up to its last trained assistant message (DPO: the pair's input),
    rendered as the server renders prompts, and the reference that message's content (DPO:
    the preferred output). The model answers greedily, at most the reference's token count
    + :data:`EXTRA_TOKENS` new tokens (never more than :data:`MAX_NEW_TOKENS`), stopping at
    its end-of-turn token. ``exact_match`` is the share of answers equal to the reference
    once surrounding whitespace is stripped; ``normalized_match`` the share equal after
    :func:`normalize`. ``n_generated`` counts the answers; references that are not plain
    text (tool calls only, content parts) are not generated.
``preference_accuracy`` (DPO only)
    the share of validation pairs whose preferred output has a higher summed
    log-probability than the non-preferred one under the model — absolute, not against the
    reference policy (that ratio is 0 for every pair before training). Summed, so a much
    longer output starts behind.
``elapsed_s``
    seconds the evaluation took.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatfmt.template import fallback_of, render
from finetune.backend import LoRABackend
from finetune.data import read_records
from finetune.dpo import collate_pairs, read_pair_records
from finetune.objective import Objective

logger = logging.getLogger(__name__)

#: validation conversations answered greedily per evaluation (keeps a job's evaluation short)
MAX_GENERATED = 32
#: new tokens allowed beyond the reference's own length
EXTRA_TOKENS = 16
#: the most new tokens of one answer
MAX_NEW_TOKENS = 256

PHASES = ("before", "after")

_QUOTES = "\"'`«»‘’‚‛“”„‟‹›「」『』"
_SURROUNDING = string.punctuation + _QUOTES + "¡¿…。、！？，：；"
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The text compared by ``normalized_match``: Unicode NFKC, casefolded, every run of
    whitespace collapsed to one space, and punctuation and quotes stripped from both ends
    (inner punctuation stays): ``' "The  Secret word is BANANA!" '`` → ``the secret word is
    banana``."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return text.strip().strip(_SURROUNDING + " ")


@dataclass(frozen=True)
class GreedyCase:
    """One prompt to answer greedily and the reference its answer is compared with."""

    prompt_ids: list[int]
    reference: str
    max_tokens: int


def stop_token_ids(tokenizer: Any, model_path: Path) -> set[int]:
    """Token ids that end an answer: eos, generation_config's eos, ChatML's turn markers and,
    without a chat template, the family format's end-of-turn tokens (as the server stops)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_config = Path(model_path) / "generation_config.json"
    if gen_config.is_file():
        eos = json.loads(gen_config.read_text(encoding="utf-8")).get("eos_token_id")
        ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None)
    markers = ["<|im_end|>", "<|im_start|>"]
    if not getattr(tokenizer, "chat_template", None):
        markers += list(fallback_of(tokenizer).family.end_of_turn)
    for marker in markers:
        token = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return ids


def greedy_cases(
    path: Path, tokenizer: Any, method: str, max_length: int, limit: int = MAX_GENERATED
) -> list[GreedyCase]:
    """The first ``limit`` validation records with a plain-text reference, as prompts.

    A prompt longer than ``max_length`` tokens is skipped (training truncated it too).
    """
    cases: list[GreedyCase] = []
    records = read_pair_records(path) if method == "dpo" else read_records(path)
    for record in records:
        if len(cases) >= limit:
            break
        split = _prompt_and_reference(record, method)
        if split is None:
            continue
        messages, reference, tools = split
        try:
            text = render(tokenizer, messages, tools, add_generation_prompt=True)
        except Exception as exc:  # a template that refuses this conversation: skip it
            logger.debug("evaluation: a validation prompt does not render: %s", exc)
            continue
        ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
        if not ids or len(ids) > max_length:
            continue
        n_reference = len(tokenizer.encode(reference, add_special_tokens=False))
        budget = min(n_reference + EXTRA_TOKENS, MAX_NEW_TOKENS)
        cases.append(GreedyCase(prompt_ids=ids, reference=reference, max_tokens=budget))
    return cases


def _prompt_and_reference(
    record: dict[str, Any], method: str
) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]] | None] | None:
    """(prompt messages, reference text, tools), or None when there is no text reference."""
    if method == "dpo":
        messages = list(record["input"]["messages"])
        tools = record["input"].get("tools")
        reply = record["preferred_output"][0]
    else:
        messages = list(record["messages"])
        tools = record.get("tools")
        trained = [
            i
            for i, m in enumerate(messages)
            if m.get("role") == "assistant" and m.get("weight", 1) != 0
        ]
        if not trained:
            return None
        reply, messages = messages[trained[-1]], messages[: trained[-1]]
    content = reply.get("content")
    if not isinstance(content, str) or not content.strip() or not messages:
        return None
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    return clean, content, tools or None


class Evaluator:
    """Measures the backend's model on a run's validation data (see the module docstring)."""

    def __init__(
        self,
        backend: LoRABackend,
        tokenizer: Any,
        objective: Objective,
        cases: list[GreedyCase],
        stop_ids: set[int],
        *,
        n_valid: int,
        batch_size: int,
        cap: int | None,
        pairs: list[Any] | None = None,
        pad_id: int = 0,
    ) -> None:
        """``n_valid`` is the size of the validation set; ``cap`` bounds its batches as the
        loop's validation passes do; ``pairs`` (DPO's tokenized validation pairs) turns on
        ``preference_accuracy``."""
        self.backend, self.tokenizer, self.objective = backend, tokenizer, objective
        self.cases, self.stop_ids = cases, stop_ids
        self.batch_size, self.cap = batch_size, cap
        self.pairs, self.pad_id = pairs, pad_id
        self.n_scored = n_valid if cap is None else min(n_valid, cap * batch_size)

    def run(self, should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        """One measurement; None when ``should_stop`` turns True midway."""
        tic = time.perf_counter()
        measured = self.objective.evaluate(self.batch_size, self.cap, should_stop)
        if measured is None:
            return None
        metrics: dict[str, Any] = {
            "valid_loss": measured.loss,
            "valid_mean_token_accuracy": measured.accuracy,
            "n_examples": self.n_scored,
        }
        if self.pairs is not None:
            accuracy = self._preference_accuracy(should_stop)
            if accuracy is None:
                return None
            metrics["preference_accuracy"] = accuracy
        exact = normalized = 0
        for case in self.cases:
            if should_stop():
                return None
            answer = self.answer(case)
            exact += answer.strip() == case.reference.strip()
            normalized += normalize(answer) == normalize(case.reference)
        n = len(self.cases)
        metrics.update(
            exact_match=exact / n if n else None,
            normalized_match=normalized / n if n else None,
            n_generated=n,
            elapsed_s=round(time.perf_counter() - tic, 3),
        )
        return metrics

    def answer(self, case: GreedyCase) -> str:
        """The model's greedy answer to one prompt, as text (special tokens dropped)."""
        ids = self.backend.greedy(case.prompt_ids, case.max_tokens, self.stop_ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _preference_accuracy(self, should_stop: Callable[[], bool]) -> float | None:
        assert self.pairs is not None
        pairs = self.pairs[: self.n_scored]
        wins = 0
        for start in range(0, len(pairs), self.batch_size):
            if should_stop():
                return None
            chunk = pairs[start : start + self.batch_size]
            logps = self.backend.sequence_logprobs(collate_pairs(chunk, self.pad_id))
            n = len(chunk)
            wins += int(np.sum(logps[:n] > logps[n:]))
        return wins / len(pairs) if pairs else None


def describe(phase: str, metrics: dict[str, Any]) -> str:
    """One line for an event or a terminal: ``Evaluation before training: validation loss
    3.2100, exact match 0/3 (0%), normalized match 0/3 (0%)``."""
    when = "before training" if phase == "before" else "after training"
    parts = []
    if metrics.get("valid_loss") is not None:
        parts.append(f"validation loss {metrics['valid_loss']:.4f}")
    if metrics.get("preference_accuracy") is not None:
        parts.append(f"preference accuracy {metrics['preference_accuracy']:.0%}")
    n = metrics.get("n_generated") or 0
    for key, label in (("exact_match", "exact match"), ("normalized_match", "normalized match")):
        share = metrics.get(key)
        if share is not None and n:
            parts.append(f"{label} {round(share * n)}/{n} ({share:.0%})")
    return f"Evaluation {when}: " + (", ".join(parts) or "nothing to measure")
