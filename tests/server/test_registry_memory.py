"""The residency budget counts what a runner holds now, not only what was reckoned at load.

A KV cache grows with use (the GGUF engine's from 2,048 positions up to its context for
every sequence), so a model that served long conversations holds more than its load-time
figure. The registry is driven directly with engines whose measured memory the test sets,
and a loader that records what it loads; no model is run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from server.engine.worker import GenerationWorker
from server.models import ModelCatalog
from server.models.registry import ModelRegistry
from server.models.residency import LoadedModel, ModelSpec, Residency

BUDGET = 10_000_000


class MeasuredEngine:
    """Stands in for a runner: `held` is what `resident_bytes` reports."""

    backend = "mlx"

    def __init__(self, path: Path, held: int) -> None:
        self.model_path = str(path)
        self.held = held
        self.max_concurrency = 1

    def resident_bytes(self) -> int:
        return self.held

    def describe(self) -> str:
        return "measured stand-in"


def _model(model_id: str, engine: MeasuredEngine) -> LoadedModel:
    template: Any = None  # never rendered here
    return LoadedModel(model_id, engine, GenerationWorker(model_id), template)  # type: ignore[arg-type]


def _registry(tmp_path: Path) -> tuple[ModelRegistry, list[str]]:
    catalog = ModelCatalog(tmp_path / "models")
    catalog.add(
        "other",
        lambda folder: (folder / "config.json").write_text(json.dumps({})),
        format="hf",
        source="imported",
    )
    loads: list[str] = []

    async def loader(spec: ModelSpec) -> LoadedModel:
        loads.append(spec.id)
        return _model(spec.id, MeasuredEngine(spec.path, 1_000_000))

    residency = Residency(loader=loader, budget=BUDGET, keep_alive=-1)
    return ModelRegistry(residency, catalog, requested_backend="mlx"), loads


def _start_model(tmp_path: Path, held: int) -> tuple[LoadedModel, MeasuredEngine]:
    folder = tmp_path / "start"
    folder.mkdir()
    engine = MeasuredEngine(folder, held)
    model = _model("start", engine)
    model.memory = held
    return model, engine


def test_a_model_whose_cache_grew_past_the_budget_makes_room(tmp_path: Path) -> None:
    registry, loads = _registry(tmp_path)
    start, engine = _start_model(tmp_path, 2_000_000)
    registry.add(start, pinned=False)
    # its KV cache grew while serving: the runner now holds more than the whole budget
    engine.held = BUDGET + 1

    async def run() -> list[str]:
        lease = await registry.acquire("other")
        lease.release()
        return [m.id for m in registry.loaded()]

    assert asyncio.run(run()) == ["other"]  # the grown model was unloaded to make room
    assert loads == ["other"]
    registry.close()


def test_a_model_within_the_budget_stays_beside_the_new_one(tmp_path: Path) -> None:
    registry, _ = _registry(tmp_path)
    start, engine = _start_model(tmp_path, 2_000_000)
    registry.add(start, pinned=False)
    engine.held = 3_000_000  # grew, but both still fit

    async def run() -> list[str]:
        lease = await registry.acquire("other")
        lease.release()
        return [m.id for m in registry.loaded()]

    assert asyncio.run(run()) == ["start", "other"]
    assert start.memory == 3_000_000  # the figure follows what the runner holds
    engine.held = 2_500_000  # pages given back: the figure is not lowered
    registry.loaded()
    assert start.memory == 3_000_000
    registry.close()
