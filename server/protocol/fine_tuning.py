"""`/v1/fine_tuning/jobs`: request validation and the job, event and checkpoint objects."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

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
    beta: Auto | float | None = Field(
        None, description="DPO only: weight of the KL penalty; auto = 0.1 as OpenAI"
    )
    quantize: Literal[4, 8] | None = Field(
        None, description="train QLoRA on the base quantized to 4 or 8 bits (pomar, MLX)"
    )
    hosts: Auto | int | None = Field(
        None,
        description="ranks to train on, data-parallel, from POMAR_TRAIN_HOSTS' slots; "
        "auto = all of them (pomar)",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: Auto | int | None) -> Auto | int | None:
        if v is not None and v != "auto" and int(v) < 1:
            raise ValueError("hosts must be 'auto' or at least 1")
        return v

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

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: Auto | float | None) -> Auto | float | None:
        if v is not None and v != "auto" and not 0 < float(v) <= 10:
            raise ValueError("beta must be 'auto' or in (0, 10]")
        return v


class MethodHyperparameters(BaseModel):
    """`method.supervised` or `method.dpo`: the method's hyperparameters."""

    model_config = ConfigDict(extra="allow")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodHyperparameters | None = None
    dpo: MethodHyperparameters | None = None

    @model_validator(mode="after")
    def _trainable(self) -> Method:
        if self.type == "reinforcement":
            raise UnsupportedParameter(
                "method.type", "Only 'supervised' and 'dpo' fine-tuning are available."
            )
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise InvalidRequest(
                f"method.{other} is given but method.type is '{self.type}'.",
                param=f"method.{other}",
            )
        return self

    def hyperparameters(self) -> Hyperparameters | None:
        """The hyperparameters under `method.<type>`, if given."""
        body = self.supervised if self.type == "supervised" else self.dpo
        return body.hyperparameters if body else None


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
        method_hp = self.method.hyperparameters() if self.method else None
        both = method_hp is not None and self.hyperparameters is not None
        if both and method_hp != self.hyperparameters:
            raise InvalidRequest(
                "Give hyperparameters either at the top level or in "
                f"method.{self.method_type}.hyperparameters, not both.",
                param="hyperparameters",
            )
        beta = self.resolved_hyperparameters().beta
        if beta is not None and self.method_type != "dpo":
            raise InvalidRequest(
                "beta is a DPO hyperparameter: give it with method.type 'dpo'.",
                param=f"method.{self.method_type}.hyperparameters.beta",
            )
        return self

    @property
    def method_type(self) -> Literal["supervised", "dpo"]:
        """The training method: `method.type`, supervised when no method is given."""
        return "dpo" if self.method is not None and self.method.type == "dpo" else "supervised"

    def resolved_hyperparameters(self) -> Hyperparameters:
        """method.<type>.hyperparameters, else the (deprecated) top-level ones, else auto."""
        method_hp = self.method.hyperparameters() if self.method else None
        return method_hp or self.hyperparameters or Hyperparameters()


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
    beta: Auto | float | None = None
    quantize: int | None = None
    hosts: int | None = None


class JobMethodBody(OpenAIModel):
    hyperparameters: JobHyperparameters


class JobMethod(OpenAIModel):
    """The job's `method`: its type and, under the type's name, its hyperparameters."""

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: JobMethodBody | None = None
    dpo: JobMethodBody | None = None


class EvaluationMetrics(OpenAIModel):
    """The model measured on the job's validation set (pomar; see `finetune.evaluation`).

    Every field is optional: a figure that could not be measured is null.
    """

    step: int | None = Field(None, description="steps trained when measured (0 before)")
    valid_loss: float | None = Field(
        None, description="validation loss (supervised: per trained token; DPO: DPO's loss)"
    )
    valid_mean_token_accuracy: float | None = Field(
        None, description="share of trained validation tokens predicted exactly (greedy)"
    )
    n_examples: int | None = Field(None, description="validation examples (DPO: pairs) scored")
    exact_match: float | None = Field(
        None, description="share of greedy answers equal to the reference (whitespace-trimmed)"
    )
    normalized_match: float | None = Field(
        None,
        description="share equal after casefolding, collapsing whitespace and stripping "
        "surrounding punctuation and quotes",
    )
    n_generated: int | None = Field(None, description="greedy answers compared (at most 32)")
    preference_accuracy: float | None = Field(
        None,
        description="DPO: share of pairs whose preferred output is more likely than the "
        "non-preferred one",
    )
    elapsed_s: float | None = Field(None, description="seconds the evaluation took")


class JobEvaluation(OpenAIModel):
    """pomar's before/after evaluation of a job with a validation set."""

    before: EvaluationMetrics | None = Field(
        None, description="the model as the job started, before its first step"
    )
    after: EvaluationMetrics | None = Field(
        None, description="the fine-tuned model, after the last step (null until then)"
    )


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
    # pomar extension
    evaluation: JobEvaluation | None = Field(
        None,
        description="pomar: the validation set measured before and after training (null "
        "without a validation set)",
    )


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
    """A checkpoint's metrics; what was not measured is left out (OpenAI's schema gives
    each as a number, never null)."""

    @model_serializer(mode="wrap")
    def _measured_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

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
