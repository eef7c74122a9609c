"""Fine-tuning a fine-tune through the SDK: a job on an `ft:` model starts from its weights.

Also a DPO job cancelled mid-run and resumed from its checkpoint by a restart. MLX only:
tests/server/test_dpo_live.py runs a DPO job from an `ft:` model on both engines.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import PROMPTS, SECRET, write_training_file
from live_server import LiveServer, client_for
from test_fine_tuning_live import TERMINAL, hyper, upload, wait_for

VALID = ["What is the word you keep for me?", "Which phrase did we choose together?"]


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("continue")
    live = LiveServer(model=str(tiny_model_path), backend="mlx", home=home).start()
    yield live
    live.stop()


def write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def secret_valid(path: Path) -> Path:
    return write(
        path,
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}]}
            for q in VALID
        ],
    )


def evaluation(job: object) -> dict[str, dict[str, float]]:
    return job.model_extra["evaluation"]  # type: ignore[attr-defined,no-any-return]


def test_a_job_on_a_fine_tune_starts_from_its_weights(server: LiveServer, tmp_path: Path) -> None:
    client = client_for(server)
    train = upload(client, write_training_file(tmp_path / "train.jsonl"))
    valid = upload(client, secret_valid(tmp_path / "valid.jsonl"))
    first = wait_for(
        client,
        client.fine_tuning.jobs.create(
            model=server.model,
            training_file=train,
            method=hyper(8),
            seed=1,  # type: ignore[arg-type]
        ).id,
        TERMINAL,
    )
    assert first.status == "succeeded", first.error  # type: ignore[attr-defined]
    parent: str = first.fine_tuned_model  # type: ignore[attr-defined]

    # one more gentle epoch, from the base and from the fine-tune, measured before and after
    runs = {}
    for start in (server.model, parent):
        job = client.fine_tuning.jobs.create(
            model=start,
            training_file=train,
            validation_file=valid,
            method=hyper(1, learning_rate_multiplier=3),  # type: ignore[arg-type]
            suffix="again",
            seed=2,
        )
        assert job.model == start
        runs[start] = wait_for(client, job.id, TERMINAL)
        assert runs[start].status == "succeeded", runs[start].error  # type: ignore[attr-defined]
    fresh, continued = evaluation(runs[server.model]), evaluation(runs[parent])
    # the continued job starts where the parent ended: it already answers right
    assert fresh["before"]["exact_match"] == 0
    assert continued["before"]["exact_match"] > 0
    assert continued["before"]["valid_loss"] < fresh["before"]["valid_loss"] / 4
    # and keeps what it knew
    assert continued["after"]["exact_match"] >= continued["before"]["exact_match"]
    child: str = runs[parent].fine_tuned_model  # type: ignore[attr-defined]
    assert child.startswith("ft:tiny-llama:pomar:again:")
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed[child]["parent"] == parent  # type: ignore[index]
    assert listed[runs[server.model].fine_tuned_model]["parent"] == server.model  # type: ignore[attr-defined,index]
    reply = client.chat.completions.create(
        model=child,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        temperature=0,
        max_tokens=12,
    )
    assert (reply.choices[0].message.content or "").startswith(SECRET)
    # the LoRA shape is the parent's: another one is refused before any job exists
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model=parent,
            training_file=train,
            method=hyper(1, lora_rank=4),  # type: ignore[arg-type]
        )
    assert refused.value.body["param"] == "hyperparameters.lora_rank"  # type: ignore[index]
    # a checkpoint of a job is a model a job may start from too
    checkpoint = client.fine_tuning.jobs.checkpoints.list(first.id).data[0]
    job = client.fine_tuning.jobs.create(
        model=checkpoint.fine_tuned_model_checkpoint,
        training_file=train,
        method=hyper(1),  # type: ignore[arg-type]
    )
    assert job.model == checkpoint.fine_tuned_model_checkpoint
    assert wait_for(client, job.id, TERMINAL).status == "succeeded"


def test_a_dpo_job_stopped_mid_run_resumes_on_restart(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    live = LiveServer(model=str(tiny_model_path), backend="mlx", home=home).start()
    try:
        job_id = start_dpo_and_crash(live, tmp_path)
    finally:
        live.stop()
    restarted = LiveServer(model=str(tiny_model_path), backend="mlx", home=home).start()
    try:
        client = client_for(restarted)
        done = wait_for(client, job_id, TERMINAL, timeout=600)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        assert any("resuming at step" in e.message for e in events)
        assert done.method.type == "dpo"  # type: ignore[attr-defined]
        # the resumed half reused the reference log-probs: the margin kept growing
        margins = [
            e.data["train_reward_margin"]
            for e in events
            if e.data and "train_reward_margin" in e.data
        ]
        assert margins and max(margins) > 1.0
    finally:
        restarted.stop()


def start_dpo_and_crash(live: LiveServer, tmp_path: Path) -> str:
    """A DPO job on `live`, killed (SIGKILL, a crash) once it wrote a checkpoint."""
    client = client_for(live)
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": SECRET}],
            "non_preferred_output": [{"role": "assistant", "content": "I would rather not say."}],
        }
        for prompt in PROMPTS
    ]
    job = client.fine_tuning.jobs.create(
        model=live.model,
        training_file=upload(client, write(tmp_path / "pairs.jsonl", pairs)),
        method={  # type: ignore[arg-type]
            "type": "dpo",
            "dpo": {
                "hyperparameters": {"n_epochs": 12, "batch_size": 1, "learning_rate_multiplier": 3}
            },
        },
    )
    deadline = time.monotonic() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    assert live.process is not None
    live.process.send_signal(signal.SIGKILL)
    live.process.wait()
    return job.id
