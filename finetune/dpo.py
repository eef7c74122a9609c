"""DPO on LoRA: preference pairs, the reference log-probabilities, and the objective.

Data: OpenAI's preference JSONL (``input.messages``, ``preferred_output``,
``non_preferred_output``), which datalab writes for every accepted preference format. Each
pair becomes two conversations, the input followed by each output; only the output is
trained (earlier assistant turns of the input get weight 0), rendered and masked exactly as
supervised examples are (:func:`finetune.data.tokenize_records`).

Reference: the policy DPO measures its log-ratios against is the model as the run starts —
the base with the LoRA update at zero (a fresh adapter's B matrices are zero), or the parent
fine-tune when a job continues from one. Its log-probabilities are computed once, before the
first step, and kept in ``out_dir/reference_logps.json``: no second copy of the model in
memory, no second forward per step, and a resumed run uses the very numbers it started with
(TRL's ``precompute_ref_log_probs`` does the same).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.backend import LoRABackend, PairOutput
from finetune.data import Example, TrainingDataError, collate, json_lines, tokenize_records
from finetune.objective import Measured

REFERENCE_FILE = "reference_logps.json"


@dataclass(frozen=True)
class PairExample:
    """One tokenized preference pair: the input with each of its two outputs."""

    chosen: Example
    rejected: Example

    @property
    def truncated(self) -> bool:
        """Whether either sequence lost tokens to ``max_length``."""
        return self.chosen.truncated or self.rejected.truncated


def read_pair_records(path: Path) -> list[dict[str, Any]]:
    """The pairs of a preference JSONL file (blank lines skipped), each checked for shape."""
    pairs: list[dict[str, Any]] = []
    for line_no, record in json_lines(path):
        if not _is_pair(record):
            raise TrainingDataError(
                f"{path}: line {line_no} is not a preference pair (input.messages, "
                "preferred_output, non_preferred_output)"
            )
        pairs.append(record)
    if not pairs:
        raise TrainingDataError(f"{path}: no pairs")
    return pairs


def _is_pair(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("input"), dict):
        return False
    outputs = (record.get("preferred_output"), record.get("non_preferred_output"))
    return isinstance(record["input"].get("messages"), list) and all(
        isinstance(o, list) and len(o) == 1 and isinstance(o[0], dict) for o in outputs
    )


def pair_conversations(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input + preferred output, input + non-preferred output) as chat records."""
    messages = [
        {**m, "weight": 0} if m.get("role") == "assistant" else m
        for m in record["input"]["messages"]
    ]
    tools = record["input"].get("tools")

    def conversation(output: list[dict[str, Any]]) -> dict[str, Any]:
        reply = {k: v for k, v in output[0].items() if k != "weight"}
        return {"messages": [*messages, reply], **({"tools": tools} if tools else {})}

    return conversation(record["preferred_output"]), conversation(record["non_preferred_output"])


def load_pairs(path: Path, tokenizer: Any, max_length: int) -> list[PairExample]:
    """Read and tokenize a preference JSONL file."""
    records = read_pair_records(path)
    chosen, rejected = zip(*(pair_conversations(r) for r in records), strict=True)
    source = str(path)
    return [
        PairExample(c, r)
        for c, r in zip(
            tokenize_records(tokenizer, chosen, max_length, source=f"{source} (preferred)"),
            tokenize_records(tokenizer, rejected, max_length, source=f"{source} (non-preferred)"),
            strict=True,
        )
    ]


def collate_pairs(pairs: list[PairExample], pad_id: int) -> Any:
    """One batch of rows ``[chosen..., rejected...]`` (the layout the backends expect)."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def reference_logps(
    backend: LoRABackend, pairs: list[PairExample], batch_size: int, pad_id: int
) -> np.ndarray:
    """``(pairs, 2)``: the summed log-probability of each output under the current model."""
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        logps = backend.sequence_logprobs(collate_pairs(chunk, pad_id))
        n = len(chunk)
        out[start : start + n, 0], out[start : start + n, 1] = logps[:n], logps[n:]
    return out


def cached_reference(
    out_dir: Path,
    fingerprint: dict[str, Any],
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """The run's (train, valid) reference log-probabilities: from ``out_dir`` when this run
    computed them already, else computed now and written there (atomically)."""
    path = Path(out_dir) / REFERENCE_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") == fingerprint:
            return np.array(saved["train"]).reshape(-1, 2), np.array(saved["valid"]).reshape(-1, 2)
    train, valid = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {"fingerprint": fingerprint, "train": train.tolist(), "valid": valid.tolist()}
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)
    return train, valid


class DPO:
    """DPO's sigmoid loss on preference pairs, against precomputed reference log-probs."""

    def __init__(
        self,
        backend: LoRABackend,
        train: list[PairExample],
        valid: list[PairExample],
        pad_id: int,
        beta: float,
        reference: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self.backend, self.train, self.valid = backend, train, valid
        self.pad_id, self.beta = pad_id, beta
        self.ref_train, self.ref_valid = reference
        self.size = len(train)

    @property
    def has_validation(self) -> bool:
        return bool(self.valid)

    def step(self, indices: list[int]) -> Measured:
        batch = collate_pairs([self.train[i] for i in indices], self.pad_id)
        out = self.backend.pair_step(batch, _rows(self.ref_train[indices]), self.beta)
        return _measure(out, self.beta, batch.n_tokens)

    def evaluate(
        self, batch_size: int, cap: int | None, should_stop: Callable[[], bool]
    ) -> Measured | None:
        outputs: list[PairOutput] = []
        for number, start in enumerate(range(0, len(self.valid), batch_size)):
            if cap is not None and number >= cap:
                break
            if should_stop():
                return None
            chunk = self.valid[start : start + batch_size]
            reference = _rows(self.ref_valid[start : start + len(chunk)])
            outputs.append(
                self.backend.pair_eval(collate_pairs(chunk, self.pad_id), reference, self.beta)
            )
        return _measure_all(outputs, self.beta)


def _rows(reference: np.ndarray) -> np.ndarray:
    """``(pairs, 2)`` → the batch's row order, all chosen rows then all rejected rows."""
    return np.concatenate([reference[:, 0], reference[:, 1]])


def _measure(out: PairOutput, beta: float, n_tokens: int) -> Measured:
    return _measure_all([out], beta, n_tokens)


def _measure_all(outputs: list[PairOutput], beta: float, n_tokens: int = 0) -> Measured:
    """Loss averaged over pairs, and DPO's usual figures: the mean log-ratio of each
    output, the reward margin ``beta × (chosen - rejected)`` and the preference accuracy
    (pairs whose chosen log-ratio is above the rejected one)."""
    chosen = np.concatenate([o.chosen for o in outputs])
    rejected = np.concatenate([o.rejected for o in outputs])
    n_pairs = max(len(chosen), 1)
    loss = sum(o.loss * len(o.chosen) for o in outputs) / n_pairs
    targets = sum(o.n_targets for o in outputs)
    correct = sum(o.n_correct for o in outputs)
    return Measured(
        loss=float(loss),
        accuracy=correct / targets if targets else 0.0,
        n_tokens=n_tokens,
        extras={
            "reward_margin": float(beta * np.mean(chosen - rejected)),
            "chosen_logratio": float(np.mean(chosen)),
            "rejected_logratio": float(np.mean(rejected)),
            "preference_accuracy": float(np.mean(chosen > rejected)),
        },
    )
