"""How an SSE stream waits for its items (`server.routes.common._Interruptible`): the
server's shutdown interrupts the wait by cancelling into the items' generator, and the
task goes on to send the final event; a client going away still cancels it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.routes.common import _Interruptible, _ShuttingDown


class Items:
    """One item, then a wait that only a cancellation ends; records its closing."""

    def __init__(self) -> None:
        self.closed = False
        self.cancelled = False

    async def __call__(self) -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Event().wait()
            yield 2
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


def cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() if hasattr(task, "cancelling") else 0


async def first_item() -> tuple[asyncio.Future[None], Items, AsyncIterator[int], _Interruptible]:
    """A shutdown to come, the items, and their waiter, past the first item."""
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    items = Items()
    iterator = items()
    waiting = _Interruptible(stop)
    assert await waiting.next(iterator) == 1
    return stop, items, iterator, waiting


async def test_a_shutdown_while_waiting_cancels_into_the_generator() -> None:
    stop, items, iterator, waiting = await first_item()
    asyncio.get_running_loop().call_later(0.05, stop.set_result, None)
    with pytest.raises(_ShuttingDown):
        await waiting.next(iterator)
    assert items.cancelled and items.closed
    # the task's own cancellation is taken back: the final event can still be sent
    assert cancelling() == 0
    await asyncio.sleep(0.01)
    waiting.close()


async def test_a_shutdown_between_items_is_seen_at_the_next_one() -> None:
    stop, items, iterator, waiting = await first_item()
    stop.set_result(None)  # while "sending" item 1: nothing is cancelled
    await asyncio.sleep(0)
    assert not items.cancelled and cancelling() == 0
    with pytest.raises(_ShuttingDown):
        await waiting.next(iterator)
    assert not items.cancelled
    await iterator.aclose()
    assert items.closed
    waiting.close()


async def test_the_end_of_the_items_is_none() -> None:
    async def two() -> AsyncIterator[int]:
        yield 1
        yield 2

    waiting = _Interruptible(asyncio.get_running_loop().create_future())
    iterator = two()
    got = [await waiting.next(iterator) for _ in range(3)]
    assert got == [1, 2, None]
    waiting.close()


async def test_a_client_going_away_still_cancels() -> None:
    items = Items()
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        waiting = _Interruptible(stop)
        iterator = items()
        try:
            while await waiting.next(iterator) is not None:
                pass
        finally:
            waiting.close()

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert items.cancelled and items.closed
    assert stop.cancelled()  # close() stops watching for the shutdown


@pytest.mark.parametrize(
    "fields",
    [
        {"data": '{"choices":[{"delta":{"content":"h\\u00e9 \\n"}}]}'},
        {"data": "[DONE]"},
        {"data": ""},
        {"event": "response.output_text.delta", "data": '{"delta":"ü"}'},
        {"data": "two\nlines"},
        {"data": "cr\rlf\r\n"},
        {"event": "bad\nname", "data": "x"},
        {"event": "only"},
        {"data": "x", "id": "7"},
    ],
)
def test_an_events_bytes_are_what_sse_starlette_writes(fields: dict[str, str]) -> None:
    from sse_starlette import ServerSentEvent

    from server.routes.common import sse_bytes

    want = ServerSentEvent(**fields, sep="\n").encode()
    made = sse_bytes(fields)
    got = made if isinstance(made, bytes) else ServerSentEvent(**made, sep="\n").encode()
    assert got == want
    # the one-line data events (a token's) are written here, the rest left as they were
    assert isinstance(made, bytes) == (
        set(fields) <= {"data", "event"}
        and "data" in fields
        and not any(c in v for v in fields.values() for c in "\r\n")
    )
