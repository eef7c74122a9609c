"""Concurrent chat requests on a live MLX server: each answer as if it ran alone."""

from __future__ import annotations

import asyncio

import pytest
from live_server import LiveServer, async_client_for, client_for

QUESTIONS = ["hello there", "what is two plus two?", "tell me a story", "name a colour"]
LIMITS = [20, 7, 16, 11]

mlx_only = pytest.mark.parametrize("tiny_server", ["mlx"], indirect=True)


def alone(server: LiveServer) -> list[tuple[str, str]]:
    """Each question answered one after another (greedy): text and finish reason."""
    client = client_for(server)
    out = []
    for question, limit in zip(QUESTIONS, LIMITS, strict=True):
        answer = client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=limit,
        )
        choice = answer.choices[0]
        out.append((choice.message.content or "", choice.finish_reason))
    return out


async def stream_one(server: LiveServer, i: int, leave_after: int | None = None) -> tuple[str, str]:
    client = async_client_for(server)
    stream = await client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": QUESTIONS[i]}],
        temperature=0,
        max_tokens=LIMITS[i],
        stream=True,
    )
    text, finish, seen = "", "", 0
    async for chunk in stream:
        seen += 1
        if leave_after is not None and seen >= leave_after:
            await stream.close()  # the client disconnects mid-answer
            return text, "left"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@mlx_only
async def test_concurrent_streams_answer_as_if_alone(tiny_server: LiveServer) -> None:
    expected = alone(tiny_server)
    got = await asyncio.gather(*[stream_one(tiny_server, i) for i in range(4)])
    assert list(got) == expected


@mlx_only
async def test_a_disconnect_in_a_batch_of_four_leaves_the_rest(tiny_server: LiveServer) -> None:
    expected = alone(tiny_server)
    got = await asyncio.gather(
        stream_one(tiny_server, 0, leave_after=2), *[stream_one(tiny_server, i) for i in (1, 2, 3)]
    )
    assert got[0][1] == "left"
    assert list(got[1:]) == expected[1:]
    # and the server goes on serving
    assert alone(tiny_server) == expected
