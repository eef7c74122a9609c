"""The `validating_files` stage: the datalab pipeline over a job's files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from chatfmt.tokenizer import load_tokenizer
from datalab.config import PipelineConfig
from datalab.pipeline import prepare
from datalab.report import Report
from server.jobs.errors import JobFailed
from server.store import Store
from server.store.jobs import JobRecord


def prepare_training_data(
    train_path: Path,
    data_dir: Path,
    base_path: Path,
    *,
    seed: int,
    max_length: int | None = None,
    valid_path: Path | None = None,
    method: Literal["supervised", "dpo"] = "supervised",
) -> Report:
    """datalab over a training run's files: train.jsonl, valid.jsonl, report.json in `data_dir`.

    Tokens are measured with the base model's tokenizer. Shared by jobs and `pomar tune`.
    The file must suit the method: conversations for supervised, preference pairs (OpenAI's
    shape or prompt/chosen/rejected, written out in OpenAI's) for dpo; the other kind is
    refused (`method_mismatch`).
    """
    limit = {"max_length": max_length} if max_length else {}
    config = PipelineConfig(seed=seed, method=method, **limit)
    return prepare(
        train_path,
        data_dir,
        config,
        tokenizer=load_tokenizer(str(base_path)),
        valid_src=valid_path,
    )


def validate_files(store: Store, job: JobRecord, base_path: Path, data_dir: Path) -> None:
    """Clean, validate, dedupe and split the job's files into `data_dir`, or fail the job."""
    store.events.add(job.id, f"Validating training file: {job.training_file}")
    train_path = store.files.content_path(job.training_file)
    if train_path is None:
        raise JobFailed(
            "invalid_training_file",
            f"The training file {job.training_file} no longer exists.",
            "training_file",
        )
    valid_path = None
    if job.validation_file:
        valid_path = store.files.content_path(job.validation_file)
        if valid_path is None:
            raise JobFailed(
                "invalid_validation_file",
                f"The validation file {job.validation_file} no longer exists.",
                "validation_file",
            )
    report = prepare_training_data(
        train_path,
        data_dir,
        base_path,
        seed=job.seed,
        max_length=job.hyperparameters.get("max_length"),
        valid_path=valid_path,
        method=job.method_type,
    )
    errors = [p for p in report.problems if p.severity == "error"]
    store.events.add(
        job.id,
        report.summary(),
        data={
            "n_records": report.n_records,
            "n_valid": report.n_valid,
            "n_invalid": report.n_invalid,
            "n_duplicates": report.n_duplicates,
            "n_train": report.n_train,
            "n_validation": report.n_valid_split,
            "warnings": report.warnings[:10],
            # line by line, as `pomar data check` shows them (the first 20)
            "problems": [
                {
                    "file": p.file,
                    "line": p.line,
                    "code": p.code,
                    "field": p.field,
                    "message": p.message,
                }
                for p in errors[:20]
            ],
        },
    )
    if not report.can_train:
        reasons = "; ".join(report.blocking_reasons[:3])
        lines = "; ".join(f"line {p.line}: {p.code}" for p in errors[:5] if p.line)
        raise JobFailed(
            "invalid_training_file",
            f"The training file {job.training_file} cannot be used: {reasons}"
            + (f" (first problems: {lines})" if lines else ""),
            "training_file",
        )
