"""The models list, and pomar's model facts, load and unload (`/v1/pomar/models`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from server.engine.embeddings import EmbeddingModel
from server.errors import InvalidRequest, ModelInUse, ModelNotFound
from server.models.info import model_info, serving_memory
from server.models.registry import ModelRegistry
from server.models.residency import Listing
from server.models.store import CatalogEntry, CatalogError, folder_size
from server.protocol.models import (
    ModelCard,
    ModelDeleted,
    ModelDetails,
    ModelDetailsList,
    ModelKind,
    ModelList,
)
from server.store import Store


@dataclass(frozen=True)
class _Resident:
    """A loaded base model's state, read on the event loop."""

    backend: str
    memory: int
    leases: int


class ModelService:
    """Answers `/v1/models` from the registry, and the embedding model (listed last)."""

    def __init__(
        self, registry: ModelRegistry, store: Store, embedding: EmbeddingModel | None = None
    ) -> None:
        self._registry = registry
        self._store = store
        self._embedding = embedding

    def list(self) -> ModelList:
        """Every model this server answers for: loaded or not, stored or fine-tuned."""
        cards = [_card(row) for row in self._registry.listing()]
        if self._embedding is not None:
            cards.append(_embedding_card(self._embedding))
        return ModelList(data=cards)

    def get(self, model_id: str) -> ModelCard:
        """One model, or a 404 `model_not_found`."""
        if self._embedding is not None and model_id == self._embedding.id:
            return _embedding_card(self._embedding)
        for row in self._registry.listing():
            if row.id == model_id:
                return _card(row)
        self._registry.spec(model_id)  # the 400 (another endpoint's model) or 404
        raise ModelNotFound(model_id)

    def delete(self, model_id: str) -> ModelDeleted:
        """Delete a fine-tuned model (or checkpoint model); base models cannot be deleted."""
        is_embedding = self._embedding is not None and model_id == self._embedding.id
        if not is_embedding and self._registry.adapter(model_id) is None:
            self._registry.spec(model_id)  # unknown: 404
        if is_embedding or self._registry.adapter(model_id) is None:
            raise InvalidRequest(
                f"'{model_id}' is a base model; only fine-tuned models can be deleted.",
                param="model",
                code="model_not_deletable",
            )
        self._store.models.delete(model_id)
        self._registry.remove(model_id)
        return ModelDeleted(id=model_id, deleted=True)

    # ------------------------------------------------ pomar: facts, load, unload

    async def details(self) -> ModelDetailsList:
        """Every model with its source, format, precision, size, state and memory."""
        rows, resident = self._registry.listing(), self._resident()
        data = await asyncio.to_thread(lambda: [self._describe(r, resident) for r in rows])
        if self._embedding is not None:
            embedding, loaded = self._embedding, self._embedding.loaded
            data.append(await asyncio.to_thread(self._describe_embedding, embedding, loaded))
        in_use = sum(m.memory for m in self._registry.loaded())
        return ModelDetailsList(data=data, budget_bytes=self._registry.budget, in_use_bytes=in_use)

    async def detail(self, model_id: str) -> ModelDetails:
        """One model's facts, or a 404 `model_not_found`."""
        if self._embedding is not None and model_id == self._embedding.id:
            loaded = self._embedding.loaded
            return await asyncio.to_thread(self._describe_embedding, self._embedding, loaded)
        for row in self._registry.listing():
            if row.id == model_id:
                resident = self._resident()
                return await asyncio.to_thread(self._describe, row, resident)
        self._registry.spec(model_id)  # the 400 (another endpoint's model) or 404
        raise ModelNotFound(model_id)

    async def load(self, model_id: str) -> ModelDetails:
        """Load a model now (a fine-tune: its base), within the memory budget."""
        self._refuse_embedding(model_id, "load")
        # loading on purpose clears a model marked failed (its engine runner kept dying)
        ad = self._registry.adapter(model_id)
        self._registry.supervisor.reset(ad.base_id if ad else model_id)
        # as its first request would: idle models make room, 400 model_too_large, 503
        lease = await self._registry.acquire(model_id)
        lease.release()
        return await self.detail(model_id)

    async def unload(self, model_id: str) -> ModelDetails:
        """Unload a base model now; a no-op if it is not loaded; 409 while in use."""
        self._refuse_embedding(model_id, "unload")
        ad = self._registry.adapter(model_id)
        if ad is not None:
            raise InvalidRequest(
                f"'{model_id}' is a fine-tune served on its base '{ad.base_id}'; unload "
                f"'{ad.base_id}' (every fine-tune on it goes with it).",
                param="model",
                code="model_not_unloadable",
            )
        self._registry.spec(model_id)  # unknown: 404
        loaded = next((m for m in self._registry.loaded() if m.id == model_id), None)
        if loaded is not None and loaded.leases:
            # checked and unloaded in one step of the event loop: no request slips between
            raise ModelInUse(
                f"Model '{model_id}' is serving {loaded.leases} request(s) now; unload it "
                "once they finish.",
                param="model",
            )
        if loaded is not None:
            await self._registry.unload(model_id, "on request")
        return await self.detail(model_id)

    def _refuse_embedding(self, model_id: str, verb: str) -> None:
        if self._embedding is not None and model_id == self._embedding.id:
            raise InvalidRequest(
                f"'{model_id}' is the embedding model: it loads on its first /v1/embeddings "
                f"request and stays loaded; it cannot {verb} on request.",
                param="model",
                code="model_not_unloadable" if verb == "unload" else "model_not_loadable",
            )

    def _resident(self) -> dict[str, _Resident]:
        return {
            m.id: _Resident(m.engine.backend, m.memory, m.leases) for m in self._registry.loaded()
        }

    def _describe(self, row: Listing, resident: dict[str, _Resident]) -> ModelDetails:
        """A model's facts from its files and the registry (off the event loop: reads files)."""
        ad = self._registry.adapter(row.id)
        if ad is not None:
            record = self._store.models.get(row.id)
            kind: ModelKind = "checkpoint" if ":ckpt-step-" in row.id else "fine-tune"
            return ModelDetails(
                id=row.id,
                created=row.created,
                kind=kind,
                parent=row.parent,
                base=ad.base_id,
                source="fine-tuned",
                origin=record.job_id if record is not None else None,
                path=str(ad.adapter),
                format="lora",
                size_bytes=folder_size(ad.adapter) if ad.adapter.exists() else None,
                loaded=row.loaded,
                notes=[f"served on its base '{ad.base_id}', whose memory it shares"],
            )
        spec = self._registry.spec(row.id)
        entry = self._registry.entry(row.id)
        now = resident.get(row.id)
        details = ModelDetails(
            id=row.id,
            created=row.created,
            kind="base",
            base=row.id,
            source=entry.source if entry is not None else "path",
            origin=entry.origin if entry is not None else str(spec.path),
            path=str(spec.path),
            backend=now.backend if now is not None else spec.backend,
            loaded=now is not None,
            pinned=spec.pinned,
            active_requests=now.leases if now is not None else 0,
            memory_bytes=now.memory if now is not None else None,
        )
        _add_file_facts(details, entry if entry is not None else spec.path)
        if details.backend is not None:
            try:
                details.memory_required_bytes = serving_memory(spec.path, details.backend)
            except (OSError, ValueError, RuntimeError) as exc:
                details.notes.append(f"memory unknown: {exc}")
        return details

    def _describe_embedding(self, model: EmbeddingModel, loaded: bool) -> ModelDetails:
        entry = self._registry.entry(model.id)
        details = ModelDetails(
            id=model.id,
            created=model.created,
            kind="embedding",
            base=model.id,
            source=entry.source if entry is not None else "path",
            origin=entry.origin if entry is not None else str(model.path),
            path=str(model.path),
            backend="torch",
            loaded=loaded,
            notes=[
                "served by /v1/embeddings: it loads on its first request, outside the memory "
                "budget of the chat models"
            ],
        )
        _add_file_facts(details, entry if entry is not None else Path(model.path))
        try:
            details.memory_required_bytes = serving_memory(Path(model.path), "torch")
        except (OSError, ValueError, RuntimeError) as exc:
            details.notes.append(f"memory unknown: {exc}")
        return details


def _add_file_facts(details: ModelDetails, target: CatalogEntry | Path) -> None:
    """Format, precision, size, architecture, parameters and context from the files."""
    try:
        info = model_info(target)
    except (CatalogError, OSError, ValueError) as exc:
        details.notes.append(f"its files could not be read: {exc}")
        return
    details.format, details.precision = info.format, info.precision
    details.architecture, details.parameters = info.architecture, info.parameters
    details.context_length, details.size_bytes = info.context_length, info.size_bytes


def _card(row: Listing) -> ModelCard:
    return ModelCard(
        id=row.id, created=row.created, owned_by="pomar", parent=row.parent, loaded=row.loaded
    )


def _embedding_card(model: EmbeddingModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by="pomar")
