"""The fine-tuning objects in the shapes OpenAI's schema allows, whatever was measured."""

from __future__ import annotations

import json

from openai.types.fine_tuning import FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from server.services.fine_tuning import to_checkpoint, to_event
from server.store.history import CheckpointRecord, EventRecord


def test_a_checkpoint_leaves_out_what_was_not_measured() -> None:
    """No validation set: no valid_* metrics at all, rather than nulls where the schema says
    number (a fuzz run with another seed found the nulls)."""
    record = CheckpointRecord(
        id="ftckpt-1",
        job_id="ftjob-1",
        created_at=1,
        step_number=4,
        metrics={"step": 4.0, "train_loss": 1.5, "train_mean_token_accuracy": 0.5},
        fine_tuned_model_checkpoint="ft:m:pomar::1:ckpt-step-4",
        path="/nowhere",
    )
    body = json.loads(to_checkpoint(record).model_dump_json())
    assert body["metrics"] == {"step": 4.0, "train_loss": 1.5, "train_mean_token_accuracy": 0.5}
    parsed = FineTuningJobCheckpoint.model_validate(body)
    assert parsed.metrics.valid_loss is None and parsed.metrics.train_loss == 1.5


def test_an_event_without_data_has_an_empty_object() -> None:
    record = EventRecord(
        id="ftevent-1",
        job_id="ftjob-1",
        created_at=1,
        level="info",
        message="Created fine-tuning job",
        type="message",
        data=None,
    )
    body = json.loads(to_event(record).model_dump_json())
    assert body["data"] == {}
    assert FineTuningJobEvent.model_validate(body).message == "Created fine-tuning job"
