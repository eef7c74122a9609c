"""A job that continues from a fine-tuned model: its adapter, in the trainer's format."""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune.adapters import (
    adapter_lora,
    convert_mlx_to_peft,
    convert_peft_to_mlx,
    detect_adapter_format,
)
from finetune.config import LoRAConfig
from server.jobs.errors import JobFailed
from server.store.jobs import JobRecord


def parent_adapter(
    job: JobRecord, backend: str, base_path: Path, work: Path
) -> tuple[Path, LoRAConfig] | None:
    """The adapter folder the job's LoRA layers start from and its LoRA shape; None for a
    job on a base model. A parent trained by the other engine is converted once, into the
    job's folder."""
    if not job.parent_adapter:
        return None
    source = Path(job.parent_adapter)
    if not source.is_dir():
        raise JobFailed(
            "model_not_found",
            f"The fine-tuned model '{job.parent_model}' this job starts from was deleted.",
            "model",
        )
    wanted = "mlx" if backend == "mlx" else "peft"
    if detect_adapter_format(source) != wanted:
        converted = work / "parent-adapter"
        if not converted.is_dir():
            tmp = work / ".parent-adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            convert = convert_peft_to_mlx if wanted == "mlx" else convert_mlx_to_peft
            convert(source, tmp, base_path)
            tmp.rename(converted)
        source = converted
    return source, adapter_lora(source, base_path)
