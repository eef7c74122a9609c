"""Bad input gets the OpenAI error envelope with the right status, type, code and param."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from live_server import LiveServer, client_for
from starlette.testclient import TestClient

from server.app import create_app
from server.engine.mlx.backend import MLXEngine
from server.settings import Settings

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(model="tiny", home=tmp_path_factory.mktemp("home"))
    app = create_app(settings, engine=MLXEngine(tiny_model_path))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


def test_malformed_json(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [',
        headers={"content-type": "application/json"},
    )
    err = error_of(r, 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


def test_body_not_an_object(client: TestClient) -> None:
    err = error_of(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert err["type"] == "invalid_request_error"


def test_missing_messages(client: TestClient) -> None:
    err = error_of(client.post("/v1/chat/completions", json={"model": "tiny"}), 400)
    assert err["param"] == "messages" and err["type"] == "invalid_request_error"


def test_empty_messages(client: TestClient) -> None:
    err = error_of(client.post("/v1/chat/completions", json={"model": "tiny", "messages": []}), 400)
    assert err["param"] == "messages"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", 2.5, "temperature"),
        ("temperature", -0.1, "temperature"),
        ("temperature", "hot", "temperature"),
        ("top_p", 1.5, "top_p"),
        ("max_tokens", 0, "max_tokens"),
        ("max_tokens", "ten", "max_tokens"),
        ("n", 0, "n"),
        ("presence_penalty", 3, "presence_penalty"),
        ("stop", ["a", "b", "c", "d", "e"], "stop"),
        ("logit_bias", {"abc": 1}, "logit_bias"),
        ("logit_bias", {"5": 500}, "logit_bias"),
        ("messages", [{"role": "wizard", "content": "x"}], "messages[0].role"),
        ("messages", [{"content": "x"}], "messages[0].role"),
        ("messages", [{"role": "user", "content": 42}], "messages[0].content"),
        ("messages", [{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
        ("stream_options", {"include_usage": True}, "stream_options"),
    ],
)
def test_wrong_values(client: TestClient, field: str, value: Any, param: str) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": MSG, field: value}
    err = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
    ],
)
def test_unsupported_parameter_named(client: TestClient, param: str, value: Any) -> None:
    body = {"model": "tiny", "messages": MSG, param: value}
    err = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["code"] == "unsupported_parameter"


def test_off_values_of_unsupported_parameters_and_unknown_fields_are_accepted(
    client: TestClient,
) -> None:
    body = {
        "model": "tiny",
        "messages": MSG,
        "max_tokens": 2,
        "logprobs": False,
        "response_format": {"type": "text"},
        "tools": [],
        "some_vendor_field": {"x": 1},
        "user": "u-1",
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_unknown_model(client: TestClient) -> None:
    err = error_of(
        client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}), 404
    )
    assert err["code"] == "model_not_found" and err["param"] == "model"
    err = error_of(client.get("/v1/models/gpt-9"), 404)
    assert err["code"] == "model_not_found"


def test_n_above_server_limit(client: TestClient) -> None:
    err = error_of(
        client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "n": 99}), 400
    )
    assert err["param"] == "n"


def test_logit_bias_outside_vocabulary(client: TestClient) -> None:
    body = {"model": "tiny", "messages": MSG, "logit_bias": {"99999999": 5}}
    err = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == "logit_bias"


def test_context_length_exceeded(client: TestClient) -> None:
    long = [{"role": "user", "content": "word " * 5000}]
    err = error_of(
        client.post("/v1/chat/completions", json={"model": "tiny", "messages": long}), 400
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    err = error_of(client.get("/v1/nothing-here"), 404)
    assert err["type"] == "invalid_request_error"
    err = error_of(client.get("/v1/chat/completions"), 405)
    assert err["type"] == "invalid_request_error"


def test_no_api_key_needed_when_unset(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_errors_through_the_sdk(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]
    assert not_found.value.status_code == 404 and not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=tiny_server.model, messages=MSG, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(
            model=tiny_server.model,
            messages=MSG,  # type: ignore[arg-type]
            extra_body={"functions": [{"name": "f", "parameters": {}}]},
        )
    assert unsupported.value.param == "functions"
