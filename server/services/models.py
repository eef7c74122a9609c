"""The models list."""

from __future__ import annotations

from server.engine.registry import LoadedModel, ModelRegistry
from server.protocol.models import ModelCard, ModelList


class ModelService:
    """Answers `/v1/models` from the registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def list(self) -> ModelList:
        """Every model this server answers for."""
        return ModelList(data=[_card(m) for m in self._registry.all()])

    def get(self, model_id: str) -> ModelCard:
        """One model, or a 404 `model_not_found`."""
        return _card(self._registry.get(model_id))


def _card(model: LoadedModel) -> ModelCard:
    return ModelCard(
        id=model.id, created=model.created, owned_by=model.owned_by, parent=model.parent
    )
