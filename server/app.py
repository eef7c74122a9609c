"""`create_app(settings, engine=None)`: the Starlette application and its lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.engine.base import Engine
from server.engine.embeddings import EmbeddingModel
from server.engine.loop_worker import LoopWorker
from server.engine.templates import ChatTemplate, sampling_defaults
from server.engine.worker import GenerationWorker
from server.errors import ModelLoadError, PomarError, envelope_for, error_envelope
from server.jobs.launch import parse_hosts
from server.jobs.runner import JobRunner
from server.middleware import APIKeyMiddleware, BodyLimitMiddleware, RequestMetricsMiddleware
from server.models import ModelCatalog
from server.models.finetuned import FineTunedModels
from server.models.info import serving_memory
from server.models.loading import draft_gguf, load_engine, resolve_model_path, settle_backend
from server.models.memory import default_budget
from server.models.options import read_options
from server.models.registry import ModelRegistry
from server.models.residency import (
    LoadedModel,
    ModelSpec,
    Residency,
    measured_bytes,
)
from server.routes import (
    chat,
    completions,
    console,
    datareport,
    embeddings,
    files,
    fine_tuning,
    health,
    messages,
    metrics,
    models,
    openapi,
    responses,
)
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.datareport import DataReportService
from server.services.embeddings import EmbeddingService, serve_embedding_model
from server.services.files import FileService
from server.services.fine_tuning import FineTuningService
from server.services.messages import MessagesService
from server.services.metrics import Metrics
from server.services.models import ModelService
from server.services.responses import ResponseService
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
    #: Anthropic's Messages API, over `chat`
    messages: MessagesService
    #: OpenAI's Responses API, over `chat`
    responses: ResponseService
    #: datalab's report of an uploaded file (`GET /v1/files/{id}/report`)
    data_reports: DataReportService


def create_app(settings: Settings, engine: Engine | None = None) -> Starlette:
    """Build the app; its lifespan loads the default model (or serves `engine` if given)."""
    telemetry = Metrics()  # this app's own registry: `GET /metrics`

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await asyncio.to_thread(open_store, settings)
        residency = Residency(
            loader=lambda spec: load_model(spec, settings),
            budget=int(settings.max_memory) if settings.max_memory else default_budget(),
            keep_alive=settings.keep_alive,
        )
        catalog = ModelCatalog(settings.models_dir)
        registry = ModelRegistry(residency, catalog, settings.backend)
        runner: JobRunner | None = None
        embedding: EmbeddingModel | None = None
        reaper: asyncio.Task[None] | None = None
        try:
            default = await load_default_model(settings, engine)
            registry.add(default)
            embedding = serve_embedding_model(
                settings.embedding_model, registry, in_process=not settings.engine_process
            )
            fine_tuned = FineTunedModels(store, registry)
            fine_tuned.serve_all()
            runner = JobRunner(
                store, registry.base_path, fine_tuned.register, parse_hosts(settings.train_hosts)
            )
            runner.start()
            reaper = asyncio.create_task(registry.keep_alive_loop())
            telemetry.watch(registry, store.jobs)
            app.state.metrics = telemetry
            chat_service = ChatService(
                max_n=settings.max_n,
                default_max_tokens=settings.default_max_tokens,
                max_messages=settings.max_messages,
                reasoning_field=settings.reasoning_field,
                observer=telemetry,
            )
            app.state.services = Services(
                registry=registry,
                models=ModelService(registry, store, embedding),
                chat=chat_service,
                completions=CompletionService(max_n=settings.max_n, observer=telemetry),
                store=store,
                files=FileService(store.files, max_upload_bytes=settings.max_upload_bytes),
                fine_tuning=FineTuningService(store, registry, runner),
                embeddings=EmbeddingService(embedding),
                messages=MessagesService(chat_service),
                responses=ResponseService(chat_service, store.responses),
                data_reports=DataReportService(store.files, registry),
            )
            yield
        finally:
            telemetry.watch(None, None)
            if reaper is not None:
                reaper.cancel()
            if runner is not None:
                await asyncio.to_thread(runner.stop)
            registry.close()
            if embedding is not None:
                embedding.close()
            store.close()

    # outermost: every request is counted, those the middlewares below refuse included
    middleware = [Middleware(RequestMetricsMiddleware, observer=telemetry)]
    if settings.cors_origins:
        # outermost, so browsers' preflight requests are answered before the key check
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
            )
        )
    middleware.append(
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.max_body_bytes,
            exempt=frozenset({"/v1/files"}),
        )
    )
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        middleware.append(Middleware(APIKeyMiddleware, api_key=key, also=frozenset({"/metrics"})))
    return Starlette(
        routes=[
            # this order is also the order of /openapi.json's paths and tags
            *health.routes,
            *openapi.routes,
            *metrics.routes,
            *models.routes,
            *chat.routes,
            *responses.routes,
            *messages.routes,
            *completions.routes,
            *embeddings.routes,
            *files.routes,
            *datareport.routes,
            *fine_tuning.routes,
            *console.routes,
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


async def load_default_model(settings: Settings, engine: Engine | None) -> LoadedModel:
    """The model named at start: resolved, its backend chosen (and why logged), loaded.

    With `engine` (tests, embedding the server) that engine is served instead.
    """
    if engine is not None:
        worker = GenerationWorker(engine.backend)
        worker.concurrency = engine.max_concurrency
        return _loaded(settings.model, engine, worker)
    path = await asyncio.to_thread(resolve_model_path, settings.model, settings.models_dir)
    options = read_options(path)  # the model's own settings (`pomar models set`), if any
    requested = options.backend or settings.backend
    backend, why = await asyncio.to_thread(settle_backend, requested, path, settings.home)
    log.info("backend: %s (%s)", backend, why)
    spec = ModelSpec(settings.model, path, backend, int(time.time()), pinned=True, options=options)
    model = await load_model(spec, settings)
    measured = measured_bytes(model.engine)  # a runner's
    if measured is None:
        measured = await asyncio.to_thread(serving_memory, path, model.engine.backend)
    model.memory = measured
    return model


async def load_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Load a base model's engine on its own new worker thread.

    The engine must pass its self-check on this machine first (cached after the first
    time); under `auto` a failing one gives way to the next that can serve the model.
    The model's own settings (`spec.options`) win over the server's.
    """
    own = spec.options
    backend, why = await asyncio.to_thread(
        settle_backend, own.backend or settings.backend, spec.path, settings.home, spec.backend
    )
    if backend != spec.backend:
        log.warning("serving %s with %s instead of %s (%s)", spec.id, backend, spec.backend, why)
        spec = replace(spec, backend=backend)
    if spec.backend == "mlx":
        import os

        from server.engine.mlx.openblas import status

        log.info(status(os.environ))
    draft = await _draft_model(spec, settings)
    # a runner's streams advance on the event loop: fewer thread wake-ups a token
    worker = (LoopWorker if settings.engine_process else GenerationWorker)(spec.backend)
    started = time.perf_counter()
    options = {
        "max_batch_size": _pick(own.max_batch_size, settings.max_batch_size),
        "prompt_cache_entries": _pick(own.prompt_cache_entries, settings.prompt_cache_entries),
        "prompt_cache_bytes": _pick(own.prompt_cache_mb, settings.prompt_cache_mb) << 20,
        # speculative decoding (GGUF drafts; prompt lookup on MLX and torch): 0 when off
        "draft_tokens": 0
        if (own.speculative or settings.speculative) == "off"
        else _pick(own.draft_tokens, settings.draft_tokens),
    }
    try:
        if settings.engine_process:
            from server.engine.runner.remote import RemoteEngine, runner_load

            load = runner_load(spec.backend, spec.path, options, own.context, draft)
            # started here, on the event loop's thread: the runner dies with its starter;
            # the loop reads its socket (one thread woken a token, not two)
            remote = RemoteEngine(spec.id, load)
            loop = asyncio.get_running_loop()
            engine: Engine = await asyncio.to_thread(remote.wait_ready, loop)
        else:
            engine = await worker.call(
                lambda: load_engine(
                    spec.backend, spec.path, options, context=own.context, draft=draft
                )
            )
    except BaseException:
        worker.close()
        raise
    # an engine that batches (MLX) lets the worker interleave that many streams
    worker.concurrency = engine.max_concurrency
    log.info(
        "model %s loaded from %s on %s in %.1f s",
        spec.id,
        engine.model_path,
        engine.describe(),
        time.perf_counter() - started,
    )
    return _loaded(spec.id, engine, worker)


async def _draft_model(spec: ModelSpec, settings: Settings) -> Path | None:
    """The GGUF file that drafts for the model under speculative=draft, else None."""
    own = spec.options
    if (own.speculative or settings.speculative) != "draft":
        return None
    name = own.draft_model or settings.draft_model
    if not name:
        raise ModelLoadError(
            "speculative=draft needs a draft model: set POMAR_DRAFT_MODEL (or "
            f"`pomar models set {spec.id} draft_model=ID`) to a smaller GGUF of its family"
        )
    return await asyncio.to_thread(draft_gguf, name, settings.models_dir)


def _pick(own: int | None, server: int) -> int:
    """A model's own setting where it has one, else the server's."""
    return server if own is None else own


def _loaded(model_id: str, engine: Engine, worker: GenerationWorker) -> LoadedModel:
    return LoadedModel(
        id=model_id,
        engine=engine,
        worker=worker,
        template=ChatTemplate(engine.tokenizer),
        sampling=sampling_defaults(Path(engine.model_path)),
    )


def _error(
    request: Request,
    envelope: dict[str, Any],
    status: int,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answer in the route's wire shape (Anthropic's on the Messages API)."""
    body = envelope_for(request.url.path, envelope, status)
    return JSONResponse(body, status_code=status, headers=headers)


async def _pomar_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PomarError)
    return _error(request, exc.to_envelope(), exc.status_code)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    first = exc.errors(include_url=False)[0]
    param = _param_from_loc(first["loc"])
    message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
    envelope = error_envelope(message, "invalid_request_error", param or None, "invalid_value")
    return _error(request, envelope, 400)


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
    return _error(request, envelope, exc.status_code, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    envelope = error_envelope(
        "The server had an error while processing your request.", "server_error"
    )
    return _error(request, envelope, 500)


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
