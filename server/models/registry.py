"""The models this server answers for, by id: loaded ones, stored ones, fine-tuned ones.

See `server.models.residency` for the rules (on-demand loading, memory budget, LRU,
keep-alive). All bookkeeping runs on the event loop, except `add_adapter_model` and
`base_path`, which the job runner calls from its thread (single dict operations and
file reads, safe under the GIL).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path

from server.errors import (
    InvalidRequest,
    ModelBusy,
    ModelLoadError,
    ModelLoadFailed,
    ModelNotFound,
    ModelTooLarge,
)
from server.models import ModelCatalog
from server.models.info import serving_memory
from server.models.loading import backend_for
from server.models.options import read_options
from server.models.residency import (
    AdapterSpec,
    Lease,
    Listing,
    LoadedModel,
    ModelSpec,
    Residency,
    measured_bytes,
    rss_bytes,
    wait_until,
)
from server.models.store import CatalogEntry
from server.models.supervision import Supervisor

log = logging.getLogger("pomar")
GB = 1e9


class ModelRegistry:
    """Looks models up, loads them on demand within the budget, unloads idle ones."""

    def __init__(
        self,
        residency: Residency | None = None,
        catalog: ModelCatalog | None = None,
        requested_backend: str = "auto",
    ) -> None:
        self._residency = residency
        self._catalog = catalog
        self._requested = requested_backend
        self._loaded: dict[str, LoadedModel] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._adapters: dict[str, AdapterSpec] = {}
        #: ids served by another endpoint (the embedding model): naming one here is a 400
        self._elsewhere: dict[str, str] = {}
        self._load_lock = asyncio.Lock()
        #: engine runners that died (engine_process): restarts, back-off, failed models
        self.supervisor = Supervisor()

    # ----------------------------------------------------------------- what is known

    def refuse(self, model_id: str, reason: str) -> None:
        """Answer `model_id` with a 400 `reason`: a model for another endpoint."""
        self._elsewhere[model_id] = reason

    def add(self, model: LoadedModel, *, pinned: bool = True) -> None:
        """Serve an already-loaded base model under its id (the model named at start)."""
        path = Path(model.engine.model_path)
        self._specs[model.id] = ModelSpec(
            model.id,
            path,
            model.engine.backend,
            model.created,
            pinned=pinned,
            options=read_options(path),
        )
        self._loaded[model.id] = model
        if self._residency is not None and model.memory > self._residency.budget:
            log.warning(
                "%s needs about %.2f GB, more than the memory budget of %.2f GB "
                "(POMAR_MAX_MEMORY): it is served, but no other model will fit beside it",
                model.id,
                model.memory / GB,
                self._residency.budget / GB,
            )

    def add_adapter_model(
        self, model_id: str, base_id: str, adapter: Path, created: int, parent: str | None = None
    ) -> None:
        """Serve a LoRA adapter as its own model on its base (loaded with the base);
        `parent` (default: the base) is the `ft:` model it was fine-tuned from, if any."""
        self._adapters[model_id] = AdapterSpec(model_id, base_id, adapter, created, parent)

    def spec(self, model_id: str) -> ModelSpec:
        """How to load a base model: the one named at start, or one in the store."""
        if model_id in self._elsewhere:
            raise InvalidRequest(
                self._elsewhere[model_id], param="model", code="model_not_supported"
            )
        known = self._specs.get(model_id)
        if known is not None:
            return known
        entry = self._catalog.get(model_id) if self._catalog is not None else None
        if entry is None:
            raise ModelNotFound(model_id)
        options = read_options(entry.path)
        requested = options.backend or self._requested
        return ModelSpec(
            model_id, entry.path, backend_for(requested, entry.path), entry.created, options=options
        )

    def default(self) -> ModelSpec:
        """The model named at start."""
        return next(iter(self._specs.values()))

    def adapter(self, model_id: str) -> AdapterSpec | None:
        """The fine-tuned model with this id, if it is one."""
        return self._adapters.get(model_id)

    def base_path(self, model_id: str) -> Path | None:
        """The weights folder of a known base model (None if unknown or an adapter)."""
        if model_id in self._adapters:
            return None
        try:
            return self.spec(model_id).path
        except (ModelNotFound, InvalidRequest):
            return None

    def listing(self) -> list[Listing]:
        """Every model a request may name: bases (start-up, stored) then fine-tuned ones."""
        rows: dict[str, Listing] = {}
        for spec in self._specs.values():
            rows[spec.id] = Listing(spec.id, spec.created, None, spec.id in self._loaded)
        for entry in self._catalog.list() if self._catalog is not None else []:
            if entry.id not in rows and entry.id not in self._elsewhere:
                rows[entry.id] = Listing(entry.id, entry.created, None, entry.id in self._loaded)
        for ad in list(self._adapters.values()):
            if ad.base_id in rows:
                parent = ad.parent or ad.base_id
                rows[ad.id] = Listing(ad.id, ad.created, parent, ad.base_id in self._loaded)
        return list(rows.values())

    def entry(self, model_id: str) -> CatalogEntry | None:
        """The store's entry for a model (None: not in the store, say a start-up path)."""
        return self._catalog.get(model_id) if self._catalog is not None else None

    @property
    def budget(self) -> int | None:
        """The memory budget in bytes (POMAR_MAX_MEMORY), None without residency."""
        return self._residency.budget if self._residency is not None else None

    def loaded(self) -> list[LoadedModel]:
        """The base models loaded now, oldest load first (memory as of now)."""
        self._refresh_memory()
        return list(self._loaded.values())

    def get(self, model_id: str) -> LoadedModel:
        """A loaded model (a fine-tuned one: a view on its loaded base), else an error."""
        ad = self._adapters.get(model_id)
        base = self._loaded.get(ad.base_id if ad else model_id)
        if base is None:
            self.spec(ad.base_id if ad else model_id)  # the 400 / 404 it deserves
            raise ModelNotFound(model_id)
        return self._view(base, ad)

    def remove(self, model_id: str) -> AdapterSpec:
        """Stop serving a fine-tuned model (404 if unknown)."""
        ad = self._adapters.pop(model_id, None)
        if ad is None:
            raise ModelNotFound(model_id)
        return ad

    # ----------------------------------------------------------------- residency

    async def acquire(self, model_id: str) -> Lease:
        """The model, loaded if it was not, held until the lease is released."""
        ad = self._adapters.get(model_id)
        base_id = ad.base_id if ad else model_id
        self.supervisor.check(base_id)
        base = self._loaded.get(base_id)
        how = getattr(base.engine, "crashed", None) if base is not None else None
        if base is not None and how is not None:
            served = int(getattr(base.engine, "completed", 0))
            await self.unload(base_id, f"its runner died: {how}")
            await self.supervisor.before_restart(base_id, how, served)
            base = self._loaded.get(base_id)  # another request may have restarted it
        if base is None:
            base = await self._load(self.spec(base_id))
        base.leases += 1
        base.last_used = time.monotonic()
        return Lease(self._view(base, ad), self._release)

    def _release(self, model: LoadedModel) -> None:
        base_id = model.parent if model.adapter is not None and model.parent else model.id
        base = self._loaded.get(base_id)
        if base is not None:
            base.leases = max(0, base.leases - 1)
            base.last_used = time.monotonic()

    def _view(self, base: LoadedModel, ad: AdapterSpec | None) -> LoadedModel:
        if ad is None:
            return base
        return LoadedModel(
            id=ad.id,
            engine=base.engine,
            worker=base.worker,
            template=base.template,
            created=ad.created,
            parent=base.id,
            adapter=ad.adapter,
            sampling=base.sampling,
        )

    async def _load(self, spec: ModelSpec) -> LoadedModel:
        if self._residency is None:
            raise ModelNotFound(spec.id)
        async with self._load_lock:
            loaded = self._loaded.get(spec.id)
            if loaded is not None:  # another request loaded it while this one waited
                return loaded
            need = await asyncio.to_thread(serving_memory, spec.path, spec.backend)
            budget = self._residency.budget
            if need > budget:
                raise ModelTooLarge(
                    f"Model '{spec.id}' needs about {need / GB:.2f} GB on the {spec.backend} "
                    f"engine, more than this server's memory budget of {budget / GB:.2f} GB "
                    "(POMAR_MAX_MEMORY). Use a quantized version (pomar models convert "
                    f"{spec.id} --to gguf --q-bits 8, or --to mlx --q-bits 4) or raise the "
                    "budget.",
                    param="model",
                )
            await self._make_room(need, budget)
            started, before = time.perf_counter(), rss_bytes()
            try:
                model = await self._residency.loader(spec)
            except ModelLoadError as exc:
                log.error("could not load %s: %s", spec.id, exc)
                raise ModelLoadFailed(
                    f"Model '{spec.id}' could not be loaded; the server log says why."
                ) from None
            # a runner's memory is measured once it is loaded (engine_process): what it
            # holds when that is more than the estimate (weights read lazily may not be
            # resident yet: the estimate stays the floor)
            model.memory = max(need, measured_bytes(model.engine) or 0)
            self._loaded[spec.id] = model
            log.info(
                "loaded %s on %s in %.1f s: ~%.2f GB reckoned, resident memory %+.2f GB "
                "(%d model(s) loaded, %.2f of %.2f GB budget)",
                spec.id,
                model.engine.describe(),
                time.perf_counter() - started,
                need / GB,
                (rss_bytes() - before) / GB,
                len(self._loaded),
                self._in_use() / GB,
                budget / GB,
            )
            return model

    def _in_use(self) -> int:
        self._refresh_memory()
        return sum(m.memory for m in self._loaded.values())

    def _refresh_memory(self) -> None:
        """Raise each loaded model's figure to what its runner holds now: a KV cache
        grows with use (the GGUF engine's from 2,048 positions up to its context for every
        sequence, MLX's prompt cache up to its bound), so the figure reckoned at load
        undercounts a model that has served long conversations. Never lowered: llama.cpp
        keeps a grown cache, and freed pages may come back."""
        for model in self._loaded.values():
            model.memory = max(model.memory, measured_bytes(model.engine) or 0)

    async def _make_room(self, need: int, budget: int) -> None:
        """Unload least-recently-used idle models until `need` fits; wait for busy ones."""
        assert self._residency is not None
        while self._in_use() + need > budget:
            idle = [m for m in self._loaded.values() if m.leases == 0]
            if idle:
                await self.unload(min(idle, key=lambda m: m.last_used).id, "to make room")
                continue
            freed = await wait_until(
                lambda: any(m.leases == 0 for m in self._loaded.values()),
                self._residency.busy_wait,
            )
            if not freed:
                raise ModelBusy(
                    "Every loaded model is busy and the requested one does not fit beside "
                    "them in the memory budget; try again shortly."
                )

    async def unload(self, model_id: str, why: str) -> None:
        """Unload a base model: its worker finishes what it holds, then memory is freed."""
        model = self._loaded.pop(model_id, None)
        if model is None:
            return
        model.worker.close()
        await asyncio.to_thread(model.worker.join)
        close = getattr(model.engine, "close", None)  # a runner process (engine_process)
        if close is not None:
            await asyncio.to_thread(close)
        del model
        gc.collect()
        _clear_mlx_cache()
        log.info("unloaded %s (%s); %d model(s) loaded", model_id, why, len(self._loaded))

    async def unload_idle(self) -> None:
        """Unload models idle for longer than the keep-alive (not the pinned start model)."""
        if self._residency is None or self._residency.keep_alive < 0:
            return
        now = time.monotonic()
        for model in list(self._loaded.values()):
            spec = self._specs.get(model.id)
            pinned = spec is not None and spec.pinned
            idle_for = now - model.last_used
            if not pinned and model.leases == 0 and idle_for >= self._residency.keep_alive:
                await self.unload(model.id, f"idle for {idle_for:.0f} s")

    async def keep_alive_loop(self) -> None:
        """Run `unload_idle` periodically (cancel the task to stop)."""
        if self._residency is None or self._residency.keep_alive < 0:
            return
        period = min(max(self._residency.keep_alive / 4, 0.25), 15.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.unload_idle()
            except Exception:  # one failed unload must not end idle unloading for good
                log.exception("idle unload failed")

    def close(self) -> None:
        """Stop every worker thread."""
        for model in self._loaded.values():
            model.worker.close()


def _clear_mlx_cache() -> None:
    """Give MLX's buffer cache back to the system after a model is unloaded."""
    import sys

    mx = sys.modules.get("mlx.core")
    clear = getattr(mx, "clear_cache", None)
    if clear is not None:
        clear()
