"""One generating request (chat, completions) on a leased model: prepare, then answer.

The lease lasts until the JSON is built, or until a stream's last event, so the model is
not unloaded under a running request; routes only choose between JSON and SSE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel

from server.models.registry import ModelRegistry
from server.models.residency import Lease, LoadedModel


class GenerationRequest(Protocol):
    """What a generation reads of a validated request."""

    model: str
    stream: bool | None


class GenerationService(Protocol):
    """A service that checks a request on a model, then streams or completes it."""

    def prepare(self, request: Any, model: LoadedModel) -> Any: ...

    def stream(self, prepared: Any) -> AsyncIterator[BaseModel]: ...

    async def complete(self, prepared: Any) -> BaseModel: ...


class Generation:
    """A prepared request holding its model's lease."""

    def __init__(self, lease: Lease, service: GenerationService, prepared: Any) -> None:
        self._lease, self._service, self._prepared = lease, service, prepared

    def stream(self) -> AsyncIterator[BaseModel]:
        """The answer's events; the lease is released after the last one (or on close)."""
        return self._lease.hold(self._service.stream(self._prepared))

    async def complete(self) -> BaseModel:
        """The whole answer."""
        return await self._service.complete(self._prepared)

    def release_unless_streaming(self) -> None:
        """Give the model back, unless a stream holds it (it then releases it itself)."""
        self._lease.release_unless_streaming()


async def begin(
    registry: ModelRegistry, request: GenerationRequest, service: GenerationService
) -> Generation:
    """Lease the request's model (loading it if need be) and prepare the request on it.

    Raises what `prepare` raises (an invalid request), with the lease given back.
    """
    lease = await registry.acquire(request.model)
    try:
        return Generation(lease, service, service.prepare(request, lease.model))
    except BaseException:
        lease.release_unless_streaming()
        raise
