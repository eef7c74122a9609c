#!/usr/bin/env python3
"""Decode speed of the embedded model: through `pomar serve` vs in-process, side by side.

For each configuration (MLX with OpenBLAS, MLX without, torch) it measures in one run:
  * in-process: `mlx_lm.stream_generate` (MLX) or `transformers` greedy `generate` (torch)
  * server: the same prompt streamed through a real `pomar serve` with the `openai` SDK
and prints decode tok/s (tokens after the first, over the time after the first) and the
server / in-process ratio. Each measurement runs in its own process, since a BLAS
preload only takes effect at process start.

    .venv/bin/python scripts/bench_decode.py [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def model_dir() -> Path:
    from server.models.embedded import ensure_embedded_model
    from server.settings import Settings

    return ensure_embedded_model(Settings().models_dir)


def in_process(backend: str, tokens: int, runs: int) -> list[float]:
    """Decode tok/s of the bare library, no server (runs in a child process)."""
    path = model_dir()
    rates = []
    if backend == "mlx":
        import mlx.core as mx
        from mlx_lm import load, stream_generate

        model, tok = load(str(path))[:2]
        model.set_dtype(mx.float32)
        prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
        ids = tok.encode(prompt, add_special_tokens=False)
        for _ in range(runs + 1):  # the first run warms up
            first, n = None, 0
            for _r in stream_generate(model, tok, ids, max_tokens=tokens):
                n += 1
                if first is None:
                    first = time.perf_counter()
            rates.append((n - 1) / (time.perf_counter() - first))
    else:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(path))
        prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)

        class Clock(StoppingCriteria):
            """Called once per generated token: timestamps each step."""

            def __init__(self) -> None:
                self.times: list[float] = []

            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[no-untyped-def]
                self.times.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        for _ in range(runs + 1):
            clock = Clock()
            model.generate(
                **inputs, max_new_tokens=tokens, do_sample=False, stopping_criteria=[clock]
            )
            rates.append((len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
    return rates[1:]


def through_server(backend: str, openblas: bool, tokens: int, runs: int) -> list[float]:
    """Decode tok/s streamed through a real `pomar serve` by the openai SDK."""
    import openai
    from live_server import LiveServer

    home = Path(os.environ.get("POMAR_HOME", Path.home() / ".pomar"))
    server = LiveServer(model="smollm2-135m-instruct", backend=backend, home=home)
    if not openblas:
        os.environ["POMAR_NO_OPENBLAS"] = "1"
    server.start()
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
        rates = []
        for _ in range(runs + 1):
            stream = client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=PROMPT,  # type: ignore[arg-type]
                max_tokens=tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            first = last = None
            usage = None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.perf_counter()
                    first = first or last
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            assert first and last and usage
            rates.append((usage - 1) / (last - first))
        return rates[1:]
    finally:
        server.stop()


def child(kind: str, backend: str, openblas: bool, tokens: int, runs: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("LD_PRELOAD", None)
    env.pop("POMAR_NO_OPENBLAS", None)
    if openblas and kind == "inprocess":
        env["LD_PRELOAD"] = OPENBLAS
    args = [sys.executable, __file__, "--child", kind, backend, str(int(openblas))]
    args += ["--tokens", str(tokens), "--runs", str(runs)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind}/{backend} failed:\n{out.stderr[-3000:]}")
    return float(statistics.median(json.loads(out.stdout.strip().splitlines()[-1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        kind, backend, openblas = args.child[0], args.child[1], args.child[2] == "1"
        if kind == "inprocess":
            rates = in_process(backend, args.tokens, args.runs)
        else:
            rates = through_server(backend, openblas, args.tokens, args.runs)
        print(json.dumps(rates))
        return
    model_dir()  # import once up front
    configs = [("mlx", True), ("mlx", False), ("torch", False)]
    rows = []
    for backend, openblas in configs:
        base = child("inprocess", backend, openblas, args.tokens, args.runs)
        served = child("server", backend, openblas, args.tokens, args.runs)
        name = f"{backend}{' + OpenBLAS' if openblas else ''}"
        rows.append((name, base, served))
    print(f"\nDecode tok/s, embedded SmolLM2-135M, {args.tokens} tokens, median of {args.runs}\n")
    print("| engine | in-process tok/s | pomar server tok/s | server ÷ in-process |")
    print("|---|---:|---:|---:|")
    for name, base, served in rows:
        print(f"| {name} | {base:.1f} | {served:.1f} | {served / base:.2f} |")


if __name__ == "__main__":
    main()
