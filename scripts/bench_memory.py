#!/usr/bin/env python3
"""Server resident memory on the embedded model vs issue 5's target (1.5 x model + 400 MB).

For each backend in turn it starts ``python -m server serve --backend X`` on the embedded
``smollm2-135m-instruct`` (home ``--home``, default ``POMAR_HOME`` or ``~/.pomar``) on a
free port, and reads the server's ``/proc/PID/status`` (``python -m server`` re-execs
itself with OpenBLAS preloaded, keeping its PID):

  * after start-up plus one chat request (warm-up),
  * after the run: ~20 chat requests with the openai SDK, some of them 4 at a time, and
    one with a ~1000-token prompt,
  * the peak (``VmHWM``), which the target is checked against,
  * whether torch was imported (``libtorch`` mapped).

The model's bytes are those served: the GGUF file for gguf, fp32 (2 x the bf16
``model.safetensors``) for mlx and torch on the CPU. MB is 10**6 bytes throughout.
Linux only (``/proc``)::

    .venv/bin/python scripts/bench_memory.py                     # gguf, mlx, torch
    .venv/bin/python scripts/bench_memory.py --backends auto,gguf --home /tmp/pomar-home
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchlib import ROOT, free_port, proc_memory_kib, stop_process, wait_healthy
from openai import OpenAI

from server.models.embedded import EMBEDDED_MODEL_ID, embedded_gguf_path

MB = 1_000_000
LONG_PROMPT = "Summarise this text in one sentence. " + " ".join(
    f"Item {i} of the list is a small red apple on a wooden table." for i in range(58)
)


@dataclass
class Row:
    """One backend's measurements (MB)."""

    backend: str
    model_mb: float
    warm_mb: float
    after_mb: float
    peak_mb: float
    torch: bool

    @property
    def target_mb(self) -> float:
        return 1.5 * self.model_mb + 400

    @property
    def met(self) -> bool:
        return self.peak_mb <= self.target_mb


def model_bytes(backend: str, home: Path) -> int:
    """The bytes of the model as served by `backend` on the CPU."""
    if backend == "gguf":
        return embedded_gguf_path().stat().st_size
    return 2 * (home / "models" / EMBEDDED_MODEL_ID / "model.safetensors").stat().st_size


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    kib = proc_memory_kib(pid)
    return kib["VmRSS"] * 1024 / MB, kib["VmHWM"] * 1024 / MB


def torch_loaded(pid: int) -> bool:
    """Whether the process has torch's native library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> str:
    """Wait for `/health`; return the backend the server chose."""
    reply = wait_healthy(f"{url}/health", proc, timeout)  # ServerExited: a RuntimeError
    if reply is None:
        raise TimeoutError(f"the server at {url} did not start in {timeout:.0f} s")
    return str(reply.json()["backend"])


def chat(client: OpenAI, text: str, max_tokens: int = 48) -> int:
    """One chat completion; returns its prompt tokens."""
    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.usage.prompt_tokens if reply.usage else 0


def drive(client: OpenAI) -> None:
    """~20 requests: sequential ones, two bursts of 4 concurrent, one ~1000-token prompt."""
    for i in range(8):
        chat(client, f"Tell me fact number {i} about apples.")
    poems = [f"Write a poem {burst}.{i} about pears." for burst in range(2) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for start in (0, 4):
            list(pool.map(lambda text: chat(client, text), poems[start : start + 4]))
    tokens = chat(client, LONG_PROMPT, max_tokens=64)
    print(f"  long prompt: {tokens} tokens", file=sys.stderr)
    for i in range(3):
        chat(client, f"Name {i + 2} fruits.")


def measure(backend: str, home: Path, log_dir: Path) -> Row:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "server", "serve", "--backend", backend, "--port", str(port)]
    log = (log_dir / f"bench-memory-{backend}.log").open("wb")
    proc = subprocess.Popen([*cmd, "--home", str(home)], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        served = wait_ready(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=600)
        started, _ = memory(proc.pid)
        print(f"{backend}: started, RSS {started:.0f} MB", file=sys.stderr)
        chat(client, "Hello!")
        warm, _ = memory(proc.pid)
        drive(client)
        after, peak = memory(proc.pid)
        torch = torch_loaded(proc.pid)
    finally:
        stop_process(proc, 30)
        log.close()
    name = backend if served == backend else f"{backend} ({served})"
    return Row(name, model_bytes(served, home) / MB, warm, after, peak, torch)


def table(rows: list[Row]) -> str:
    head = "| backend | model MB | target MB | RSS warm | RSS after | peak (HWM) | torch | target |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.model_mb:.0f} | {r.target_mb:.0f} | {r.warm_mb:.0f} "
            f"| {r.after_mb:.0f} | {r.peak_mb:.0f} | {'yes' if r.torch else 'no'} "
            f"| {'met' if r.met else 'NOT met'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="gguf,mlx,torch")
    default_home = os.environ.get("POMAR_HOME", "~/.pomar")
    parser.add_argument("--home", type=Path, default=Path(default_home))
    parser.add_argument("--logs", type=Path, default=Path("/tmp"), help="server logs go here")
    args = parser.parse_args()
    rows = [measure(b, args.home.expanduser(), args.logs) for b in args.backends.split(",")]
    print(table(rows))
    return 0 if all(r.met for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
