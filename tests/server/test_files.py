"""`/v1/files` in process: upload checks, size cap, errors, listing, content, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types import FileDeleted, FileObject
from starlette.testclient import TestClient

from server.app import create_app
from server.engine.mlx.backend import MLXEngine
from server.services.files import WRITE_CHUNK_BYTES, FileService
from server.settings import Settings
from server.store import Store

CAP = 4096
GOOD = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client(engine: MLXEngine, home: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model="tiny", home=home, max_upload_bytes=CAP), engine=engine)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def upload(
    client: TestClient, content: bytes, purpose: str | None = "fine-tune", name: str = "train.jsonl"
) -> Any:
    data = {} if purpose is None else {"purpose": purpose}
    return client.post("/v1/files", files={"file": (name, content)}, data=data)


def raw_upload(client: TestClient, parts: list[tuple[str, str | None, bytes]]) -> Any:
    """A hand-made multipart body (httpx would clean up odd filenames itself)."""
    boundary = "pomarboundary"
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return client.post("/v1/files", content=body, headers=headers)


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


def stored(home: Path) -> list[str]:
    """Everything under files/, temp files included."""
    return sorted(
        str(p.relative_to(home / "files")) for p in (home / "files").rglob("*") if p.is_file()
    )


def assert_nothing_stored(client: TestClient, home: Path) -> None:
    assert stored(home) == []
    assert client.get("/v1/files").json()["data"] == []


def test_upload_fine_tune_file(client: TestClient, home: Path) -> None:
    r = upload(client, GOOD * 3)
    assert r.status_code == 200, r.text
    body = r.json()
    obj = FileObject.model_validate(body)
    # expires_at / status_details are left out when unset: OpenAI's schema has no null there
    assert set(body) == {
        "id", "object", "bytes", "created_at", "filename", "purpose", "status",
    }  # fmt: skip
    assert obj.id.startswith("file-") and obj.object == "file"
    assert obj.bytes == len(GOOD) * 3 and obj.filename == "train.jsonl"
    assert obj.purpose == "fine-tune" and obj.status == "processed"
    assert obj.expires_at is None and obj.status_details is None
    assert stored(home) == [obj.id]
    assert client.get(f"/v1/files/{obj.id}").json() == body


@pytest.mark.parametrize("purpose", ["assistants", "batch", "vision", "user_data"])
def test_other_purposes_store_any_bytes(client: TestClient, purpose: str) -> None:
    content = bytes(range(256)) * 4
    r = upload(client, content, purpose, name="blob.bin")
    assert r.status_code == 200, r.text
    file_id = r.json()["id"]
    got = client.get(f"/v1/files/{file_id}/content")
    assert got.status_code == 200 and got.content == content
    assert got.headers["content-type"] == "application/octet-stream"


def test_evals_files_are_refused_by_name(client: TestClient, home: Path) -> None:
    """OpenAI takes "evals" uploads, yet its File object cannot echo that purpose: pomar,
    which has no Evals API, refuses them and stores nothing."""
    r = upload(client, b"{}\n", "evals", name="e.jsonl")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "purpose" and error["code"] == "unsupported_value"
    assert "Evals API" in error["message"] and stored(home) == []


def test_fine_tune_accepts_blank_lines_crlf_and_no_final_newline(client: TestClient) -> None:
    content = GOOD + b"\n  \n" + GOOD.rstrip(b"\n").replace(b"}\n", b"}") + b"\r\n" + GOOD.rstrip()
    assert upload(client, content).status_code == 200


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (GOOD + b"not json\n" + GOOD, 2, "is not a valid JSON object"),
        (GOOD + GOOD + b"[1, 2]\n", 3, "is not a valid JSON object"),
        (b'"just a string"\n', 1, "is not a valid JSON object"),
        (b'{"messages": [}\n', 1, "is not a valid JSON object"),
        (GOOD + b'{"a": "\xff\xfe"}\n', 2, "not valid UTF-8"),
    ],
)
def test_fine_tune_file_not_jsonl_is_refused_naming_the_line(
    client: TestClient, home: Path, content: bytes, line: int, words: str
) -> None:
    err = error_of(upload(client, content), 400)
    assert err["message"].startswith("Invalid file format.")
    assert f"Line {line} " in err["message"] and words in err["message"]
    assert err["param"] == "file" and err["code"] == "invalid_file_format"
    assert_nothing_stored(client, home)


def test_fine_tune_error_lists_other_bad_lines(client: TestClient) -> None:
    err = error_of(upload(client, b"x\n" + GOOD + b"y\nz\n"), 400)
    assert "Line 1 " in err["message"] and "3, 4" in err["message"]


def test_empty_fine_tune_file(client: TestClient, home: Path) -> None:
    err = error_of(upload(client, b""), 400)
    assert err["code"] == "empty_file" and "empty" in err["message"]
    err = error_of(upload(client, b"\n\n  \n"), 400)
    assert err["code"] == "invalid_file_format" and "no JSON objects" in err["message"]
    assert_nothing_stored(client, home)


def test_oversized_upload_is_refused_while_streaming(client: TestClient, home: Path) -> None:
    err = error_of(upload(client, b"x" * (CAP + 1), "user_data"), 413)
    assert err["code"] == "file_too_large" and err["param"] == "file"
    assert f"{CAP:,}" in err["message"]
    assert_nothing_stored(client, home)
    assert upload(client, b"x" * CAP, "user_data").status_code == 200


def test_oversized_declared_length_is_refused_before_reading(
    client: TestClient, home: Path
) -> None:
    err = error_of(upload(client, b"x" * (3 * 1024 * 1024), "user_data"), 413)
    assert err["code"] == "file_too_large"
    assert_nothing_stored(client, home)


def test_missing_file_part(client: TestClient, home: Path) -> None:
    err = error_of(raw_upload(client, [("purpose", None, b"fine-tune")]), 400)
    assert err["param"] == "file" and err["code"] == "missing_required_parameter"
    assert_nothing_stored(client, home)


def test_missing_purpose(client: TestClient, home: Path) -> None:
    err = error_of(upload(client, GOOD, purpose=None), 400)
    assert err["param"] == "purpose" and err["code"] == "missing_required_parameter"
    assert_nothing_stored(client, home)


@pytest.mark.parametrize(
    "purpose", ["fine_tune", "FINE-TUNE", "", "fine-tune-results", "batch_output"]
)
def test_unknown_purpose(client: TestClient, home: Path, purpose: str) -> None:
    err = error_of(upload(client, GOOD, purpose), 400)
    assert err["param"] == "purpose" and "fine-tune" in err["message"]
    assert_nothing_stored(client, home)


def test_bad_purpose_before_the_file_is_refused_before_storing(
    client: TestClient, home: Path
) -> None:
    r = raw_upload(client, [("purpose", None, b"nope"), ("file", "a.jsonl", GOOD)])
    assert error_of(r, 400)["param"] == "purpose"
    assert_nothing_stored(client, home)


def test_two_files_are_refused(client: TestClient, home: Path) -> None:
    r = raw_upload(
        client,
        [("purpose", None, b"fine-tune"), ("file", "a.jsonl", GOOD), ("file", "b.jsonl", GOOD)],
    )
    assert error_of(r, 400)["param"] == "file"
    r = raw_upload(
        client,
        [("purpose", None, b"fine-tune"), ("file", "a.jsonl", GOOD), ("other", "b.jsonl", GOOD)],
    )
    assert error_of(r, 400)["param"] == "file"
    assert_nothing_stored(client, home)


def test_expires_after_is_refused_not_dropped(client: TestClient, home: Path) -> None:
    r = client.post(
        "/v1/files",
        files={"file": ("a.jsonl", GOOD)},
        data={
            "purpose": "fine-tune",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
    )
    err = error_of(r, 400)
    assert err["param"] == "expires_after" and err["code"] == "unsupported_parameter"
    assert_nothing_stored(client, home)


def test_unknown_form_fields_are_ignored(client: TestClient) -> None:
    r = client.post(
        "/v1/files", files={"file": ("a.jsonl", GOOD)}, data={"purpose": "fine-tune", "note": "x"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"file": "x", "purpose": "fine-tune"}).encode(), "application/json"),
        (
            b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            "multipart/form-data; boundary=b",
        ),
        (b"garbage", "multipart/form-data"),
    ],
)
def test_not_a_complete_multipart_body(
    client: TestClient, home: Path, body: bytes, content_type: str
) -> None:
    r = client.post("/v1/files", content=body, headers={"content-type": content_type})
    err = error_of(r, 400)
    assert "multipart" in err["message"]
    assert_nothing_stored(client, home)


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("../../../etc/passwd", "passwd"),
        ("..\\..\\windows\\train.jsonl", "train.jsonl"),
        ("..", "upload"),
        ("/abs/path/x.jsonl", "x.jsonl"),
        ("na\x01me\x7f.jsonl", "name.jsonl"),
    ],
)
def test_path_like_filenames_are_sanitized(
    client: TestClient, home: Path, filename: str, shown: str
) -> None:
    r = raw_upload(client, [("purpose", None, b"fine-tune"), ("file", filename, GOOD)])
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == shown
    # the blob is named by its id, inside the store, whatever the client called it
    assert stored(home) == [r.json()["id"]]
    assert not (home.parent / "etc").exists()


def test_file_part_without_filename(client: TestClient) -> None:
    r = raw_upload(client, [("file", None, GOOD), ("purpose", None, b"fine-tune")])
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "upload"


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("suffix", ["", "/content"])
@pytest.mark.parametrize(
    "file_id", ["file-" + "0" * 24, "file-abc", "..%2F..%2Fpomar.db", "file-..."]
)
def test_unknown_id_is_404(client: TestClient, method: str, suffix: str, file_id: str) -> None:
    if method == "delete" and suffix:
        return
    r = client.request(method.upper(), f"/v1/files/{file_id}{suffix}")
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    if "%2F" not in file_id:
        assert err["code"] == "file_not_found" and err["param"] == "file_id"
        assert err["message"] == f"No such File object: {file_id}"


def test_list_pagination_order_and_purpose(client: TestClient) -> None:
    ids = [upload(client, GOOD, "fine-tune" if i % 2 else "batch").json()["id"] for i in range(5)]
    page = client.get("/v1/files").json()
    assert page["object"] == "list" and [f["id"] for f in page["data"]] == ids[::-1]
    assert page["first_id"] == ids[4] and page["last_id"] == ids[0] and page["has_more"] is False
    page = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page["data"]] == [ids[4], ids[3]] and page["has_more"] is True
    page = client.get("/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in page["data"]] == [ids[2], ids[1]] and page["has_more"] is True
    page = client.get("/v1/files", params={"order": "asc", "after": ids[2]}).json()
    assert [f["id"] for f in page["data"]] == ids[3:]
    page = client.get("/v1/files", params={"purpose": "fine-tune"}).json()
    assert [f["id"] for f in page["data"]] == [ids[3], ids[1]]
    empty = client.get("/v1/files", params={"purpose": "vision"}).json()
    assert empty == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "file-" + "9" * 24}, "after"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_list_bad_parameters(client: TestClient, params: dict[str, Any], param: str) -> None:
    assert error_of(client.get("/v1/files", params=params), 400)["param"] == param


def test_delete(client: TestClient, home: Path) -> None:
    a, b = (upload(client, GOOD).json()["id"] for _ in range(2))
    r = client.delete(f"/v1/files/{a}")
    assert r.status_code == 200 and r.json() == {"id": a, "object": "file", "deleted": True}
    FileDeleted.model_validate(r.json())
    assert stored(home) == [b]
    assert error_of(client.get(f"/v1/files/{a}"), 404)["code"] == "file_not_found"
    assert error_of(client.get(f"/v1/files/{a}/content"), 404)["code"] == "file_not_found"
    assert error_of(client.delete(f"/v1/files/{a}"), 404)["code"] == "file_not_found"
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [b]
    # the deleted id still works as a cursor
    assert client.get("/v1/files", params={"after": a}).json()["data"] == []


def test_content_has_the_filename(client: TestClient) -> None:
    file_id = upload(client, GOOD, name="dados de treino.jsonl").json()["id"]
    r = client.get(f"/v1/files/{file_id}/content")
    assert r.content == GOOD
    assert "dados%20de%20treino.jsonl" in r.headers["content-disposition"]


def test_start_up_recovers_the_store(engine: MLXEngine, tmp_path: Path) -> None:
    home = tmp_path / "crashed"
    settings = Settings(model="tiny", home=home)
    with TestClient(create_app(settings, engine=engine)) as c:
        kept = upload(c, GOOD).json()["id"]
    # what a crash mid-upload leaves: a temp file, and a blob moved in whose row never came
    (home / "files" / ".incoming" / "0123.part").write_bytes(b"half")
    (home / "files" / ("file-" + "b" * 24)).write_bytes(GOOD)
    with TestClient(create_app(settings, engine=engine)) as c:
        assert stored(home) == [kept]
        assert [f["id"] for f in c.get("/v1/files").json()["data"]] == [kept]


async def test_upload_goes_to_disk_as_it_streams(tmp_path: Path) -> None:
    """The service never holds more than about one write chunk of an upload in memory."""
    store = Store.open(tmp_path)
    service = FileService(store.files, max_upload_bytes=64 * 1024 * 1024)
    upload = service.start_upload("big.bin")
    piece = b"p" * 65536
    most_pending = 0
    for _ in range(10 * 16):  # 10 MiB in the pieces a server receives
        upload.receive(piece)
        most_pending = max(most_pending, len(upload._pending))
        await upload.flush()
    assert most_pending <= WRITE_CHUNK_BYTES
    assert upload.blob.temp_path.stat().st_size >= 10 * 1024 * 1024 - WRITE_CHUNK_BYTES
    created = await service.create({"purpose": "user_data"}, upload)
    assert created.bytes == 10 * 1024 * 1024
    assert (store.files.root / created.id).stat().st_size == created.bytes
    store.close()
