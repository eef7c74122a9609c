"""`POST /v1/embeddings` on a real server: the embedded all-MiniLM-L6-v2, driven by the SDK."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from live_server import API_KEY, LiveServer, async_client_for, client_for
from starlette.testclient import TestClient

from server.app import create_app
from server.engine.mlx.backend import MLXEngine
from server.settings import Settings

MODEL = "all-minilm-l6-v2"
HELLO_WORLD_IDS = [7592, 2088]  # "hello world" in the model's (bert-base-uncased) vocabulary
CAT, KITTEN, RATES = (
    "The cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The central bank raised interest rates by half a point.",
)


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny chat model on MLX (so torch arrives only with the embedding model), with a key."""
    home = tmp_path_factory.mktemp("embeddings-home")
    live = LiveServer(model=str(tiny_model_path), backend="mlx", home=home, api_key=API_KEY)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return client_for(server)


def vectors(client: openai.OpenAI, inputs: object, **kw: object) -> np.ndarray:
    out = client.embeddings.create(model=MODEL, input=inputs, encoding_format="float", **kw)  # type: ignore[arg-type]
    return np.array([d.embedding for d in out.data], dtype=np.float32)


def test_one_string_gives_one_unit_vector(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert out.object == "list" and out.model == MODEL and len(out.data) == 1
    item = out.data[0]
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == 384 and all(isinstance(x, float) for x in item.embedding)
    assert abs(np.linalg.norm(item.embedding) - 1.0) < 1e-5  # the model normalizes
    assert out.usage.prompt_tokens == out.usage.total_tokens == 2


def test_list_keeps_order_and_is_deterministic(client: openai.OpenAI) -> None:
    batch = vectors(client, [CAT, KITTEN, RATES])
    out = client.embeddings.create(model=MODEL, input=[CAT, KITTEN, RATES])
    assert [d.index for d in out.data] == [0, 1, 2]
    for i, text in enumerate([CAT, KITTEN, RATES]):
        np.testing.assert_allclose(vectors(client, text)[0], batch[i], atol=1e-5)
    np.testing.assert_array_equal(vectors(client, [CAT, KITTEN, RATES]), batch)


def test_cosine_similarity_puts_the_same_topic_closer(client: openai.OpenAI) -> None:
    cat, kitten, rates = vectors(client, [CAT, KITTEN, RATES])
    same, other = float(cat @ kitten), max(float(cat @ rates), float(kitten @ rates))
    assert same > 0.5 > other, (same, other)


def test_sdk_default_asks_for_base64_and_decodes_it_to_the_float_vectors(
    client: openai.OpenAI,
) -> None:
    floats = vectors(client, [CAT, RATES])
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=[CAT, RATES])
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    wire = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(wire, str)  # base64 of little-endian float32
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(wire), "<f4"), floats[0])
    decoded = np.array([d.embedding for d in raw.parse().data], dtype=np.float32)
    np.testing.assert_array_equal(decoded, floats)  # exactly: floats are float32 values too
    explicit = client.embeddings.create(model=MODEL, input=CAT, encoding_format="base64")
    assert isinstance(explicit.data[0].embedding, str)  # asked for explicitly: left as is


def test_token_id_inputs_embed_like_their_text(client: openai.OpenAI) -> None:
    text = vectors(client, "hello world")[0]
    one = client.embeddings.create(model=MODEL, input=HELLO_WORLD_IDS, encoding_format="float")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 2
    np.testing.assert_allclose(one.data[0].embedding, text, atol=1e-5)
    long = client.embeddings.create(model=MODEL, input=[7592] * 3000)  # one input, 3000 ids
    assert len(long.data) == 1 and long.usage.prompt_tokens == 254  # truncated to the window
    many = vectors(client, [HELLO_WORLD_IDS, [7592]])
    np.testing.assert_allclose(many[0], text, atol=1e-5)
    assert many.shape == (2, 384)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=[10**7])
    assert err.value.status_code == 400 and "vocabulary" in err.value.message


def test_usage_counts_tokens_up_to_the_window(client: openai.OpenAI) -> None:
    two = client.embeddings.create(model=MODEL, input=["hello world", "hello"])
    assert two.usage.prompt_tokens == two.usage.total_tokens == 3
    long = client.embeddings.create(model=MODEL, input="word " * 1000)
    assert long.usage.prompt_tokens == 254  # truncated: 256-token window less [CLS], [SEP]


def test_dimensions(client: openai.OpenAI) -> None:
    assert vectors(client, "hello", dimensions=384).shape == (1, 384)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="hello", dimensions=100)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "dimensions"
    assert body["type"] == "invalid_request_error" and "384" in body["message"]


@pytest.mark.parametrize("bad", ["", [], ["fine", ""], [[]], ["x"] * 2049])
def test_empty_or_oversized_input_is_a_400(client: openai.OpenAI, bad: object) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=bad)  # type: ignore[arg-type]
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "input"


def test_openai_model_names_are_not_aliased(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert MODEL in body["message"]  # says which model to use instead


def test_listed_in_models_but_refused_for_chat(client: openai.OpenAI, server: LiveServer) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [server.model, MODEL]  # the chat model stays first
    card = client.models.retrieve(MODEL)
    assert card.owned_by == "pomar" and card.object == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "model"
    assert "embedding model" in body["message"]


def test_needs_the_api_key(server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def test_async_client_concurrently_with_chat(
    client: openai.OpenAI, server: LiveServer
) -> None:
    """Embeddings run on their own worker: concurrent requests and a chat all complete."""
    texts = [CAT, KITTEN, RATES, "hello world"]
    expected = vectors(client, texts)
    async with async_client_for(server) as aclient:
        chat = aclient.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        embeds = [aclient.embeddings.create(model=MODEL, input=t) for t in texts]
        reply, *outs = await asyncio.gather(chat, *embeds)
    assert reply.choices[0].finish_reason in ("stop", "length")
    got = np.array([o.data[0].embedding for o in outs], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embedding_model_none_turns_the_endpoint_off(tiny_model_path: Path, tmp_path: Path) -> None:
    settings = Settings(model="tiny", home=tmp_path, embedding_model="none")
    with TestClient(create_app(settings, engine=MLXEngine(tiny_model_path))) as c:
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny"]
