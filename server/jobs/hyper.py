"""From a job's requested hyperparameters ("auto" or numbers) to a `TrainConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from chatfmt.hyper import auto_epochs
from finetune.config import (
    DEFAULT_DPO_BETA,
    LoRAConfig,
    TrainConfig,
    auto_batch_size,
    resolve_learning_rate,
    total_steps,
)


def count_lines(path: Path) -> int:
    """Examples in a chat JSONL written by datalab (one per line)."""
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def train_config(
    hp: Mapping[str, Any],
    seed: int,
    base_path: Path,
    data_dir: Path,
    out_dir: Path,
    backend: str,
    resume: Path | None,
    *,
    method: Literal["supervised", "dpo"] = "supervised",
    parent: tuple[Path, LoRAConfig] | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """The trainer's config, and the hyperparameters resolved from "auto" to numbers.

    `hp` holds OpenAI's n_epochs, batch_size, learning_rate_multiplier ("auto" or a
    number), DPO's beta, and pomar's lora_rank, lora_alpha, lora_layers, max_length and
    quantize (optional). `parent` is the adapter a job continues from (in the trainer's
    format) and its LoRA shape, which the run keeps.
    """
    train_file, valid_file = data_dir / "train.jsonl", data_dir / "valid.jsonl"
    n = count_lines(train_file)
    has_valid = valid_file.is_file() and count_lines(valid_file) > 0
    n_epochs = auto_epochs(n) if hp.get("n_epochs", "auto") == "auto" else int(hp["n_epochs"])
    batch = auto_batch_size(n) if hp.get("batch_size", "auto") == "auto" else int(hp["batch_size"])
    batch = min(batch, n)
    multiplier = hp.get("learning_rate_multiplier", "auto")
    lr_mult = 1.0 if multiplier == "auto" else float(multiplier)
    lora = (
        parent[1]
        if parent
        else LoRAConfig(
            **{
                k: v
                for k, v in {
                    "rank": hp.get("lora_rank"),
                    "alpha": hp.get("lora_alpha"),
                    "num_layers": hp.get("lora_layers"),
                    "max_length": hp.get("max_length"),
                }.items()
                if v is not None
            }
        )
    )
    if parent and hp.get("max_length"):
        lora = lora.model_copy(update={"max_length": int(hp["max_length"])})
    beta = hp.get("beta", "auto")
    beta = DEFAULT_DPO_BETA if beta in (None, "auto") else float(beta)
    steps = total_steps(n, n_epochs, batch)
    config = TrainConfig(
        model_path=base_path,
        train_file=train_file,
        valid_file=valid_file if has_valid else None,
        out_dir=out_dir,
        backend=backend,
        n_epochs=n_epochs,
        batch_size=batch,
        learning_rate=resolve_learning_rate(lr_mult),
        seed=seed,
        # about 10 evaluations and 5 checkpoints per run, whatever its length
        steps_per_eval=max(1, steps // 10),
        steps_per_checkpoint=max(1, steps // 5),
        eval_batches=25,
        lora=lora,
        resume_from=resume,
        quantize=hp.get("quantize"),
        method=method,
        beta=beta,
        init_adapter=parent[0] if parent else None,
    )
    resolved = {
        "n_epochs": n_epochs,
        "batch_size": batch,
        "learning_rate_multiplier": lr_mult,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_layers": -1 if lora.num_layers is None else lora.num_layers,
        "max_length": lora.max_length,
    }
    if method == "dpo":
        resolved["beta"] = beta
    if config.quantize is not None:  # QLoRA (pomar): kept, so a resumed job quantizes too
        resolved["quantize"] = config.quantize
    return config, resolved
