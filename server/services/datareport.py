"""A dataset report for an uploaded file: datalab's analysis (`pomar data check`), writing
nothing, with the tokens of a served model's tokenizer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from chatfmt.tokenizer import load_tokenizer
from datalab.config import PipelineConfig
from datalab.estimate import ModelShape, load_model_shape
from datalab.pipeline import check
from datalab.report import Report
from server.errors import FileNotFound, InvalidRequest
from server.models.loading import backend_for, training_backend
from server.models.memory import held_weights
from server.models.registry import ModelRegistry
from server.protocol.datareport import FileReportQuery
from server.store import FileStore

#: reports kept (files never change once uploaded): the console asks again on each visit
CACHE_SIZE = 16


class DataReportService:
    """Runs datalab's check over a stored file and keeps the last few reports."""

    def __init__(self, files: FileStore, registry: ModelRegistry) -> None:
        self._files = files
        self._registry = registry
        self._cache: OrderedDict[tuple[str, str, str], Report] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, file_id: str, query: FileReportQuery) -> Report:
        """datalab's report of the file (blocking: call it off the event loop)."""
        path = self._files.content_path(file_id)
        if path is None:
            raise FileNotFound(file_id)
        model_id = query.model or self._registry.default().id
        key = (file_id, model_id, query.method)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        base = self._base_path(model_id)
        try:
            tokenizer = load_tokenizer(str(base))
        except Exception:  # a base without a readable tokenizer: a report without tokens
            tokenizer = None
        report = check(
            path, PipelineConfig(method=query.method), tokenizer, model_spec=_shape(base)
        )
        record = self._files.get(file_id)
        if record is not None:  # the blob's path says nothing to the user; its name does
            report.source = record.filename
        with self._lock:
            self._cache[key] = report
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return report

    def _base_path(self, model_id: str) -> Path:
        adapter = self._registry.adapter(model_id)
        base_id = adapter.base_id if adapter is not None else model_id
        path = self._registry.base_path(base_id)
        if path is None:
            self._registry.spec(base_id)  # an unknown id: its 404 (or 400)
            raise InvalidRequest(f"'{model_id}' has no tokenizer to count with.", param="model")
        return path


def _shape(path: Path) -> ModelShape | None:
    """The model's shape and its weights as the trainer holds them (the estimate's memory)."""
    if not path.is_dir():
        return None
    shape = load_model_shape(path)
    if shape is None:
        return None
    try:
        weights = held_weights(path, training_backend(backend_for("auto", path)))
    except Exception:  # weights pomar cannot size: the estimate goes without memory
        return shape
    return shape.model_copy(update={"weights_bytes": weights})
