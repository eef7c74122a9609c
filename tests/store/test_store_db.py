"""The SQLite layer: WAL, migrations, transactions, threads, pagination."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import Store
from server.store.db import MIGRATIONS, Database, StoreError, UnknownCursor


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    yield s
    s.close()


def test_layout_wal_and_schema_version(store: Store) -> None:
    home = store.home
    assert (home / "pomar.db").is_file() and (home / "files" / ".incoming").is_dir()
    assert store.db.journal_mode() == "wal"
    assert store.db.version == len(MIGRATIONS)
    tables = {
        r["name"] for r in store.db.query("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"files", "jobs", "job_events", "job_checkpoints", "models"} <= tables


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    record = store.files.put_bytes(b"hello", filename="a.txt", purpose="user_data")
    store.close()
    again = Store.open(tmp_path)
    try:
        assert again.db.version == len(MIGRATIONS)
        assert again.files.get(record.id) == record
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "x.db")
    db.connection().execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Database.open(tmp_path / "x.db")


def test_migrations_run_in_order_and_atomically(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.db")
    db.migrate(["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"])
    assert db.version == 2
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(["", "", "CREATE TABLE c (z INTEGER); CREATE TABLE a (again INTEGER)"])
    # the failed migration left neither its table nor its version bump behind
    assert db.version == 2
    assert db.query_one("SELECT name FROM sqlite_master WHERE name = 'c'") is None
    db.close()


def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.db.transaction() as conn:
        conn.execute(
            "INSERT INTO models (id, created, owned_by, base_model, adapter_path)"
            " VALUES ('m', 1, 'o', 'b', 'p')"
        )
        raise RuntimeError("boom")
    assert store.models.get("m") is None


def test_closed_database_refuses_new_connections(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.jobs.get("ftjob-x")


def test_one_connection_per_thread(store: Store) -> None:
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(store.db.connection()))
    thread.start()
    thread.join()
    assert seen[0] is not store.db.connection()
    assert store.db.connection() is store.db.connection()


def test_a_worker_thread_writes_while_the_main_thread_reads(store: Store) -> None:
    job = store.jobs.create(model="m", training_file="file-x", seed=1, hyperparameters={})
    n = 300
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(n):
                store.events.add(job.id, f"step {i}", type="metrics", data={"step": i})
                store.jobs.update(job.id, step=i + 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive() or reads == 0:
        page = store.events.list(job.id, limit=5)
        current = store.jobs.get(job.id)
        assert current is not None
        if page.items:
            # newest first, and never a half-written sequence
            steps = [e.data["step"] for e in page.items]
            assert steps == sorted(steps, reverse=True)
        reads += 1
    thread.join()
    assert not errors
    assert store.events.list(job.id, limit=n + 1).items[0].message == f"step {n - 1}"
    final = store.jobs.get(job.id)
    assert final is not None and final.step == n


def test_two_writer_threads_do_not_lose_writes(store: Store) -> None:
    job = store.jobs.create(model="m", training_file="file-x", seed=1, hyperparameters={})

    def writer(tag: str) -> None:
        for i in range(100):
            store.events.add(job.id, f"{tag}{i}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events.list(job.id, limit=1000).items) == 200


def test_pagination_cursor_scope(store: Store) -> None:
    a = store.jobs.create(model="m", training_file="file-x", seed=1, hyperparameters={})
    b = store.jobs.create(model="m", training_file="file-x", seed=1, hyperparameters={})
    event_of_b = store.events.add(b.id, "b")
    with pytest.raises(UnknownCursor) as exc:
        store.events.list(a.id, after=event_of_b.id)
    assert exc.value.cursor == event_of_b.id
    with pytest.raises(ValueError):
        store.events.list(a.id, limit=0)
