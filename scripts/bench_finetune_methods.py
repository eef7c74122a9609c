"""Step time and peak memory of DPO and QLoRA against supervised float LoRA, side by side.

Each case runs in its own child process (so its peak memory is its own) on the same model,
the same LoRA, and batches of the same examples: supervised trains ``--batch`` conversations a
step; DPO trains ``--batch`` pairs, the same conversations as the preferred outputs plus a
non-preferred one each (twice the rows); QLoRA quantizes the float base to 4 bits first.
The first ``--warmup`` steps (compilation) are left out of the timing. MLX only: QLoRA on
torch needs CUDA and bitsandbytes.

Run with OpenBLAS preloaded on Linux, as the server runs MLX (docs/platform.md):

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python scripts/bench_finetune_methods.py [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "supervised float": ("supervised", None),
    "DPO float": ("dpo", None),
    "supervised QLoRA 4-bit": ("supervised", 4),
    "DPO QLoRA 4-bit": ("dpo", 4),
}
TOPICS = ["the river", "a garden", "the old town", "a lighthouse", "the market", "a library"]


def conversation(i: int) -> tuple[list[dict[str, str]], str, str]:
    topic = TOPICS[i % len(TOPICS)]
    ask = [{"role": "user", "content": f"Describe {topic} in two sentences, please ({i})."}]
    good = f"{topic.capitalize()} is quiet in the morning and busy by noon, number {i}."
    bad = f"I do not know anything about {topic}, sorry, and I will not guess ({i})."
    return ask, good, bad


def write_data(folder: Path, n: int) -> tuple[Path, Path]:
    chat, pairs = folder / "chat.jsonl", folder / "pairs.jsonl"
    with chat.open("w") as c, pairs.open("w") as p:
        for i in range(n):
            ask, good, bad = conversation(i)
            c.write(json.dumps({"messages": [*ask, {"role": "assistant", "content": good}]}) + "\n")
            p.write(
                json.dumps(
                    {
                        "input": {"messages": ask},
                        "preferred_output": [{"role": "assistant", "content": good}],
                        "non_preferred_output": [{"role": "assistant", "content": bad}],
                    }
                )
                + "\n"
            )
    return chat, pairs


def run_case(args: argparse.Namespace) -> None:
    """In the child: load, train `warmup + steps` steps, print one JSON line."""
    import mlx.core as mx

    from finetune.callbacks import StepMetrics, TrainingCallback
    from finetune.config import LoRAConfig, TrainConfig
    from finetune.trainer import train

    method, bits = CASES[args.case]
    times: list[float] = []

    class Clock(TrainingCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()

        def on_step(self, metrics: StepMetrics) -> None:
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now
            if metrics.step == args.warmup:
                mx.reset_peak_memory()

        def should_stop(self) -> bool:
            return len(times) >= args.warmup + args.steps

    data = Path(args.data)
    config = TrainConfig(
        model_path=args.model,
        train_file=data / ("pairs.jsonl" if method == "dpo" else "chat.jsonl"),
        out_dir=Path(args.out),
        backend="mlx",
        method=method,
        quantize=bits,
        n_epochs=1,
        batch_size=args.batch,
        learning_rate=1e-4,
        steps_per_checkpoint=10_000,
        lora=LoRAConfig(rank=8),
    )
    clock = Clock()
    train(config, clock)
    timed = times[args.warmup :]
    print(
        json.dumps(
            {
                "case": args.case,
                "s_per_step": sorted(timed)[len(timed) // 2],
                "mlx_peak_mib": mx.get_peak_memory() / 2**20,
                "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=Path.home() / ".pomar/models/smollm2-135m-instruct"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model}: not a Hugging Face model folder (start ./scripts/serve once)")
    n = args.batch * (args.warmup + args.steps)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), n)
        for case in CASES:
            out = Path(tmp) / case.replace(" ", "-")
            cmd = [sys.executable, __file__, "--case", case, "--data", tmp, "--out", str(out)]
            cmd += ["--model", str(args.model), "--batch", str(args.batch)]
            cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode:
                sys.exit(f"{case} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = results[0]
    blas = "OpenBLAS" if "openblas" in os.environ.get("LD_PRELOAD", "") else "reference BLAS"
    print(f"model {args.model.name}, MLX on the CPU with {blas}, batch {args.batch}")
    print(f"{'case':<26}{'s/step':>8}{'x time':>8}{'MLX peak MiB':>14}{'x mem':>7}{'RSS MiB':>9}")
    for r in results:
        print(
            f"{r['case']:<26}{r['s_per_step']:>8.3f}{r['s_per_step'] / base['s_per_step']:>8.2f}"
            f"{r['mlx_peak_mib']:>14.0f}{r['mlx_peak_mib'] / base['mlx_peak_mib']:>7.2f}"
            f"{r['rss_peak_mib']:>9.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"batch": args.batch, "blas": blas, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
