"""LoRA training speed: pomar's ``finetune.train`` vs ``python -m mlx_lm lora``.

Both train the same model on the same chat JSONL with the same LoRA (rank, scale, target
modules, layers), batch size, learning rate and optimizer (Adam), loss on the assistant
tokens only (``--mask-prompt`` for mlx-lm), compile on, no validation or checkpoint in the
timed window. The first ``--warmup`` steps (kernel compilation) are left out of it/s.

mlx-lm trains the weights in the dtype they are stored in; pomar casts to float32 on the CPU
(bf16 matmuls skip BLAS there). So mlx-lm runs on a float32 copy of the model (made with
``mlx_lm convert --dtype float32``) — the like-for-like engine comparison — and, with
``--native-iters N``, also on the folder as stored.

Run with OpenBLAS preloaded on Linux (docs/platform.md):

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python scripts/bench_lora.py [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from benchlib import LiveServer, LoadAverage, marked

from finetune.callbacks import StepMetrics, TrainingCallback
from finetune.config import DEFAULT_TARGET_MODULES, LoRAConfig, TrainConfig

TOPICS = ["the river", "a garden", "the old town", "a lighthouse", "the market", "a library"]
ASKS = ["Describe {t} in two sentences.", "What would you find near {t}?", "Why visit {t}?"]


@dataclass
class Measure:
    runner: str
    dtype: str
    iters: int
    it_per_s: float
    tokens_per_s: float | None


def write_data(folder: Path, n_examples: int) -> Path:
    """A deterministic chat set of similar-length conversations (train.jsonl + valid.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_examples):
        topic = TOPICS[i % len(TOPICS)]
        ask = ASKS[(i // len(TOPICS)) % len(ASKS)].format(t=topic)
        answer = (
            f"{topic.capitalize()} is quiet in the morning and busy by noon. "
            f"People come to {topic} for the light, the food and the stories, number {i}."
        )
        messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "valid.jsonl").write_text("\n".join(lines[:4]) + "\n")
    return folder


class _Timer(TrainingCallback):
    """Keeps every step's metrics; stops the run after ``limit`` steps."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps: list[StepMetrics] = []

    def on_step(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics)

    def should_stop(self) -> bool:
        return len(self.steps) >= self.limit


def bench_pomar(args: argparse.Namespace, data: Path, out: Path) -> Measure:
    """finetune.train on a worker thread, as the server runs it."""
    config = TrainConfig(
        model_path=args.model,
        train_file=data / "train.jsonl",
        out_dir=out,
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        steps_per_checkpoint=10**6,
        lora=LoRAConfig(rank=args.rank, alpha=args.rank * args.scale, num_layers=args.num_layers),
    )
    timer = _Timer(args.iters)
    worker = threading.Thread(target=_train, args=(config, timer))
    worker.start()
    worker.join()
    timed = timer.steps[args.warmup :]
    seconds = timed[-1].elapsed_s - timer.steps[args.warmup - 1].elapsed_s
    tokens = timed[-1].trained_tokens - timer.steps[args.warmup - 1].trained_tokens
    return Measure(
        "pomar finetune.train", "float32", len(timed), len(timed) / seconds, tokens / seconds
    )


def bench_api(args: argparse.Namespace, data: Path, home: Path) -> Measure:
    """A fine-tuning job through a real `pomar serve` and the openai SDK.

    it/s comes from the job's metrics events (step and elapsed_s, at most one event
    every 2 s); the job is cancelled once `--iters` steps are done.
    """
    import time

    import openai

    from finetune.config import BASE_LEARNING_RATE

    # the server arranges OpenBLAS itself; compile on, as in the other runners
    env: dict[str, str | None] = {"MLX_DISABLE_COMPILE": None}
    server = LiveServer(model=str(args.model), backend="mlx", home=home, env=env)
    server.start()
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
        with (data / "train.jsonl").open("rb") as f:
            file_id = client.files.create(file=f, purpose="fine-tune").id
        hp = {
            # datalab drops the templated data's near-duplicates: epochs enough for --iters
            # steps whatever is left; the job is cancelled once they are timed
            "n_epochs": 25,
            "batch_size": args.batch_size,
            "learning_rate_multiplier": args.learning_rate / BASE_LEARNING_RATE,
            "lora_rank": args.rank,
            "lora_alpha": args.rank * args.scale,
            "lora_layers": args.num_layers or -1,
            "max_length": args.max_length,
        }
        job = client.fine_tuning.jobs.create(
            model=str(args.model),
            training_file=file_id,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},  # type: ignore[typeddict-unknown-key]
        )
        points: dict[int, tuple[float, int]] = {}
        while True:
            state = client.fine_tuning.jobs.retrieve(job.id).status
            for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data:
                d = event.data or {}
                if event.type == "metrics" and "elapsed_s" in d:
                    points[int(d["step"])] = (float(d["elapsed_s"]), int(d["trained_tokens"]))
            if (points and max(points) >= args.iters) or state in ("succeeded", "failed"):
                break
            time.sleep(1)
        if state not in ("succeeded", "failed", "cancelled"):
            client.fine_tuning.jobs.cancel(job.id)
    finally:
        server.stop()
    after = [s for s in sorted(points) if s >= args.warmup]
    if len(after) < 2:
        raise SystemExit(f"the job reported too few steps: {sorted(points)} ({state})")
    first, last = after[0], after[-1]
    seconds = points[last][0] - points[first][0]
    tokens = points[last][1] - points[first][1]
    return Measure("pomar job through the API", "float32", last - first, (last - first) / seconds,
                   tokens / seconds)  # fmt: skip


def _train(config: TrainConfig, callback: TrainingCallback) -> None:
    from finetune.trainer import train

    train(config, callback)


def float32_copy(model: Path, dest: Path) -> Path:
    """The model converted to float32 by mlx_lm itself."""
    cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(model)]
    subprocess.run([*cmd, "--mlx-path", str(dest), "--dtype", "float32"], check=True)
    return dest


# `python -m mlx_lm lora` is mlx_lm.lora.main(); its 0.32 UI prints tokens/s only, so the
# child answers main()'s reporting-callback hook (the one wandb plugs into) with a callback
# that prints the it/s and tokens/s mlx-lm itself computes. Nothing else is touched.
_MLX_LM_CHILD = """
import json, sys
import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback

class Report(TrainingCallback):
    def on_train_loss_report(self, info):
        print("BENCH " + json.dumps(info), flush=True)

lora.get_reporting_callbacks = lambda *args, **kwargs: Report()
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
"""


def bench_mlx_lm(
    args: argparse.Namespace, model: Path, dtype: str, iters: int, data: Path, out: Path
) -> Measure:
    """mlx-lm's LoRA CLI in a subprocess; it/s from its own reports after the warm-up."""
    keys = json.dumps(list(DEFAULT_TARGET_MODULES))
    config = out / "lora.yaml"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "lora_parameters:\n"
        f"  rank: {args.rank}\n  scale: {args.scale}\n  dropout: 0.0\n  keys: {keys}\n"
    )
    num_layers = args.num_layers if args.num_layers is not None else -1
    report = min(args.warmup, iters - 1)
    cli = [
        "--train", "--model", str(model), "--data", str(data), "--config", str(config),
        "--mask-prompt", "--iters", str(iters), "--batch-size", str(args.batch_size),
        "--num-layers", str(num_layers), "--learning-rate", str(args.learning_rate),
        "--steps-per-report", str(report), "--steps-per-eval", str(10**6),
        "--val-batches", "1", "--save-every", str(10**6), "--adapter-path", str(out / "ad"),
        "--max-seq-length", str(args.max_length), "--optimizer", "adam",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _MLX_LM_CHILD, *cli], capture_output=True, text=True
    )
    reports = marked(proc.stdout, "BENCH ")
    if proc.returncode != 0 or len(reports) < 2:
        raise SystemExit(f"mlx_lm lora failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # the first report holds the warm-up (compilation); later ones are steady state
    timed = reports[1:]
    steps = [r["iteration"] - p["iteration"] for p, r in zip(reports, timed, strict=False)]
    seconds = sum(n / r["iterations_per_second"] for n, r in zip(steps, timed, strict=True))
    tokens = sum(
        r["tokens_per_second"] * n / r["iterations_per_second"]
        for n, r in zip(steps, timed, strict=True)
    )
    return Measure(
        "python -m mlx_lm lora", dtype, sum(steps), sum(steps) / seconds, tokens / seconds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--iters", type=int, default=20, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of it/s")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate the runners N times; report the best"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--scale", type=float, default=2.0, help="alpha / rank")
    parser.add_argument("--num-layers", type=int, default=None, help="default: all blocks")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=120)
    parser.add_argument(
        "--native-iters", type=int, default=0, help="also run mlx_lm on the stored dtype"
    )
    parser.add_argument(
        "--api", action="store_true", help="also time a job through a real pomar server"
    )
    args = parser.parse_args()
    if args.model is None:
        from server.models.embedded import ensure_embedded_model

        args.model = ensure_embedded_model(Path.home() / ".pomar" / "models")
    if args.iters <= args.warmup or args.examples < args.iters * args.batch_size:
        raise SystemExit("need iters > warmup and examples >= iters * batch size")
    preload = os.environ.get("LD_PRELOAD", "")
    blas = "OpenBLAS preloaded" if "openblas" in preload else "reference BLAS (no LD_PRELOAD)"
    load = LoadAverage()
    if os.environ.get("MLX_DISABLE_COMPILE"):
        print("warning: MLX_DISABLE_COMPILE is set; both runners run uncompiled", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        root = Path(tmp)
        data = write_data(root / "data", args.examples)
        fp32 = float32_copy(args.model, root / "fp32")
        ours_runs, theirs_runs, api_runs = [], [], []
        for n in range(args.rounds):
            if args.api:
                api_runs.append(bench_api(args, data, root / f"api-{n}"))
            # alternating, best of N: a shared machine's other load hits both runners alike
            ours_runs.append(bench_pomar(args, data, root / f"pomar-{n}"))
            theirs_runs.append(
                bench_mlx_lm(args, fp32, "float32", args.iters, data, root / f"mlx-fp32-{n}")
            )
            print(f"round {n + 1}: pomar {ours_runs[-1].it_per_s:.3f} it/s, "
                  f"mlx_lm {theirs_runs[-1].it_per_s:.3f} it/s", file=sys.stderr)  # fmt: skip
        ours = max(ours_runs, key=lambda m: m.it_per_s)
        theirs = [max(theirs_runs, key=lambda m: m.it_per_s)]
        if api_runs:
            theirs.insert(0, max(api_runs, key=lambda m: m.it_per_s))
        if args.native_iters:
            native = bench_mlx_lm(
                args, args.model, "as stored", args.native_iters, data, root / "mlx-native"
            )
            theirs.append(native)

    layers = args.num_layers or "all"
    print(f"\nLoRA on {args.model.name}: batch {args.batch_size}, rank {args.rank}, ", end="")
    print(f"scale {args.scale}, layers {layers}, {blas}, {os.cpu_count()} CPUs\n")
    print(f"best of {args.rounds} alternating rounds; load average {load.done():.1f}\n")
    load.warn()
    print("| runner | weights | timed steps | it/s | tokens/s | pomar ÷ this |")
    print("|---|---|---:|---:|---:|---:|")
    for m in [ours, *theirs]:
        ratio = ours.it_per_s / m.it_per_s
        tokens = f"{m.tokens_per_s:.0f}" if m.tokens_per_s is not None else "–"
        print(
            f"| {m.runner} | {m.dtype} | {m.iters} | {m.it_per_s:.3f} | {tokens} | {ratio:.2f}× |"
        )
    print("\ntokens/s: pomar counts every real token of a batch; mlx_lm counts trained tokens.")
    if api_runs:
        api = max(api_runs, key=lambda m: m.it_per_s)
        mlx_fp32 = max(theirs_runs, key=lambda m: m.it_per_s)
        print(
            f"job through the API ÷ mlx_lm lora (float32): {api.it_per_s / mlx_fp32.it_per_s:.2f}×"
        )


if __name__ == "__main__":
    main()
