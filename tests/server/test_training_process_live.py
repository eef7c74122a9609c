"""A job trains in its own process: killing it costs the job a restart, never the server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import write_training_file
from live_server import LiveServer, client_for
from test_fine_tuning_live import TERMINAL, hyper, upload, wait_for


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("trainproc")
    live = LiveServer(model=str(tiny_model_path), backend="mlx", home=home).start()
    yield live
    live.stop()


def trainer_pids(client: openai.OpenAI, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [int(e.data["pid"]) for e in reversed(events) if e.data and "pid" in e.data]


def next_trainer(client: openai.OpenAI, job_id: str, seen: int, timeout: float = 120) -> int:
    """The pid of the job's training process number `seen + 1`, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = trainer_pids(client, job_id)
        if len(pids) > seen:
            return pids[seen]
        time.sleep(0.1)
    raise AssertionError(f"no training process number {seen + 1}")


def chat(client: openai.OpenAI, model: str) -> str:
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return out.choices[0].message.content or ""


def test_a_killed_training_process_resumes_from_its_checkpoint(
    server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model=server.model,
        training_file=upload(client, write_training_file(tmp_path / "train.jsonl")),
        method=hyper(12),  # type: ignore[arg-type]
        seed=3,
    )
    pid = next_trainer(client, job.id, 0)
    assert pid != server.process.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    # the server never noticed: it answers while the job starts a new training process
    assert isinstance(chat(client, server.model), str)
    second = next_trainer(client, job.id, 1)
    assert second != pid
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(
        m.startswith(
            "The training process died (signal SIGKILL); the job resumes from its "
            "checkpoint at step"
        )
        for m in messages
    ), messages
    assert any("resuming at step" in m for m in messages)
    assert isinstance(chat(client, done.fine_tuned_model), str)  # type: ignore[attr-defined]


def test_a_training_process_that_keeps_dying_fails_the_job(
    server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model=server.model,
        training_file=upload(client, write_training_file(tmp_path / "train.jsonl")),
        method=hyper(50),  # type: ignore[arg-type]
    )
    for number in range(3):
        os.kill(next_trainer(client, job.id, number), signal.SIGKILL)
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "training_crashed"  # type: ignore[attr-defined]
    assert "signal SIGKILL" in done.error.message and "3 times" in done.error.message  # type: ignore[attr-defined]
    assert isinstance(chat(client, server.model), str)  # serving never stopped
