#!/usr/bin/env python3
"""Engine runners (POMAR_ENGINE_PROCESS): how long a runner crash keeps a model away.

Starts `pomar serve` with runners on the embedded model (or `--model`), then `--rounds`
times: one request to warm it, SIGKILL the runner, and time the next request from the
kill to its answer (one token) — the back-off, a new runner process, the model's load.
Also the time of the same one-token request on a warm runner, for scale.

    .venv/bin/python scripts/bench_runner_crash.py [--model DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx
from bench_serving import Server, start_server

ROOT = Path(__file__).resolve().parents[1]


def ask(server: Server) -> float:
    started = time.perf_counter()
    reply = httpx.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": server.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
        timeout=600,
    )
    reply.raise_for_status()
    return time.perf_counter() - started


def gone(pid: int) -> None:
    """Wait until the server has reaped the process. (Its main thread shows as a zombie
    while its other threads still tear down its memory, tens of ms for a loaded model: a
    request sent then is still in flight on the dying runner.)"""
    proc = Path(f"/proc/{pid}")
    while proc.exists():
        time.sleep(0.001)


def runner_pid(server: Server) -> int:
    health = httpx.get(f"{server.base_url.removesuffix('/v1')}/health").json()
    return int(health["engines"][0]["runner_pid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="HF model folder (default: the embedded one)")
    parser.add_argument("--backend", default="mlx", choices=["mlx", "torch", "gguf"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = args.model or Path.home() / ".pomar/models/smollm2-135m-instruct"
    kind = {"mlx": "pomar", "torch": "pomar-torch", "gguf": "pomar-gguf"}[args.backend]
    server = start_server(f"{kind}-runner", model, 8)
    try:
        server.wait()
        warm, recover = [], []
        for _ in range(args.rounds):
            ask(server)
            warm.append(ask(server))
            pid = runner_pid(server)
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            gone(pid)  # a request sent while it dies is lost with it (a 503)
            ask(server)
            recover.append(time.perf_counter() - killed)
            assert runner_pid(server) != pid
        print(f"model {model.name} on {args.backend}, {args.rounds} rounds")
        print(f"one-token request on a warm runner: median {statistics.median(warm) * 1000:.0f} ms")
        print(
            f"from SIGKILL to the next request answered: median "
            f"{statistics.median(recover):.2f} s (each: "
            + ", ".join(f"{r:.2f}" for r in recover)
            + " s)"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    main()
