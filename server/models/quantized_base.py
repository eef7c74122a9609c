"""QLoRA's base for a job: the base model quantized with MLX, kept as a model of its own.

A job with ``hyperparameters.quantize`` (4 or 8, a pomar extension) on a float base trains
on that base quantized, and its `ft:` model (and checkpoints) is served on the quantized
base, as QLoRA's adapters are meant to be. The quantized base is a real model in the store,
``<base>-mlx-q4`` (the id `pomar models convert --to mlx --q-bits 4` gives it, so a model
converted by hand is reused), made by the same machinery (`server.models.convert`), once:
the next job on the same base and bit width trains on it at once. Users see it in
``/v1/models`` and may chat with it.

* A base that is quantized already (an MLX ``-q4`` model) is trained as it is: no copy.
* A GGUF base trains on its Hugging Face training copy (`server.models.trainable`); that
  copy is what gets quantized, so its `ft:` model is served on an MLX quantized base, not
  on the GGUF engine.
* The torch trainer quantizes only on CUDA with bitsandbytes (4-bit NF4 or 8-bit, in
  memory, no stored model): `check_quantize` refuses a job that would train with torch
  anywhere else when it is created, with a 400 on ``hyperparameters.quantize``.

Messages name models, never filesystem paths: they reach API clients.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidRequest
from server.modelfiles import exclusive_lock, read_json_object
from server.models.store import CatalogError, ModelCatalog, validate_id

log = logging.getLogger(__name__)

GROUP_SIZES = (64, 32)
"""MLX group sizes, preferred first (the widest that divides every layer's input)."""


@dataclass(frozen=True)
class QuantizedBase:
    """Where a QLoRA job trains, and the model id its `ft:` models are served on."""

    model_id: str
    path: Path
    created: bool = False


def check_quantize(quantize: int | None, backend: str) -> None:
    """Refuse ``hyperparameters.quantize`` where the job's trainer cannot quantize.

    `backend` is the job's training backend (`server.models.loading.training_backend`).
    MLX quantizes everywhere it runs; torch only on CUDA with bitsandbytes.

    Raises:
        InvalidRequest: a 400 on ``hyperparameters.quantize`` saying why and what to do.
    """
    if quantize is None or backend == "mlx":
        return
    from finetune.quantize import torch_quantize_problem
    from server.models.loading import torch_has_cuda

    problem = torch_quantize_problem(torch_has_cuda())
    if problem is not None:
        raise InvalidRequest(problem, param="hyperparameters.quantize", code="invalid_value")


def served_base_id(
    models_dir: Path, model_id: str, hyperparameters: Mapping[str, Any], backend: str | None
) -> str:
    """The base a job's `ft:` model and checkpoints are served on: `model_id`, or for an
    MLX QLoRA job (``quantize``) the quantized base made for it, once it exists. (torch's
    QLoRA quantizes in memory: its adapters are served on the float base.)"""
    bits = hyperparameters.get("quantize")
    if not bits or backend != "mlx":
        return model_id
    catalog = ModelCatalog(models_dir)
    for candidate in _candidate_ids(model_id, int(bits)):
        entry = catalog.get(candidate)
        if entry is not None and _made_from(entry.origin, entry.path, model_id, int(bits)):
            return candidate
    return model_id  # the base was quantized already: trained and served as it is


def bits_of(folder: Path) -> int | None:
    """The bit width of an MLX-quantized folder (its config.json), else None."""
    config = read_json_object(Path(folder) / "config.json")
    quantization = config.get("quantization") or config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    bits = quantization.get("bits")
    return int(bits) if isinstance(bits, int) else None


def quantized_id(model_id: str, bits: int) -> str:
    """``<base>-mlx-q<bits>``; a base that is a path gives its folder's name."""
    from server.models.convert import default_id
    from server.models.trainable import display_name

    return default_id(display_name(model_id), "mlx", bits, None)


def ensure_quantized_base(
    models_dir: Path,
    model_id: str,
    source: Path,
    bits: int,
    notify: Callable[[str], None] | None = None,
) -> QuantizedBase:
    """The quantized base a QLoRA job on `model_id` (trained from `source`) uses; made once.

    `source` is the folder the job would train on in float (the base's own, or a GGUF's
    training copy). An already quantized `source` is returned as it is, under `model_id`.

    Raises:
        CatalogError: the model cannot be quantized (mlx-lm's reason, no path in it).
    """
    source = Path(source)
    if bits_of(source) is not None:
        return QuantizedBase(model_id, source)
    catalog = ModelCatalog(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    ids = _candidate_ids(model_id, bits)
    with exclusive_lock(models_dir / ".pomar-quantize.lock"):
        for candidate in ids:
            entry = catalog.get(candidate)
            if entry is None:
                continue
            if _made_from(entry.origin, entry.path, model_id, bits):
                return QuantizedBase(candidate, entry.path)
        free = next((c for c in ids if catalog.get(c) is None and _free(models_dir, c)), None)
        if free is None:
            raise CatalogError(
                f"cannot quantize '{_name(model_id)}': the ids {', '.join(ids)} are taken by "
                "other models"
            )
        return _build(catalog, model_id, source, bits, free, notify)


def _build(
    catalog: ModelCatalog,
    model_id: str,
    source: Path,
    bits: int,
    new_id: str,
    notify: Callable[[str], None] | None,
) -> QuantizedBase:
    from server.models.convert import build_converted

    say = notify or log.info
    group_size = _group_size(source)
    say(
        f"Quantizing '{_name(model_id)}' to {bits} bits for QLoRA, as the model "
        f"'{new_id}' (once; the fine-tuned model is served on it)."
    )

    def build(folder: Path) -> None:
        build_converted(
            source, folder, "mlx", q_bits=bits, group_size=group_size, dtype=None, name=new_id
        )

    try:
        entry = catalog.add(
            new_id,
            build,
            format="mlx",
            source="converted",
            origin=model_id,
            precision=f"q{bits}",
        )
    except (ValueError, OSError) as exc:
        from server.models.trainable import scrub_paths

        reason = scrub_paths(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise CatalogError(f"cannot quantize '{_name(model_id)}' to {bits} bits: {reason}") from exc
    say(f"Quantized base '{new_id}' ready.")
    return QuantizedBase(new_id, entry.path, created=True)


def _candidate_ids(model_id: str, bits: int) -> list[str]:
    """The plain id first; then one that also names the origin (two bases named alike)."""
    plain = quantized_id(model_id, bits)
    digest = hashlib.sha1(model_id.encode()).hexdigest()[:8]
    ids = [plain, f"{plain}-{digest}"]
    return [i for i in ids if _valid(i)]


def _made_from(origin: str | None, folder: Path, model_id: str, bits: int) -> bool:
    """Whether a stored model is `model_id` quantized to `bits` (by a job or by hand)."""
    return origin == model_id and bits_of(folder) == bits


def _group_size(source: Path) -> int:
    """64 when every hidden width of the config allows it, else 32 (mlx-lm leaves a layer
    whose width neither divides in float)."""
    config = read_json_object(source / "config.json")
    widths: list[int] = [
        value
        for key in ("hidden_size", "intermediate_size", "n_embd")
        if isinstance(value := config.get(key), int)
    ]
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int):
        widths.append(heads * head_dim)  # o_proj's input
    return GROUP_SIZES[0] if all(w % GROUP_SIZES[0] == 0 for w in widths) else GROUP_SIZES[1]


def _free(models_dir: Path, model_id: str) -> bool:
    from server.models.store import folder_name

    return not (models_dir / folder_name(model_id)).exists()


def _valid(model_id: str) -> bool:
    try:
        validate_id(model_id)
    except CatalogError:
        return False
    return True


def _name(model_id: str) -> str:
    from server.models.trainable import display_name

    return display_name(model_id)
