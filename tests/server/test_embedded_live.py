"""The embedded SmolLM2 model, served by `pomar serve` with no --model, on the default backend."""

from __future__ import annotations

import time

import httpx
import pytest
from live_server import LiveServer, async_client_for, client_for

from tests.prompts import PARIS_QUESTION

pytestmark = pytest.mark.slow

# "Which city": with "What is" the first two tokens are 0.1 logit apart and the Q4_1
# GGUF that auto serves on a CPU-only machine picks the other one
PARIS = [{"role": "user", "content": PARIS_QUESTION}]


def test_embedded_model_says_paris(embedded_server: LiveServer) -> None:
    client = client_for(embedded_server)
    ids = [m.id for m in client.models.list().data]
    # the start model first; the session's store may also hold fine-tunes of it
    assert ids[0] == "smollm2-135m-instruct" and ids[-1] == "all-minilm-l6-v2"
    out = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=PARIS,
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type]
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason == "stop"  # it ends its turn by itself


def test_server_log_says_backend_and_blas(embedded_server: LiveServer) -> None:
    health = httpx.get(f"{embedded_server.base_url}/health").json()
    log = embedded_server.log()
    assert f"backend: {health['backend']}" in log
    if health["backend"] == "mlx":
        assert "OpenBLAS preloaded" in log or "OpenBLAS not found" in log


def test_streamed_answer_equals_whole_answer(embedded_server: LiveServer) -> None:
    client = client_for(embedded_server)
    whole = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=PARIS,
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type]
    )
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=PARIS,
        temperature=0,
        max_tokens=20,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content


async def test_disconnect_mid_stream_frees_the_worker(embedded_server: LiveServer) -> None:
    """A long stream is abandoned after a few chunks; the next request must not wait for it.

    Left running, the abandoned request would generate 1,500 tokens (over a minute on
    this CPU); a freed worker serves the next short request in a few seconds.
    """
    client = async_client_for(embedded_server)
    long_request = [{"role": "user", "content": "Write a very long story about a dragon."}]
    stream = await client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=long_request,  # type: ignore[arg-type]
        max_tokens=1500,
        temperature=0.8,
        stream=True,
    )
    received = 0
    async for _chunk in stream:
        received += 1
        if received >= 3:
            break
    await stream.close()
    started = time.monotonic()
    out = await client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=PARIS,
        temperature=0,
        max_tokens=8,  # type: ignore[arg-type]
    )
    waited = time.monotonic() - started
    assert out.choices[0].message.content
    assert waited < 30, (
        f"the next request waited {waited:.0f}s: the abandoned stream kept the worker"
    )
    await client.close()
