"""Jobs, events, checkpoints and fine-tuned models repositories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from server.store import JobRecord, Store, StoreError, UnknownCursor


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    yield s
    s.close()


def new_job(store: Store, **kw: object) -> JobRecord:
    args: dict[str, object] = {
        "model": "tiny",
        "training_file": "file-" + "1" * 24,
        "seed": 42,
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto"},
    }
    args.update(kw)
    return store.jobs.create(**args)  # type: ignore[arg-type]


def test_create_defaults_and_round_trip(store: Store) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "rank": 8}}}
    job = new_job(
        store,
        validation_file="file-" + "2" * 24,
        method=method,
        suffix="demo",
        metadata={"team": "a"},
        integrations=[],
        backend="mlx",
        base_model_path="/models/tiny",
    )
    assert job.id.startswith("ftjob-") and len(job.id) == 30
    assert job.status == "validating_files" and not job.is_terminal
    assert job.organization_id == "org-pomar" and job.result_files == []
    assert job.method == method and job.metadata == {"team": "a"} and job.integrations == []
    assert job.error is None and job.finished_at is None and job.fine_tuned_model is None
    assert job.step == 0 and job.created_at == job.updated_at
    assert store.jobs.get(job.id) == job
    assert store.jobs.get("ftjob-nope") is None


def test_record_maps_onto_the_openai_job_object(store: Store) -> None:
    job = new_job(store)
    fields = {k: getattr(job, k) for k in FineTuningJob.model_fields if hasattr(job, k)}
    obj = FineTuningJob.model_validate({**fields, "object": "fine_tuning.job"})
    assert obj.id == job.id and obj.hyperparameters.n_epochs == "auto"


def test_update_changes_fields_and_json_columns(store: Store) -> None:
    job = new_job(store)
    done = store.jobs.update(
        job.id,
        status="failed",
        finished_at=123,
        error={
            "code": "invalid_training_file",
            "message": "Line 3: no messages",
            "param": "training_file",
        },
        result_files=["file-" + "3" * 24],
        trained_tokens=0,
        last_checkpoint_step=20,
    )
    assert done is not None and done.status == "failed" and done.is_terminal
    assert done.error == {
        "code": "invalid_training_file",
        "message": "Line 3: no messages",
        "param": "training_file",
    }
    assert done.result_files == ["file-" + "3" * 24] and done.last_checkpoint_step == 20
    assert store.jobs.get(job.id) == done
    assert store.jobs.update("ftjob-missing", status="queued") is None


def test_update_refuses_fields_that_are_not_updatable(store: Store) -> None:
    job = new_job(store)
    with pytest.raises(ValueError, match="model"):
        store.jobs.update(job.id, model="other")  # type: ignore[call-arg]


def test_update_with_expected_status_is_compare_and_set(store: Store) -> None:
    job = new_job(store, status="running")
    cancelled = store.jobs.update(job.id, expect_status={"queued", "running"}, status="cancelled")
    assert cancelled is not None and cancelled.status == "cancelled"
    # the runner finishing a moment later loses: the job stays cancelled
    assert store.jobs.update(job.id, expect_status={"running"}, status="succeeded") is None
    current = store.jobs.get(job.id)
    assert current is not None and current.status == "cancelled"


def test_list_newest_first_with_cursor_and_metadata_filter(store: Store) -> None:
    jobs = [new_job(store, metadata={"n": str(i), "odd": str(i % 2)}) for i in range(5)]
    ids = [j.id for j in jobs]
    page = store.jobs.list(limit=2)
    assert [j.id for j in page.items] == [ids[4], ids[3]] and page.has_more
    page = store.jobs.list(after=ids[3], limit=20)
    assert [j.id for j in page.items] == ids[2::-1] and not page.has_more
    odd = store.jobs.list(metadata={"odd": "1"})
    assert [j.id for j in odd.items] == [ids[3], ids[1]]
    assert store.jobs.list(metadata={"odd": "1", "n": "3"}).items[0].id == ids[3]
    assert store.jobs.list(metadata={'we"ird': "x"}).items == []
    with pytest.raises(UnknownCursor):
        store.jobs.list(after="ftjob-unknown")


def test_with_status_is_fifo(store: Store) -> None:
    a = new_job(store, status="queued")
    new_job(store, status="succeeded")
    c = new_job(store, status="running")
    d = new_job(store, status="queued")
    assert [j.id for j in store.jobs.with_status("queued")] == [a.id, d.id]
    assert [j.id for j in store.jobs.with_status("queued", "running")] == [a.id, c.id, d.id]


def test_events_newest_first_paginated_and_typed(store: Store) -> None:
    job = new_job(store)
    other = new_job(store)
    first = store.events.add(job.id, "Validating training file")
    metrics = store.events.add(
        job.id, "Step 1/30: training loss=2.10", type="metrics", data={"step": 1, "train_loss": 2.1}
    )
    warn = store.events.add(job.id, "3 duplicates removed", level="warn")
    store.events.add(other.id, "not this job")
    page = store.events.list(job.id)
    assert [e.id for e in page.items] == [warn.id, metrics.id, first.id] and not page.has_more
    assert page.items[1].data == {"step": 1, "train_loss": 2.1} and page.items[1].type == "metrics"
    assert first.id.startswith("ftevent-")
    page = store.events.list(job.id, limit=1, after=warn.id)
    assert [e.id for e in page.items] == [metrics.id] and page.has_more
    assert store.events.list(job.id, order="asc").items[0].id == first.id
    event = page.items[0]
    FineTuningJobEvent.model_validate(
        {
            "id": event.id,
            "created_at": event.created_at,
            "level": event.level,
            "message": event.message,
            "object": "fine_tuning.job.event",
            "type": event.type,
            "data": event.data,
        }
    )


def test_events_need_an_existing_job(store: Store) -> None:
    import sqlite3

    with pytest.raises(sqlite3.IntegrityError):
        store.events.add("ftjob-none", "orphan")


def test_checkpoints_add_upsert_latest_and_list(store: Store) -> None:
    job = new_job(store)
    model = "ft:tiny:pomar:demo:abc123"
    c10 = store.checkpoints.add(
        job.id,
        step_number=10,
        fine_tuned_model_checkpoint=f"{model}:ckpt-step-10",
        path="/jobs/x/ckpt-10",
        metrics={"step": 10, "train_loss": 1.5},
    )
    c20 = store.checkpoints.add(
        job.id,
        step_number=20,
        fine_tuned_model_checkpoint=f"{model}:ckpt-step-20",
        path="/jobs/x/ckpt-20",
        metrics={"step": 20, "train_loss": 0.9, "valid_loss": 1.0},
    )
    assert c10.id.startswith("ftckpt-")
    assert store.checkpoints.latest(job.id) == c20
    assert store.checkpoints.by_model(f"{model}:ckpt-step-10") == c10
    assert store.checkpoints.get(c20.id) == c20
    assert store.checkpoints.latest(new_job(store).id) is None
    # re-saving a step after a resume updates it in place and keeps the id
    again = store.checkpoints.add(
        job.id,
        step_number=10,
        fine_tuned_model_checkpoint=f"{model}:ckpt-step-10",
        path="/jobs/x/ckpt-10b",
        metrics={"step": 10, "train_loss": 1.4},
    )
    assert again.id == c10.id and again.path == "/jobs/x/ckpt-10b"
    page = store.checkpoints.list(job.id)
    assert [c.id for c in page.items] == [c20.id, c10.id]
    page = store.checkpoints.list(job.id, limit=1)
    assert page.has_more and store.checkpoints.list(job.id, after=page.items[0].id).items == [again]
    FineTuningJobCheckpoint.model_validate(
        {
            "id": c20.id,
            "created_at": c20.created_at,
            "fine_tuned_model_checkpoint": c20.fine_tuned_model_checkpoint,
            "fine_tuning_job_id": c20.job_id,
            "metrics": c20.metrics,
            "object": "fine_tuning.job.checkpoint",
            "step_number": c20.step_number,
        }
    )


def test_models_register_list_and_soft_delete(store: Store) -> None:
    job = new_job(store)
    a = store.models.register(
        "ft:tiny:pomar:a:111111", base_model="tiny", adapter_path="/a", job_id=job.id
    )
    b = store.models.register("ft:tiny:pomar::222222", base_model="tiny", adapter_path="/b")
    assert a.owned_by == "pomar" and not a.deleted and a.created > 0
    assert store.models.get(a.id) == a
    assert [m.id for m in store.models.list()] == [a.id, b.id]
    with pytest.raises(StoreError, match="already"):
        store.models.register(a.id, base_model="tiny", adapter_path="/x")
    gone = store.models.delete(a.id)
    assert gone is not None and gone.deleted and gone.deleted_at is not None
    assert store.models.delete(a.id) is None
    assert store.models.get(a.id) is None
    assert store.models.get(a.id, include_deleted=True) == gone
    assert [m.id for m in store.models.list()] == [b.id]
    assert len(store.models.list(include_deleted=True)) == 2
    # a deleted id is never handed out again
    with pytest.raises(StoreError):
        store.models.register(a.id, base_model="tiny", adapter_path="/x")


def test_job_dir_accepts_only_job_ids(store: Store) -> None:
    job = new_job(store)
    assert store.job_dir(job.id) == store.home / "jobs" / job.id
    for bad in ("../x", "ftjob-../../etc", "ftjob-ZZ"):
        with pytest.raises(ValueError):
            store.job_dir(bad)
