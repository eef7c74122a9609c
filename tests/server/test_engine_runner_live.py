"""Engines in runner processes (`POMAR_ENGINE_PROCESS=1`): a crash costs requests, never
the server. Driven with the official `openai` client on a real server (tiny model, MLX)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from live_server import LiveServer, client_for

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def endless(tiny_model_path: Path) -> dict[str, int]:
    """A logit_bias that bans the tiny model's end tokens: its streams run until killed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    return {str(i): -100 for i in tokenizer.all_special_ids}


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        model=str(tiny_model_path),
        backend="mlx",
        home=tmp_path_factory.mktemp("runner"),
        env={"POMAR_ENGINE_PROCESS": "1"},
    ).start()
    yield live
    live.stop()


def health(server: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health").json()
    return body


def runner_pid(server: LiveServer) -> int:
    return int(health(server)["engines"][0]["runner_pid"])


def test_the_engine_runs_in_its_own_process(server: LiveServer) -> None:
    client = client_for(server)
    pid = runner_pid(server)
    assert pid != server.process.pid  # type: ignore[union-attr]
    reply = client.chat.completions.create(
        model=server.model, messages=HI, max_tokens=6, temperature=0, logprobs=True
    )
    assert reply.usage and reply.usage.completion_tokens == 6
    assert reply.choices[0].logprobs and len(reply.choices[0].logprobs.content or []) == 6
    same = client.chat.completions.create(
        model=server.model, messages=HI, max_tokens=6, temperature=0
    )
    assert same.choices[0].message.content == reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model=server.model, messages=HI, max_tokens=6, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content
    # a grammar crosses to the runner as its source and is enforced there
    structured = client.chat.completions.create(
        model=server.model,
        messages=HI,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "n",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        },
    )
    content = structured.choices[0].message.content or ""
    assert content.startswith('{"n": ')
    assert runner_pid(server) == pid  # no restart


def test_a_runner_killed_mid_stream_fails_its_requests_and_restarts(
    server: LiveServer, endless: dict[str, int]
) -> None:
    client = client_for(server)
    pid = runner_pid(server)
    restarts = health(server)["engines"][0]["runner_restarts"]
    errors: list[str] = []

    def stream() -> None:
        chunks = client.chat.completions.create(
            model=server.model, messages=HI, max_tokens=4000, stream=True, logit_bias=endless
        )
        try:
            for _ in chunks:
                pass
        except openai.APIError as exc:
            errors.append(str(exc))

    # two streams in one batch, then the runner faults (as a native crash would)
    streams = [threading.Thread(target=stream) for _ in range(2)]
    for thread in streams:
        thread.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGSEGV)
    for thread in streams:
        thread.join(60)
    assert len(errors) == 2, errors
    assert all("crashed (signal SIGSEGV)" in e for e in errors), errors
    # the server lives on; the next request brings a new runner up
    reply = client.chat.completions.create(model=server.model, messages=HI, max_tokens=4)
    assert reply.choices[0].message.content is not None
    after = health(server)["engines"][0]
    assert after["runner_pid"] != pid and after["runner_restarts"] == restarts + 1
    scrape = httpx.get(f"{server.base_url}/metrics").text
    assert f'pomar_runner_restarts_total{{model="{server.model}"}} {restarts + 1}.0' in scrape


def test_a_non_streamed_request_gets_a_503(server: LiveServer, endless: dict[str, int]) -> None:
    client = client_for(server)
    pid = runner_pid(server)
    result: dict[str, Any] = {}

    def ask() -> None:
        try:
            client.chat.completions.create(
                model=server.model, messages=HI, max_tokens=4000, logit_bias=endless
            )
        except openai.APIStatusError as exc:
            result["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    error = result["error"]
    assert error.status_code == 503 and error.code == "engine_crashed"
    assert "signal SIGKILL" in error.message
    assert client.chat.completions.create(model=server.model, messages=HI, max_tokens=3).choices


def test_a_runner_killed_while_idle_restarts_on_the_next_request(server: LiveServer) -> None:
    client = client_for(server)
    pid = runner_pid(server)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    reply = client.chat.completions.create(model=server.model, messages=HI, max_tokens=3)
    assert reply.choices[0].message.content is not None
    assert runner_pid(server) != pid


def new_runner(server: LiveServer, old: int | None, timeout: float = 60) -> int:
    """The pid of a runner other than `old`, once one serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engines = health(server)["engines"]
        if engines and engines[0].get("runner_pid") not in (None, old):
            return int(engines[0]["runner_pid"])
        time.sleep(0.05)
    raise AssertionError("no new runner came up")


def test_a_model_whose_runner_keeps_dying_is_marked_failed(
    tiny_model_path: Path, tmp_path: Path, endless: dict[str, int]
) -> None:
    live = LiveServer(
        model=str(tiny_model_path),
        backend="mlx",
        home=tmp_path / "home",
        env={"POMAR_ENGINE_PROCESS": "1"},
    ).start()
    try:
        client = client_for(live)
        codes: list[str | None] = []
        pid: int | None = None
        for _ in range(3):  # three deaths, each mid-request: no request served in between
            result: dict[str, Any] = {}

            def ask(out: dict[str, Any] = result) -> None:
                try:
                    client.chat.completions.create(
                        model=live.model, messages=HI, max_tokens=4000, logit_bias=endless
                    )
                except openai.APIStatusError as exc:
                    out["error"] = exc

            thread = threading.Thread(target=ask)
            thread.start()
            pid = new_runner(live, pid)
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            thread.join(60)
            codes.append(result["error"].code if "error" in result else None)
        assert codes == ["engine_crashed"] * 3
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=live.model, messages=HI, max_tokens=3)
        assert failed.value.status_code == 503 and failed.value.code == "model_failed"
        assert "3 times in a row" in failed.value.message
        assert live.model in health(live)["failed"]
        assert httpx.get(f"{live.base_url}/v1/models").status_code == 200  # the rest serves
        # loading it on purpose clears the mark, and it serves again
        loaded = httpx.post(f"{live.base_url}/v1/pomar/models/{live.model}/load")
        assert loaded.status_code == 200, loaded.text
        assert health(live)["failed"] == {}
        assert client.chat.completions.create(model=live.model, messages=HI, max_tokens=3).choices
    finally:
        live.stop()


def test_another_models_streams_finish_when_one_runner_dies(
    tiny_model_path: Path, tmp_path: Path, endless: dict[str, int]
) -> None:
    """Two models, two runners: killing one fails its own stream only."""
    import shutil

    from server.models import ModelCatalog

    catalog = ModelCatalog(tmp_path / "models")

    def copy(folder: Path) -> None:
        for item in tiny_model_path.iterdir():
            if item.is_file():
                shutil.copy2(item, folder / item.name)

    catalog.add("tiny-b", copy, format="hf", source="imported", origin="test", precision="fp32")
    live = LiveServer(
        model=str(tiny_model_path),
        backend="mlx",
        home=tmp_path,
        env={"POMAR_ENGINE_PROCESS": "1"},
    ).start()
    try:
        client = client_for(live)
        client.chat.completions.create(model="tiny-b", messages=HI, max_tokens=2)  # load it
        pids = {e["model"]: e["runner_pid"] for e in health(live)["engines"]}
        assert set(pids) == {live.model, "tiny-b"} and len(set(pids.values())) == 2
        outcome: dict[str, Any] = {}

        def stream(model: str, max_tokens: int) -> None:
            chunks = client.chat.completions.create(
                model=model, messages=HI, max_tokens=max_tokens, stream=True, logit_bias=endless
            )
            try:
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                outcome[model] = ("finished", text)
            except openai.APIError as exc:
                outcome[model] = ("failed", str(exc))

        doomed = threading.Thread(target=stream, args=(live.model, 4000))
        other = threading.Thread(target=stream, args=("tiny-b", 300))
        doomed.start()
        other.start()
        time.sleep(1.0)
        os.kill(pids[live.model], signal.SIGKILL)
        doomed.join(60)
        other.join(120)
        assert outcome[live.model][0] == "failed" and "engine_crashed" not in outcome["tiny-b"]
        assert outcome["tiny-b"][0] == "finished" and outcome["tiny-b"][1]
        # tiny-b's runner never noticed
        after = {e["model"]: e.get("runner_pid") for e in health(live)["engines"]}
        assert after["tiny-b"] == pids["tiny-b"]
    finally:
        live.stop()


def _runner_children(server: LiveServer) -> list[int]:
    """The server's runner processes (`python -m server.models.runner`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.process.pid and b"server.models.runner" in cmdline:  # type: ignore[union-attr]
            found.append(int(entry.name))
    return found


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_runners_memory_is_what_it_holds_above_its_libraries(server: LiveServer) -> None:
    row = httpx.get(f"{server.base_url}/v1/pomar/models/{server.model}").json()
    assert row["loaded"] is True
    # measured in the runner, never below the estimate, and without the interpreter and
    # engine libraries the runner held before it loaded the weights
    assert row["memory_bytes"] >= row["memory_required_bytes"] > 0
    assert row["memory_bytes"] < _rss(runner_pid(server)) - 100 * 2**20


def test_embeddings_run_in_a_runner_of_their_own(server: LiveServer) -> None:
    client = client_for(server)
    first = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a dog"])
    assert len(first.data) == 2 and len(first.data[0].embedding) == 384
    chat = runner_pid(server)
    others = [pid for pid in _runner_children(server) if pid != chat]
    assert len(others) == 1, "no runner of its own for the embedding model"
    os.kill(others[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{others[0]}/cmdline").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # reaped by the server's reader thread
    # the next request loads it again and answers the same
    again = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a dog"])
    assert again.data[0].embedding == pytest.approx(first.data[0].embedding, abs=1e-5)
    assert [pid for pid in _runner_children(server) if pid != chat] != others
    # chat was not touched
    assert runner_pid(server) == chat
    assert client.chat.completions.create(model=server.model, messages=HI, max_tokens=2)


def test_health_answers_while_a_runner_is_stuck(server: LiveServer) -> None:
    pid = runner_pid(server)
    os.kill(pid, signal.SIGSTOP)  # alive, answering nothing
    try:
        tic = time.monotonic()
        body = health(server)
        took = time.monotonic() - tic
        assert body["status"] == "ok"
        assert body["engines"][0]["runner_pid"] == pid  # what the server knows of it
        assert took < 10  # the counters' wait is bounded (2 s), the event loop free
        # meanwhile the server answers other requests at once
        assert httpx.get(f"{server.base_url}/v1/models", timeout=5).status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client_for(server).chat.completions.create(model=server.model, messages=HI, max_tokens=2)


def test_unloading_a_model_ends_its_runner(server: LiveServer) -> None:
    pid = runner_pid(server)
    tic = time.monotonic()
    unloaded = httpx.post(f"{server.base_url}/v1/pomar/models/{server.model}/unload", timeout=60)
    took = time.monotonic() - tic
    assert unloaded.status_code == 200 and unloaded.json()["loaded"] is False
    # the runner saw its socket end and exited: it was reaped before the answer came, and
    # not by the 30 s kill that ends a runner which never sees it
    assert not Path(f"/proc/{pid}").exists()
    assert took < 20
    assert client_for(server).chat.completions.create(model=server.model, messages=HI, max_tokens=2)
    assert runner_pid(server) != pid
