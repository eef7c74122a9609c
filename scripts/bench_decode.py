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
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import LiveServer, child_env, embedded_model, emit, expect, run_child, stream_chat

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def in_process(backend: str, tokens: int, runs: int) -> list[float]:
    """Decode tok/s of the bare library, no server (runs in a child process)."""
    path = embedded_model()
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

    home = Path(os.environ.get("POMAR_HOME", Path.home() / ".pomar"))
    server = LiveServer(model="smollm2-135m-instruct", backend=backend, home=home)
    if not openblas:
        os.environ["POMAR_NO_OPENBLAS"] = "1"
    server.start()
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
        rates = []
        for _ in range(runs + 1):
            reply = stream_chat(client, "smollm2-135m-instruct", PROMPT, tokens)
            rates.append((reply.completion_tokens - 1) / reply.rest)
        return rates[1:]
    finally:
        server.stop()


def child(kind: str, backend: str, openblas: bool, tokens: int, runs: int) -> float:
    env = child_env(openblas and kind == "inprocess")
    env.pop("POMAR_NO_OPENBLAS", None)
    args = [sys.executable, __file__, "--child", kind, backend, str(int(openblas))]
    args += ["--tokens", str(tokens), "--runs", str(runs)]
    rates = expect(run_child(args, env), f"{kind}/{backend}")["rates"]
    return float(statistics.median(rates))


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
        emit({"rates": rates})
        return
    embedded_model()  # import once up front
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
