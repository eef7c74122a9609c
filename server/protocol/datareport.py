"""`GET /v1/files/{file_id}/report`: the query of a dataset report (the answer is datalab's
`Report`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FileReportQuery(BaseModel):
    """Which model's tokenizer counts the tokens, and which method the file is for."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="a model id whose tokenizer measures the tokens and whose size the "
        "estimate uses (a fine-tuned model: its base); default: the server's default model",
    )
    method: Literal["auto", "supervised", "dpo"] = Field(
        "auto", description="what the file is for: supervised, dpo, or auto (from the records)"
    )
