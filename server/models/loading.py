"""How a model is loaded: resolve ids to folders, pick a backend, load the engine."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

from server.engine.base import Engine
from server.errors import ModelLoadError
from server.models.residency import LoadedModel

__all__ = [
    "LoadedModel",
    "backend_for",
    "choose_backend",
    "engine_candidates",
    "load_engine",
    "resolve_model_path",
    "settle_backend",
]

log = logging.getLogger(__name__)


def resolve_model_path(model: str, models_dir: Path) -> Path:
    """Map a model id to a local HF-format folder, a .gguf file or a folder holding one.

    The embedded id is imported into the store once (its folder names the GGUF it came
    from, which the GGUF engine serves); an id in the store (`pomar models list`) is its
    folder; a local folder or .gguf file is used as is; anything else is a Hugging Face
    repo id, taken from the local cache first and downloaded only where the hub is
    reachable.
    """
    from server.models import ModelCatalog
    from server.models.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model

    if model == EMBEDDED_MODEL_ID:
        return ensure_embedded_model(models_dir)
    stored = ModelCatalog(models_dir).get(model)
    if stored is not None:
        return stored.path
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
    device, mlx_problem = mlx_device()
    if device == "gpu":
        return "mlx", "auto: MLX runs on the GPU"
    if torch_has_cuda():
        return "torch", f"auto: torch sees CUDA and MLX has no GPU here ({mlx_problem or 'cpu'})"
    cpu_only = "auto: no GPU for MLX or torch"
    if importlib.util.find_spec("llama_cpp") is not None:
        if model_path is None:
            return "gguf", (
                f"{cpu_only}: the GGUF engine (llama.cpp) is the fastest on CPU "
                "(a model without a GGUF file falls back to MLX on the CPU)"
            )
        from server.modelfiles import find_gguf

        if find_gguf(model_path) is not None:
            return "gguf", f"{cpu_only}: the GGUF engine (llama.cpp) is the fastest on CPU"
        cpu_only += f" and {model_path} has no GGUF file"
    else:
        cpu_only += " and llama-cpp-python is not installed"
    if device is None:
        return "torch", f"{cpu_only}; MLX is not usable here ({mlx_problem})"
    return "mlx", f"{cpu_only}: MLX on the CPU"


def backend_for(requested: str, path: Path) -> str:
    """The engine for one model: its format decides where only one engine can load it.

    A GGUF file (or a folder holding only GGUF weights) needs the GGUF engine; an
    MLX-quantized folder needs MLX; anything else follows `choose_backend`.
    """
    return engine_candidates(requested, path)[0][0]


def engine_candidates(requested: str, path: Path) -> list[tuple[str, str]]:
    """The engines that can serve the model at `path`, best first, each with why.

    Its format may leave one engine (a GGUF file, an MLX-quantized folder); a backend
    asked for by name is the only candidate; `auto` lists its choice first, then the
    other installed engines that can load the model, for when the first fails its
    self-check (server/models/selfcheck.py).
    """
    from server.modelfiles import read_json_object

    if path.is_file() or not (path / "config.json").is_file():
        return [("gguf", "a GGUF file is served by the GGUF engine")]
    if "quantization" in read_json_object(path / "config.json"):  # MLX's own quantization
        return [("mlx", "an MLX-quantized model is served by MLX")]
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        # a converted GGUF folder keeps config.json for its tokenizer
        return [("gguf", "a folder of GGUF weights is served by the GGUF engine")]
    first = choose_backend(requested, path)
    if requested != "auto":
        return [first]
    out = [first]
    for engine in ("gguf", "mlx", "torch"):
        if engine != first[0] and _can_serve(engine, path):
            out.append((engine, f"auto: the next engine that can serve {path.name}"))
    return out


def settle_backend(
    requested: str, path: Path, home: Path, chosen: str | None = None
) -> tuple[str, str]:
    """The engine to serve `path` with, and why, once it has passed its self-check.

    `chosen` is an engine already picked for the model (say by `backend_for`); `auto`
    falls back to the next candidate when it fails, a named backend does not.

    Raises:
        EngineCheckError: no engine that may serve the model passed (one line to print).
    """
    from server.models.selfcheck import CheckCache, settle

    candidates = engine_candidates(requested, path)
    if chosen is not None and chosen != candidates[0][0]:
        candidates = [(chosen, f"{chosen} was chosen for {path.name}")] + [
            c for c in candidates if c[0] != chosen
        ]
    return settle(candidates, path, CheckCache(home), named=requested != "auto")


def _can_serve(engine: str, path: Path) -> bool:
    """Whether `engine` is installed and can load the HF folder at `path`."""
    if engine == "gguf":
        from server.modelfiles import find_gguf

        return importlib.util.find_spec("llama_cpp") is not None and find_gguf(path) is not None
    return importlib.util.find_spec("mlx" if engine == "mlx" else "torch") is not None


def training_backend(serving: str) -> str:
    """The LoRA trainer for a base served by `serving` (the GGUF engine does not train).

    A gguf-served base trains on its Hugging Face folder with MLX, or torch where MLX
    does not run; its adapters are then served on the GGUF engine.
    """
    if serving != "gguf":
        return serving
    return "mlx" if mlx_device()[0] is not None else "torch"


def mlx_device() -> tuple[str | None, str | None]:
    """("gpu" | "cpu", None) where MLX imports and runs, else (None, what went wrong)."""
    try:
        import mlx.core as mx

        mx.eval(mx.array([1.0]) + 1)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return ("gpu" if mx.default_device().type == mx.gpu else "cpu"), None


def torch_has_cuda() -> bool:
    """Whether torch sees CUDA — without importing torch where it plainly cannot.

    Importing torch costs ~200 MB of resident memory, which a server on the GGUF or MLX
    engine never gets back: a CPU-only wheel (`+cpu`) or a machine without an NVIDIA (or
    ROCm, or WSL GPU) device answers no without the import.
    """
    import importlib.metadata
    import os
    import shutil

    if importlib.util.find_spec("torch") is None:
        return False
    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return False
    except importlib.metadata.PackageNotFoundError:
        return False
    devices = ("/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")
    if not any(os.path.exists(d) for d in devices) and shutil.which("nvidia-smi") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def draft_gguf(model: str, models_dir: Path) -> Path:
    """The GGUF file of a draft model named by id, folder or file.

    Raises:
        ModelLoadError: it names no model, or one without a GGUF file.
    """
    from server.modelfiles import find_gguf

    path = resolve_model_path(model, models_dir)
    gguf = path if path.suffix == ".gguf" else find_gguf(path)
    if gguf is None:
        raise ModelLoadError(
            f"the draft model '{model}' has no GGUF file: the draft must be a GGUF"
        )
    return gguf


def load_engine(
    backend: str,
    path: Path,
    mlx_options: Mapping[str, int] | None = None,
    context: int | None = None,
    draft: Path | None = None,
) -> Engine:
    """Load the weights at `path` with the named backend (heavy imports happen here).

    `mlx_options` are the MLX engine's batching and prompt-cache bounds (keyword
    arguments of `MLXEngine`; the GGUF engine takes `max_batch_size` and `draft_tokens`;
    `draft_tokens` is prompt lookup's on MLX and torch); `context` caps the model's
    context length; `draft` is the GGUF that drafts under speculative=draft (GGUF engine).
    """
    if backend == "gguf":
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelLoadError(
                "the GGUF engine needs llama-cpp-python: install pomar with its gguf extra "
                "(pip install -e '.[gguf]'; ./scripts/serve does)"
            )
        from server.engine.gguf.backend import GGUFEngine
        from server.modelfiles import find_gguf

        gguf = find_gguf(path)
        if gguf is not None:
            hf_dir = path if (path / "config.json").is_file() else None
            bounds = mlx_options or {}
            return GGUFEngine(
                gguf,
                hf_dir,
                context=context,
                max_batch_size=bounds.get("max_batch_size", 8),
                draft_tokens=bounds.get("draft_tokens", 0),
                draft_model=draft,
            )
        fallback, why = choose_backend("auto", path)
        log.warning("%s has no GGUF file: serving it with %s instead (%s)", path, fallback, why)
        backend = fallback
        if backend == "mlx":
            import os

            from server.engine.mlx.openblas import status

            log.info(status(os.environ))
    # prompt lookup only on MLX and torch: a draft model drafts on the GGUF engine alone
    drafts = (mlx_options or {}).get("draft_tokens", 0) if draft is None else 0
    if backend in ("mlx", "torch") and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face model folder: the {backend} engine cannot load a "
            "GGUF file; serve it with --backend gguf (or auto)"
        )
    if backend == "mlx":
        from server.engine.mlx.backend import MLXEngine

        bounds = {k: v for k, v in (mlx_options or {}).items() if k != "draft_tokens"}
        return MLXEngine(path, **bounds, context=context, draft_tokens=drafts)
    if backend == "torch":
        from server.engine.torch.backend import TorchEngine

        return TorchEngine(path, context=context, draft_tokens=drafts)
    raise ModelLoadError(f"unknown backend '{backend}'")
