"""The runner's socket read by the event loop itself, not by a reader thread.

With a reader thread every token from the runner wakes two threads of the server (the
reader, which then wakes the event loop); read by the loop it wakes one. On a 2-core
machine each wake-up is taken from the cores llama.cpp's threads hold (docs/benchmarks.md
measures what this saves one stream).

`multiprocessing.connection.Connection` only reads whole messages, blocking, so the loop
reads what the socket has and cuts it into messages itself (`Frames`, the connection's
own framing: a 4-byte big-endian signed length, or -1 and an 8-byte length).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

#: bytes read at once when the socket is readable (a token's message is ~60)
_READ = 1 << 18


class Frames:
    """Cuts a byte stream written by `Connection.send_bytes` into its messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take `data`; return the messages it completed, in order."""
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        while len(buffer) >= 4:
            size, header = int.from_bytes(buffer[:4], "big", signed=True), 4
            if size == -1:  # over 2 GiB: the length follows in 8 bytes
                if len(buffer) < 12:
                    break
                size, header = int.from_bytes(buffer[4:12], "big"), 12
            if len(buffer) < header + size:
                break
            out.append(bytes(buffer[header : header + size]))
            del buffer[: header + size]
        return out


class LoopReader:
    """Reads descriptor `fd` on `loop`: each message goes to `deliver` (on the loop's
    thread); at the end of the stream (the runner closed it or died) `ended` runs on a
    thread of its own, as it may wait for the process."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        deliver: Callable[[bytes], None],
        ended: Callable[[], None],
    ) -> None:
        self._loop, self._fd = loop, fd
        self._deliver, self._ended = deliver, ended
        self._frames = Frames()
        self._detached = threading.Event()
        self._thread: int | None = None

    def attach(self) -> None:
        """Start reading (call on the loop's thread, or through `call_soon_threadsafe`)."""
        self._thread = threading.get_ident()
        self._loop.add_reader(self._fd, self._readable)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, from any thread, before the descriptor is closed: the loop must
        not watch a closed descriptor (its number is reused). Waits up to `timeout` for
        the loop to take the reader off; a loop that no longer runs is not waited for."""
        if self._detached.is_set():
            return
        loop = self._loop
        if loop.is_closed() or not loop.is_running() or threading.get_ident() == self._thread:
            self._detach()
            return
        loop.call_soon_threadsafe(self._detach)
        self._detached.wait(timeout)

    def _detach(self) -> None:
        if not self._detached.is_set():
            with contextlib.suppress(Exception):  # a closed loop holds no readers anymore
                self._loop.remove_reader(self._fd)
            self._detached.set()

    def _readable(self) -> None:
        try:
            # readable: the read returns what is there, without blocking
            data = os.read(self._fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._detach()
            threading.Thread(target=self._ended, name="runner-ended", daemon=True).start()
            return
        for message in self._frames.feed(data):
            self._deliver(message)
