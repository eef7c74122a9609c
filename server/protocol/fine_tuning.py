"""`/v1/fine_tuning/jobs`: request validation and the job, event and checkpoint objects."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.errors import InvalidRequest, UnsupportedParameter
from server.protocol.common import OpenAIModel

Auto = Literal["auto"]
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]*$")


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters plus pomar's LoRA settings (extension fields).

    An unknown hyperparameter is refused by name rather than dropped.
    """

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | int = Field("auto", description="epochs; auto = OpenAI's rule")
    batch_size: Auto | int = Field("auto", description="examples per step")
    learning_rate_multiplier: Auto | float = Field("auto", description="x the base LoRA rate")
    # pomar extensions, echoed back in the job object
    lora_rank: int | None = Field(None, ge=1, le=256, description="LoRA rank r (pomar)")
    lora_alpha: float | None = Field(None, gt=0, le=4096, description="LoRA alpha (pomar)")
    lora_layers: int | None = Field(
        None, ge=-1, description="layers adapted from the top; -1 = all (pomar)"
    )
    max_length: int | None = Field(None, ge=16, le=32768, description="tokens per example (pomar)")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v: Auto | int) -> Auto | int:
        if v != "auto" and not 1 <= int(v) <= 50:
            raise ValueError("n_epochs must be 'auto' or between 1 and 50")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: Auto | int) -> Auto | int:
        if v != "auto" and not 1 <= int(v) <= 256:
            raise ValueError("batch_size must be 'auto' or between 1 and 256")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, v: Auto | float) -> Auto | float:
        if v != "auto" and not 0 < float(v) <= 1000:
            raise ValueError("learning_rate_multiplier must be 'auto' or in (0, 1000]")
        return v


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="allow")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None

    @model_validator(mode="after")
    def _supervised_only(self) -> Method:
        if self.type != "supervised":
            raise UnsupportedParameter("method.type", "Only 'supervised' fine-tuning is available.")
        return self


class JobCreateRequest(BaseModel):
    """The body of `POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not _SUFFIX.match(v):
            raise ValueError("suffix may only hold letters, digits, '.', '_' and '-'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (
            len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())
        ):
            raise ValueError("metadata: at most 16 keys of 64 chars, values of 512 chars")
        return v

    @model_validator(mode="after")
    def _checks(self) -> JobCreateRequest:
        if self.integrations:
            raise UnsupportedParameter("integrations", "pomar runs offline: no integrations.")
        method_hp = (
            self.method.supervised.hyperparameters
            if self.method and self.method.supervised
            else None
        )
        both = method_hp is not None and self.hyperparameters is not None
        if both and method_hp != self.hyperparameters:
            raise InvalidRequest(
                "Give hyperparameters either at the top level or in "
                "method.supervised.hyperparameters, not both.",
                param="hyperparameters",
            )
        return self

    def resolved_hyperparameters(self) -> Hyperparameters:
        """method.supervised.hyperparameters, else the (deprecated) top-level ones, else auto."""
        if self.method and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class JobError(OpenAIModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(OpenAIModel):
    """Hyperparameters as the job reports them: resolved numbers once known."""

    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_layers: int | None = None
    max_length: int | None = None


class JobSupervised(OpenAIModel):
    hyperparameters: JobHyperparameters


class JobMethod(OpenAIModel):
    type: Literal["supervised"] = "supervised"
    supervised: JobSupervised


class FineTuningJob(OpenAIModel):
    """The `fine_tuning.job` object."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    method: JobMethod
    model: str
    organization_id: str = "org-pomar"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    suffix: str | None = None


class JobList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(OpenAIModel):
    """The `fine_tuning.job.event` object."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class EventList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class CheckpointMetrics(OpenAIModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class JobCheckpoint(OpenAIModel):
    """The `fine_tuning.job.checkpoint` object."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class JobPageQuery(BaseModel):
    """Query parameters of the fine-tuning job and event lists."""

    model_config = ConfigDict(extra="ignore")

    after: str | None = Field(None, description="List the items after this id.")
    limit: int = Field(20, ge=1, le=100, description="Page size.")


class CheckpointPageQuery(JobPageQuery):
    """Query parameters of a job's checkpoint list."""

    limit: int = Field(10, ge=1, le=100, description="Page size.")
