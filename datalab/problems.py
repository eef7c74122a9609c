"""Problems found in a dataset: one typed record per finding, with a stable machine code.

Every check in datalab reports through :class:`Problem` so that the CLI, the job runner and
the Files API all speak the same vocabulary. Codes are part of the public interface: add new
ones, never rename old ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["error", "warning"]


class Code:
    """The stable machine codes of every problem datalab reports."""

    # Reading the file.
    EMPTY_FILE: Final = "empty_file"
    EMPTY_LINE: Final = "empty_line"
    UTF8_BOM: Final = "utf8_bom"
    CRLF_LINE_ENDINGS: Final = "crlf_line_endings"
    INVALID_UTF8: Final = "invalid_utf8"
    LINE_TOO_LONG: Final = "line_too_long"
    INVALID_JSON: Final = "invalid_json"
    NOT_AN_OBJECT: Final = "not_an_object"
    # Structure of a record.
    MISSING_MESSAGES: Final = "missing_messages"
    MISSING_FIELD: Final = "missing_field"
    INVALID_TYPE: Final = "invalid_type"
    EMPTY_MESSAGES: Final = "empty_messages"
    UNKNOWN_ROLE: Final = "unknown_role"
    EMPTY_CONTENT: Final = "empty_content"
    NO_ASSISTANT_MESSAGE: Final = "no_assistant_message"
    NO_TRAINABLE_MESSAGE: Final = "no_trainable_message"
    INVALID_WEIGHT: Final = "invalid_weight"
    INVALID_TOOL_CALL: Final = "invalid_tool_call"
    # Structure of a preference pair (DPO data).
    MISSING_INPUT_MESSAGES: Final = "missing_input_messages"
    MISSING_OUTPUT: Final = "missing_output"
    OUTPUT_NOT_ONE_MESSAGE: Final = "output_not_one_message"
    OUTPUT_NOT_ASSISTANT: Final = "output_not_assistant"
    INPUT_ENDS_WITH_ASSISTANT: Final = "input_ends_with_assistant"
    INPUT_ENDS_WITH_SYSTEM: Final = "input_ends_with_system"
    IDENTICAL_OUTPUTS: Final = "identical_outputs"
    # Quality rules.
    ANSWER_TOO_SHORT: Final = "answer_too_short"
    ANSWER_TOO_LONG: Final = "answer_too_long"
    TOO_FEW_WORDS: Final = "too_few_words"
    TOO_MANY_URLS: Final = "too_many_urls"
    OVER_MAX_LENGTH: Final = "over_max_length"
    # Whole-file findings.
    TOO_FEW_EXAMPLES: Final = "too_few_examples"
    MIXED_FORMATS: Final = "mixed_formats"
    MIXED_PREFERENCE_AND_CHAT: Final = "mixed_preference_and_chat"
    METHOD_MISMATCH: Final = "method_mismatch"
    VALID_OVERLAPS_TRAIN: Final = "valid_overlaps_train"
    NOT_CONVERTIBLE: Final = "not_convertible"


# Codes that never drop a record: warnings, and findings about the whole file.
NOT_RECORD_ERRORS = frozenset(
    {
        Code.EMPTY_LINE,
        Code.UTF8_BOM,
        Code.CRLF_LINE_ENDINGS,
        Code.VALID_OVERLAPS_TRAIN,
        Code.EMPTY_FILE,
        Code.TOO_FEW_EXAMPLES,
        Code.MIXED_FORMATS,
        Code.MIXED_PREFERENCE_AND_CHAT,
        Code.METHOD_MISMATCH,
        Code.OVER_MAX_LENGTH,
    }
)


class Problem(BaseModel):
    """One finding about one line of a file (line 0 means the whole file)."""

    model_config = ConfigDict(frozen=True)

    line: int = Field(ge=0, description="1-based line number; 0 for a whole-file finding")
    code: str = Field(description="stable machine code, one of `Code`")
    field: str | None = Field(default=None, description="path of the field, e.g. messages[1].role")
    message: str = Field(description="human-readable explanation")
    severity: Severity = Field(
        default="error", description="errors drop the record; warnings only inform"
    )
    file: Literal["train", "valid"] = Field(default="train", description="which input file")


class ProblemLog:
    """Collects problems: keeps the first ``max_problems`` in full and counts all of them.

    The cap keeps memory bounded on a file where every one of a million lines is broken,
    while the per-code counts stay exact.
    """

    def __init__(
        self,
        max_problems: int = 1000,
        file: Literal["train", "valid"] = "train",
        keep_warnings: bool = True,
    ) -> None:
        self.max_problems = max_problems
        self.file: Literal["train", "valid"] = file
        self.keep_warnings = keep_warnings
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self.n_dropped = 0

    def add(
        self,
        line: int,
        code: str,
        message: str,
        field: str | None = None,
        severity: Severity = "error",
    ) -> None:
        """Record one problem."""
        self.counts[code] += 1
        if severity == "warning" and not self.keep_warnings:
            return
        if len(self.problems) < self.max_problems:
            self.problems.append(
                Problem(
                    line=line,
                    code=code,
                    field=field,
                    message=message,
                    severity=severity,
                    file=self.file,
                )
            )
        else:
            self.n_dropped += 1

    def extend(self, problems: list[Problem]) -> None:
        """Record problems built elsewhere (they are re-tagged with this log's file)."""
        for p in problems:
            self.add(p.line, p.code, p.message, p.field, p.severity)

    @property
    def truncated(self) -> bool:
        """True when some problems were counted but not kept."""
        return self.n_dropped > 0
