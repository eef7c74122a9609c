"""The server's side of a runner (`RemoteEngine`) routes what the runner sends.

Several streams interleaved on one thread (as the generation worker runs them), while
another thread calls the runner at the same time, each get their own items, in order.
"""

from __future__ import annotations

import threading

from server.engine.base import GenerationParams
from server.engine.generation import interleave, stream_chunks
from server.engine.runner.remote import RemoteEngine

#: greedy, each chunk's tokens kept (`top_logprobs`), as the `alone` fixture's
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)
NEVER = lambda: False  # noqa: E731


def test_interleaved_streams_and_calls_from_other_threads_get_their_own_items(
    remote: RemoteEngine, alone: tuple[list[list[int]], list[list[int]]]
) -> None:
    prompts, want = alone

    stats: list[dict[str, int]] = []
    stop = threading.Event()

    def ask() -> None:  # another thread's calls while the streams decode
        while not stop.is_set():
            stats.append(remote.stats())

    caller = threading.Thread(target=ask)
    caller.start()
    try:
        for _ in range(2):
            streams = [stream_chunks(remote, p, GREEDY, NEVER) for p in prompts]
            got: list[list[int]] = [[] for _ in prompts]
            for index, chunk in interleave(streams):
                got[index].extend(s.token for s in chunk.tokens)
            assert got == want
    finally:
        stop.set()
        caller.join(timeout=30)
    assert stats and all(s["runner_pid"] == remote.pid for s in stats)
    assert max(s["largest_batch"] for s in stats) > 1  # the streams did decode together
    assert remote.crashed is None
