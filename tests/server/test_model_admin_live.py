"""pomar's model facts, load and unload (`/v1/pomar/models`) on a real server.

The server starts on the tiny model (a folder path: source `path`, pinned) with a copy of it
in the store as `tiny-b` and a third copy, `huge`, padded with a tensor so it cannot fit
the memory budget, which is set from the same estimate the server uses.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import API_KEY, LiveServer

from server.errors import ModelInUse
from server.models import ModelCatalog
from server.models.info import serving_memory
from server.models.registry import ModelRegistry
from server.models.residency import LoadedModel, Residency
from server.services.models import ModelService
from server.store import Store

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _copy_files(src: Path, dest: Path) -> None:
    for item in src.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)


def _padded(src: Path, dest: Path, size: int) -> None:
    """The tiny model plus one unused tensor of `size` bytes (never loaded: refused first)."""
    import torch
    from safetensors.torch import save_file

    _copy_files(src, dest)
    save_file({"pad": torch.zeros(size // 4, dtype=torch.float32)}, str(dest / "pad.safetensors"))


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("model-admin-home")
    budget = int(serving_memory(tiny_model_path, "torch") * 2.5)  # room for two tiny ones
    catalog = ModelCatalog(home / "models")
    catalog.add(
        "tiny-b",
        lambda folder: _copy_files(tiny_model_path, folder),
        format="hf",
        source="imported",
        origin="example/tiny-b",
        precision="fp32",
    )
    catalog.add(
        "huge",
        lambda folder: _padded(tiny_model_path, folder, budget),
        format="hf",
        source="imported",
        origin="example/huge",
        precision="fp32",
    )
    live = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=home,
        api_key=API_KEY,
        # engines in the server process: a model's memory is then the estimate these
        # budgets are sized from (a runner's measured memory: test_engine_runner_live.py)
        env={"POMAR_MAX_MEMORY": str(budget), "POMAR_ENGINE_PROCESS": "0"},
    ).start()
    try:
        yield live
    finally:
        live.stop()


def _get(server: LiveServer, path: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", headers=AUTH, timeout=60)


def _post(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", headers=AUTH, timeout=120, **kwargs)


def _loaded(server: LiveServer) -> list[str]:
    health = httpx.get(f"{server.base_url}/health", timeout=10).json()
    return list(health["loaded"])


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return dict(error)


def test_every_model_with_its_facts(server: LiveServer) -> None:
    listing = _get(server, "/v1/pomar/models")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    rows = {row["id"]: row for row in body["data"]}
    start = rows[server.model]
    assert start["object"] == "pomar.model"
    assert start["kind"] == "base" and start["base"] == server.model
    assert start["source"] == "path" and start["origin"] == server.model
    assert start["format"] == "hf" and start["precision"]
    assert start["size_bytes"] > 0 and start["parameters"] > 0
    assert start["loaded"] is True and start["pinned"] is True
    assert start["backend"] == "torch"
    assert start["memory_bytes"] > 0
    assert start["memory_required_bytes"] == serving_memory(Path(server.model), "torch")
    assert body["in_use_bytes"] == start["memory_bytes"]
    assert body["budget_bytes"] > body["in_use_bytes"]

    stored = rows["tiny-b"]
    assert stored["source"] == "imported" and stored["origin"] == "example/tiny-b"
    assert (stored["format"], stored["precision"]) == ("hf", "fp32")
    assert stored["loaded"] is False and stored["memory_bytes"] is None
    assert stored["memory_required_bytes"] == start["memory_required_bytes"]
    assert rows["huge"]["memory_required_bytes"] > body["budget_bytes"]

    one = _get(server, "/v1/pomar/models/tiny-b")
    assert one.status_code == 200 and one.json() == stored
    # OpenAI's model object keeps its shape
    card = _get(server, "/v1/models/tiny-b").json()
    assert set(card) == {"id", "object", "created", "owned_by", "parent", "loaded"}


def test_load_and_unload_a_stored_model(server: LiveServer) -> None:
    loaded = _post(server, "/v1/pomar/models/tiny-b/load")
    assert loaded.status_code == 200, loaded.text
    row = loaded.json()
    assert row["loaded"] is True and row["memory_bytes"] == row["memory_required_bytes"]
    assert "tiny-b" in _loaded(server)
    assert _post(server, "/v1/pomar/models/tiny-b/load").json()["loaded"] is True  # no-op

    unloaded = _post(server, "/v1/pomar/models/tiny-b/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["loaded"] is False and unloaded.json()["memory_bytes"] is None
    assert "tiny-b" not in _loaded(server)
    again = _post(server, "/v1/pomar/models/tiny-b/unload")  # not loaded: left as it is
    assert again.status_code == 200 and again.json()["loaded"] is False


def test_unload_the_start_model_then_a_chat_loads_it_again(server: LiveServer) -> None:
    unloaded = _post(server, f"/v1/pomar/models/{server.model}/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["loaded"] is False
    assert server.model not in _loaded(server)
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    chat = _post(
        server,
        "/v1/chat/completions",
        json={"model": server.model, "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 3},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert server.model in _loaded(server)
    assert _get(server, f"/v1/pomar/models/{server.model}").json()["loaded"] is True


def test_errors_in_the_openai_envelope(server: LiveServer) -> None:
    for path in ("/v1/pomar/models/nope", "/v1/pomar/models/nope/load"):
        response = _get(server, path) if not path.endswith("load") else _post(server, path)
        _error(response, 404, "model_not_found")
    _error(_post(server, "/v1/pomar/models/nope/unload"), 404, "model_not_found")
    error = _error(_post(server, "/v1/pomar/models/huge/load"), 400, "model_too_large")
    assert "memory budget" in error["message"] and error["param"] == "model"
    assert "huge" not in _loaded(server)
    no_key = httpx.post(f"{server.base_url}/v1/pomar/models/tiny-b/load")
    _error(no_key, 401, "invalid_api_key")
    embedding = [r for r in _get(server, "/v1/pomar/models").json()["data"]]
    embedding = [r for r in embedding if r["kind"] == "embedding"]
    if embedding:  # the embedding model is on unless POMAR_EMBEDDING_MODEL turns it off
        model = embedding[0]["id"]
        _error(_post(server, f"/v1/pomar/models/{model}/unload"), 400, "model_not_unloadable")


class _Stub:
    model_path = "/nonexistent/stub"
    backend = "stub"


class _Worker:
    closed = False

    def close(self) -> None:
        self.closed = True

    def join(self) -> None:
        pass


def test_a_model_in_use_is_not_unloaded(tmp_path: Path) -> None:
    """409 `model_in_use` while a request holds the model; unloaded once it lets go."""

    async def scenario() -> None:
        async def loader(_spec: Any) -> LoadedModel:
            raise AssertionError("not loaded here")

        registry = ModelRegistry(Residency(loader=loader, budget=1 << 30))
        worker = _Worker()
        registry.add(LoadedModel("stub", _Stub(), worker, None))  # type: ignore[arg-type]
        store = Store.open(tmp_path)
        service = ModelService(registry, store)
        lease = await registry.acquire("stub")
        with pytest.raises(ModelInUse, match="serving 1 request"):
            await service.unload("stub")
        assert [m.id for m in registry.loaded()] == ["stub"]
        lease.release()
        assert (await service.unload("stub")).loaded is False
        assert registry.loaded() == [] and worker.closed
        store.close()

    asyncio.run(scenario())
