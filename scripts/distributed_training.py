"""The fine-tuning side of scripts/bench_distributed.py: the examples (`write_data`) and
the job's config (`train_config`), rank 0's step clock (`Clock`), the ranks' environment
(`rank_environment`), the server's own path (`run_job`), and what a driver rank runs
(`driver_main`), with its all-sum of the LoRA gradient's size (`all_reduce_ms`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchlib import child_env, emit

BATCH = 4
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TOPICS = ["the river", "a garden", "the old town", "a lighthouse", "the market", "a library"]


def write_data(path: Path, n: int) -> Path:
    """`n` chat examples whose replies run past `--max-length`: every one is truncated to
    the same length, so every batch has one shape (one compiled graph) and one token count."""
    with path.open("w") as out:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            ask = f"Describe {topic} at length, please ({i})."
            reply = " ".join(
                f"{topic.capitalize()} is quiet at hour {h} and busy at hour {h + i}, "
                f"and the people there talk about the weather and the price of bread."
                for h in range(8)
            )
            messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def train_config(args: argparse.Namespace, engine: str, data: Path, out: Path) -> Any:
    from finetune.config import LoRAConfig, TrainConfig

    total = args.warmup + args.steps
    return TrainConfig(
        model_path=args.model,
        train_file=data,
        out_dir=out,
        backend=engine,
        n_epochs=2 if total % 2 == 0 else 1,
        batch_size=BATCH,
        learning_rate=1e-4,
        steps_per_eval=10_000,
        steps_per_checkpoint=10_000,
        lora=LoRAConfig(rank=8, max_length=args.max_length),
    )


def examples_for(args: argparse.Namespace) -> int:
    total = args.warmup + args.steps
    return BATCH * total // (2 if total % 2 == 0 else 1)


class Clock:
    """Rank 0's step reports: throughput over the steps after the warm-up, from the
    trainer's own clock (`elapsed_s`, which includes every collective of the step)."""

    def __init__(self) -> None:
        self.steps: list[Any] = []
        self.first_wall: float | None = None
        #: the launcher's pid (job path, several ranks): its CPU time is sampled per step
        self.launcher: int | None = None
        self.launcher_cpu: list[tuple[float, float]] = []  # (wall, CPU seconds)

    def on_step(self, metrics: Any) -> None:
        now = time.time()
        if self.first_wall is None:
            self.first_wall = now
        self.steps.append(metrics)
        if self.launcher is not None:
            self.launcher_cpu.append((now, cpu_seconds(self.launcher)))

    def figures(self, warmup: int) -> dict[str, Any]:
        start, end = self.steps[warmup - 1], self.steps[-1]
        span = end.elapsed_s - start.elapsed_s
        figures = {
            "timed_steps": end.step - start.step,
            "steps_per_s": (end.step - start.step) / span,
            "tokens_per_s": (end.trained_tokens - start.trained_tokens) / span,
            "last_loss": end.train_loss,
            "first_step_wall": self.first_wall,
            "launcher_cpu": None,
        }
        if self.launcher_cpu:
            (wall0, cpu0), (wall1, cpu1) = self.launcher_cpu[warmup - 1], self.launcher_cpu[-1]
            figures["launcher_cpu"] = (cpu1 - cpu0) / (wall1 - wall0)
        return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` itself (not its children), from /proc; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timing_callback(clock: Clock) -> Any:
    from finetune.callbacks import TrainingCallback

    class Timing(TrainingCallback):
        def on_step(self, metrics: Any) -> None:
            clock.on_step(metrics)

    return Timing()


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Any:
    """This process's environment is `env` for the block (the job path's children inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def rank_environment(engine: str, threads: int, **changes: str) -> dict[str, str]:
    env = child_env(openblas=engine == "mlx", TOKENIZERS_PARALLELISM="false", **changes)
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    env.update({key: str(threads) for key in THREAD_VARS})
    return env


def run_job(args: argparse.Namespace, engine: str, ranks: int, threads: int, tmp: Path) -> dict:
    """The server's path: `train_in_child`, one process or the launcher over loopback."""
    from server.jobs.launch import Host
    from server.jobs.trainproc import train_in_child

    out = tmp / f"job-{engine}-{ranks}x{threads}"
    config = train_config(args, engine, tmp / "train.jsonl", out)
    clock = Clock()

    def on_start(pid: int) -> None:
        if ranks > 1:  # mlx.launch or torchrun; with one rank, the trainer itself
            clock.launcher = pid

    # with 2 slots, the launcher gives each rank cpu_count // 2 = 1 thread here itself
    with environment(rank_environment(engine, threads)):
        started = time.time()
        train_in_child(config, timing_callback(clock), on_start, [Host("127.0.0.1", ranks)])
    shutil.rmtree(out, ignore_errors=True)
    return {**clock.figures(args.warmup), "started": started}


def driver_main(args: argparse.Namespace) -> None:
    """In a rank started by `run_driver`: train, and print rank 0's figures."""
    from finetune.callbacks import TrainingCallback
    from finetune.config import TrainConfig
    from finetune.distributed import open_group
    from finetune.trainer import train

    config = TrainConfig.model_validate_json(Path(args.driver).read_text())
    group = open_group(config.backend if args.ranks > 1 else None)
    try:
        if group.rank:
            # every rank runs the whole trainer; only rank 0 writes where the config says
            config = config.model_copy(
                update={"out_dir": Path(f"{config.out_dir}-rank{group.rank}")}
            )
        clock = Clock()
        train(config, timing_callback(clock) if group.rank == 0 else TrainingCallback(), group)
        reduce_ms = all_reduce_ms(group, lora_size(config)) if group.size > 1 else None
    finally:
        close = getattr(group, "close", None)
        if close is not None:
            close()
    if group.rank == 0:
        emit({**clock.figures(args.warmup), "all_reduce_ms": reduce_ms})


def lora_size(config: Any) -> int:
    """How many LoRA parameters the run trains (the default q/k/v/o targets): the size of
    the gradient summed over the group every step."""
    model = json.loads((Path(config.model_path) / "config.json").read_text())
    hidden, heads = model["hidden_size"], model["num_attention_heads"]
    kv = model.get("num_key_value_heads") or heads
    kv_width = kv * (model.get("head_dim") or hidden // heads)
    widths = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_width)}
    widths.update(v_proj=(hidden, kv_width), o_proj=(hidden, hidden))
    per_layer = sum(sum(widths[m.rsplit(".", 1)[-1]]) for m in config.lora.target_modules)
    return per_layer * config.lora.rank * model["num_hidden_layers"]


def all_reduce_ms(group: Any, size: int, repeats: int = 20) -> float:
    """Milliseconds of one host-side all-sum of `size` float32s over the group (after one
    to warm up): the gradient's trip, without the step around it."""
    import numpy as np

    values = np.ones(size, dtype=np.float32)
    group.all_sum(values)
    tic = time.perf_counter()
    for _ in range(repeats):
        group.all_sum(values)
    return 1000 * (time.perf_counter() - tic) / repeats
