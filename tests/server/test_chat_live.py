"""Chat completions through a real uvicorn server, driven by the official `openai` SDK.

Every test here runs once per backend (MLX and torch) on the tiny model.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from live_server import LiveServer, async_client_for, client_for

HELLO = [{"role": "user", "content": "hello there, how are you?"}]


def greedy(
    client: openai.OpenAI, max_tokens: int, **kw: object
) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=kw.pop("model", None) or client.models.list().data[0].id,  # type: ignore[arg-type]
        messages=HELLO,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,
        **kw,  # type: ignore[arg-type]
    )


def test_models_list_and_get(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    models = client.models.list().data
    # the chat model first (loaded), the session store's models, the embedding model last
    ids = [m.id for m in models]
    assert ids[0] == tiny_server.model and ids[-1] == "all-minilm-l6-v2"
    assert len(set(ids)) == len(ids)
    assert models[0].object == "model" and models[0].owned_by == "pomar"
    assert getattr(models[0], "loaded", None) is True
    for model_id in ids:
        assert client.models.retrieve(model_id).id == model_id


def test_non_streaming_completion_shape(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = greedy(client, 8)
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    assert out.model == tiny_server.model and out.created > 0
    assert out.system_fingerprint and out.system_fingerprint.startswith("fp_")
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + 8
    # prompt tokens are counted with the real tokenizer over the rendered ChatML prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_server.model)
    prompt = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))


def test_streaming_matches_non_streaming(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    whole = greedy(client, 12).choices[0].message.content
    stream = client.chat.completions.create(
        model=tiny_server.model,
        messages=HELLO,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["length"]
    # include_usage: one last chunk with no choices and the usage
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage_chunk(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    chunks = list(
        client.chat.completions.create(
            model=tiny_server.model,
            messages=HELLO,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_raw_sse_ends_with_done(tiny_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {tiny_server.api_key}"} if tiny_server.api_key else {}
    body = {"model": tiny_server.model, "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", f"{tiny_server.base_url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert len(data) >= 3


def test_max_tokens_gives_length_and_max_completion_tokens_wins(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = greedy(client, 30, max_completion_tokens=5)
    assert out.usage is not None and out.usage.completion_tokens == 5
    assert out.choices[0].finish_reason == "length"


def test_stop_sequence_across_token_boundaries(tiny_server: LiveServer) -> None:
    """Find where the streamed text is cut between tokens, stop on a string spanning it."""
    client = client_for(tiny_server)
    full = greedy(client, 24).choices[0].message.content or ""
    # text after k tokens is a prefix of the full greedy text: its lengths are boundaries
    cuts = sorted({len(greedy(client, k).choices[0].message.content or "") for k in range(2, 12)})
    boundary = next(
        b for b in cuts if 2 <= b <= len(full) - 2 and full.find(full[b - 2 : b + 2]) == b - 2
    )
    stop = full[boundary - 2 : boundary + 2]
    out = greedy(client, 24, stop=[stop, "\x00never"])
    assert out.choices[0].message.content == full[: boundary - 2]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=tiny_server.model,
        messages=HELLO,
        temperature=0,
        max_tokens=24,
        stop=stop,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full[: boundary - 2]
    assert stop not in text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)

    def sample(seed: int) -> str:
        out = client.chat.completions.create(
            model=tiny_server.model,
            messages=HELLO,
            temperature=1.0,
            max_tokens=16,
            seed=seed,  # type: ignore[arg-type]
        )
        return out.choices[0].message.content or ""

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_n_choices(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = client.chat.completions.create(
        model=tiny_server.model,
        messages=HELLO,
        n=3,
        max_tokens=6,
        seed=11,
        temperature=1.0,  # type: ignore[arg-type]
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) > 1
    assert out.usage is not None and out.usage.completion_tokens == 18
    chunks = list(
        client.chat.completions.create(
            model=tiny_server.model,
            messages=HELLO,
            n=2,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
    )
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_content_parts_and_system_message(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello there, "},
                {"type": "text", "text": "how are you?"},
            ],
        },
    ]
    as_parts = client.chat.completions.create(
        model=tiny_server.model,
        messages=messages,
        temperature=0,
        max_tokens=6,  # type: ignore[arg-type]
    )
    as_string = client.chat.completions.create(
        model=tiny_server.model,
        messages=[messages[0], {"role": "user", "content": "hello there, how are you?"}],  # type: ignore[list-item]
        temperature=0,
        max_tokens=6,
    )
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content


def test_penalties_and_logit_bias_are_honoured(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    plain = greedy(client, 10).choices[0].message.content
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_server.model)
    # forbid the first greedy token: the completion must change
    first = tok.encode(plain, add_special_tokens=False)[0]
    biased = greedy(client, 10, logit_bias={str(first): -100}).choices[0].message.content
    assert biased != plain
    penalized = greedy(client, 10, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalized.usage is not None and penalized.usage.completion_tokens == 10


async def test_async_client_concurrent_requests_queue_fifo(tiny_server: LiveServer) -> None:
    client = async_client_for(tiny_server)
    results = await asyncio.gather(
        *[
            client.chat.completions.create(
                model=tiny_server.model,
                messages=HELLO,
                temperature=0,
                max_tokens=5,  # type: ignore[arg-type]
            )
            for _ in range(4)
        ]
    )
    texts = {r.choices[0].message.content for r in results}
    assert len(texts) == 1  # same greedy answer for every queued request
    stream = await client.chat.completions.create(
        model=tiny_server.model,
        messages=HELLO,
        temperature=0,
        max_tokens=5,
        stream=True,  # type: ignore[arg-type]
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == texts.pop()
    await client.close()


def test_backends_agree_greedily(tiny_server: LiveServer) -> None:
    """Every backend serves the same fp32 weights (the GGUF engine an f32 GGUF of them):
    the same greedy text, recorded per backend and compared with those run before."""
    text = greedy(client_for(tiny_server), 16).choices[0].message.content
    _GREEDY[tiny_server.backend] = text or ""
    assert len(set(_GREEDY.values())) == 1, _GREEDY


_GREEDY: dict[str, str] = {}


@pytest.mark.parametrize("tiny_server", ["mlx"], indirect=True)
@pytest.mark.parametrize("bad_key", [None, "wrong-key"])
def test_api_key_required_when_set(tiny_server: LiveServer, bad_key: str | None) -> None:
    assert tiny_server.api_key is not None  # the MLX tiny server is started with a key
    headers = {"Authorization": f"Bearer {bad_key}"} if bad_key else {}
    r = httpx.get(f"{tiny_server.base_url}/v1/models", headers=headers)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{tiny_server.base_url}/v1", api_key="nope", max_retries=0
        ).models.list()
    assert httpx.get(f"{tiny_server.base_url}/health").status_code == 200
