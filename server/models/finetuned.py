"""Fine-tuned models: the one way an `ft:` model (or checkpoint) comes to be.

`register` persists the model in the store and serves it on its base at once; a job's
callback calls it for each checkpoint, the job runner for the final model, and `serve_all`
serves every stored one again when the server starts.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from server.models.quantized_base import served_base_id
from server.models.registry import ModelRegistry
from server.store import Store, StoreError

log = logging.getLogger(__name__)


class FineTunedModels:
    """Persist-and-serve for the `ft:` models of one store and one model registry."""

    def __init__(self, store: Store, registry: ModelRegistry) -> None:
        self._store = store
        self._registry = registry

    def register(self, model_id: str, base_id: str, adapter: Path, job_id: str) -> None:
        """Keep `model_id` (a LoRA adapter on `base_id`) in the store and serve it now."""
        # registered already: a resumed job saved this step again, or a restart
        # recovered it (see serve_all)
        with contextlib.suppress(StoreError):
            self._store.models.register(
                model_id, base_model=base_id, adapter_path=str(adapter), job_id=job_id
            )
        record = self._store.models.get(model_id)
        assert record is not None
        self._registry.add_adapter_model(
            model_id, base_id, adapter, record.created, self._parent(job_id)
        )

    def _parent(self, job_id: str | None) -> str | None:
        """The `ft:` model a job started from, when it did (else the base is the parent)."""
        job = self._store.jobs.get(job_id) if job_id else None
        return job.parent_model if job else None

    def serve_all(self) -> None:
        """Serve every stored fine-tuned (and checkpoint) model whose base is served here.

        A job that succeeded just before a crash, with its model not yet registered, gets
        it registered now.
        """
        known = {record.id for record in self._store.models.list(include_deleted=True)}
        for job in self._store.jobs.with_status("succeeded"):
            ft, adapter = job.fine_tuned_model, job.adapter_path
            if ft and adapter and ft not in known and Path(adapter).is_dir():
                # a QLoRA job's model is served on its quantized base
                base = served_base_id(
                    self._store.home / "models", job.base_id, job.hyperparameters, job.backend
                )
                with contextlib.suppress(StoreError):
                    self._store.models.register(
                        ft, base_model=base, adapter_path=adapter, job_id=job.id
                    )
        for record in self._store.models.list():
            if self._registry.base_path(record.base_model) is None:
                log.info(
                    "not serving %s: its base %s is not served here", record.id, record.base_model
                )
                continue
            if not Path(record.adapter_path).is_dir():
                log.warning(
                    "not serving %s: its adapter %s is gone", record.id, record.adapter_path
                )
                continue
            self._registry.add_adapter_model(
                record.id,
                record.base_model,
                Path(record.adapter_path),
                record.created,
                self._parent(record.job_id),
            )
