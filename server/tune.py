"""`pomar tune FILE --model M`: the job pipeline in the foreground, with a progress bar.

The same stages as a fine-tuning job — datalab's clean/validate/dedupe/split, then
LoRA training — without a server: for a terminal, a notebook or a script.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from server.settings import Settings


def add_parser(sub: Any) -> None:
    """Register `pomar tune` and its flags."""
    p = sub.add_parser("tune", help="fine-tune a LoRA adapter in the foreground")
    p.add_argument("file", type=Path, help="training JSONL (chat, Alpaca, prompt/completion...)")
    p.add_argument("--model", default=None, help="base model: embedded id, folder or hub id")
    p.add_argument("--validation-file", type=Path, help="validation JSONL (else split off)")
    p.add_argument("--epochs", default="auto", help="n_epochs, or auto (OpenAI's rule)")
    p.add_argument("--batch-size", default="auto", help="batch size, or auto")
    p.add_argument("--lr-multiplier", default="auto", help="x the base LoRA learning rate")
    p.add_argument("--rank", type=int, help="LoRA rank")
    p.add_argument("--alpha", type=float, help="LoRA alpha")
    p.add_argument("--layers", type=int, help="layers adapted from the top (-1 = all)")
    p.add_argument("--max-length", type=int, help="tokens per example")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suffix", default="", help="a name for the run's folder")
    p.add_argument("--backend", choices=["auto", "mlx", "torch"], default=None)
    p.add_argument("--out", type=Path, help="output folder (default: $POMAR_HOME/tunes/...)")


def _auto_or(value: str, cast: Any) -> Any:
    return "auto" if value == "auto" else cast(value)


def run(args: argparse.Namespace) -> int:
    """Prepare the data, train, write results; print where everything is."""
    from rich.console import Console

    from finetune.progress import RichProgress
    from finetune.results import plot_loss_curve, write_results_csv
    from finetune.trainer import train
    from server.errors import ModelNotTrainable
    from server.jobs.hyper import train_config
    from server.jobs.validation import prepare_training_data
    from server.models.loading import resolve_model_path, training_backend
    from server.models.trainable import ensure_training_copy

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole, copy-pasteable
    overrides = {"model": args.model} if args.model else {}
    if args.backend:
        overrides["backend"] = args.backend
    settings = Settings(**overrides)
    backend: str
    if settings.backend in ("mlx", "torch"):
        backend, why = settings.backend, f"--backend {settings.backend} was asked for"
    else:  # auto (or gguf, which serves but does not train)
        backend, why = training_backend("gguf"), "MLX where it runs, else torch"
    console.print(f"[bold]backend[/]: {backend} ({why})")
    base = resolve_model_path(settings.model, settings.models_dir)
    try:  # an imported GGUF trains on a de-quantized copy, built once
        base = ensure_training_copy(settings.model, base, progress=True)
    except ModelNotTrainable as exc:
        console.print(f"[red]✗[/] {exc}")
        return 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{Path(settings.model).name}-{args.suffix or args.file.stem}-{stamp}"
    out = args.out or settings.home / "tunes" / name
    hp = {
        "n_epochs": _auto_or(args.epochs, int),
        "batch_size": _auto_or(args.batch_size, int),
        "learning_rate_multiplier": _auto_or(args.lr_multiplier, float),
        "lora_rank": args.rank,
        "lora_alpha": args.alpha,
        "lora_layers": args.layers,
        "max_length": args.max_length,
    }
    with console.status("checking and preparing the data…"):
        report = prepare_training_data(
            args.file,
            out / "data",
            base,
            seed=args.seed,
            max_length=args.max_length,
            valid_path=args.validation_file,
        )
    console.print(report.summary())
    if not report.can_train:
        for reason in report.blocking_reasons:
            console.print(f"[red]✗[/] {reason}")
        console.print(f"full report: {out / 'data' / 'report.json'}")
        return 1
    train_cfg, resolved = train_config(
        {k: v for k, v in hp.items() if v is not None},
        args.seed,
        base,
        out / "data",
        out / "train",
        backend,
        None,
    )
    console.print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in resolved.items()))
    with RichProgress(console=console) as progress:
        # Ctrl-C stops at the next step and keeps a checkpoint
        previous = signal.signal(signal.SIGINT, lambda *_: progress.stop())
        try:
            result = train(train_cfg, progress)
        finally:
            signal.signal(signal.SIGINT, previous)
    csv = write_results_csv(result.history, out / "step_metrics.csv")
    png = plot_loss_curve(result.history, out / "loss_curve.png")
    state = "stopped early" if result.stopped_early else "done"
    console.print(f"[bold green]{state}[/]: {result.steps}/{result.total_steps} steps")
    console.print(f"adapter:    {result.adapter_path}")
    console.print(f"metrics:    {csv}")
    console.print(f"loss curve: {png}")
    if result.evaluation:
        console.print(evaluation_table(result.evaluation))
    return 0


#: the rows of `pomar tune`'s before/after table: (metric key, label, as a percentage)
_EVALUATION_ROWS = (
    ("valid_loss", "validation loss", False),
    ("valid_mean_token_accuracy", "token accuracy", True),
    ("preference_accuracy", "preference accuracy", True),
    ("exact_match", "exact match", True),
    ("normalized_match", "normalized match", True),
)


def evaluation_table(evaluation: dict[str, Any]) -> Any:
    """The run's before/after evaluation (`finetune.evaluation`) as a rich table."""
    from rich.table import Table

    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    table = Table(title="evaluation on the validation set", title_justify="left")
    for column in ("", "before", "after"):
        table.add_column(column, justify="left" if not column else "right")
    for key, label, percent in _EVALUATION_ROWS:
        if before.get(key) is None and after.get(key) is None:
            continue
        cells = [
            "—" if value is None else f"{value:.0%}" if percent else f"{value:.4f}"
            for value in (before.get(key), after.get(key))
        ]
        table.add_row(label, *cells)
    n = after.get("n_generated") or before.get("n_generated")
    if n:
        table.caption = f"matches over {n} greedy answers"
    return table
