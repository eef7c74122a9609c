"""Bring models into the store: import a local folder or .gguf file, pull from the hub.

Both go through `ModelCatalog.add`, so an interrupted copy or download leaves nothing
listed. A pull downloads into a temporary folder inside the store first (its format is
known only once the files are there), then moves the files into the model's folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from server.models.store import MANIFEST, CatalogEntry, CatalogError, ModelCatalog, ModelFormat

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16"}
_SAFETENSORS_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.npz")
# never copied into the store: VCS and hub caches, another store's bookkeeping
_SKIP = (".git", ".cache", "__pycache__", ".DS_Store", MANIFEST, ".tmp-*")
_OFFLINE_HINT = (
    "on a machine without internet, copy the model folder here and run `pomar models import PATH`"
)


def detect_format(path: Path) -> tuple[ModelFormat, str]:
    """The store format of a model path and its precision.

    A .gguf file, or a folder holding one, is `gguf` with its GGUF file type (`Q4_1`,
    `F16`...); a folder whose config.json has `quantization` is `mlx` (`q4`, `q8`); any
    other folder with a config.json is `hf` with its dtype (`bf16`, `fp16`, `fp32`).

    Raises:
        CatalogError: the path is none of these, or a folder holds several GGUF models.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise CatalogError(f"{path} is not a .gguf file (nor a model folder)")
        return "gguf", gguf_precision(path)
    if not path.is_dir():
        raise CatalogError(f"{path} does not exist")
    if any(path.glob("*.gguf")):
        from server.errors import ModelLoadError
        from server.modelfiles import find_gguf

        try:
            found = find_gguf(path)
        except ModelLoadError as exc:
            raise CatalogError(str(exc)) from exc
        if found is not None:
            return "gguf", gguf_precision(found)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CatalogError(
            f"{path} is neither a Hugging Face or MLX model folder (no config.json) "
            "nor a .gguf file or a folder holding one"
        )
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{config_path} is not valid JSON ({exc})") from exc
    quant = config.get("quantization")
    if isinstance(quant, dict) and quant.get("bits"):
        return "mlx", f"q{quant['bits']}"
    dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return "hf", _DTYPES[dtype.removeprefix("torch.")]
    return "hf", _safetensors_precision(path)


def gguf_precision(path: Path) -> str:
    """A GGUF file's type from `general.file_type` (`MOSTLY_Q4_1` -> `Q4_1`)."""
    import gguf

    from server.models.gguf_meta import read_gguf_meta

    value = read_gguf_meta(path).metadata.get("general.file_type")
    if not isinstance(value, int):
        return "unknown"
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _safetensors_precision(folder: Path) -> str:
    """The dtype of the first weight tensor when the config names none."""
    from server.models.info import read_safetensors_header

    for file in sorted(folder.glob("*.safetensors")):
        for name, meta in read_safetensors_header(file).items():
            if name != "__metadata__" and isinstance(meta, dict):
                return _SAFETENSORS_DTYPES.get(str(meta.get("dtype")), "unknown")
    return "unknown"


def import_model(catalog: ModelCatalog, path: Path, model_id: str | None = None) -> CatalogEntry:
    """Copy a HF or MLX folder, or a .gguf file, into the store.

    The id defaults to the folder's name or the .gguf file's stem.

    Raises:
        CatalogError: the path is not a model, the id is invalid or already taken.
    """
    src = Path(path).expanduser().resolve()
    fmt, precision = detect_format(src)
    if src.is_dir() and fmt != "gguf" and not any(p for g in _WEIGHTS for p in src.glob(g)):
        raise CatalogError(f"{src} has a config.json but no weights (*.safetensors, *.bin)")
    model_id = model_id or (src.stem if src.is_file() else src.name)
    _check_free(catalog, model_id)

    def build(folder: Path) -> None:
        if src.is_file():
            shutil.copy2(src, folder / src.name)
        else:
            shutil.copytree(src, folder, ignore=shutil.ignore_patterns(*_SKIP), dirs_exist_ok=True)

    return catalog.add(
        model_id, build, format=fmt, source="imported", origin=str(src), precision=precision
    )


def pull_model(
    catalog: ModelCatalog,
    repo_id: str,
    model_id: str | None = None,
    include: list[str] | None = None,
) -> CatalogEntry:
    """Download a hub repo into the store (tqdm progress bars come from huggingface_hub).

    `include` are glob patterns of the files to fetch (say `["*Q4_K_M.gguf"]` for a repo
    of several GGUF quantizations).

    Raises:
        CatalogError: the hub cannot be reached (or HF_HUB_OFFLINE is set), the repo does
        not exist or is gated, the files are not a model, or the id is taken.
    """
    model_id = model_id or repo_id
    _check_free(catalog, model_id)
    catalog.models_dir.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=".tmp-pull-", dir=catalog.models_dir))
    try:
        _download(repo_id, download, include)
        shutil.rmtree(download / ".cache", ignore_errors=True)  # huggingface_hub's metadata
        fmt, precision = detect_format(download)

        def build(folder: Path) -> None:
            for item in download.iterdir():
                item.rename(folder / item.name)

        return catalog.add(
            model_id, build, format=fmt, source="pulled", origin=repo_id, precision=precision
        )
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _check_free(catalog: ModelCatalog, model_id: str) -> None:
    """Refuse a taken id before copying or downloading gigabytes."""
    from server.models.store import folder_name

    if (catalog.models_dir / folder_name(model_id)).exists():
        raise CatalogError(f"a model '{model_id}' is already in the store (choose another --id)")


def _download(repo_id: str, dest: Path, include: list[str] | None) -> None:
    """`snapshot_download` into `dest`, its errors turned into one clear CatalogError."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        snapshot_download(repo_id, local_dir=dest, allow_patterns=include)
    except GatedRepoError as exc:
        raise CatalogError(
            f"{repo_id} is gated on the Hugging Face hub: accept its terms on huggingface.co "
            "and log in (`hf auth login`) first"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CatalogError(
            f"no model '{repo_id}' on the Hugging Face hub (or it is private: log in with "
            "`hf auth login`)"
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise CatalogError(
            f"could not reach the Hugging Face hub to pull {repo_id} ({_reason(exc)}); "
            + _OFFLINE_HINT
        ) from exc
    except HfHubHTTPError as exc:
        raise CatalogError(f"the Hugging Face hub refused to send {repo_id}: {exc}") from exc
    except (OSError, ValueError, httpx.HTTPError) as exc:
        raise CatalogError(f"could not pull {repo_id} ({_reason(exc)}); {_OFFLINE_HINT}") from exc


def _reason(exc: BaseException) -> str:
    """Why the hub was out of reach, in a few words."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled):
        return "offline mode: HF_HUB_OFFLINE is set"
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return str(exc).splitlines()[0]
