"""`/v1/files` through a real server, driven by the official `openai` SDK."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from live_server import LiveServer, client_for

GOOD = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)
SMALL_CAP = 64 * 1024

mlx_only = pytest.mark.parametrize("tiny_server", ["mlx"], indirect=True)


def blobs(home: Path) -> set[str]:
    return {p.name for p in (home / "files").iterdir() if p.is_file()}


def incoming(home: Path) -> list[Path]:
    return list((home / "files" / ".incoming").iterdir())


@mlx_only
def test_upload_retrieve_content_delete(tiny_server: LiveServer, tmp_path: Path) -> None:
    client = client_for(tiny_server)
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD * 10)
    with path.open("rb") as f:
        created = client.files.create(file=f, purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.filename == "train.jsonl" and created.bytes == len(GOOD) * 10
    assert created.purpose == "fine-tune" and created.status == "processed"
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == GOOD * 10
    assert created.id in blobs(tiny_server.home)
    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True and deleted.object == "file"
    assert created.id not in blobs(tiny_server.home)
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(created.id)
    assert exc.value.code == "file_not_found" and exc.value.param == "file_id"


@mlx_only
def test_list_paginates_through_the_sdk(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    mine = [
        client.files.create(file=(f"{i}.txt", f"{i}".encode()), purpose="user_data").id
        for i in range(5)
    ]
    first = client.files.list(purpose="user_data", limit=2)
    assert len(first.data) == 2 and first.has_more
    seen = [f.id for f in client.files.list(purpose="user_data", limit=2)]  # auto-pagination
    assert [i for i in seen if i in mine] == mine[::-1]
    asc = [f.id for f in client.files.list(purpose="user_data", order="asc", limit=3)]
    assert [i for i in asc if i in mine] == mine
    for file_id in mine:
        client.files.delete(file_id)


@mlx_only
def test_bad_fine_tune_file_names_the_line_and_stores_nothing(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    before_blobs = blobs(tiny_server.home)
    before = {f.id for f in client.files.list()}
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("bad.jsonl", GOOD + b"{oops\n" + GOOD), purpose="fine-tune")
    assert exc.value.param == "file" and exc.value.code == "invalid_file_format"
    assert "Line 2 is not a valid JSON object" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("t.jsonl", GOOD), purpose="fine_tune")
    assert exc.value.param == "purpose"
    assert {f.id for f in client.files.list()} == before
    assert blobs(tiny_server.home) == before_blobs and incoming(tiny_server.home) == []


@pytest.fixture(scope="module")
def capped_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server of its own with a small upload cap (set through the environment)."""
    server = LiveServer(
        model=str(tiny_model_path), backend="mlx", home=tmp_path_factory.mktemp("capped")
    )
    os.environ["POMAR_MAX_UPLOAD_BYTES"] = str(SMALL_CAP)
    try:
        server.start()
    finally:
        del os.environ["POMAR_MAX_UPLOAD_BYTES"]
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("size", [SMALL_CAP + 1, 5 * 1024 * 1024], ids=["streamed", "declared"])
def test_oversized_upload_is_413_and_leaves_nothing(capped_server: LiveServer, size: int) -> None:
    client = client_for(capped_server)
    with pytest.raises(openai.APIStatusError) as exc:
        client.files.create(file=("big.jsonl", b"x" * size), purpose="user_data")
    assert exc.value.status_code == 413
    assert exc.value.code == "file_too_large" and exc.value.param == "file"
    assert blobs(capped_server.home) == set() and incoming(capped_server.home) == []
    # the server is fine afterwards, and a file at the cap goes through
    ok = client.files.create(file=("ok.bin", b"y" * SMALL_CAP), purpose="user_data")
    assert ok.bytes == SMALL_CAP
    client.files.delete(ok.id)


def test_chunked_upload_without_length_is_cut_at_the_cap(capped_server: LiveServer) -> None:
    """A chunked upload with no Content-Length is still cut off at the cap."""

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        for _ in range(64):
            yield b"z" * 8192
        yield b"\r\n--b--\r\n"

    r = httpx.post(
        f"{capped_server.base_url}/v1/files",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert blobs(capped_server.home) == set() and incoming(capped_server.home) == []
