"""Several models on one server: load on demand, LRU eviction in a budget, keep-alive.

Two copies of the tiny model are put in a fresh store; real servers started on the first
are driven with the openai SDK. The budget is set from the same estimate the server
uses, so "room for one" is exact, not a guess.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from live_server import LiveServer, client_for
from openai.types.chat import ChatCompletionMessageParam

from server.models import ModelCatalog
from server.models.info import serving_memory

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture()
def two_model_home(tmp_path: Path, tiny_model_path: Path) -> Path:
    """A home whose store holds the tiny model twice, as `tiny-a` and `tiny-b`."""
    catalog = ModelCatalog(tmp_path / "models")
    for model_id in ("tiny-a", "tiny-b"):
        catalog.add(
            model_id,
            lambda folder: _copy_files(tiny_model_path, folder),
            format="hf",
            source="imported",
            origin=str(tiny_model_path),
            precision="fp32",
        )
    return tmp_path


def _copy_files(src: Path, dest: Path) -> None:
    for item in src.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)


def _serve(home: Path, **env: str) -> Iterator[LiveServer]:
    # engines in the server process: a model's memory is the estimate the budgets here are
    # sized from (a runner's measured memory is tested in test_engine_runner_live.py)
    env = {"POMAR_ENGINE_PROCESS": "0", **env}
    server = LiveServer(model="tiny-a", backend="mlx", home=home, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def _loaded(client: openai.OpenAI) -> dict[str, bool]:
    return {m.id: bool(getattr(m, "loaded", None)) for m in client.models.list().data}


def _ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=6, temperature=0
    )
    return reply.choices[0].message.content or ""


def _estimate(home: Path) -> int:
    return serving_memory(home / "models" / "tiny-a", "mlx")


def test_models_load_on_demand_and_evict_lru_within_the_budget(two_model_home: Path) -> None:
    budget = int(_estimate(two_model_home) * 1.5)  # room for one, not two
    for server in _serve(two_model_home, POMAR_MAX_MEMORY=str(budget)):
        client = client_for(server)
        assert _loaded(client) == {"tiny-a": True, "tiny-b": False, "all-minilm-l6-v2": False}
        first = _ask(client, "tiny-a")
        # the same weights under another id: loaded on demand, answering the same
        assert _ask(client, "tiny-b") == first
        assert _loaded(client)["tiny-b"] is True
        assert _loaded(client)["tiny-a"] is False  # evicted to make room
        assert _ask(client, "tiny-a") == first  # and loaded again
        assert (_loaded(client)["tiny-a"], _loaded(client)["tiny-b"]) == (True, False)
        log = server.log()
        assert "loaded tiny-b on" in log and "unloaded tiny-a (to make room)" in log
        assert "GB reckoned" in log


def test_idle_models_unload_after_the_keep_alive(two_model_home: Path) -> None:
    for server in _serve(two_model_home, POMAR_KEEP_ALIVE="1"):
        client = client_for(server)
        _ask(client, "tiny-b")
        assert _loaded(client)["tiny-b"] is True
        deadline = time.monotonic() + 20
        while _loaded(client)["tiny-b"] and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _loaded(client)["tiny-b"] is False
        assert _loaded(client)["tiny-a"] is True  # the model named at start stays
        # the line comes once the memory is freed (a runner process takes a moment to end)
        while "unloaded tiny-b (idle for" not in server.log() and time.monotonic() < deadline + 10:
            time.sleep(0.25)
        assert "unloaded tiny-b (idle for" in server.log()
        assert _ask(client, "tiny-b")  # and comes back on the next request


def test_a_model_larger_than_the_budget_is_refused(two_model_home: Path) -> None:
    budget = _estimate(two_model_home) // 2  # the start model loads anyway; tiny-b cannot
    for server in _serve(two_model_home, POMAR_MAX_MEMORY=str(budget)):
        client = client_for(server)
        with pytest.raises(openai.BadRequestError) as caught:
            _ask(client, "tiny-b")
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "model_too_large" and error["param"] == "model"
        assert "POMAR_MAX_MEMORY" in error["message"]
        assert _ask(client, "tiny-a")  # the server keeps serving what it has
        with pytest.raises(openai.NotFoundError):
            _ask(client, "tiny-c")
