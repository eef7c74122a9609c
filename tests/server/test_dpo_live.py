"""DPO jobs through a real server and the official `openai` SDK, on MLX and PEFT.

The recipe the docs recommend: a supervised job teaches the answer's form, then a DPO job
started from that `ft:` model flips the greedy answer to the preferred one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import PROMPTS
from live_server import LiveServer, client_for
from test_fine_tuning_live import TERMINAL, upload, wait_for
from tiny_model import QUESTIONS

GARDEN = "Apples grow in the garden."
ORCHARD = "Apples grow in the orchard."
HELD_OUT = "Where do the apples grow?"


@pytest.fixture(scope="module", params=["mlx", "torch"])
def dpo_server(
    request: pytest.FixtureRequest, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp(f"dpo-{request.param}")
    server = LiveServer(model=str(tiny_model_path), backend=request.param, home=home).start()
    yield server
    server.stop()


def write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def greedy(client: openai.OpenAI, model: str) -> str:
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": HELD_OUT}],
        temperature=0,
        max_tokens=16,
    )
    return (out.choices[0].message.content or "").strip()


def test_supervised_then_dpo_flips_the_greedy_answer(
    dpo_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(dpo_server)
    # 1. supervised: each question with both answers (the tiny model's greedy pick between
    # them is its own); the form "Apples grow in the ..." is learned
    sft = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
        for q in QUESTIONS
        for answer in (ORCHARD, GARDEN)
    ]
    job = client.fine_tuning.jobs.create(
        model=dpo_server.model,
        training_file=upload(client, write(tmp_path / "sft.jsonl", sft)),
        method={  # type: ignore[arg-type]
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 8, "batch_size": 1, "learning_rate_multiplier": 30}
            },
        },
        seed=0,
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    first: str = done.fine_tuned_model  # type: ignore[attr-defined]
    before = greedy(client, first)
    assert before in (GARDEN, ORCHARD), before
    preferred, rejected = (ORCHARD, GARDEN) if before == GARDEN else (GARDEN, ORCHARD)

    # 2. DPO from that fine-tune: prefer the answer it does not give
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
        for prompt in PROMPTS
    ]
    job = client.fine_tuning.jobs.create(
        model=first,
        training_file=upload(client, write(tmp_path / "pairs.jsonl", pairs)),
        method={  # type: ignore[arg-type]
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "n_epochs": 1,
                    "batch_size": 1,
                    "learning_rate_multiplier": 3,
                    "beta": "auto",
                }
            },
        },
        suffix="dpo",
        seed=0,
    )
    assert job.method is not None and job.method.type == "dpo" and job.model == first
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    second: str = done.fine_tuned_model  # type: ignore[attr-defined]
    assert second.startswith("ft:tiny-llama:pomar:dpo:")
    hp = done.method.dpo.hyperparameters  # type: ignore[attr-defined]
    assert hp.beta == 0.1 and hp.n_epochs == 1 and hp.batch_size == 1

    assert greedy(client, second) == preferred
    assert greedy(client, first) == before  # the parent is untouched
    listed = {m.id: m for m in client.models.list().data}
    assert listed[second].model_extra.get("parent") == first  # type: ignore[union-attr]

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(f"from {first}" in e.message for e in events)
    margins = [
        e.data["train_reward_margin"]
        for e in events
        if e.type == "metrics" and e.data and "train_reward_margin" in e.data
    ]
    assert margins and max(margins) > 0
    results = client.files.content(done.result_files[0]).text  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(results)))
    assert rows and "train_reward_margin" in rows[0] and "train_preference_accuracy" in rows[0]
    assert float(rows[-1]["train_preference_accuracy"]) == 1.0


def test_a_preference_file_with_defects_is_refused_line_by_line(
    dpo_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(dpo_server)
    good = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    bad: list[dict[str, object]] = [
        {**good, "non_preferred_output": []},  # an output missing
        {**good, "preferred_output": [{"role": "user", "content": "Hello!"}]},  # not assistant
        {**good, "non_preferred_output": [{"role": "assistant", "content": "hello! "}]},  # same
    ]
    path = write(tmp_path / "bad.jsonl", [good, *bad])
    job = client.fine_tuning.jobs.create(
        model=dpo_server.model,
        training_file=upload(client, path),
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}},  # type: ignore[arg-type]
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file"  # type: ignore[attr-defined]
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    text = " ".join(e.message + json.dumps(e.data or {}) for e in events)
    for line in (2, 3, 4):
        assert f"line {line}" in text or f'"line": {line}' in text, text
    # a method pomar does not train is refused by name, before any job exists
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model=dpo_server.model,
            training_file="file-x",
            method={"type": "reinforcement"},  # type: ignore[arg-type]
        )
    assert caught.value.status_code == 400
