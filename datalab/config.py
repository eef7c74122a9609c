"""Every threshold of the datalab pipeline, in one validated model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datalab.estimate import EstimateConfig

Goal = Literal["style", "domain", "knowledge", "behaviour"]
Method = Literal["auto", "supervised", "dpo"]


class PipelineConfig(BaseModel):
    """Configuration of :func:`datalab.pipeline.prepare`; the defaults follow OpenAI's rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Validation thresholds.
    min_answer_chars: int = Field(10, ge=0, description="shortest trained answer, in characters")
    max_answer_chars: int | None = Field(
        20_000, ge=1, description="longest trained answer, in characters (None: no limit)"
    )
    max_answer_tokens: int | None = Field(
        None, ge=1, description="longest trained answer, in tokens (needs a tokenizer)"
    )
    min_words: int = Field(3, ge=0, description="fewest words in a trained answer")
    max_urls: int | None = Field(2, ge=0, description="most URLs in one conversation")
    min_examples: int = Field(10, ge=1, description="fewest examples a file needs to train")
    max_line_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="longer lines are reported and skipped unread"
    )
    strict: bool = Field(False, description="any invalid record blocks training (OpenAI-like)")
    allow_mixed_formats: bool = Field(
        False, description="accept a file mixing formats (otherwise it cannot train)"
    )
    method: Method = Field(
        "auto",
        description="fine-tuning method the file is for: supervised (conversations), dpo "
        "(preference pairs), or auto (from the records)",
    )
    # Deduplication.
    dedupe: bool = Field(True, description="drop exact duplicates (after normalisation)")
    near_dedupe: bool = Field(True, description="drop near-duplicates (MinHash LSH)")
    near_dup_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Jaccard similarity at which two records are near-dups"
    )
    minhash_perm: int = Field(64, ge=16, le=512, description="MinHash permutations")
    shingle_words: int = Field(3, ge=1, le=16, description="words per shingle for MinHash")
    # Balance.
    balance_field: str = Field("category", min_length=1, description="top-level category key")
    balance_cap: int | None = Field(None, ge=1, description="most examples kept per category")
    # Split.
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share held out to validate")
    seed: int = Field(42, description="seed for balance sampling and the split")
    # Tokens.
    max_length: int | None = Field(
        None, ge=16, description="training sequence length in tokens (None: recommended one)"
    )
    max_length_cap: int = Field(2048, ge=128, description="cap on the recommended max_length")
    # Guidance, PII, report.
    goal: Goal | None = Field(None, description="style, domain, knowledge or behaviour")
    laptop_max_examples: int = Field(10_000, ge=1, description="warn above this many examples")
    redact_pii: bool = Field(False, description="replace e-mails, phones, cards... in the output")
    max_problems: int = Field(1000, ge=1, description="problems kept in full in the report")
    workers: int | None = Field(
        None,
        ge=1,
        description="processes for per-record work (None: all cores for files over 16 MB; "
        "1: this process only)",
    )
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.max_answer_chars is not None and self.max_answer_chars < self.min_answer_chars:
            raise ValueError("max_answer_chars must be at least min_answer_chars")
        return self
