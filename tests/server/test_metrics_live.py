"""`GET /metrics` on a real server (tiny model, MLX, API key set), driven by the `openai`
SDK and read back with prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from finetune_data import write_training_file
from live_server import API_KEY, LiveServer, client_for
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HELLO = [{"role": "user", "content": "hello there, how are you?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # its own home: the job counts are this test's alone
    home = tmp_path_factory.mktemp("metrics-home")
    live = LiveServer(
        model=str(tiny_model_path),
        backend="mlx",
        home=home,
        api_key=API_KEY,
        extra_args=["--embedding-model", "none"],
    ).start()
    yield live
    live.stop()


def scrape(server: LiveServer) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_requests(server: LiveServer, tmp_path: Path) -> None:
    client = client_for(server)
    model = server.model
    before = scrape(server)

    # a chat, the same chat again (its prompt now in MLX's prompt cache), a streamed chat
    usages = []
    for _ in range(2):
        reply = client.chat.completions.create(
            model=model,
            messages=HELLO,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=6,
        )
        usages.append(reply.usage)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "tell me a story"}],
        temperature=0,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages.append([c for c in stream if c.usage is not None][-1].usage)
    # a legacy completion of two prompts (each counted once, as its usage counts it)
    legacy = client.completions.create(
        model=model, prompt=["Once upon", "a time"], temperature=0, max_tokens=5
    )
    usages.append(legacy.usage)
    # a failing request: an unknown model
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)  # type: ignore[arg-type]
    # a fine-tuning job, cancelled at once
    with write_training_file(tmp_path / "train.jsonl").open("rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"

    route = "/v1/chat/completions"
    jobs_route = "/v1/fine_tuning/jobs/{job_id}/cancel"

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    # a request is counted once its answer's last byte is sent: just after the client has it
    deadline = time.monotonic() + 5
    while True:
        after = scrape(server)
        chats = delta("pomar_requests_total", route=route, method="POST", status="200")
        cancels = delta("pomar_requests_total", route=jobs_route, method="POST", status="200")
        if (chats, cancels) == (3, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    seen = [u for u in usages if u is not None]
    assert len(seen) == 4
    completion = sum(u.completion_tokens for u in seen)
    prompt = sum(u.prompt_tokens for u in seen)
    details = [u.prompt_tokens_details for u in seen if u.prompt_tokens_details]
    cached = sum(d.cached_tokens or 0 for d in details)

    # requests by route template and status
    assert delta("pomar_requests_total", route=route, method="POST", status="200") == 3
    assert delta("pomar_requests_total", route=route, method="POST", status="404") == 1
    assert delta("pomar_requests_total", route="/v1/files", method="POST", status="200") == 1
    assert delta("pomar_requests_total", route=jobs_route, method="POST", status="200") == 1
    assert delta("pomar_request_duration_seconds_count", route=route, method="POST") == 4
    legacy_route = {"route": "/v1/completions", "method": "POST", "status": "200"}
    assert delta("pomar_requests_total", **legacy_route) == 1

    # tokens: as the usage the client saw
    assert completion > 0
    assert delta("pomar_generated_tokens_total", model=model) == completion
    assert delta("pomar_prompt_tokens_total", model=model) == prompt
    assert delta("pomar_prompt_cached_tokens_total", model=model) == cached
    assert cached > 0, "the repeated chat read its prompt from the prompt cache"

    # histograms: one first token per generating request, a gap before every later token
    answered = sum(1 for u in seen if u.completion_tokens)
    assert delta("pomar_time_to_first_token_seconds_count", model=model) == answered
    # a completion's first token has no gap before it (the legacy request has two)
    gaps = delta("pomar_inter_token_latency_seconds_count", model=model)
    assert 0 < gaps <= completion - answered - 1
    assert delta("pomar_inter_token_latency_seconds_sum", model=model) > 0

    # live gauges
    assert ("pomar_queue_depth", (("model", model),)) in after
    assert get(after, "pomar_running_sequences", model=model) == 0
    assert get(after, "pomar_model_memory_bytes", model=model, backend="mlx") > 0
    assert get(after, "process_resident_memory_bytes") > 0
    assert get(after, "pomar_fine_tuning_jobs", status="cancelled") == 1
    for status in ("validating_files", "queued", "running", "succeeded", "failed"):
        assert get(after, "pomar_fine_tuning_jobs", status=status) == 0


def test_metrics_need_the_key(server: LiveServer) -> None:
    refused = httpx.get(f"{server.base_url}/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    refusals = {"route": "/metrics", "method": "GET", "status": "401"}
    assert get(scrape(server), "pomar_requests_total", **refusals) >= 2
    # /health stays open
    assert httpx.get(f"{server.base_url}/health").status_code == 200
