"""Which models are served: resolve ids to folders, pick a backend, load, look up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.engine.base import Engine
from server.engine.templates import ChatTemplate
from server.engine.worker import GenerationWorker
from server.errors import ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to serve: its engine, the worker that runs it, its template."""

    id: str
    engine: Engine
    worker: GenerationWorker
    template: ChatTemplate
    created: int = field(default_factory=lambda: int(time.time()))
    owned_by: str = "pomar"
    parent: str | None = None
    #: a LoRA adapter applied on the shared base engine (fine-tuned models)
    adapter: Path | None = None
    #: the model's own sampling defaults (temperature, top_p) for requests that name none
    sampling: dict[str, float] = field(default_factory=dict)


def resolve_model_path(model: str, models_dir: Path) -> Path:
    """Map a model id to a local HF-format folder.

    The embedded id is imported into the store once; a local folder is used as is;
    anything else is a Hugging Face repo id, taken from the local cache first and
    downloaded only where the hub is reachable.
    """
    from server.engine.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model

    if model == EMBEDDED_MODEL_ID:
        return ensure_embedded_model(models_dir)
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a Hugging Face model folder (no config.json)")
        return local.resolve()
    if model.count("/") != 1 or local.exists():
        raise ModelLoadError(f"model '{model}' is neither a local folder nor a hub repo id")
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        log.info("%s is not in the local Hugging Face cache; downloading", repo_id)
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise ModelLoadError(
            f"could not download '{repo_id}' from the Hugging Face hub and it is not in the "
            f"local cache ({type(exc).__name__}); pass a local folder with --model instead"
        ) from exc


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to use and why: `auto` takes MLX where it imports and runs, else torch."""
    if requested != "auto":
        return requested, f"--backend {requested} was asked for"
    try:
        import mlx.core as mx

        mx.eval(mx.array([1.0]) + 1)
    except Exception as exc:
        return "torch", f"auto: MLX is not usable here ({type(exc).__name__}: {exc})"
    return "mlx", f"auto: MLX imports and runs on {mx.default_device()}"


def load_engine(backend: str, path: Path) -> Engine:
    """Load the weights at `path` with the named backend (heavy imports happen here)."""
    if backend == "mlx":
        from server.engine.mlx_backend import MLXEngine

        return MLXEngine(path)
    if backend == "torch":
        from server.engine.torch_backend import TorchEngine

        return TorchEngine(path)
    raise ModelLoadError(f"unknown backend '{backend}'")


class ModelRegistry:
    """The models this server answers for, by id."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}

    def add(self, model: LoadedModel) -> None:
        """Serve `model` under its id."""
        self._models[model.id] = model

    def add_adapter_model(self, model_id: str, base_id: str, adapter: Path, created: int) -> None:
        """Serve a LoRA adapter as its own model on the already-loaded base (no reload).

        Called from the job runner's thread: one dict assignment, atomic under the GIL.
        """
        base = self.get(base_id)
        self._models[model_id] = LoadedModel(
            id=model_id,
            engine=base.engine,
            worker=base.worker,
            template=base.template,
            created=created,
            parent=base_id,
            adapter=adapter,
            sampling=base.sampling,
        )

    def base_path(self, model_id: str) -> Path | None:
        """The weights folder of a served base model (None if not served or an adapter)."""
        model = self._models.get(model_id)
        if model is None or model.adapter is not None:
            return None
        return Path(model.engine.model_path)

    def get(self, model_id: str) -> LoadedModel:
        """The model with this id, or a 404 `model_not_found`."""
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def all(self) -> list[LoadedModel]:
        """Every served model, oldest first."""
        return list(self._models.values())

    def remove(self, model_id: str) -> LoadedModel:
        """Stop serving a model (404 if unknown)."""
        model = self.get(model_id)
        del self._models[model_id]
        return model

    def close(self) -> None:
        """Stop every worker thread."""
        for worker in {id(m.worker): m.worker for m in self._models.values()}.values():
            worker.close()
