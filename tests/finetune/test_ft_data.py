"""The loss mask, the batch plan and data errors, on the tiny model's real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chatfmt.tokenizer import load_tokenizer
from finetune.data import (
    Example,
    TrainingDataError,
    batch_plan,
    collate,
    load_examples,
    read_records,
    tokenize_example,
)

SMOLLM2_STYLE_TEMPLATE = (  # adds a default system prompt, as SmolLM2-Instruct's does
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LAST_TURN_MARKED_TEMPLATE = (  # renders the last message differently: no prefix property
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if loop.last %}{{ '[last] ' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hello friend.", "weight": 0},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "Yes, hello again."},
    {"role": "user", "content": "Once more."},
    {"role": "assistant", "content": "Fine: hello.", "weight": 1},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    return load_tokenizer(tiny_model_path)


def trained_pieces(tokenizer: Any, ids: list[int], mask: list[bool]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    pieces: list[list[int]] = []
    for i, (token, trained) in enumerate(zip(ids, mask, strict=True)):
        if trained:
            if i == 0 or not mask[i - 1]:
                pieces.append([])
            pieces[-1].append(token)
    return [tokenizer.decode(piece) for piece in pieces]


def test_mask_trains_weighted_assistant_turns_and_their_end_token(tokenizer: Any) -> None:
    ids, mask = tokenize_example(tokenizer, CONVERSATION, max_length=4096)
    assert len(ids) == len(mask)
    # The ids are the whole conversation tokenized at once, exactly as at inference.
    rendered = tokenizer.apply_chat_template(
        [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION], tokenize=False
    )
    assert ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert trained_pieces(tokenizer, ids, mask) == [
        "Yes, hello again.<|im_end|>",
        "Fine: hello.<|im_end|>",
    ]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_ends = [i for i, t in enumerate(ids) if t == im_end and mask[i]]
    assert len(trained_ends) == 2
    # the newline after <|im_end|> is never generated, so never trained
    assert not mask[trained_ends[0] + 1]
    # system, user and the weight-0 assistant turn are context only
    untrained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    for text in ("You are terse.", "Say hi.", "Hello friend.", "Again?", "Once more."):
        assert text in untrained


def test_weight_zero_everywhere_leaves_nothing_to_train(tokenizer: Any, tmp_path: Path) -> None:
    silent = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in CONVERSATION]
    ids, mask = tokenize_example(tokenizer, silent, max_length=4096)
    assert ids and not any(mask)
    path = tmp_path / "silent.jsonl"
    path.write_text(json.dumps({"messages": silent}) + "\n")
    with pytest.raises(TrainingDataError, match="example 1 has no assistant message"):
        load_examples(path, tokenizer, 4096)


def test_truncation_cuts_ids_and_mask_together(tokenizer: Any) -> None:
    full_ids, full_mask = tokenize_example(tokenizer, CONVERSATION, max_length=4096)
    ids, mask = tokenize_example(tokenizer, CONVERSATION, max_length=20)
    assert (ids, mask) == (full_ids[:20], full_mask[:20])


def test_templates_with_default_system_prompt_or_rewritten_turns(tokenizer: Any) -> None:
    conversation = CONVERSATION[1:]  # no system message of its own
    for template in (SMOLLM2_STYLE_TEMPLATE, LAST_TURN_MARKED_TEMPLATE):
        tokenizer.chat_template = template
        try:
            ids, mask = tokenize_example(tokenizer, conversation, max_length=4096)
        finally:
            tokenizer.chat_template = None
        pieces = trained_pieces(tokenizer, ids, mask)
        assert [p.removeprefix("[last]").strip() for p in pieces] == [
            "Yes, hello again.<|im_end|>",
            "Fine: hello.<|im_end|>",
        ]


def test_chatml_fallback_when_the_tokenizer_has_no_template(tokenizer: Any) -> None:
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        messages = [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
        ids, mask = tokenize_example(tokenizer, messages, max_length=4096)
    finally:
        tokenizer.chat_template = saved
    pieces = trained_pieces(tokenizer, ids, mask)
    assert pieces[-1] == "It is sunny.<|im_end|>"
    assert pieces[0].startswith("<tool_call>") and '"name": "w"' in pieces[0]
    untrained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    # the tool result goes back as the server sends it: a user turn in <tool_response> tags
    assert "Weather?" in untrained and "user\n<tool_response>\nsunny\n</tool_response>" in untrained


def test_read_records_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\nnot json\n')
    with pytest.raises(TrainingDataError, match="line 3"):
        read_records(path)
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(TrainingDataError, match="line 1 has no 'messages'"):
        read_records(path)


def test_batch_plan_is_seeded_and_covers_every_example_each_epoch() -> None:
    plan = batch_plan(10, n_epochs=3, batch_size=4, seed=7)
    assert [len(batch) for batch in plan] == [4, 4, 2] * 3
    for epoch in range(3):
        assert sorted(i for batch in plan[epoch * 3 : epoch * 3 + 3] for i in batch) == list(
            range(10)
        )
    assert plan == batch_plan(10, 3, 4, seed=7)
    assert plan != batch_plan(10, 3, 4, seed=8)
    assert plan[:3] != plan[3:6]  # each epoch reshuffles


def test_collate_right_pads_and_aligns_the_mask_with_targets() -> None:
    batch = collate(
        [Example([5, 6, 7], [False, True, True]), Example([8, 9], [False, True])], pad_id=0
    )
    assert batch.ids.shape == (2, 8) and batch.ids.dtype == np.int32
    assert batch.ids[0, :3].tolist() == [5, 6, 7] and batch.ids[1, 2:].tolist() == [0] * 6
    assert batch.targets_mask.shape == (2, 7)
    assert batch.targets_mask[0].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert batch.targets_mask[1].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert batch.n_tokens == 5
