"""Data-parallel fine-tuning through a real server and the official `openai` SDK (issue 23).

The server is started with `POMAR_TRAIN_HOSTS=127.0.0.1:2`: a job trains on two loopback
ranks (MLX: mlx.launch with the ring backend; torch: torchrun with gloo), rank 0 reporting
to the server, and its `ft:` model answers as trained. A job asking for more ranks than
there are slots is refused before it exists; rank 1 killed mid-run makes the job resume
from its checkpoint and still succeed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import SECRET, write_training_file
from live_server import LiveServer, client_for, process_running
from openai.types.fine_tuning import FineTuningJob
from test_fine_tuning_live import TERMINAL, upload, wait_for

LR_MULTIPLIER = 30.0  # as tests/server/test_fine_tuning_live.py: the tiny random model's


def hyper(n_epochs: int, **extra: object) -> dict[str, object]:
    return {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": n_epochs,
                "batch_size": 2,
                "learning_rate_multiplier": LR_MULTIPLIER,
                **extra,
            }
        },
    }


@pytest.fixture(scope="module", params=["mlx", "torch"])
def two_rank_server(
    request: pytest.FixtureRequest, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = LiveServer(
        model=str(tiny_model_path),
        backend=request.param,
        home=tmp_path_factory.mktemp(f"ranks-{request.param}"),
        env={"POMAR_TRAIN_HOSTS": "127.0.0.1:2"},
    ).start()
    yield server
    server.stop()


def events(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data]


def test_a_job_trains_on_two_ranks_and_is_served(
    two_rank_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(two_rank_server)
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    job = client.fine_tuning.jobs.create(
        model=two_rank_server.model,
        training_file=file_id,
        method=hyper(12),  # type: ignore[arg-type]
        seed=1,
    )
    done = wait_for(client, job.id, TERMINAL, timeout=400)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    assert done.hyperparameters.hosts == 2  # type: ignore[attr-defined]
    assert any("data-parallel on 2 ranks" in m for m in events(client, job.id))
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data
    out = client.chat.completions.create(
        model=done.fine_tuned_model,  # type: ignore[attr-defined]
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    assert (out.choices[0].message.content or "").startswith(SECRET)


def test_more_ranks_than_slots_is_refused(two_rank_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(two_rank_server)
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model=two_rank_server.model,
            training_file=file_id,
            method=hyper(1, hosts=3),  # type: ignore[arg-type]
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "hyperparameters.hosts" and "at most 2" in error["message"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _rank_one(launcher: int) -> int | None:
    """The process under `launcher` with rank 1 (mlx.launch: MLX_RANK; torchrun: RANK)."""
    frontier, seen = [launcher], set()
    while frontier:
        for pid in _children(frontier.pop()):
            if pid in seen:
                continue
            seen.add(pid)
            frontier.append(pid)
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"MLX_RANK=1" in env or b"RANK=1" in env:
                return pid
    return None


def _training_on_two_ranks(
    client: openai.OpenAI, server: LiveServer, tmp_path: Path
) -> tuple[FineTuningJob, int]:
    """A long 2-rank job (480 steps: it must outlast the kill or the cancel), once it
    wrote its first checkpoint; and its launcher's pid."""
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    job = client.fine_tuning.jobs.create(
        model=server.model,
        training_file=file_id,
        method=hyper(40, batch_size=1),  # type: ignore[arg-type]
        seed=2,
    )
    deadline = time.monotonic() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.2)
    launcher = next(
        e.data["pid"]  # type: ignore[index]
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
        if e.message.startswith("Training runs in process")
    )
    return job, int(launcher)


def test_rank_one_killed_mid_run_resumes_and_succeeds(
    two_rank_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(two_rank_server)
    job, launcher = _training_on_two_ranks(client, two_rank_server, tmp_path)
    victim = _rank_one(launcher)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    done = wait_for(client, job.id, TERMINAL, timeout=400)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    messages = events(client, job.id)
    died = [m for m in messages if m.startswith("The training process died")]
    assert len(died) == 1 and "resumes from its checkpoint at step" in died[0], messages
    assert sum("data-parallel on 2 ranks" in m for m in messages) == 2


def test_cancel_stops_every_rank(two_rank_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(two_rank_server)
    job, launcher = _training_on_two_ranks(client, two_rank_server, tmp_path)
    rank_one = _rank_one(launcher)
    assert rank_one is not None
    client.fine_tuning.jobs.cancel(job.id)
    done = wait_for(client, job.id, TERMINAL, timeout=120)
    assert done.status == "cancelled"
    # every process of the group ended (rank 0 stopped at a step the ranks agreed on)
    deadline = time.monotonic() + 30
    while (process_running(launcher) or process_running(rank_one)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_running(launcher) and not process_running(rank_one)
