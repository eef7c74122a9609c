"""Chat `logprobs` / `top_logprobs` through a real server, on both backends (tiny model)."""

from __future__ import annotations

import math

import openai
import pytest
from live_server import LiveServer, client_for

HELLO = [{"role": "user", "content": "hello there, how are you?"}]


def ask(client: openai.OpenAI, **kw: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=HELLO,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        **kw,  # type: ignore[arg-type]
    )


def test_logprobs_shape_and_values(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = ask(client, logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == out.usage.completion_tokens  # type: ignore[union-attr]
    # the bytes of the tokens spell the message (the random model may emit broken UTF-8)
    spelled = bytes(b for t in content for b in t.bytes or []).decode(errors="replace")
    assert spelled == choice.message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        values = [alt.logprob for alt in t.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0.0 for v in values)
        # greedy: the sampled token is the most likely one
        assert t.top_logprobs[0].token == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-5)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4


def test_logprobs_without_top_and_off_by_default(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    plain = ask(client)
    assert plain.choices[0].logprobs is None
    out = ask(client, logprobs=True)
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(t.top_logprobs == [] for t in content)
    # asking for logprobs does not change what is sampled
    assert out.choices[0].message.content == plain.choices[0].message.content


def test_streamed_logprobs_match_non_streamed(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    whole = ask(client, logprobs=True, top_logprobs=2).choices[0].logprobs.content  # type: ignore[union-attr]
    streamed = []
    for chunk in client.chat.completions.create(
        model=tiny_server.model,
        messages=HELLO,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    ):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert whole is not None
    assert [t.token for t in streamed] == [t.token for t in whole]
    for a, b in zip(streamed, whole, strict=True):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ],
)
def test_bad_logprobs_requests(tiny_server: LiveServer, kw: dict[str, object], param: str) -> None:
    client = client_for(tiny_server)
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, **kw)
    body = err.value.body
    assert isinstance(body, dict) and body.get("param") == param
