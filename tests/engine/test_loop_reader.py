"""A runner's socket read by the event loop (`loop_reader`), as the server reads it.

The messages are cut from whatever the socket hands over; a runner's streams advanced on
the loop get the engine's own tokens; closing the engine from another thread, or the
runner dying mid-stream, leaves the loop watching nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import stream_chunks
from server.engine.loop_worker import LoopWorker
from server.engine.runner.loop_reader import Frames
from server.engine.runner.remote import EngineCrashed, RemoteEngine, runner_load

#: greedy, with each chunk's tokens kept (`top_logprobs`)
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)


def test_frames_cut_the_connections_messages_from_any_slicing() -> None:
    ours, theirs = socket.socketpair()
    sender = Connection(theirs.detach())
    messages = [b"", b"x", os.urandom(300), os.urandom(100_000), b"tail"]
    rng = random.Random(7)
    frames = Frames()
    got: list[bytes] = []
    ours.setblocking(False)
    for message in messages:
        sender.send_bytes(message)  # over 16 KiB: header and body in two writes
        while True:
            try:
                data = ours.recv(rng.randint(1, 5000))
            except BlockingIOError:
                break
            got += frames.feed(data)
    sender.close()
    ours.close()
    assert got == messages


def test_frames_read_the_long_header_of_a_message_over_2_gib() -> None:
    # the connection writes -1 then an 8-byte length past 2**31 - 1 bytes; a short body
    # under that header checks the reading without sending 2 GiB
    data = (-1).to_bytes(4, "big", signed=True) + (3).to_bytes(8, "big") + b"abc"
    frames = Frames()
    assert frames.feed(data[:7]) == []
    assert frames.feed(data[7:]) == [b"abc"]


async def loop_read(tiny_gguf_path: Path) -> RemoteEngine:
    load = runner_load("gguf", tiny_gguf_path.parent, {"max_batch_size": 4}, None, None)
    remote = RemoteEngine("tiny", load)
    return await asyncio.to_thread(remote.wait_ready, asyncio.get_running_loop())


def watched(fd: int) -> bool:
    """Whether the loop still watches descriptor `fd` (taking it off if it did)."""
    return asyncio.get_running_loop().remove_reader(fd)


async def test_a_loop_read_runners_streams_equal_the_engine_alone(
    tiny_gguf_path: Path, alone: tuple[list[list[int]], list[list[int]]]
) -> None:
    prompts, want = alone
    remote = await loop_read(tiny_gguf_path)
    fd = remote._conn.fileno()
    assert remote._loop_reader is not None  # no reader thread
    worker = LoopWorker("tiny", concurrency=4)

    async def one(prompt: list[int]) -> list[int]:
        def produce(should_stop: Callable[[], bool]) -> Iterator[Any]:
            return stream_chunks(remote, prompt, GREEDY, should_stop)

        return [s.token async for chunk in worker.stream(produce) for s in chunk.tokens]

    try:
        for _ in range(2):
            streams = asyncio.gather(*(one(p) for p in prompts))
            assert await asyncio.wait_for(streams, 120) == want  # a lost wake-up hangs
        # a call that waits for the runner, from another thread, is answered by the loop
        stats = await asyncio.wait_for(asyncio.to_thread(remote.stats), 30)
        assert stats["largest_batch"] > 1 and stats["runner_pid"] == remote.pid
    finally:
        worker.close()
        await asyncio.wait_for(asyncio.to_thread(remote.close), 60)
    assert remote._process.returncode == 0  # it ended because its socket closed
    assert not watched(fd)


async def test_a_loop_read_runner_dying_mid_stream_fails_it_and_is_no_longer_watched(
    tiny_gguf_path: Path,
) -> None:
    remote = await loop_read(tiny_gguf_path)
    fd = remote._conn.fileno()
    worker = LoopWorker("tiny")
    endless = GenerationParams(max_tokens=100_000, temperature=1.0, seed=1)
    prompt = list(remote.tokenizer.encode("Once upon a time", add_special_tokens=False))

    def produce(should_stop: Callable[[], bool]) -> Iterator[Any]:
        return stream_chunks(remote, prompt, endless, should_stop)

    got = 0
    try:
        with pytest.raises(EngineCrashed, match="SIGKILL"):
            async for chunk in worker.stream(produce):
                got += len(chunk.text)
                if got > 20:
                    os.kill(remote.pid, signal.SIGKILL)
        assert remote.crashed == "signal SIGKILL"
        assert not watched(fd)
    finally:
        worker.close()
        await asyncio.wait_for(asyncio.to_thread(remote.close), 60)
