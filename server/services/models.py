"""The models list."""

from __future__ import annotations

from server.engine.embeddings import EmbeddingModel
from server.errors import InvalidRequest, ModelNotFound
from server.models.registry import ModelRegistry
from server.models.residency import Listing
from server.protocol.models import ModelCard, ModelDeleted, ModelList
from server.store import Store


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


def _card(row: Listing) -> ModelCard:
    return ModelCard(
        id=row.id, created=row.created, owned_by="pomar", parent=row.parent, loaded=row.loaded
    )


def _embedding_card(model: EmbeddingModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by="pomar")
