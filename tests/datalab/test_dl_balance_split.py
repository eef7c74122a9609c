"""Balancing by category and the leak-free, seeded split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.balance import balance
from datalab.formats import parse_record
from datalab.split import group_of, leaked_groups, split_groups


def test_balance_caps_each_category_reproducibly() -> None:
    cats = ["a"] * 10 + ["b"] * 3 + [None] * 4
    keep, section = balance(cats, "category", cap=4, seed=7)
    assert section.before == {"a": 10, "(none)": 4, "b": 3}
    assert section.after == {"a": 4, "(none)": 4, "b": 3}
    assert section.dropped == 6
    assert all(keep[10:])  # small categories and records without one are untouched
    assert keep == balance(cats, "category", cap=4, seed=7)[0]
    assert keep != balance(cats, "category", cap=4, seed=8)[0]


def test_balance_without_cap_only_counts() -> None:
    keep, section = balance(["x", "y", "x"], "topic", cap=None, seed=0)
    assert all(keep) and section.dropped == 0 and section.after == {"x": 2, "y": 1}


def _record(user: str):  # type: ignore[no-untyped-def]
    _, rec, _ = parse_record(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}]}, 1
    )
    return rec


def test_group_keys_in_order_then_identical_prompts() -> None:
    rec = _record("Same  Question?")
    assert group_of({"conversation_id": "c1", "user_id": "u"}, rec) == (
        "conversation_id=c1",
        "conversation_id",
    )
    assert group_of({"conversa_id": 7}, rec) == ("conversa_id=7", "conversa_id")
    assert group_of({"user_id": "u9", "id": "x"}, rec)[1] == "user_id"
    assert group_of({"id": ""}, rec)[1] == "prompt"
    assert group_of({}, rec) == group_of({}, _record("same question?"))
    assert group_of({}, rec) != group_of({}, _record("another question?"))


def test_split_hits_the_fraction_and_is_reproducible() -> None:
    groups = [f"g{i}" for i in range(100)]
    is_valid, note = split_groups(groups, 0.1, seed=1, min_train=10)
    assert note is None and sum(is_valid) == 10
    assert is_valid == split_groups(groups, 0.1, seed=1, min_train=10)[0]
    assert is_valid != split_groups(groups, 0.1, seed=2, min_train=10)[0]
    # File order does not matter: the same groups get the same side.
    rev, _ = split_groups(groups[::-1], 0.1, seed=1, min_train=10)
    held_out = {g for g, v in zip(groups[::-1], rev, strict=True) if v}
    assert held_out == {g for g, v in zip(groups, is_valid, strict=True) if v}


def test_no_split_when_too_few_would_remain_to_train() -> None:
    is_valid, note = split_groups(["a"] * 3 + ["b"] * 8, 0.1, seed=0, min_train=10)
    assert not any(is_valid) and note is not None and "no validation split" in note


def test_one_huge_group_cannot_be_held_out() -> None:
    is_valid, note = split_groups(["big"] * 50, 0.2, seed=0, min_train=10)
    assert not any(is_valid) and note is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=200),
    st.floats(min_value=0.01, max_value=0.5),
    st.integers(min_value=0, max_value=2**32),
)
def test_split_never_leaks_a_group(ids: list[int], fraction: float, seed: int) -> None:
    groups = [f"g{i}" for i in ids]
    is_valid, _ = split_groups(groups, fraction, seed=seed, min_train=1)
    assert leaked_groups(groups, is_valid) == 0
    assert len(is_valid) == len(groups)
    if any(is_valid):
        assert not all(is_valid)
