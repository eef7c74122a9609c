"""Balance by category: cap how many examples each category keeps, by seeded sampling."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, Field

MISSING = "(none)"


class BalanceSection(BaseModel):
    """Per-category counts before and after capping."""

    field: str
    cap: int | None
    before: dict[str, int] = Field(description="examples per category before balancing")
    after: dict[str, int] = Field(description="examples per category after balancing")
    dropped: int


def balance(
    categories: Sequence[str | None], field: str, cap: int | None, seed: int
) -> tuple[list[bool], BalanceSection]:
    """Which examples to keep so that no category has more than ``cap``.

    Examples without the category field are never dropped (there is nothing to balance them
    against). The sample per category is drawn with ``random.Random(seed)`` over the
    categories in sorted order, so the same file and seed always keep the same examples.
    """
    keep = [True] * len(categories)
    before = Counter(MISSING if c is None else c for c in categories)
    if cap is not None:
        members: dict[str, list[int]] = {}
        for i, c in enumerate(categories):
            if c is not None:
                members.setdefault(c, []).append(i)
        rng = random.Random(seed)
        for cat in sorted(members):
            idx = members[cat]
            if len(idx) > cap:
                chosen = set(rng.sample(idx, cap))
                for i in idx:
                    if i not in chosen:
                        keep[i] = False
    after = Counter(MISSING if c is None else c for c, k in zip(categories, keep, strict=True) if k)
    section = BalanceSection(
        field=field,
        cap=cap,
        before=dict(before.most_common()),
        after=dict(after.most_common()),
        dropped=keep.count(False),
    )
    return keep, section
