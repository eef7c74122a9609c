"""The error that ends a fine-tuning job as `failed`."""

from __future__ import annotations


class JobFailed(Exception):
    """Ends a job as `failed` with an OpenAI-style error object."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}
