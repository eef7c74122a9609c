"""The fine-tuning workflow through a real server and the official `openai` SDK.

Upload -> job on the tiny model -> succeeded -> the `ft:` model answers as trained,
on both backends; plus cancel, bad jobs, and a crash mid-run resumed on restart.
"""

from __future__ import annotations

import csv
import io
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import SECRET, write_training_file
from live_server import LiveServer, client_for

TERMINAL = {"succeeded", "failed", "cancelled"}
# The tiny random model needs a rate far above real models' (see finetune.config). On
# this data PEFT diverges at x100 (loss stays ~1.2) while x30 for 8 epochs (~100 steps)
# teaches both backends the reply word for word; far longer runs at x30 overfit.
LR_MULTIPLIER = 30.0
EPOCHS = 8


@pytest.fixture(scope="module", params=["mlx", "torch"])
def ft_server(
    request: pytest.FixtureRequest, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp(f"ft-{request.param}")
    server = LiveServer(model=str(tiny_model_path), backend=request.param, home=home).start()
    yield server
    server.stop()


def hyper(n_epochs: int | str = EPOCHS, **extra: object) -> dict[str, object]:
    return {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": n_epochs,
                "batch_size": 1,
                "learning_rate_multiplier": LR_MULTIPLIER,
                **extra,
            }
        },
    }


def wait_for(
    client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 300
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def test_fine_tune_then_chat_with_the_result(ft_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(ft_server)
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    job = client.fine_tuning.jobs.create(
        model=ft_server.model,
        training_file=file_id,
        suffix="secret",
        method=hyper(EPOCHS, lora_rank=8),  # type: ignore[arg-type]
        seed=3,
    )
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert job.id.startswith("ftjob-") and job.training_file == file_id and job.seed == 3
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    ft_model = done.fine_tuned_model  # type: ignore[attr-defined]
    assert ft_model.startswith("ft:tiny-llama:pomar:secret:")
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at  # type: ignore[attr-defined]
    hp = done.method.supervised.hyperparameters  # type: ignore[attr-defined]
    assert hp.n_epochs == EPOCHS and hp.batch_size == 1
    assert done.hyperparameters.n_epochs == EPOCHS  # type: ignore[attr-defined]

    # served at once, next to its base, with no restart
    models = {m.id: m for m in client.models.list().data}
    assert ft_model in models and ft_server.model in models
    out = client.chat.completions.create(
        model=ft_model,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    assert (out.choices[0].message.content or "").startswith(SECRET)
    base = client.chat.completions.create(
        model=ft_server.model,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    assert not (base.choices[0].message.content or "").startswith(SECRET)  # the base is untouched

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any("Validating training file" in m for m in messages)
    assert any(m.startswith("New fine-tuned model created") for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all("step" in (e.data or {}) for e in metrics)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all(c.fine_tuning_job_id == job.id for c in checkpoints)
    assert all(
        c.fine_tuned_model_checkpoint.startswith(ft_model + ":ckpt-step-") for c in checkpoints
    )
    ckpt_model = checkpoints[0].fine_tuned_model_checkpoint
    assert client.models.retrieve(ckpt_model).id == ckpt_model

    # pomar's before/after evaluation on the split-off validation set
    evaluation = done.model_extra["evaluation"] if done.model_extra else None  # type: ignore[attr-defined]
    assert evaluation is not None, done
    before, after = evaluation["before"], evaluation["after"]
    assert before["step"] == 0 and after["step"] > 0
    assert after["valid_loss"] < 0.2 * before["valid_loss"]
    assert before["exact_match"] == 0 and before["n_generated"] >= 1
    assert after["normalized_match"] >= after["exact_match"] > before["exact_match"]
    evaluated = [e for e in events if (e.data or {}).get("phase") in ("before", "after")]
    assert sorted(e.data["phase"] for e in evaluated) == ["after", "before"]  # type: ignore[index]
    assert any(
        e.message.startswith("Evaluation before training: validation loss") for e in evaluated
    )

    csv_id, png_id = done.result_files  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(client.files.content(csv_id).text)))
    assert rows and {"step", "train_loss", "valid_loss", "valid_exact_match"} <= set(rows[0])
    # the evaluation's "before" is a step-0 row; "after" lands on the last step's row
    assert rows[0]["step"] == "0" and rows[0]["train_loss"] == ""
    assert float(rows[0]["valid_loss"]) > float(rows[-1]["valid_loss"])
    assert float(rows[-1]["valid_exact_match"]) == after["exact_match"]
    assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"])
    assert client.files.content(png_id).content.startswith(b"\x89PNG")
    assert client.files.retrieve(csv_id).purpose == "fine-tune-results"

    listed = client.fine_tuning.jobs.list(limit=10).data
    assert job.id in [j.id for j in listed]

    # deleting the fine-tuned model stops serving it
    deleted = client.models.delete(ft_model)
    assert deleted.deleted and deleted.id == ft_model
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=ft_model, messages=[{"role": "user", "content": "hi"}])


def test_cancel_mid_run_keeps_a_checkpoint(ft_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(ft_server)
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    job = client.fine_tuning.jobs.create(
        model=ft_server.model, training_file=file_id, method=hyper(50)
    )  # type: ignore[arg-type]
    deadline = time.monotonic() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        assert client.fine_tuning.jobs.retrieve(job.id).status not in TERMINAL
        time.sleep(0.3)
    # serving goes on while the job trains (two threads on the engine's library at once)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    for _ in range(3):
        reply = client.chat.completions.create(
            model=ft_server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.choices[0].message.content is not None
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    time.sleep(3)
    after = client.fine_tuning.jobs.retrieve(job.id)
    assert after.status == "cancelled" and after.fine_tuned_model is None
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints
    model = checkpoints[0].fine_tuned_model_checkpoint
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert out.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert again.value.code == "job_not_cancellable"


def test_bad_jobs_get_clear_errors(ft_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(ft_server)
    good = upload(client, write_training_file(tmp_path / "train.jsonl"))
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.fine_tuning.jobs.create(model="gpt-9", training_file=good)
    assert unknown_model.value.code == "model_not_found" and unknown_model.value.param == "model"
    with pytest.raises(openai.BadRequestError) as missing:
        client.fine_tuning.jobs.create(model=ft_server.model, training_file="file-" + "0" * 24)
    assert missing.value.param == "training_file" and missing.value.code == "file_not_found"
    other = tmp_path / "notes.txt"
    other.write_text("not for training")
    with other.open("rb") as f:
        wrong_purpose = client.files.create(file=f, purpose="assistants").id
    with pytest.raises(openai.BadRequestError) as purpose:
        client.fine_tuning.jobs.create(model=ft_server.model, training_file=wrong_purpose)
    assert purpose.value.code == "invalid_file_purpose"
    with pytest.raises(openai.BadRequestError) as bad_hp:
        client.fine_tuning.jobs.create(model=ft_server.model, training_file=good, method=hyper(0))  # type: ignore[arg-type]
    assert "n_epochs" in str(bad_hp.value.param)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-" + "0" * 24)
    with pytest.raises(openai.BadRequestError) as cursor:
        client.fine_tuning.jobs.list(after="ftjob-" + "1" * 24)
    assert cursor.value.param == "after"
    n_jobs = len(client.fine_tuning.jobs.list(limit=100).data)

    # too few examples: the job is created, then fails at validation with a clear error
    few = upload(client, write_training_file(tmp_path / "few.jsonl", n=4))
    job = client.fine_tuning.jobs.create(model=ft_server.model, training_file=few)
    failed = wait_for(client, job.id, TERMINAL)
    assert failed.status == "failed"  # type: ignore[attr-defined]
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"  # type: ignore[attr-defined]
    assert few in failed.error.message and "10" in failed.error.message  # type: ignore[attr-defined]
    assert len(client.fine_tuning.jobs.list(limit=100).data) == n_jobs + 1


@pytest.mark.parametrize("backend", ["mlx"])
def test_crash_mid_run_resumes_on_restart(
    backend: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = LiveServer(model=str(tiny_model_path), backend=backend, home=home).start()
    try:
        client = client_for(server)
        file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
        # The seed and rank of the unbroken run above: resume is exact, so the outcome is
        # that run's; a random seed would test the tiny model's luck instead.
        job = client.fine_tuning.jobs.create(
            model=server.model,
            training_file=file_id,
            method=hyper(EPOCHS, lora_rank=8),  # type: ignore[arg-type]
            seed=3,
        )
        deadline = time.monotonic() + 300
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()
    restarted = LiveServer(model=str(tiny_model_path), backend=backend, home=home).start()
    try:
        client = client_for(restarted)
        assert client.files.retrieve(file_id).id == file_id  # the upload survived the crash
        done = wait_for(client, job.id, TERMINAL)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert any(
            m.startswith("Server restarted: the job resumes from the checkpoint") for m in messages
        )
        assert any("resuming at step" in m for m in messages)
        out = client.chat.completions.create(
            model=done.fine_tuned_model,  # type: ignore[attr-defined]
            messages=[{"role": "user", "content": "What is the secret word?"}],
            temperature=0,
            max_tokens=20,
        )
        assert (out.choices[0].message.content or "").startswith(SECRET)
    finally:
        restarted.stop()
