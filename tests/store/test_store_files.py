"""File blobs and rows: atomic commit, sanitized names, strict ids, crash recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import Store, UnknownCursor, sanitize_filename
from server.store.files import is_file_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    yield s
    s.close()


def blobs(store: Store) -> list[str]:
    return sorted(p.name for p in store.files.root.iterdir() if p.is_file())


def incoming(store: Store) -> list[str]:
    return sorted(p.name for p in store.files.incoming.iterdir())


def test_commit_moves_the_blob_into_place_then_inserts_the_row(store: Store) -> None:
    with store.files.open_blob() as blob:
        blob.write(b"one\n")
        blob.write(b"two\n")
        # while being written the blob is only a temp file: no row, nothing under files/
        assert incoming(store) and not blobs(store)
        assert store.files.list().items == []
        record = store.files.commit(blob, filename="data.jsonl", purpose="fine-tune")
    assert is_file_id(record.id) and record.bytes == 8
    assert record.filename == "data.jsonl" and record.purpose == "fine-tune"
    assert record.status == "processed" and record.created_at > 0
    assert len(record.sha256) == 64
    assert blobs(store) == [record.id] and incoming(store) == []
    path = store.files.content_path(record.id)
    assert path is not None and path.read_bytes() == b"one\ntwo\n"
    assert store.files.get(record.id) == record


def test_an_uncommitted_blob_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.files.open_blob() as blob:
        blob.write(b"partial")
        raise RuntimeError("client went away")
    assert incoming(store) == [] and blobs(store) == []


def test_a_failed_row_insert_removes_the_moved_blob(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.db, "transaction", broken)
    with pytest.raises(OSError), store.files.open_blob() as blob:
        blob.write(b"x")
        store.files.commit(blob, filename="a", purpose="user_data")
    assert incoming(store) == [] and blobs(store) == []


def test_list_order_pagination_and_purpose(store: Store) -> None:
    made = [
        store.files.put_bytes(b"x", filename=f"{i}.txt", purpose="fine-tune" if i % 2 else "batch")
        for i in range(5)
    ]
    ids = [r.id for r in made]
    page = store.files.list()
    assert [r.id for r in page.items] == ids[::-1] and not page.has_more
    asc = store.files.list(order="asc", limit=2)
    assert [r.id for r in asc.items] == ids[:2] and asc.has_more
    rest = store.files.list(order="asc", after=ids[1], limit=10)
    assert [r.id for r in rest.items] == ids[2:] and not rest.has_more
    tuned = store.files.list(purpose="fine-tune")
    assert [r.id for r in tuned.items] == [ids[3], ids[1]]
    with pytest.raises(UnknownCursor):
        store.files.list(after="file-" + "0" * 24)


def test_delete_hides_the_file_removes_the_blob_and_keeps_cursors_working(store: Store) -> None:
    a, b, c = (store.files.put_bytes(b"x", filename="f", purpose="batch") for _ in range(3))
    assert store.files.delete(b.id)
    assert not store.files.delete(b.id)
    assert store.files.get(b.id) is None and store.files.content_path(b.id) is None
    assert b.id not in blobs(store)
    assert [r.id for r in store.files.list().items] == [c.id, a.id]
    # a client paging with the deleted file as cursor carries on
    assert [r.id for r in store.files.list(after=b.id).items] == [a.id]


@pytest.mark.parametrize(
    "bad",
    [
        "../pomar.db",
        "file-../../x",
        "file-" + "0" * 23,
        "file-" + "G" * 24,
        "",
        ".incoming",
        "/etc",
    ],
)
def test_ids_outside_the_format_never_reach_the_disk(store: Store, bad: str) -> None:
    assert not is_file_id(bad)
    assert store.files.get(bad) is None
    assert store.files.content_path(bad) is None
    assert store.files.delete(bad) is False
    assert (store.home / "pomar.db").exists()


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("data.jsonl", "data.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ana\\train.jsonl", "train.jsonl"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("dir/", "upload"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("bell\x07and\x00nul\nnewline.jsonl", "bellandnulnewline.jsonl"),
        ("\u202egnp.exe", "gnp.exe"),
        (".hidden", "hidden"),
        ("ção.jsonl", "ção.jsonl"),
    ],
)
def test_sanitize_filename(raw: str | None, clean: str) -> None:
    assert sanitize_filename(raw) == clean


def test_sanitize_filename_cuts_long_names_keeping_the_extension() -> None:
    name = sanitize_filename("é" * 300 + ".jsonl")
    assert name.endswith(".jsonl") and len(name.encode()) <= 255
    assert (
        sanitize_filename("x" * 1000).startswith("x") and len(sanitize_filename("x" * 1000)) == 255
    )


def test_recover_removes_temp_files_and_orphans_and_forgets_lost_blobs(store: Store) -> None:
    kept = store.files.put_bytes(b"keep", filename="k", purpose="batch")
    lost = store.files.put_bytes(b"lost", filename="l", purpose="batch")
    deleted = store.files.put_bytes(b"gone", filename="d", purpose="batch")
    # a crash mid-upload, after the move but before the row, and between delete's two steps
    (store.files.incoming / "abc.part").write_bytes(b"half an upload")
    orphan = "file-" + "a" * 24
    (store.files.root / orphan).write_bytes(b"no row")
    with store.db.transaction() as conn:
        conn.execute("UPDATE files SET deleted_at = 1 WHERE id = ?", (deleted.id,))
    (store.files.root / lost.id).unlink()
    (store.files.root / "README").write_text("not ours")

    report = store.recover()

    assert report.temp_files_removed == 1
    assert report.orphan_blobs_removed == 2
    assert report.rows_without_blob == (lost.id,)
    assert incoming(store) == []
    assert blobs(store) == sorted([kept.id, "README"])
    assert [r.id for r in store.files.list().items] == [kept.id]
    assert store.recover().temp_files_removed == 0


def test_put_bytes_for_server_made_files(store: Store) -> None:
    record = store.files.put_bytes(
        b"step,train_loss\n1,2.0\n", filename="results.csv", purpose="fine-tune-results"
    )
    assert record.purpose == "fine-tune-results" and record.bytes == 22
    assert incoming(store) == []
