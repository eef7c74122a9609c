"""Fine-tuning jobs: create, list, get, cancel, events, checkpoints (OpenAI objects)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from server.errors import InvalidRequest, NotFound
from server.jobs.runner import JobRunner
from server.models.loading import training_backend
from server.models.registry import ModelRegistry
from server.models.trainable import display_name, training_base
from server.protocol.fine_tuning import (
    CheckpointList,
    CheckpointMetrics,
    EventList,
    FineTuningJob,
    JobCheckpoint,
    JobCreateRequest,
    JobError,
    JobEvent,
    JobHyperparameters,
    JobList,
    JobMethod,
    JobMethodBody,
)
from server.store import Store, UnknownCursor
from server.store.history import CheckpointRecord, EventRecord
from server.store.jobs import JobRecord


class JobNotFound(NotFound):
    code = "job_not_found"


class FineTuningService:
    """The `/v1/fine_tuning/jobs` operations over the store and the runner."""

    def __init__(self, store: Store, registry: ModelRegistry, runner: JobRunner) -> None:
        self._store = store
        self._registry = registry
        self._runner = runner

    def create(self, request: JobCreateRequest) -> FineTuningJob:
        """Check the model and files, store the job (`validating_files`) and queue it.

        A base with no Hugging Face weights (a GGUF) is checked cheaply here, and a 400
        `model_not_trainable` comes before any job exists; its weights are built in the
        job, once (`server.models.trainable`).
        """
        # an `ft:` model (or checkpoint): the job trains on its base, from its adapter
        adapter = self._registry.adapter(request.model)
        base_id = adapter.base_id if adapter else request.model
        base = self._registry.spec(base_id)
        trains_on = training_base(base_id, base.path)
        self._check_file(request.training_file, "training_file")
        if request.validation_file:
            self._check_file(request.validation_file, "validation_file")
        hp = request.resolved_hyperparameters().model_dump(exclude_none=True)
        if adapter is not None:
            check_parent_shape(hp, adapter.adapter, base.path)
        from server.models.quantized_base import check_quantize  # QLoRA (issue 21, part 3)

        check_quantize(hp.get("quantize"), training_backend(base.backend))
        hosts = hp.get("hosts")
        if isinstance(hosts, int) and hosts > self._runner.train_slots:
            raise InvalidRequest(
                f"hosts is {hosts}, but this server trains on at most {self._runner.train_slots}"
                " ranks (POMAR_TRAIN_HOSTS)",
                param="hyperparameters.hosts",
                code="invalid_value",
            )
        method = request.method_type
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        job = self._store.jobs.create(
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            seed=seed,
            hyperparameters=hp,
            method={"type": method, method: {"hyperparameters": hp}},
            suffix=request.suffix,
            metadata=request.metadata,
            backend=training_backend(base.backend),
            base_model_path=str(trains_on.folder),
            base_model=base_id if adapter else None,
            parent_model=request.model if adapter else None,
            parent_adapter=str(adapter.adapter) if adapter else None,
        )
        self._store.events.add(job.id, f"Created fine-tuning job: {job.id}")
        if adapter is not None:
            self._store.events.add(
                job.id, f"The job continues from {request.model}: its LoRA weights and shape."
            )
        if not trains_on.ready:
            self._store.events.add(
                job.id,
                f"The base model '{display_name(base_id)}' is a GGUF: its Hugging Face "
                "weights, which the trainer needs, are built from it first (once).",
            )
        self._runner.submit(job.id)
        return to_job(job)

    def _check_file(self, file_id: str, param: str) -> None:
        record = self._store.files.get(file_id)
        if record is None:
            raise InvalidRequest(
                f"invalid {param}: {file_id} does not exist.", param=param, code="file_not_found"
            )
        if record.purpose != "fine-tune":
            raise InvalidRequest(
                f"invalid {param}: {file_id} was uploaded with purpose '{record.purpose}', "
                "not 'fine-tune'.",
                param=param,
                code="invalid_file_purpose",
            )

    def list(self, after: str | None, limit: int) -> JobList:
        """Jobs, newest first."""
        with _cursor(after):
            page = self._store.jobs.list(after=after, limit=limit)
        return JobList(data=[to_job(j) for j in page.items], has_more=page.has_more)

    def get(self, job_id: str) -> FineTuningJob:
        """One job, or a 404."""
        return to_job(self._job(job_id))

    def cancel(self, job_id: str) -> FineTuningJob:
        """Cancel an unfinished job; a finished one is a 400."""
        job = self._job(job_id)
        cancelled = self._runner.cancel(job_id)
        if cancelled is None:
            raise InvalidRequest(
                f"Job {job_id} has already {job.status}; it cannot be cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        return to_job(cancelled)

    def events(self, job_id: str, after: str | None, limit: int) -> EventList:
        """A job's events, newest first."""
        self._job(job_id)
        with _cursor(after):
            page = self._store.events.list(job_id, after=after, limit=limit)
        return EventList(data=[to_event(e) for e in page.items], has_more=page.has_more)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> CheckpointList:
        """A job's checkpoints, newest first."""
        self._job(job_id)
        with _cursor(after):
            page = self._store.checkpoints.list(job_id, after=after, limit=limit)
        data = [to_checkpoint(c) for c in page.items]
        return CheckpointList(
            data=data,
            has_more=page.has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def _job(self, job_id: str) -> JobRecord:
        job = self._store.jobs.get(job_id) if job_id.startswith("ftjob-") else None
        if job is None:
            raise JobNotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
        return job


def check_parent_shape(hp: dict[str, object], adapter: Path, base_path: Path) -> None:
    """A job that continues from a fine-tune keeps its LoRA shape: a different one asked
    for in the hyperparameters is a 400 naming it."""
    from finetune.adapters import adapter_lora

    lora = adapter_lora(adapter, base_path if base_path.is_dir() else None)
    layers = -1 if lora.num_layers is None else lora.num_layers
    for key, value in (
        ("lora_rank", lora.rank),
        ("lora_alpha", lora.alpha),
        ("lora_layers", layers),
    ):
        asked = hp.get(key)
        if asked is not None and float(asked) != float(value):  # type: ignore[arg-type]
            raise InvalidRequest(
                f"{key}={asked} differs from the fine-tuned model's own {key}={value}: a job "
                "that continues from a fine-tune keeps its LoRA shape.",
                param=f"hyperparameters.{key}",
            )


@contextlib.contextmanager
def _cursor(after: str | None) -> Iterator[None]:
    """An `after` id that names nothing in the list is the client's error, not a 500."""
    try:
        yield
    except UnknownCursor:
        raise InvalidRequest(
            f"after: no object with id '{after}' in this list.", param="after", code="invalid_value"
        ) from None


def to_job(job: JobRecord) -> FineTuningJob:
    """The `fine_tuning.job` object of a stored job."""
    from server.protocol.fine_tuning import EvaluationMetrics, JobEvaluation

    hp = JobHyperparameters(**job.hyperparameters)
    evaluation = None
    if job.evaluation:  # pomar's before/after; figures this version does not know are left out
        known = set(EvaluationMetrics.model_fields)
        evaluation = JobEvaluation(
            **{
                phase: EvaluationMetrics(**{k: v for k, v in metrics.items() if k in known})
                for phase, metrics in job.evaluation.items()
                if phase in ("before", "after") and isinstance(metrics, dict)
            }
        )
    kind = (job.method or {}).get("type", "supervised")
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hp,
        method=JobMethod(type=kind, **{kind: JobMethodBody(hyperparameters=hp)}),
        model=job.model,
        organization_id=job.organization_id,
        result_files=job.result_files,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish if job.status == "running" else None,
        integrations=job.integrations,
        metadata=job.metadata,
        suffix=job.suffix,
        evaluation=evaluation,
    )


def to_event(event: EventRecord) -> JobEvent:
    """The `fine_tuning.job.event` object."""
    return JobEvent(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        # an object always, as OpenAI's schema and its own examples (`"data": {}`) have it
        data=event.data if isinstance(event.data, dict) else {},
    )


def to_checkpoint(checkpoint: CheckpointRecord) -> JobCheckpoint:
    """The `fine_tuning.job.checkpoint` object."""
    known = set(CheckpointMetrics.model_fields)
    return JobCheckpoint(
        id=checkpoint.id,
        created_at=checkpoint.created_at,
        fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
        fine_tuning_job_id=checkpoint.job_id,
        metrics=CheckpointMetrics(**{k: v for k, v in checkpoint.metrics.items() if k in known}),
        step_number=checkpoint.step_number,
    )
