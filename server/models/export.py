"""Export a fine-tuned model as a standalone model: `pomar models export FT_ID --to ...`.

The adapter is fused into its base's weights, with the library that wrote it: mlx-lm's
``fuse`` for an MLX adapter (`mlx_lm.load(..., adapter_path=)`, then each LoRA layer's
``fuse()``, as ``mlx_lm.fuse`` does) and PEFT's ``merge_and_unload`` for a PEFT one, so
the fused weights are what that library computes when it serves the adapter. Where MLX is
not installed an MLX adapter is converted to PEFT's format first (`finetune.adapters`:
the two compute the same function) and merged with PEFT.

The fused model is a Hugging Face folder: the base's own config, tokenizer, chat template
and generation defaults, copied as they are, and ``model.safetensors`` in the base's dtype.
``hf`` stops there; ``mlx`` and ``gguf`` convert it further as `server.models.convert`
does (an MLX folder, or a .gguf beside the tokenizer files, any llama.cpp type with
``quant``) for llama.cpp, Ollama, LM Studio or the hub. The result goes into the store
(source ``exported``) or to a folder.

A fine-tune of a model imported from a GGUF was trained on the Hugging Face weights pomar
built from that GGUF (`server.models.trainable`): those are the weights it is fused into.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from server.engine.gguf.to_hf import Reporter
from server.models.convert import (
    build_converted,
    check_options,
    copy_side_files,
    dense_precision,
    is_quantized,
    target_precision,
    weights_dtype,
)
from server.models.store import CatalogError, ModelCatalog, validate_id
from server.store.models import ModelRecord

EXPORT_TARGETS = ("hf", "mlx", "gguf")
_FUSED = ".fused"


def export_model(
    home: Path,
    ft_id: str,
    to: str,
    *,
    q_bits: int | None = None,
    group_size: int = 64,
    new_id: str | None = None,
    out: Path | None = None,
    quant: str | None = None,
    report: Reporter | None = None,
) -> Path:
    """Fuse the fine-tuned model `ft_id` of the pomar home `home` and write it as `to`.

    Args:
        home: the pomar home (its store registers `ft_id`; its models hold the base).
        ft_id: a fine-tuned model or checkpoint (``ft:...``, ``ft:...:ckpt-step-N``).
        to: ``hf``, ``mlx`` or ``gguf``.
        q_bits: quantize the ``mlx`` (2-8 bits) or ``gguf`` (8: Q8_0, 4: Q4_0) result.
        group_size: MLX quantization group size.
        new_id: the id in the store (default from `ft_id`, see `default_export_id`).
        out: write the folder here instead of adding it to the store (it must not exist,
            or be empty).
        quant: a llama.cpp type for ``gguf`` (``Q4_K_M``, ...), as `convert_model`'s.
        report: where the steps of a ``quant`` conversion are told (default: the log).

    Returns:
        The folder written: the new model's folder in the store, or `out`.

    Raises:
        CatalogError: bad options, an unknown or deleted fine-tuned model, a missing base
            or adapter, an id taken, a non-empty `out`, or a failed conversion.
    """
    if to not in EXPORT_TARGETS:
        raise CatalogError(f"cannot export to '{to}': choose one of {', '.join(EXPORT_TARGETS)}")
    if to == "hf":
        if q_bits is not None or quant is not None:
            raise CatalogError("a Hugging Face export is not quantized: use --to mlx or gguf")
    else:
        quant = check_options(to, q_bits, group_size, None, quant)
    if new_id is not None and out is not None:
        raise CatalogError("an export goes to the store (with an id) or to --out, not both")
    home = Path(home).expanduser()
    record = fine_tuned_record(home, ft_id)
    models_dir = home / "models"
    base = base_folder(record, models_dir)
    adapter = Path(record.adapter_path)
    target_id = validate_id(new_id or default_export_id(ft_id, to, q_bits, quant))
    # the fused weights keep the base's dtype
    precision = (
        dense_precision(base) if to == "hf" else target_precision(base, to, q_bits, None, quant)
    )

    def build(folder: Path) -> None:
        if to == "hf":
            fuse_adapter(base, adapter, folder)
            return
        fused = folder / _FUSED
        fused.mkdir()
        fuse_adapter(base, adapter, fused)
        build_converted(
            fused,
            folder,
            to,
            q_bits=q_bits,
            group_size=group_size,
            dtype=None,
            name=target_id,
            quant=quant,
            report=report,
        )
        shutil.rmtree(fused)

    try:
        if out is not None:
            return _write_folder(Path(out).expanduser(), build)
        entry = ModelCatalog(models_dir).add(
            target_id,
            build,
            format="hf" if to == "hf" else ("mlx" if to == "mlx" else "gguf"),
            source="exported",
            origin=record.base_model,
            precision=precision,
            fine_tuned_from=ft_id,
        )
    except (ValueError, OSError) as exc:  # the fusing and converting libraries' refusals
        raise CatalogError(f"cannot export '{ft_id}' to {to}: {exc}") from exc
    return entry.path


def default_export_id(ft_id: str, to: str, q_bits: int | None, quant: str | None = None) -> str:
    """``ft:tiny:pomar:secret:abcd1234`` -> ``tiny-pomar-secret-abcd1234`` (+ ``-mlx``,
    ``-mlx-q4``, ``-gguf-f16``, ``-gguf-q8_0``, ``-gguf-q4_k_m`` …; no suffix for ``hf``)."""
    stem = "-".join(part for part in ft_id.removeprefix("ft:").split(":") if part)
    stem = stem.replace("/", "-")
    if to == "hf":
        return stem
    if to == "mlx":
        return f"{stem}-mlx" + (f"-q{q_bits}" if q_bits is not None else "")
    if quant is not None:
        return f"{stem}-gguf-{quant.lower()}"
    return f"{stem}-gguf-" + {None: "f16", 8: "q8_0", 4: "q4_0"}[q_bits]


def fine_tuned_record(home: Path, ft_id: str) -> ModelRecord:
    """The live fine-tuned model `ft_id` registered in `home`'s store, with its adapter."""
    from server.store import Store

    store = Store.open(home)
    try:
        record = store.models.get(ft_id, include_deleted=True)
    finally:
        store.close()
    if record is None:
        if ModelCatalog(home / "models").get(ft_id) is not None or not ft_id.startswith("ft:"):
            raise CatalogError(
                f"'{ft_id}' is not a fine-tuned model: export takes an ft: model "
                "(pomar models convert changes a base model's format)"
            )
        raise CatalogError(f"no fine-tuned model '{ft_id}' in {home} (see GET /v1/models)")
    if record.deleted:
        raise CatalogError(f"the fine-tuned model '{ft_id}' was deleted")
    if not Path(record.adapter_path).is_dir():
        raise CatalogError(f"the adapter of '{ft_id}' is gone ({record.adapter_path})")
    return record


def base_folder(record: ModelRecord, models_dir: Path) -> Path:
    """The Hugging Face folder of the fine-tuned model's base (dense weights): for a GGUF
    base, the one its fine-tunes trained on (built from the GGUF, once)."""
    from server.errors import ModelLoadError, ModelNotTrainable
    from server.models.embedded import EmbeddedModelMissing
    from server.models.loading import resolve_model_path
    from server.models.trainable import ensure_training_copy

    try:
        path = resolve_model_path(record.base_model, models_dir)
        path = ensure_training_copy(record.base_model, path, progress=True)
    except (ModelLoadError, EmbeddedModelMissing, ModelNotTrainable) as exc:
        raise CatalogError(
            f"the base model '{record.base_model}' of '{record.id}' is not available: {exc}"
        ) from exc
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        raise CatalogError(
            f"the base model '{record.base_model}' of '{record.id}' has no Hugging Face "
            f"weights to fuse into ({path})"
        )
    if is_quantized(path):
        raise CatalogError(
            f"the base model '{record.base_model}' is quantized: an export fuses into dense "
            "weights, so fine-tune an unquantized base to export it"
        )
    return path


def fuse_adapter(base: Path, adapter: Path, dst: Path) -> None:
    """Write base + LoRA adapter, fused, as a Hugging Face folder `dst` (existing, empty)."""
    from finetune.adapters import convert_mlx_to_peft, detect_adapter_format

    kind = detect_adapter_format(adapter)
    if kind == "mlx":
        try:
            _fuse_mlx(base, adapter, dst)
        except ImportError:  # no MLX on this machine: PEFT computes the same function
            peft_adapter = dst / ".peft-adapter"
            convert_mlx_to_peft(adapter, peft_adapter, base)
            _fuse_peft(base, peft_adapter, dst)
            shutil.rmtree(peft_adapter)
    else:
        _fuse_peft(base, adapter, dst)
    copy_side_files(base, dst)  # the base's config, tokenizer, template, as they are


def _fuse_mlx(base: Path, adapter: Path, dst: Path) -> None:
    """mlx-lm's fuse: load with the adapter, replace each LoRA layer by its fused Linear."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load

    model = load(str(base), adapter_path=str(adapter))[0]
    fused = [(name, m.fuse()) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    # mlx-lm's Llama-family modules keep Hugging Face's parameter names; "pt" metadata
    # is what transformers expects of a safetensors file
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "pt"})


def _fuse_peft(base: Path, adapter: Path, dst: Path) -> None:
    """PEFT's merge_and_unload in float32, saved in the base's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, weights_dtype(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(dtype)
    saved = dst / ".peft-save"
    merged.save_pretrained(str(saved), safe_serialization=True)
    for path in saved.glob("*.safetensors*"):  # the weights (and a shard index) only
        path.rename(dst / path.name)
    shutil.rmtree(saved)


def _write_folder(out: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary folder beside `out`, then rename it into place."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CatalogError(f"{out} already exists and is not empty: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 is for the work in progress, not the result
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
