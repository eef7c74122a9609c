"""An engine that fails mid-generation: a 500 without internals, or an SSE error event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.engine.base import GenerationParams, Sampled, ShouldStop
from server.engine.mlx.backend import MLXEngine
from server.settings import Settings

SECRET_DETAIL = "/very/secret/path/weights.bin exploded"


class FailingEngine(MLXEngine):
    """The tiny MLX model, but the third token step raises."""

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        inner = super().token_stream(prompt_ids, params, should_stop)
        try:
            for i, token in enumerate(inner):
                if i == 2:
                    raise RuntimeError(SECRET_DETAIL)
                yield token
        finally:
            inner.close()  # on this (the worker) thread, as MLX streams require


@pytest.fixture(scope="module")
def client(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(model="tiny", home=tmp_path_factory.mktemp("home"))
    app = create_app(settings, engine=FailingEngine(tiny_model_path))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def test_failure_without_stream_is_a_500_without_internals(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**BODY, "temperature": 0})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error"
    assert SECRET_DETAIL not in r.text and "Traceback" not in r.text


def test_failure_mid_stream_is_an_error_event_then_done(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["type"] == "server_error" and SECRET_DETAIL not in error["message"]
    chunks = [json.loads(d) for d in data[:-2]]
    assert chunks and chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_the_worker_survives_a_failure(client: TestClient) -> None:
    """The same engine keeps serving: a 1-token request never reaches the failing step."""
    r = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
