"""Train/validation split by group, so that no group lands on both sides.

A record's group is the first of ``conversation_id``, ``conversa_id``, ``user_id`` or ``id``
present at its top level; a record with none of them is grouped with every record that has
the same prompt (its normalised user turns), so identical prompts stay on one side.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from datalab.formats import ChatRecord

GROUP_KEYS = ("conversation_id", "conversa_id", "user_id", "id")


def prompt_key(record: ChatRecord) -> str:
    """A digest of the record's user turns, case and spacing ignored."""
    users = "\n".join([m.content or "" for m in record.messages if m.role == "user"])
    normalised = " ".join(users.casefold().split())
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).hexdigest()


def group_of(obj: dict[str, Any], record: ChatRecord) -> tuple[str, str]:
    """(group id, where it came from: a key name or ``"prompt"``) for one record."""
    for key in GROUP_KEYS:
        value = obj.get(key)
        if value is not None and value != "":
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            return f"{key}={text}", key
    return f"prompt:{prompt_key(record)}", "prompt"


class SplitSection(BaseModel):
    """How the data was split."""

    from_file: bool = Field(description="True when the validation set came from its own file")
    group_sources: dict[str, int] = Field(description="records grouped by each key or prompt")
    n_groups: int
    n_train: int
    n_valid: int
    valid_fraction: float
    seed: int
    leaked_groups: int = Field(description="groups on both sides; always 0 for our split")
    note: str | None = None


def split_groups(
    groups: Sequence[str], valid_fraction: float, seed: int, min_train: int
) -> tuple[list[bool], str | None]:
    """Choose the validation records: whole groups, about ``valid_fraction`` of the records.

    Groups are shuffled with ``random.Random(seed)`` (after sorting, so the result does not
    depend on file order) and taken while they fit in the target. Returns ``is_valid`` per
    record and a note when no split was made.
    """
    n = len(groups)
    is_valid = [False] * n
    if valid_fraction <= 0 or n == 0:
        return is_valid, None
    target = max(1, round(n * valid_fraction))
    if n - target < min_train:
        return is_valid, (
            f"no validation split: {n} example(s) leave fewer than {min_train} to train on"
        )
    sizes = Counter(groups)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    chosen: set[str] = set()
    taken = 0
    for g in order:
        if taken + sizes[g] <= target:
            chosen.add(g)
            taken += sizes[g]
            if taken == target:
                break
    if not chosen:
        # Every group is larger than the target: take the smallest if training keeps enough.
        g = min(order, key=lambda k: sizes[k])
        if n - sizes[g] < min_train or len(sizes) < 2:
            return is_valid, "no validation split: the groups are too large to hold one out"
        chosen.add(g)
    for i, g in enumerate(groups):
        is_valid[i] = g in chosen
    return is_valid, None


def leaked_groups(groups: Sequence[str], is_valid: Sequence[bool]) -> int:
    """How many groups have records on both sides (the split's invariant is zero)."""
    train = {g for g, v in zip(groups, is_valid, strict=True) if not v}
    valid = {g for g, v in zip(groups, is_valid, strict=True) if v}
    return len(train & valid)
