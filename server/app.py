"""`create_app(settings, engine=None)`: the Starlette application and its lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.engine.base import Engine
from server.engine.embeddings import EmbeddingModel
from server.engine.registry import (
    LoadedModel,
    ModelRegistry,
    choose_backend,
    load_engine,
    resolve_model_path,
)
from server.engine.templates import ChatTemplate, sampling_defaults
from server.engine.worker import GenerationWorker
from server.errors import PomarError, error_envelope
from server.jobs.runner import JobRunner
from server.middleware import APIKeyMiddleware
from server.routes import chat, completions, embeddings, files, fine_tuning, health, models
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService, serve_embedding_model
from server.services.files import FileService
from server.services.fine_tuning import FineTuningService
from server.services.models import ModelService
from server.settings import Settings
from server.store import Store

log = logging.getLogger("pomar")


@dataclass
class Services:
    """What routes reach through `request.app.state.services`."""

    registry: ModelRegistry
    models: ModelService
    chat: ChatService
    completions: CompletionService
    store: Store
    files: FileService
    fine_tuning: FineTuningService
    embeddings: EmbeddingService


def create_app(settings: Settings, engine: Engine | None = None) -> Starlette:
    """Build the app; its lifespan loads the default model (or serves `engine` if given)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await asyncio.to_thread(open_store, settings)
        registry = ModelRegistry()
        runner: JobRunner | None = None
        embedding: EmbeddingModel | None = None
        try:
            default = await load_default_model(settings, engine)
            registry.add(default)
            embedding = serve_embedding_model(settings.embedding_model, registry)
            serve_fine_tuned_models(store, registry)
            runner = JobRunner(
                store, registry.base_path, registry.add_adapter_model, default.engine.backend
            )
            runner.start()
            app.state.services = Services(
                registry=registry,
                models=ModelService(registry, store, embedding),
                chat=ChatService(
                    registry, max_n=settings.max_n, default_max_tokens=settings.default_max_tokens
                ),
                completions=CompletionService(registry, max_n=settings.max_n),
                store=store,
                files=FileService(store.files, max_upload_bytes=settings.max_upload_bytes),
                fine_tuning=FineTuningService(store, registry, runner),
                embeddings=EmbeddingService(embedding),
            )
            yield
        finally:
            if runner is not None:
                await asyncio.to_thread(runner.stop)
            registry.close()
            if embedding is not None:
                embedding.close()
            store.close()

    middleware = []
    if settings.api_key is not None:
        middleware.append(Middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value()))
    return Starlette(
        routes=[
            *health.routes,
            *models.routes,
            *chat.routes,
            *completions.routes,
            *files.routes,
            *fine_tuning.routes,
            *embeddings.routes,
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            PomarError: _pomar_error,
            ValidationError: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )


def open_store(settings: Settings) -> Store:
    """Open the store under the home folder and clean up after a crash, before serving."""
    store = Store.open(settings.home)
    recovery = store.recover()
    log.info(
        "store %s: schema v%d, %d temp file(s) and %d orphan blob(s) cleaned up",
        settings.home,
        store.db.version,
        recovery.temp_files_removed,
        recovery.orphan_blobs_removed,
    )
    return store


def serve_fine_tuned_models(store: Store, registry: ModelRegistry) -> None:
    """Serve every stored fine-tuned (and checkpoint) model whose base is loaded."""
    for record in store.models.list():
        if registry.base_path(record.base_model) is None:
            log.info("not serving %s: its base %s is not loaded", record.id, record.base_model)
            continue
        if not Path(record.adapter_path).is_dir():
            log.warning("not serving %s: its adapter %s is gone", record.id, record.adapter_path)
            continue
        registry.add_adapter_model(
            record.id, record.base_model, Path(record.adapter_path), record.created
        )


async def load_default_model(settings: Settings, engine: Engine | None) -> LoadedModel:
    """Resolve, pick the backend, and load the model on its own worker thread."""
    if engine is None:
        path = await asyncio.to_thread(resolve_model_path, settings.model, settings.models_dir)
        backend, why = choose_backend(settings.backend, path)
        log.info("backend: %s (%s)", backend, why)
        if backend == "mlx":
            import os

            from server.engine.openblas import status

            log.info(status(os.environ))
        worker = GenerationWorker(backend)
        started = time.perf_counter()
        options = {
            "max_batch_size": settings.max_batch_size,
            "prompt_cache_entries": settings.prompt_cache_entries,
            "prompt_cache_bytes": settings.prompt_cache_mb << 20,
        }
        loaded = await worker.call(lambda: load_engine(backend, path, options))
    else:
        worker, started, loaded = GenerationWorker(engine.backend), time.perf_counter(), engine
    # an engine that batches (MLX) lets the worker interleave that many streams
    worker.concurrency = loaded.max_concurrency
    log.info(
        "model %s loaded from %s on %s in %.1f s",
        settings.model,
        loaded.model_path,
        loaded.describe(),
        time.perf_counter() - started,
    )
    return LoadedModel(
        id=settings.model,
        engine=loaded,
        worker=worker,
        template=ChatTemplate(loaded.tokenizer),
        sampling=sampling_defaults(Path(loaded.model_path)),
    )


async def _pomar_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PomarError)
    return JSONResponse(exc.to_envelope(), status_code=exc.status_code)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    first = exc.errors(include_url=False)[0]
    param = _param_from_loc(first["loc"])
    message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
    envelope = error_envelope(message, "invalid_request_error", param or None, "invalid_value")
    return JSONResponse(envelope, status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message, code = f"Invalid URL ({request.method} {request.url.path})", "unknown_url"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    envelope = error_envelope(message, "invalid_request_error", None, code)
    return JSONResponse(envelope, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(_request: Request, exc: Exception) -> Response:
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    envelope = error_envelope(
        "The server had an error while processing your request.", "server_error"
    )
    return JSONResponse(envelope, status_code=500)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal_error"}


def _param_from_loc(loc: tuple[int | str, ...]) -> str:
    """`('messages', 0, 'role')` -> `messages[0].role`, without pydantic's union type tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
        else:
            break
    return out
