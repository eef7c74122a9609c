"""Crashes and shutdowns of a real server on the tiny model, then a restart on the same home.

SIGKILL during an upload, a chat stream and a running fine-tune: nothing half-written is
listed, temp files are cleaned, SQLite passes `PRAGMA integrity_check`, and everything
acknowledged before the kill (files, job events, checkpoints) is still there; the job
resumes (or fails with a clear code), never stays `running`. SIGTERM: the stream ends
with a final event and `[DONE]`, the running job checkpoints and resumes on restart, and
the process exits within 10 s.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from finetune_data import write_training_file
from live_server import LiveServer, client_for
from openai.types.fine_tuning import FineTuningJob

pytestmark = pytest.mark.slow

BACKEND = "mlx"  # starts in seconds; the torch path of the same code is covered elsewhere
TERMINAL = {"succeeded", "failed", "cancelled"}


def start(model: Path, home: Path) -> LiveServer:
    return LiveServer(model=str(model), backend=BACKEND, home=home).start()


def kill(server: LiveServer) -> None:
    assert server.process is not None
    server.process.kill()  # SIGKILL: no clean-up of any kind
    server.process.wait()


def integrity(home: Path) -> str:
    with sqlite3.connect(home / "pomar.db") as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def hyper(n_epochs: int) -> dict[str, object]:
    hp = {"n_epochs": n_epochs, "batch_size": 1, "learning_rate_multiplier": 30.0}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def wait_until(check: object, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def event_ids(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.id for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]


@dataclass
class Stream:
    """A raw SSE chat stream read on a thread: every `data:` payload, and how it ended."""

    server: LiveServer
    body: dict[str, object]
    data: list[str] = field(default_factory=list)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        url = f"{self.server.base_url}/v1/chat/completions"
        try:
            with httpx.stream("POST", url, json=self.body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.data.append(line.removeprefix("data:").strip())
        except BaseException as exc:  # the connection broke under the client
            self.error = exc

    def join(self, timeout: float = 20) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"


def endless_chat(server: LiveServer, model: Path) -> dict[str, object]:
    """A chat request that streams far longer than any test waits.

    Every special token is banned, not only eos: the server also ends a turn on
    `<|im_start|>`, which the random tiny model samples now and then.
    """
    added = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    return {
        "model": server.model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 4000,
        "stream": True,
        "logit_bias": {str(t["id"]): -100 for t in added if t["special"]},
    }


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "home"


def test_kill_during_upload(tiny_model_path: Path, home: Path, tmp_path: Path) -> None:
    server = start(tiny_model_path, home)
    client = client_for(server)
    kept: dict[str, bytes] = {}
    for n in range(2):
        data = f'{{"n": {n}, "text": "{"x" * 1000 * (n + 1)}"}}\n'.encode()
        kept[client.files.create(file=(f"ok{n}.jsonl", data), purpose="batch").id] = data

    boundary = "pomar-crash-boundary"
    stop = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"batch\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        while not stop.is_set():
            yield b'{"messages": []}\n' * 2048
            time.sleep(0.02)

    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(
                httpx.post(
                    f"{server.base_url}/v1/files",
                    content=slow_body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                    timeout=60,
                )
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    incoming = home / "files" / ".incoming"

    def partial() -> list[Path]:
        return [p for p in incoming.iterdir() if p.stat().st_size > 256 * 1024]

    try:
        wait_until(partial, "the upload's temp file to grow", timeout=60)
    finally:
        kill(server)
        stop.set()
        uploader.join(30)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome  # never acknowledged
    assert list(incoming.iterdir()), "the kill left no temp file: nothing was tested"

    server = start(tiny_model_path, home)
    try:
        client = client_for(server)
        assert sorted(f.id for f in client.files.list()) == sorted(kept)
        for file_id, data in kept.items():
            assert client.files.content(file_id).content == data
        assert not list(incoming.iterdir()), "temp files survived the restart"
        blobs = {p.name for p in (home / "files").iterdir() if p.is_file()}
        assert blobs == set(kept)
        assert integrity(home) == "ok"
        # the store still takes uploads
        assert client.files.create(file=("after.jsonl", b"{}\n"), purpose="batch").bytes == 3
    finally:
        server.stop()
    assert integrity(home) == "ok"


def test_kill_during_stream(tiny_model_path: Path, home: Path) -> None:
    server = start(tiny_model_path, home)
    client = client_for(server)
    file_id = client.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch").id
    stream = Stream(server, endless_chat(server, tiny_model_path)).start()
    try:
        wait_until(lambda: len(stream.data) >= 5, "the stream to flow", timeout=60)
    finally:
        kill(server)
    stream.join()
    assert stream.error is not None and "[DONE]" not in stream.data  # cut, as a kill does

    server = start(tiny_model_path, home)
    try:
        client = client_for(server)
        assert [f.id for f in client.files.list()] == [file_id]
        out = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert out.choices[0].finish_reason in ("stop", "length")
        assert integrity(home) == "ok"
    finally:
        server.stop()


def start_job(client: openai.OpenAI, model: str, tmp_path: Path, epochs: int) -> FineTuningJob:
    """Upload the training file and create a job that trains `epochs` epochs."""
    with write_training_file(tmp_path / "train.jsonl").open("rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=file_id,
        method=hyper(epochs),  # type: ignore[arg-type]
    )


def test_kill_during_fine_tune_keeps_what_was_acknowledged(
    tiny_model_path: Path, home: Path, tmp_path: Path
) -> None:
    server = start(tiny_model_path, home)
    client = client_for(server)
    job = start_job(client, server.model, tmp_path, epochs=3)
    try:
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, "a checkpoint")
        events = event_ids(client, job.id)
        checkpoints = {
            c.id: c.fine_tuned_model_checkpoint
            for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)
        }
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    finally:
        kill(server)

    server = start(tiny_model_path, home)
    try:
        client = client_for(server)
        assert integrity(home) == "ok"
        assert set(events) <= set(event_ids(client, job.id)), "events lost in the crash"
        after = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)
        assert checkpoints.items() <= {c.id: c.fine_tuned_model_checkpoint for c in after}.items()
        for model_id in checkpoints.values():  # each acknowledged checkpoint still serves
            assert client.models.retrieve(model_id).id == model_id
        wait_until(
            lambda: client.fine_tuning.jobs.retrieve(job.id).status in TERMINAL,
            "the resumed job to finish",
            timeout=300,
        )
        done = client.fine_tuning.jobs.retrieve(job.id)
        if done.status == "failed":
            assert done.error is not None and done.error.code, done.error
        else:
            assert done.status == "succeeded", done
            assert any(
                m.startswith("Server restarted: the job resumes") for m in messages(client, job.id)
            )
        assert not list((home / "files" / ".incoming").iterdir())
        assert integrity(home) == "ok"
    finally:
        server.stop()


def test_sigterm_ends_streams_checkpoints_the_job_and_exits(
    tiny_model_path: Path, home: Path, tmp_path: Path
) -> None:
    server = start(tiny_model_path, home)
    client = client_for(server)
    job = start_job(client, server.model, tmp_path, epochs=40)
    try:
        wait_until(
            lambda: any(
                e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data
            ),
            "training to start",
        )
        stream = Stream(server, endless_chat(server, tiny_model_path)).start()
        wait_until(lambda: len(stream.data) >= 3, "the stream to flow", timeout=60)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        assert server.process is not None
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=10)  # raises if it takes longer
        took = time.monotonic() - sent
    finally:
        kill(server) if server.process and server.process.poll() is None else None
    # uvicorn re-raises the signal once shut down, hence -SIGTERM rather than 0
    assert took < 10 and code in (0, -signal.SIGTERM), (took, code, server.log()[-3000:])
    assert "Application shutdown complete" in server.log()

    # the stream ended with a final event and [DONE], not a broken connection
    stream.join()
    assert stream.error is None, stream.error
    assert stream.data[-1] == "[DONE]", stream.data[-3:]
    final = json.loads(stream.data[-2])
    if "error" in final:
        assert final["error"]["code"] == "server_shutting_down"
    else:
        assert final["choices"][0]["finish_reason"] is not None

    # the running job checkpointed on the way down...
    with sqlite3.connect(home / "pomar.db") as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()
        steps = [r[0] for r in conn.execute("SELECT step_number FROM job_checkpoints")]
    assert row[0] == "running" and steps, (row, steps)
    assert integrity(home) == "ok"

    # ...and resumes from that checkpoint on restart
    server = start(tiny_model_path, home)
    try:
        client = client_for(server)
        paused = max(steps)
        wait_until(
            lambda: any(f"resuming at step {paused}" in m for m in messages(client, job.id)),
            "the job to resume",
            timeout=60,
        )
        said = messages(client, job.id)
        assert any(f"paused at step {paused}" in m for m in said), said
        assert any(f"from the checkpoint at step {paused}" in m for m in said), said
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    finally:
        server.stop()
