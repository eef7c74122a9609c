"""Which models are served: resolve ids to folders, pick a backend, load, look up."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.engine.base import Engine
from server.engine.templates import ChatTemplate
from server.engine.worker import GenerationWorker
from server.errors import InvalidRequest, ModelLoadError, ModelNotFound

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
    """Map a model id to a local HF-format folder, a .gguf file or a folder holding one.

    The embedded id is imported into the store once (its folder names the GGUF it came
    from, which the GGUF engine serves); a local folder or .gguf file is used as is;
    anything else is a Hugging Face repo id, taken from the local cache first and
    downloaded only where the hub is reachable.
    """
    from server.engine.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model

    if model == EMBEDDED_MODEL_ID:
        return ensure_embedded_model(models_dir)
    local = Path(model).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return local.resolve()
    if local.is_dir():
        if not (local / "config.json").is_file() and not any(local.glob("*.gguf")):
            raise ModelLoadError(
                f"{local} is neither a Hugging Face model folder (no config.json) "
                "nor a folder holding a GGUF file"
            )
        return local.resolve()
    if model.count("/") != 1 or local.exists():
        raise ModelLoadError(
            f"model '{model}' is neither a local folder nor a hub repo id (nor a .gguf file)"
        )
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


def choose_backend(requested: str, model_path: Path | None = None) -> tuple[str, str]:
    """The engine to serve with, and why (README "Backends"; figures in docs/benchmarks.md).

    `auto`: MLX where it runs on a GPU (Metal, or MLX's CUDA build); torch where CUDA is
    available; on a CPU-only machine the GGUF engine (llama.cpp decodes several times faster
    than MLX or torch there) for a model that has a GGUF file; else MLX on the CPU, and torch
    where MLX does not run. Without `model_path` a CPU-only machine gets `gguf`, and
    `load_engine` serves a model without a GGUF file with MLX on the CPU instead.
    """
    if requested != "auto":
        return requested, f"--backend {requested} was asked for"
    device, mlx_problem = _mlx_device()
    if device == "gpu":
        return "mlx", "auto: MLX runs on the GPU"
    if _torch_has_cuda():
        return "torch", f"auto: torch sees CUDA and MLX has no GPU here ({mlx_problem or 'cpu'})"
    cpu_only = "auto: no GPU for MLX or torch"
    if importlib.util.find_spec("llama_cpp") is not None:
        if model_path is None:
            return "gguf", (
                f"{cpu_only}: the GGUF engine (llama.cpp) is the fastest on CPU "
                "(a model without a GGUF file falls back to MLX on the CPU)"
            )
        from server.engine.gguf_backend import find_gguf

        if find_gguf(model_path) is not None:
            return "gguf", f"{cpu_only}: the GGUF engine (llama.cpp) is the fastest on CPU"
        cpu_only += f" and {model_path} has no GGUF file"
    else:
        cpu_only += " and llama-cpp-python is not installed"
    if device is None:
        return "torch", f"{cpu_only}; MLX is not usable here ({mlx_problem})"
    return "mlx", f"{cpu_only}: MLX on the CPU"


def training_backend(serving: str) -> str:
    """The LoRA trainer for a base served by `serving` (the GGUF engine does not train).

    A gguf-served base trains on its Hugging Face folder with MLX, or torch where MLX
    does not run; its adapters are then served on the GGUF engine.
    """
    if serving != "gguf":
        return serving
    return "mlx" if _mlx_device()[0] is not None else "torch"


def _mlx_device() -> tuple[str | None, str | None]:
    """("gpu" | "cpu", None) where MLX imports and runs, else (None, what went wrong)."""
    try:
        import mlx.core as mx

        mx.eval(mx.array([1.0]) + 1)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return ("gpu" if mx.default_device().type == mx.gpu else "cpu"), None


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_engine(backend: str, path: Path, mlx_options: Mapping[str, int] | None = None) -> Engine:
    """Load the weights at `path` with the named backend (heavy imports happen here).

    `mlx_options` are the MLX engine's batching and prompt-cache bounds (keyword
    arguments of `MLXEngine`).
    """
    if backend == "gguf":
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelLoadError(
                "the GGUF engine needs llama-cpp-python: install pomar with its gguf extra "
                "(pip install -e '.[gguf]'; ./scripts/serve does)"
            )
        from server.engine.gguf_backend import GGUFEngine, find_gguf

        gguf = find_gguf(path)
        if gguf is not None:
            hf_dir = path if (path / "config.json").is_file() else None
            return GGUFEngine(gguf, hf_dir)
        fallback, why = choose_backend("auto", path)
        log.warning("%s has no GGUF file: serving it with %s instead (%s)", path, fallback, why)
        backend = fallback
        if backend == "mlx":
            import os

            from server.engine.openblas import status

            log.info(status(os.environ))
    if backend in ("mlx", "torch") and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face model folder: the {backend} engine cannot load a "
            "GGUF file; serve it with --backend gguf (or auto)"
        )
    if backend == "mlx":
        from server.engine.mlx_backend import MLXEngine

        return MLXEngine(path, **(mlx_options or {}))
    if backend == "torch":
        from server.engine.torch_backend import TorchEngine

        return TorchEngine(path)
    raise ModelLoadError(f"unknown backend '{backend}'")


class ModelRegistry:
    """The models this server answers for, by id."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        #: ids served by another endpoint (the embedding model): naming one here is a 400
        self._elsewhere: dict[str, str] = {}

    def refuse(self, model_id: str, reason: str) -> None:
        """Answer `get(model_id)` with a 400 `reason`: a model for another endpoint."""
        self._elsewhere[model_id] = reason

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
        """The model with this id, a 400 for one refused here, or a 404 `model_not_found`."""
        if model_id in self._elsewhere:
            reason = self._elsewhere[model_id]
            raise InvalidRequest(reason, param="model", code="model_not_supported")
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
