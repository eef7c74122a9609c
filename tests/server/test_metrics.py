"""The pieces of `GET /metrics` without a model: the request middleware, generation
traces, the live gauges, the worker's queue counts, the store's job counts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from server.engine.generation import Chunk
from server.engine.worker import GenerationWorker
from server.middleware import APIKeyMiddleware, RequestMetricsMiddleware
from server.services.metrics import Metrics
from server.services.observer import GenerationTrace
from server.store import Store


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


# ------------------------------------------------------------------ requests


async def _item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


async def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


@pytest.fixture
def served() -> Iterator[tuple[TestClient, Metrics]]:
    metrics = Metrics()
    app = Starlette(
        routes=[
            Route("/v1/items/{item_id}", _item, methods=["GET"]),
            Route("/boom", _boom, methods=["GET"]),
            Route("/metrics", lambda r: PlainTextResponse(metrics.render()), methods=["GET"]),
        ],
        middleware=[
            Middleware(RequestMetricsMiddleware, observer=metrics),
            Middleware(APIKeyMiddleware, api_key="k", also=frozenset({"/metrics"})),
        ],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, metrics


def test_requests_are_counted_by_route_template_and_status(
    served: tuple[TestClient, Metrics],
) -> None:
    client, metrics = served
    key = {"Authorization": "Bearer k"}
    for item in ("a", "b", "c"):
        assert client.get(f"/v1/items/{item}", headers=key).status_code == 200
    assert client.get("/v1/items/x").status_code == 401  # refused before routing
    assert client.post("/v1/items/x", headers=key).status_code == 405
    assert client.get("/boom").status_code == 500
    assert client.get("/nowhere/at/all").status_code == 404
    route = "/v1/items/{item_id}"
    total = "pomar_requests_total"
    assert value(metrics, total, route=route, method="GET", status="200") == 3
    assert value(metrics, total, route=route, method="GET", status="401") == 1
    assert value(metrics, total, route=route, method="POST", status="405") == 1
    assert value(metrics, total, route="/boom", method="GET", status="500") == 1
    assert value(metrics, total, route="unmatched", method="GET", status="404") == 1
    count = "pomar_request_duration_seconds_count"
    assert value(metrics, count, route=route, method="GET") == 4
    # no raw URL ever becomes a label
    assert not any("/v1/items/a" in str(k) for k in samples(metrics))


def test_metrics_path_needs_the_key(served: tuple[TestClient, Metrics]) -> None:
    client, _ = served
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"x-api-key": "k"}).status_code == 200


# ------------------------------------------------------------------ generation


class Heard:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def first_token(self, model: str, seconds: float) -> None:
        self.calls.append(("first", model, seconds))

    def tokens(self, model: str, count: int, seconds_each: float | None) -> None:
        self.calls.append(("tokens", model, count, seconds_each))

    def prompt(self, model: str, tokens: int, cached: int) -> None:
        self.calls.append(("prompt", model, tokens, cached))


def test_a_trace_times_the_first_token_once_and_each_gap() -> None:
    heard = Heard()
    trace = GenerationTrace(heard, "m")
    for _ in range(2):  # two choices
        completion = trace.completion()
        completion.chunk(Chunk("", 0))  # a pause: no token
        completion.chunk(Chunk("a", 1))
        completion.chunk(Chunk("bc", 3))  # two tokens behind one piece of text
        completion.chunk(Chunk("", 3, "stop"))  # the end-of-sequence token is not counted
    trace.prompt(10, 4)
    kinds = [c[0] for c in heard.calls]
    assert kinds == ["first", "tokens", "tokens", "tokens", "tokens", "prompt"]
    assert heard.calls[0][2] >= 0
    # a completion's first token has no gap before it; later ones do
    assert heard.calls[1][2:] == (1, None) and heard.calls[3][2:] == (1, None)
    assert heard.calls[2][2] == 2 and heard.calls[2][3] is not None
    assert heard.calls[-1] == ("prompt", "m", 10, 4)


def test_the_observer_methods_move_the_metrics() -> None:
    metrics = Metrics()
    metrics.first_token("m", 0.2)
    metrics.tokens("m", 1, None)
    metrics.tokens("m", 2, 0.01)
    metrics.prompt("m", 10, 4)
    assert value(metrics, "pomar_generated_tokens_total", model="m") == 3
    assert value(metrics, "pomar_time_to_first_token_seconds_count", model="m") == 1
    assert value(metrics, "pomar_inter_token_latency_seconds_count", model="m") == 2
    assert value(metrics, "pomar_prompt_tokens_total", model="m") == 10
    assert value(metrics, "pomar_prompt_cached_tokens_total", model="m") == 4


# ------------------------------------------------------------------ live state


def test_live_gauges_read_models_and_jobs_at_scrape_time(tmp_path: Path) -> None:
    metrics = Metrics()
    # before the app watches anything: job statuses at 0, no model rows
    assert value(metrics, "pomar_fine_tuning_jobs", status="queued") == 0
    store = Store.open(tmp_path)
    try:
        for status in ("queued", "succeeded", "succeeded"):
            store.jobs.create(
                model="m", training_file="file-x", seed=1, hyperparameters={}, status=status
            )
        worker = SimpleNamespace(queued=2, running=1)
        model = SimpleNamespace(
            id="m", worker=worker, memory=1234, engine=SimpleNamespace(backend="mlx")
        )
        registry = SimpleNamespace(loaded=lambda: [model])
        metrics.watch(registry, store.jobs)  # type: ignore[arg-type]
        assert value(metrics, "pomar_queue_depth", model="m") == 2
        assert value(metrics, "pomar_running_sequences", model="m") == 1
        assert value(metrics, "pomar_model_memory_bytes", model="m", backend="mlx") == 1234
        assert value(metrics, "pomar_fine_tuning_jobs", status="succeeded") == 2
        assert value(metrics, "pomar_fine_tuning_jobs", status="queued") == 1
        assert value(metrics, "pomar_fine_tuning_jobs", status="failed") == 0
        assert (value(metrics, "process_resident_memory_bytes") or 0) > 0
    finally:
        metrics.watch(None, None)
        store.close()


async def test_worker_counts_queued_and_running_jobs() -> None:
    worker = GenerationWorker("test")
    gate = threading.Event()

    def blocked(_stop: Any) -> Iterator[int]:
        gate.wait(10)
        yield 1

    first = asyncio.ensure_future(_drain(worker, blocked))
    second = asyncio.ensure_future(_drain(worker, blocked))
    for _ in range(200):
        if worker.running == 1 and worker.queued == 1:
            break
        await asyncio.sleep(0.01)
    assert (worker.running, worker.queued) == (1, 1)
    gate.set()
    assert await first == [1] and await second == [1]
    for _ in range(200):
        if worker.running == 0:
            break
        await asyncio.sleep(0.01)
    assert (worker.running, worker.queued) == (0, 0)
    worker.close()


async def _drain(worker: GenerationWorker, produce: Any) -> list[int]:
    return [item async for item in worker.stream(produce)]
