#!/usr/bin/env python3
"""Where one GGUF stream's CPU goes: pomar's server, its engine runner and the client.

On a 2-core machine llama.cpp's two threads hold both cores while a token decodes, so
whatever else runs a token (the server's Python, the runner's between two decodes, the
client parsing its chunk) is taken from the decode. This script measures that cost:
`pomar serve --backend gguf` on the embedded SmolLM2 GGUF, one stream of greedy
128-token chats (scripts/bench_vs_llama_server.py's short prompts, the openai async
client), and for each run the CPU seconds a generated token of the server process, of
its runner (llama.cpp's threads included) and of this client process, beside tok/s.
With no runner (`POMAR_ENGINE_PROCESS=0`) the server's figure holds llama.cpp's threads.

Each `--config` is a set of server environment changes (`K=V,K=V`; `-` for none); the
configs run alternately, `--rounds` times, and the medians are printed side by side:

    .venv/bin/python scripts/bench_stream_cpu.py --rounds 3 \
        --config - --config POMAR_ENGINE_PROCESS=0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

from benchlib import LiveServer
from llama_server_requests import measure


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (its threads, not its children)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def one_run(env: dict[str, str], home: Path, per_stream: int, max_tokens: int) -> dict[str, float]:
    """Start the server with `env`, send one stream's requests, and measure them."""
    import httpx
    import psutil

    server = LiveServer(model="smollm2-135m-instruct", backend="gguf", home=home, env=dict(env))
    server.start(timeout=600)
    try:
        assert server.process is not None
        pid = server.process.pid
        children = psutil.Process(pid).children(recursive=True)
        runners = [c.pid for c in children if "server.models.runner" in " ".join(c.cmdline())]
        model = httpx.get(f"{server.base_url}/health", timeout=10).json()["model"]
        args = types.SimpleNamespace(
            model_id=model,
            max_tokens=max_tokens,
            prompts=["short"],
            streams=[1],
            per_stream=per_stream,
        )
        pids = [pid, *runners]
        before = [cpu_seconds(p) for p in pids] + [time.process_time()]
        rows = asyncio.run(measure(server.base_url, args, {}))
        after = [cpu_seconds(p) for p in pids] + [time.process_time()]
    finally:
        server.stop()
    # the warm-up request `measure` sends first is in the CPU figures: count its tokens
    tokens = rows[0]["completion_tokens"] + max_tokens
    used = [(b - a) * 1e3 / tokens for a, b in zip(before, after, strict=True)]
    result = {"tok_s": rows[0]["tok_s"], "server_ms": used[0], "client_ms": used[-1]}
    result["runner_ms"] = used[1] if runners else float("nan")
    return result


def parse_config(text: str) -> dict[str, str]:
    if text == "-":
        return {}
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"not K=V[,K=V]: {text}")
    return dict((key, value) for key, value in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", type=parse_config, help="K=V,... or -")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-stream", type=int, default=6, help="requests in the stream")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--home", type=Path, help="pomar's POMAR_HOME (default: its setting)")
    args = parser.parse_args(argv)
    from server.settings import Settings

    home = args.home or Settings().home
    configs: list[dict[str, str]] = args.config or [{}]
    runs: list[list[dict[str, float]]] = [[] for _ in configs]
    for round_ in range(args.rounds):
        for i, env in enumerate(configs):
            run = one_run(env, home, args.per_stream, args.max_tokens)
            runs[i].append(run)
            print(f"round {round_ + 1} config {i + 1}: " + _line(run), file=sys.stderr)
    print(f"\nmedians of {args.rounds} alternating round(s), {os.cpu_count()} CPUs")
    print("| config | tok/s | server CPU ms/token | runner | client |")
    print("|---|---:|---:|---:|---:|")
    for env, found in zip(configs, runs, strict=True):
        med = {k: statistics.median(r[k] for r in found) for k in found[0]}
        name = ",".join(f"{k}={v}" for k, v in env.items()) or "(defaults)"
        print(
            f"| {name} | {med['tok_s']:.1f} | {med['server_ms']:.3f} | "
            f"{med['runner_ms']:.2f} | {med['client_ms']:.3f} |"
        )
    return 0


def _line(run: dict[str, Any]) -> str:
    return (
        f"{run['tok_s']:.1f} tok/s, CPU ms/token server {run['server_ms']:.3f} "
        f"runner {run['runner_ms']:.2f} client {run['client_ms']:.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
