"""Security properties of a real server (SECURITY.md): the API key, leaks, ids, CORS.

Two servers: one with an API key, bound to 0.0.0.0 and with CORS on for one origin; one
without a key, also on 0.0.0.0 (it must warn) and with CORS at its default (off).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import API_KEY, LiveServer
from starlette.routing import Route

from server.app import create_app
from server.settings import Settings

ORIGIN = "http://localhost:3000"
WARNING = "without an API key"
CANARY = "pomar-canary-3f1c9a"


def v1_routes() -> list[tuple[str, str]]:
    """(method, path) of every `/v1` route of the app, path parameters filled in.

    Taken from the app itself, so that a new route cannot be left out.
    """
    app = create_app(Settings(model="unused", home=Path("/nonexistent")))
    out = []
    for route in app.routes:
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        if not route.path.startswith("/v1"):
            continue
        path = re.sub(r"\{file_id\}", "file-" + "0" * 24, route.path)
        path = re.sub(r"\{[a-z_]+(:[a-z]+)?\}", "x", path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            out.append((method, path))
    return out


V1_ROUTES = v1_routes()


#: the only routes outside `/v1`, open without the key: they serve no user data
#: the console's page and its static files load without the key (its API calls carry it)
OPEN_ROUTES = {"/health", "/openapi.json", "/", "/console/{asset}"}
#: routes outside `/v1` behind the key all the same
KEYED_ROUTES = {"/metrics"}


def test_only_known_routes_are_outside_v1() -> None:
    app = create_app(Settings(model="unused", home=Path("/nonexistent")))
    outside = {r.path for r in app.routes if isinstance(r, Route) and not r.path.startswith("/v1")}
    known = OPEN_ROUTES | KEYED_ROUTES
    assert outside <= known, outside - known


def test_every_v1_route_is_enumerated() -> None:
    paths = {path for _, path in V1_ROUTES}
    assert "/v1/files/file-000000000000000000000000/content" in paths
    assert {"/v1/chat/completions", "/v1/models", "/v1/fine_tuning/jobs"} <= paths


@pytest.fixture(scope="module")
def keyed(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with an API key on a non-loopback address, CORS on for `ORIGIN`."""
    home = tmp_path_factory.mktemp("keyed-home")
    (home / "canary.txt").write_text(CANARY)  # beside the server's home
    server = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=home / "pomar",
        api_key=API_KEY,
        extra_args=["--host", "0.0.0.0", "--embedding-model", "none"],
        env={"POMAR_CORS_ORIGINS": ORIGIN},
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def open_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """No API key, on a non-loopback address, CORS at its default."""
    server = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=tmp_path_factory.mktemp("open-home"),
        extra_args=["--host", "0.0.0.0", "--embedding-model", "none"],
        env={"POMAR_CORS_ORIGINS": None},
    ).start()
    try:
        yield server
    finally:
        server.stop()


def raw_request(
    server: LiveServer, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A request whose target is sent exactly as written (no client-side normalization)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_envelope(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def assert_anthropic_envelope(body: Any) -> dict[str, Any]:
    """The Messages API's errors: `{"type": "error", "error": {"type", "message"}}`."""
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return dict(body["error"])


def assert_error_shape(path: str, body: Any) -> dict[str, Any]:
    """The error body of `path`'s wire: Anthropic's under /v1/messages, else OpenAI's."""
    if path.startswith("/v1/messages"):
        return assert_anthropic_envelope(body)
    return assert_envelope(body)


# -- the API key -------------------------------------------------------------------------

BAD_AUTH: dict[str, dict[str, str]] = {
    "none": {},
    "wrong-key": {"Authorization": "Bearer " + "x" * len(API_KEY)},
    "other-length": {"Authorization": "Bearer " + API_KEY + "-longer"},
    "prefix": {"Authorization": "Bearer " + API_KEY[:-1]},
    "empty-bearer": {"Authorization": "Bearer "},
    "no-scheme": {"Authorization": API_KEY},
    "basic": {"Authorization": "Basic " + API_KEY},
    "x-api-key-wrong": {"X-API-Key": "x" * len(API_KEY)},
    "x-api-key-empty": {"x-api-key": ""},
    "x-api-key-bearer": {"x-api-key": "Bearer " + API_KEY},
    "x-api-key-wrong-with-bearer-wrong": {"x-api-key": API_KEY[:-1], "Authorization": "Bearer x"},
    "non-ascii": {"Authorization": "Bearer clé-é"},
}


@pytest.mark.parametrize("auth", list(BAD_AUTH), ids=list(BAD_AUTH))
def test_every_v1_route_requires_the_key(keyed: LiveServer, auth: str) -> None:
    for method, path in V1_ROUTES:
        status, body = raw_request(keyed, method, path, BAD_AUTH[auth])
        assert status == 401, (method, path, status, body[:200])
        error = assert_error_shape(path, httpx.Response(401, content=body).json())
        if path.startswith("/v1/messages"):
            assert error["type"] == "authentication_error"
        else:
            assert error["code"] == "invalid_api_key"


def test_the_key_opens_the_routes_and_health_stays_open(keyed: LiveServer) -> None:
    assert httpx.get(f"{keyed.base_url}/health").status_code == 200
    for method, path in V1_ROUTES:
        status, _ = raw_request(keyed, method, path, {"Authorization": f"Bearer {API_KEY}"})
        assert status != 401, (method, path)
        # Anthropic's clients send the key as x-api-key, on every route alike
        status, _ = raw_request(keyed, method, path, {"x-api-key": API_KEY})
        assert status != 401, (method, path)
    status, _ = raw_request(keyed, "GET", "/v1/models", {"Authorization": f"bearer {API_KEY}"})
    assert status == 200  # the scheme is case-insensitive (RFC 7235)


@pytest.mark.parametrize("target", ["/metrics", "/metrics/", "//metrics", "/%6detrics", "/METRICS"])
def test_metrics_need_the_key_however_spelled(keyed: LiveServer, target: str) -> None:
    status, body = raw_request(keyed, "GET", target)
    assert status in (401, 404, 307), (target, status, body[:200])
    assert b"pomar_" not in body
    if status == 401:
        assert httpx.Response(401, content=body).json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models",
        "//v1/models",
        "/%761/models",
        "/v1%2Fmodels",
        "/./v1/models",
        "/x/../v1/models",
        "/V1/models",
        "/v1/files/file-000000000000000000000000/content",
        "/v1/files/../files",
        "/v1",
        "/v1/",
    ],
)
def test_no_path_spelling_gets_past_the_key(keyed: LiveServer, target: str) -> None:
    status, body = raw_request(keyed, "GET", target)
    assert status in (401, 404), (target, status, body[:200])
    if status == 404:  # not a route at all: nothing was served
        assert b'"object"' not in body


# -- no internals in errors ----------------------------------------------------------------

LEAK_MARKERS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|(Key|Value|Type|Attribute|Runtime|OS|IO|Index|"
    r"Recursion|UnicodeDecode|FileNotFound|Permission|NotADirectory|IsADirectory)Error|"
    r"Exception\b|sqlite|pydantic\.|errors\.pydantic"
)


def assert_no_leak(server: LiveServer, response: httpx.Response) -> None:
    text = response.text
    assert str(server.home) not in text, text
    assert CANARY not in text, text
    assert not LEAK_MARKERS.search(text), text


def _error_paths(model: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    msg = [{"role": "user", "content": "hi"}]
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for bad_model in [
        "nope",
        "/etc/passwd",
        "../../x",
        "../canary.txt",
        "/",
        ".",
        "~",
        "file:///etc/passwd",
        "C:\\Windows",
        "models/../../canary.txt",
    ]:
        out.append(("POST", "/v1/chat/completions", {"model": bad_model, "messages": msg}))
        out.append(("POST", "/v1/completions", {"model": bad_model, "prompt": "x"}))
        out.append(("POST", "/v1/embeddings", {"model": bad_model, "input": "x"}))
        anthropic = {"model": bad_model, "messages": msg, "max_tokens": 1}
        out.append(("POST", "/v1/messages", anthropic))
        out.append(("POST", "/v1/messages/count_tokens", {"model": bad_model, "messages": msg}))
        if bad_model not in (".", "/"):  # URL spellings a client normalizes away
            out.append(("GET", f"/v1/models/{bad_model}", None))
            out.append(("DELETE", f"/v1/models/{bad_model}", None))
        out.append(
            (
                "POST",
                "/v1/fine_tuning/jobs",
                {"model": bad_model, "training_file": "file-" + "0" * 24},
            )
        )
        out.append(("POST", "/v1/fine_tuning/jobs", {"model": model, "training_file": bad_model}))
    out += [
        ("GET", "/v1/files/file-000000000000000000000000", None),
        ("GET", "/v1/files?after=../../x", None),
        ("GET", "/v1/fine_tuning/jobs/ftjob-nope", None),
        ("GET", "/v1/fine_tuning/jobs?limit=" + "9" * 5000, None),
        ("POST", "/v1/chat/completions", {"model": model, "messages": "x"}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": msg, "n": 10**6}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "y " * 5000}]},
        ),
        ("PUT", "/v1/models", None),
        ("GET", "/v1/nothing-here", None),
    ]
    return out


def test_errors_carry_no_internals(keyed: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=keyed.base_url, headers=headers, timeout=60) as client:
        for method, path, body in _error_paths(keyed.model):
            r = client.request(method, path, json=body)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
            assert_error_shape(path, r.json())
            assert_no_leak(keyed, r)
        for content in [b"{", b'{"a": "\xff"}', b"[" * 50_000, b"9" * 5000]:
            r = client.post("/v1/chat/completions", content=content)
            assert r.status_code == 400
            assert_no_leak(keyed, r)
    assert "Traceback" not in keyed.log()


# -- file ids never address anything outside the store ------------------------------------

FILE_IDS = [
    "file-../../etc/passwd",
    "file-..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2Fcanary.txt",
    "..%2Fcanary.txt",
    "%2E%2E%2Fcanary.txt",
    "..%5C..%5Ccanary.txt",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "file-%00",
    "file-" + "0" * 23 + "%00",
    "pomar.db",
    "..",
    ".incoming",
    "file-" + "a" * 5000,
    "f" * 3000,
]


@pytest.mark.parametrize("file_id", FILE_IDS, ids=[f[:40] for f in FILE_IDS])
def test_file_ids_cannot_leave_the_store(keyed: LiveServer, file_id: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for method, suffix in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        status, body = raw_request(keyed, method, f"/v1/files/{file_id}{suffix}", headers)
        assert status in (400, 404), (file_id, suffix, status, body[:200])
        error = assert_envelope(httpx.Response(status, content=body).json())
        assert error["type"] == "invalid_request_error"
        assert CANARY.encode() not in body and b"root:" not in body
        assert str(keyed.home).encode() not in body
    # the database and the canary are still there, untouched
    assert (keyed.home / "pomar.db").is_file()
    assert (keyed.home.parent / "canary.txt").read_text() == CANARY


# -- binding to a non-loopback address -----------------------------------------------------


def test_non_loopback_without_a_key_warns(open_server: LiveServer) -> None:
    log = open_server.log()
    assert WARNING in log and "0.0.0.0" in log, log[-2000:]
    assert re.search(r"WARNING .*without an API key", log)


def test_non_loopback_with_a_key_does_not_warn(keyed: LiveServer) -> None:
    assert WARNING not in keyed.log()


# -- CORS ------------------------------------------------------------------------------------


def test_cors_is_off_by_default(open_server: LiveServer) -> None:
    r = httpx.get(f"{open_server.base_url}/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    preflight = httpx.options(
        f"{open_server.base_url}/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_preflight_passes_before_the_key_check(keyed: LiveServer) -> None:
    preflight = httpx.options(
        f"{keyed.base_url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    # the real request: answered with the allow header, with or without the key
    ok = httpx.get(
        f"{keyed.base_url}/v1/models",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {API_KEY}"},
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.get(f"{keyed.base_url}/v1/models", headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # readable by the page


def test_cors_other_origins_get_no_allow_header(keyed: LiveServer) -> None:
    other = "http://evil.example"
    preflight = httpx.options(
        f"{keyed.base_url}/v1/chat/completions",
        headers={"Origin": other, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code >= 400
    assert preflight.headers.get("access-control-allow-origin") != other
    assert "access-control-allow-origin" not in preflight.headers or (
        preflight.headers["access-control-allow-origin"] == ORIGIN
    )
    r = httpx.get(
        f"{keyed.base_url}/v1/models",
        headers={"Origin": other, "Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
