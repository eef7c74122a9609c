"""The report of a datalab run: one JSON-serialisable model with every section."""

from __future__ import annotations

from pydantic import BaseModel, Field

from datalab.balance import BalanceSection
from datalab.config import PipelineConfig
from datalab.dedupe import Cluster
from datalab.diversity import DiversitySection
from datalab.estimate import Estimate
from datalab.guidance import SizeGuidance
from datalab.pairs import PreferenceSection, TrainingMethod
from datalab.pii import PiiSection
from datalab.problems import NOT_RECORD_ERRORS, Problem
from datalab.split import SplitSection
from datalab.tokens import TokenSection


class FormatSection(BaseModel):
    """Which record formats the file contains."""

    counts: dict[str, int] = Field(description="records per detected format")
    first_line: dict[str, int] = Field(description="first line of each format")
    mixed: bool
    primary: str | None = Field(description="the most common format")


class CleaningSection(BaseModel):
    """What cleaning changed."""

    records_changed: int
    changes: dict[str, int] = Field(description="occurrences per kind of change")


class DedupeSection(BaseModel):
    """Duplicates dropped, and the largest clusters."""

    exact_enabled: bool
    near_enabled: bool
    n_exact: int
    n_near: int
    threshold: float
    num_perm: int
    bands: int | None
    rows: int | None
    n_clusters: int
    clusters: list[Cluster] = Field(description="largest clusters first (at most 20)")


class ValidFileSection(BaseModel):
    """The caller's own validation file, when one was given."""

    n_records: int
    n_valid: int
    n_kept: int
    n_overlap_dropped: int = Field(description="records identical to a training record")
    problem_counts: dict[str, int]


class Report(BaseModel):
    """Everything datalab found about a training file, and whether it can train."""

    source: str
    valid_source: str | None = None
    duration_s: float
    workers: int = Field(0, description="worker processes that did per-record work (0: none)")
    can_train: bool
    method: TrainingMethod = Field(
        "supervised",
        description="what the prepared files train: supervised (chat JSONL) or dpo "
        "(preference pairs in OpenAI's shape)",
    )
    blocking_reasons: list[str]
    warnings: list[str]
    n_lines: int = Field(description="physical lines read")
    n_records: int = Field(description="non-empty lines")
    n_invalid: int = Field(description="records dropped by a validation error")
    n_valid: int = Field(description="records that passed validation")
    n_duplicates: int = Field(description="valid records dropped as duplicates")
    n_balanced_out: int = Field(description="records dropped by the category cap")
    n_kept: int = Field(description="records kept for training and validation")
    n_train: int
    n_valid_split: int = Field(description="records in the validation set")
    problem_counts: dict[str, int]
    problems: list[Problem]
    problems_truncated: bool
    formats: FormatSection
    cleaning: CleaningSection
    dedupe: DedupeSection
    balance: BalanceSection | None
    diversity: DiversitySection
    tokens: TokenSection | None
    preference: PreferenceSection | None = Field(
        None, description="the pairs, for a DPO file (tokens per prompt and output)"
    )
    pii: PiiSection
    guidance: SizeGuidance | None
    split: SplitSection
    estimate: Estimate | None
    valid_file: ValidFileSection | None = None
    outputs: dict[str, str] = Field(default_factory=dict, description="files written")
    config: PipelineConfig

    def summary(self) -> str:
        """One paragraph for a job event or a log line."""
        parts = [f"{self.n_records:,} records: {self.n_valid:,} valid, {self.n_invalid:,} invalid"]
        if self.method == "dpo":
            parts[0] = "Preference pairs (DPO): " + parts[0]
        errors = {
            k: v
            for k, v in sorted(self.problem_counts.items(), key=lambda kv: -kv[1])
            if k not in NOT_RECORD_ERRORS
        }
        if errors:
            top = ", ".join(f"{k} {v:,}" for k, v in list(errors.items())[:3])
            parts[-1] += f" ({top})"
        if self.n_duplicates:
            parts.append(f"{self.n_duplicates:,} duplicates removed")
        if self.n_balanced_out:
            parts.append(f"{self.n_balanced_out:,} removed by the category cap")
        parts.append(f"{self.n_train:,} train / {self.n_valid_split:,} validation")
        text = "; ".join(parts) + "."
        if self.tokens is not None:
            text += (
                f" Tokens: median {self.tokens.median:.0f}, p95 {self.tokens.p95:.0f}; "
                f"recommended max_length {self.tokens.recommended_max_length}."
            )
        if self.estimate is not None:
            text += f" Estimate: {self.estimate.message}."
        if self.can_train:
            text += " Ready to train."
        else:
            text += " Cannot train: " + "; ".join(self.blocking_reasons) + "."
        return text
