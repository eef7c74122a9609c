"""The models list."""

from __future__ import annotations

from server.engine.embeddings import EmbeddingModel
from server.engine.registry import LoadedModel, ModelRegistry
from server.errors import InvalidRequest
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
        """Every model this server answers for."""
        cards = [_card(m) for m in self._registry.all()]
        if self._embedding is not None:
            cards.append(_embedding_card(self._embedding))
        return ModelList(data=cards)

    def get(self, model_id: str) -> ModelCard:
        """One model, or a 404 `model_not_found`."""
        if self._embedding is not None and model_id == self._embedding.id:
            return _embedding_card(self._embedding)
        return _card(self._registry.get(model_id))

    def delete(self, model_id: str) -> ModelDeleted:
        """Delete a fine-tuned model (or checkpoint model); base models cannot be deleted."""
        is_embedding = self._embedding is not None and model_id == self._embedding.id
        model = None if is_embedding else self._registry.get(model_id)
        if model is None or model.adapter is None:
            raise InvalidRequest(
                f"'{model_id}' is a base model; only fine-tuned models can be deleted.",
                param="model",
                code="model_not_deletable",
            )
        self._store.models.delete(model_id)
        self._registry.remove(model_id)
        return ModelDeleted(id=model_id, deleted=True)


def _card(model: LoadedModel) -> ModelCard:
    return ModelCard(
        id=model.id, created=model.created, owned_by=model.owned_by, parent=model.parent
    )


def _embedding_card(model: EmbeddingModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by="pomar")
