"""How many examples a fine-tune needs for a declared goal."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# (minimum, recommended, ideal) examples per goal.
SIZE_TABLE: dict[str, tuple[int, int, int]] = {
    "style": (50, 200, 500),
    "domain": (200, 1_000, 5_000),
    "knowledge": (1_000, 5_000, 10_000),
    "behaviour": (500, 2_000, 5_000),
}

Level = Literal["below_minimum", "minimum", "recommended", "ideal"]


class SizeGuidance(BaseModel):
    """The example count compared with what the goal needs."""

    goal: str
    n_examples: int
    minimum: int
    recommended: int
    ideal: int
    level: Level
    message: str
    laptop_warning: str | None = None


def size_guidance(n_examples: int, goal: str, laptop_max: int = 10_000) -> SizeGuidance:
    """Compare ``n_examples`` with the table for ``goal`` (style, domain, knowledge, behaviour)."""
    minimum, recommended, ideal = SIZE_TABLE[goal]
    level: Level
    if n_examples < minimum:
        level = "below_minimum"
        msg = f"{n_examples:,} examples is below the minimum of {minimum:,} for a {goal} goal"
    elif n_examples < recommended:
        level = "minimum"
        msg = (
            f"{n_examples:,} examples meets the minimum for {goal}; {recommended:,} is recommended"
        )
    elif n_examples < ideal:
        level = "recommended"
        msg = f"{n_examples:,} examples meets the recommendation for {goal}; ideal is {ideal:,}"
    else:
        level = "ideal"
        msg = f"{n_examples:,} examples is ideal for a {goal} goal"
    laptop = None
    if n_examples > laptop_max:
        laptop = (
            f"{n_examples:,} examples is over ~{laptop_max:,}: training on a laptop will be slow; "
            "consider a sample or a stronger machine"
        )
    return SizeGuidance(
        goal=goal,
        n_examples=n_examples,
        minimum=minimum,
        recommended=recommended,
        ideal=ideal,
        level=level,
        message=msg,
        laptop_warning=laptop,
    )
