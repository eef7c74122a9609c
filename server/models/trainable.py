"""What a fine-tuning job trains on: a model's Hugging Face folder, built from its GGUF if need be.

A LoRA trainer (mlx-lm or PEFT) reads a Hugging Face folder. A Hugging Face folder or an
MLX folder in the store is one already (mlx-lm trains on quantized MLX weights). A model
imported from a GGUF file has none, so it gets a *training copy*: built once, at the
start of the first job that needs it, by de-quantizing the GGUF with transformers
(`server.engine.gguf.to_hf.convert_for_training`), and kept in the model's own folder in
the store (`.pomar-train/`, so `pomar models rm` removes it too). The model is still
served from its GGUF, and its `ft:` models with it, on the GGUF engine (their adapters
converted to GGUF LoRA, `server.engine.gguf.lora`).

`training_base` is the cheap check a job's creation runs (the GGUF's header against
transformers' GGUF mapping): an architecture transformers cannot read is refused there,
before any job exists, and so is one whose de-quantization failed before (kept beside the
model, for this GGUF and this transformers version). `ensure_training_copy` builds the
copy, under a lock, into a temporary folder renamed into place.

Messages name the model, never a filesystem path: they reach API clients.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import ModelLoadError, ModelNotTrainable
from server.modelfiles import exclusive_lock, find_gguf, read_json_object
from server.models.store import MANIFEST, CatalogError

log = logging.getLogger(__name__)

TRAIN_DIR = ".pomar-train"
"""The training copy's folder, inside the model's folder in the store."""
TRAIN_MARKER = "pomar-train.json"
"""Written last into the training copy: the GGUF it was built from."""
FAILED_FILE = ".pomar-train-failed.json"
"""Beside the training copy: why de-quantizing this GGUF failed (with this transformers)."""
FORMAT = 1
"""Bump when the training copy's layout changes: older copies are rebuilt."""

_TMP_PREFIX = f"{TRAIN_DIR}.tmp-"
_WEIGHTS = ("*.safetensors", "*.bin")
#: the source folder's tokenizer files, which the GGUF engine serves with when present
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,;]+){2,}")


@dataclass(frozen=True)
class TrainingBase:
    """The folder a job's trainer reads, and the GGUF it is built from (None: its own)."""

    folder: Path
    gguf: Path | None = None

    @property
    def ready(self) -> bool:
        """Whether the folder is there (a GGUF's copy: complete, for this very GGUF)."""
        if self.gguf is None:
            return self.folder.is_dir()
        return _is_current(self.folder, self.gguf)


def training_base(model_id: str, path: Path) -> TrainingBase:
    """What a fine-tune of `model_id` (whose weights are at `path`) trains on; cheap.

    Raises:
        ModelNotTrainable: no weights a trainer can use, a GGUF outside the store, a GGUF
            architecture transformers cannot de-quantize, or one that failed before.
    """
    path = Path(path)
    name = display_name(model_id)
    if path.is_dir() and (path / "config.json").is_file() and _has_weights(path):
        return TrainingBase(path)
    try:
        gguf = find_gguf(path)
    except ModelLoadError:
        raise ModelNotTrainable(
            f"'{name}' holds several GGUF files: a fine-tune needs one model; import the "
            "one to fine-tune on its own (pomar models import FILE)."
        ) from None
    if gguf is None:
        raise ModelNotTrainable(f"'{name}' has no weights a fine-tune can train on.")
    owner = gguf.parent
    if not (owner / MANIFEST).is_file():
        raise ModelNotTrainable(
            f"'{name}' is a GGUF file outside pomar's model store: import it first "
            "(pomar models import FILE), then fine-tune the imported model."
        )
    base = TrainingBase(owner / TRAIN_DIR, gguf)
    if base.ready:
        return base
    failed = _recorded_failure(owner, gguf)
    if failed is not None:
        raise ModelNotTrainable(_dequantize_failed(name, failed))
    arch = gguf_architecture(name, gguf)
    from server.engine.gguf.to_hf import transformers_architecture

    if transformers_architecture(arch) is None:
        readable = ", ".join(readable_architectures())
        raise ModelNotTrainable(
            f"'{name}' cannot be fine-tuned: its GGUF architecture '{arch}' is not one that "
            "transformers can de-quantize into the Hugging Face weights a trainer needs "
            f"(transformers {_version('transformers')} reads {readable})."
        )
    return base


def ensure_training_copy(
    model_id: str,
    path: Path,
    notify: Callable[[str], None] | None = None,
    *,
    progress: bool = False,
) -> Path:
    """The folder a fine-tune of `model_id` trains on, built from its GGUF if not yet.

    `notify` receives each step as a sentence (a job's events); `progress` shows a rich
    spinner on stderr (the CLI) instead of log lines.

    Raises:
        ModelNotTrainable: see `training_base`, or the de-quantization failed (the reason is
            kept, so the next job is refused at once).
    """
    base = training_base(model_id, path)
    if base.gguf is None or base.ready:
        return base.folder
    owner = base.folder.parent
    with exclusive_lock(owner / f"{TRAIN_DIR}.lock"):
        if base.ready:  # built by another process while we waited
            return base.folder
        _remove_leftovers(owner)
        _build(display_name(model_id), base.gguf, base.folder, notify, progress)
    return base.folder


def display_name(model_id: str) -> str:
    """How an error names a model: its id, or the last part of an id that is a path."""
    looks_like_path = model_id.startswith(("/", "~", ".", "\\")) or Path(model_id).exists()
    return Path(model_id).name if looks_like_path else model_id


def gguf_architecture(name: str, gguf: Path) -> str:
    """`general.architecture` of a GGUF, from its header alone.

    Raises:
        ModelNotTrainable: the file is no readable GGUF or names no architecture.
    """
    from server.models.gguf_meta import read_gguf_meta

    try:
        arch = read_gguf_meta(gguf).metadata.get("general.architecture")
    except CatalogError:
        raise ModelNotTrainable(f"'{name}' cannot be fine-tuned: its GGUF is unreadable.") from None
    if not isinstance(arch, str) or not arch:
        raise ModelNotTrainable(f"'{name}' cannot be fine-tuned: its GGUF names no architecture.")
    return arch


def readable_architectures() -> list[str]:
    """The GGUF architectures transformers de-quantizes into a causal LM, sorted."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from server.engine.gguf.to_hf import transformers_architecture

    return sorted(a for a in GGUF_CONFIG_MAPPING if transformers_architecture(a) == a)


def scrub_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part (errors reach API clients)."""
    return _ABS_PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], text)


# --------------------------------------------------------------------------- building


def _build(
    name: str,
    gguf: Path,
    dest: Path,
    notify: Callable[[str], None] | None,
    progress: bool,
) -> None:
    """De-quantize `gguf` into `dest` (atomically); record a failure that will recur."""
    from server.engine.gguf.to_hf import Reporter, convert_for_training, write_json_atomic

    size_gb = gguf.stat().st_size / 1e9
    report = Reporter(progress, notify)
    report.info(
        f"Building the Hugging Face weights of '{name}' from its GGUF, which the trainer "
        f"needs (once; kept in the model store; about a minute per GB of GGUF, "
        f"this one is {size_gb:.2f} GB)."
    )
    started = time.perf_counter()
    built = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=dest.parent))
    try:
        convert_for_training(gguf, built, report)
        _copy_tokenizer_files(gguf.parent, built)
        write_json_atomic(
            built / TRAIN_MARKER,
            {
                "format": FORMAT,
                "source": _source_info(gguf),
                "dtype": "bfloat16",
                "transformers_version": _version("transformers"),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        _make_readable(built)
        if dest.exists():  # an outdated copy (another GGUF, an older format)
            shutil.rmtree(dest)
        os.replace(built, dest)
    except Exception as exc:
        shutil.rmtree(built, ignore_errors=True)
        reason = _reason(exc)
        log.warning("building the training copy of %s failed", name, exc_info=True)
        if not isinstance(exc, OSError):  # a full disk is no property of the model
            _record_failure(dest.parent, gguf, reason)
        raise ModelNotTrainable(_dequantize_failed(name, reason)) from exc
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    report.info(f"Hugging Face weights of '{name}' built in {time.perf_counter() - started:.1f} s.")


def _make_readable(folder: Path) -> None:
    """Undo mkdtemp's 0700 and the 0600 of files transformers writes: plain model data."""
    folder.chmod(0o755)
    for entry in folder.iterdir():
        if entry.is_file():
            entry.chmod(0o644)


def _copy_tokenizer_files(owner: Path, built: Path) -> None:
    """A folder that keeps its Hugging Face tokenizer beside the GGUF (a GGUF pomar
    converted) is served with that tokenizer: train with the very same files."""
    if not (owner / "tokenizer_config.json").is_file():
        return
    for name in _TOKENIZER_FILES:
        if (owner / name).is_file():
            shutil.copy2(owner / name, built / name)


def _reason(exc: BaseException) -> str:
    """An exception's first line, with no path or exception name (the server log has the
    traceback), for an API client to read."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return "no reason given; the server log has the details"
    text = f"it lacks {lines[0]}" if isinstance(exc, KeyError) else lines[0]
    return scrub_paths(text).rstrip(":. ")[:300]


def _dequantize_failed(name: str, reason: str) -> str:
    return (
        f"'{name}' cannot be fine-tuned: transformers could not de-quantize its GGUF into "
        f"the Hugging Face weights a trainer needs ({reason})."
    )


# --------------------------------------------------------------------------- bookkeeping


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in _WEIGHTS)


def _source_info(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"file": gguf.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_current(folder: Path, gguf: Path) -> bool:
    """Whether `folder` is a complete training copy of this `gguf` in the current format."""
    marker = read_json_object(folder / TRAIN_MARKER)
    if marker.get("format") != FORMAT or not gguf.is_file():
        return False
    return marker.get("source") == _source_info(gguf) and _has_weights(folder)


def _recorded_failure(owner: Path, gguf: Path) -> str | None:
    """Why this GGUF failed to de-quantize with this transformers, if it did."""
    record = read_json_object(owner / FAILED_FILE)
    if record.get("source") != _source_info(gguf):
        return None
    if record.get("transformers_version") != _version("transformers"):
        return None  # a newer transformers may read it
    reason = record.get("reason")
    return str(reason) if reason else None


def _record_failure(owner: Path, gguf: Path, reason: str) -> None:
    from server.engine.gguf.to_hf import write_json_atomic

    record = {
        "source": _source_info(gguf),
        "transformers_version": _version("transformers"),
        "reason": reason,
    }
    with contextlib.suppress(OSError):
        write_json_atomic(owner / FAILED_FILE, record)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _remove_leftovers(owner: Path) -> None:
    """Temporary folders of builds a crash interrupted (called under the lock)."""
    for entry in owner.glob(f"{_TMP_PREFIX}*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
