"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine.runner.remote import RemoteEngine, runner_load


@pytest.fixture(scope="module")
def remote(tiny_gguf_path: Path) -> Iterator[RemoteEngine]:
    """The tiny GGUF model's engine in a runner process (batches of up to 4)."""
    load = runner_load("gguf", tiny_gguf_path.parent, {"max_batch_size": 4}, None, None)
    engine = RemoteEngine("tiny", load).wait_ready()
    yield engine
    engine.close()
