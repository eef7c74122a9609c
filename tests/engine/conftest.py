"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import complete
from server.engine.gguf.backend import GGUFEngine
from server.engine.runner.remote import RemoteEngine, runner_load

#: greedy, each chunk's tokens kept (`top_logprobs`): what the runner tests compare
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)


@pytest.fixture(scope="module")
def remote(tiny_gguf_path: Path) -> Iterator[RemoteEngine]:
    """The tiny GGUF model's engine in a runner process (batches of up to 4)."""
    load = runner_load("gguf", tiny_gguf_path.parent, {"max_batch_size": 4}, None, None)
    engine = RemoteEngine("tiny", load).wait_ready()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def alone(tiny_gguf_path: Path) -> tuple[list[list[int]], list[list[int]]]:
    """Four prompts and the greedy token ids the tiny GGUF engine gives each alone."""
    local = GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, max_batch_size=1)
    texts = ["Once upon a time", "The cat sat", "1 2 3 4", "hello there"]
    prompts = [list(local.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    want = [[s.token for s in complete(local, p, GREEDY, lambda: False).tokens] for p in prompts]
    assert all(want)  # tokens kept, so the comparisons are not of empty lists
    return prompts, want
