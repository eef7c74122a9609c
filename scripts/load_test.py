"""Load test: many concurrent streaming clients, some disconnecting, plus uploads and polling.

Starts `python -m server serve` (the embedded model by default) on a free port with its
own temporary POMAR_HOME, or targets a running server with `--url`. For `--duration`
seconds, `--clients` clients stream chat completions with the official AsyncOpenAI
client; every third one closes its stream after 1-3 chunks (counted as cancelled). In
parallel one task uploads small JSONL files and one polls the job and file lists. The
server's RSS is sampled every second (Linux /proc; with `--url` only given `--pid`).

After the load, a lone request must be answered promptly (every disconnect freed its slot:
no work left queued) and `/health` be ok. Prints a table (`--json PATH`: the results too);
exits 1 on a failed request or probe. The RSS ratio (target <= 1.05) is only reported.

    .venv/bin/python scripts/load_test.py                      # 64 clients x 60 s
    .venv/bin/python scripts/load_test.py --clients 16 --duration 10 --model DIR --json out.json
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:8000 --pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from benchlib import (
    ROOT,
    ServerExited,
    free_port,
    proc_memory_kib,
    quantile,
    stop_process,
    wait_healthy,
)
from openai.types.chat import ChatCompletionMessageParam

RSS_TARGET = 1.05  # RSS after the run within 5 % of RSS after warm-up
PROBE_TTFT_TARGET_S = 10.0  # the post-load request's first token, on a loaded CI machine


@dataclass
class Results:
    clients: int
    duration_s: float
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    uploads: int = 0
    polls: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, KiB)
    rss_warmup_kib: int | None = None
    rss_after_kib: int | None = None
    probe_ttft_s: float | None = None
    probe_ok: bool = False
    health_ok: bool = False
    load_s: float = 0.0  # the load phase, in-flight requests at the deadline included
    server_errors: int | None = None  # tracebacks in the log of a server we started

    def fail(self, what: str, exc: BaseException) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}"[:300])

    def summary(self) -> dict[str, Any]:
        ttft, after, warm = sorted(self.ttft_s), self.rss_after_kib, self.rss_warmup_kib
        ratio, errors = after / warm if after and warm else None, self.server_errors
        return {
            **{k: v for k, v in asdict(self).items() if k != "ttft_s"},
            "ttft_p50_s": quantile(ttft, 0.50),
            "ttft_p95_s": quantile(ttft, 0.95),
            "tokens_per_s": self.tokens / (self.load_s or self.duration_s),
            "rss_peak_kib": max((kib for _, kib in self.rss_samples), default=None),
            "rss_ratio": ratio,
            "targets": {
                "no_failed_requests": self.failed == 0,
                "disconnects_free_slots": self.probe_ok and self.health_ok,
                "rss_within_5_percent": None if ratio is None else ratio <= RSS_TARGET,
                "no_server_errors": None if errors is None else errors == 0,
            },
        }


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of a process in KiB, or None where /proc cannot tell."""
    return proc_memory_kib(pid).get("VmRSS")


def start_server(args: argparse.Namespace, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m server serve` on a free port; returns it once /health answers."""
    port = free_port()
    model = args.model or "smollm2-135m-instruct"
    cmd = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port)]
    cmd += ["--backend", args.backend, "--home", str(home), "--log-level", "warning"]
    env = dict(os.environ, POMAR_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_healthy(f"{url}/health", proc, args.start_timeout) is not None:
            return proc, url
    except ServerExited:
        sys.exit(f"server exited early:\n{(home / 'server.log').read_text()[-4000:]}")
    proc.kill()
    sys.exit(f"server not healthy after {args.start_timeout} s")


class Load:
    """The clients, the uploader, the poller and the RSS sampler of one run."""

    def __init__(self, args: argparse.Namespace, client: openai.AsyncOpenAI, model: str) -> None:
        self.args, self.client, self.model = args, client, model
        self.results = Results(clients=args.clients, duration_s=args.duration)
        self.deadline = 0.0

    def messages(self, n: int) -> list[ChatCompletionMessageParam]:
        return [{"role": "user", "content": f"Request {n}: name a fruit and say why you like it."}]

    async def stream_once(self, n: int, cancel_after: int | None) -> None:
        """One streamed chat: all of it, or `cancel_after` chunks then close (cancelled)."""
        res, sent = self.results, time.monotonic()
        messages, max_tokens = self.messages(n), self.args.max_tokens
        stream = await self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, stream=True
        )
        chunks, first = 0, None
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - sent
                if cancel_after is not None and chunks >= cancel_after:
                    break
        finally:
            await stream.close()
        res.tokens += chunks
        if first is not None:
            res.ttft_s.append(first)
        if cancel_after is not None and chunks >= cancel_after:
            res.cancelled += 1
        else:
            res.completed += 1

    async def client_loop(self, index: int) -> None:
        rng, n = random.Random(index), 0
        disconnects = index % 3 == 0  # a third of the clients
        while time.monotonic() < self.deadline:
            n += 1
            try:
                await self.stream_once(
                    index * 10_000 + n, rng.randint(1, 3) if disconnects else None
                )
            except Exception as exc:
                self.results.fail("chat", exc)
                await asyncio.sleep(0.5)

    async def upload_loop(self) -> None:
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            lines = [json.dumps({"n": n, "i": i, "text": "x" * 200}) for i in range(20)]
            try:
                data = ("\n".join(lines) + "\n").encode()
                await self.client.files.create(file=(f"load-{n}.jsonl", data), purpose="batch")
                self.results.uploads += 1
            except Exception as exc:
                self.results.fail("upload", exc)
            await asyncio.sleep(0.2)

    async def poll_loop(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                await self.client.fine_tuning.jobs.list(limit=10)
                await self.client.files.list()
                self.results.polls += 1
            except Exception as exc:
                self.results.fail("poll", exc)
            await asyncio.sleep(0.5)

    async def sample_rss(self, pid: int | None, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            kib = rss_kib(pid)
            if kib is not None:
                self.results.rss_samples.append((round(time.monotonic() - started, 1), kib))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def probe(self, url: str) -> None:
        """After the load: a lone request is answered promptly, and /health is ok."""
        res = self.results
        try:
            sent = time.monotonic()
            stream = await self.client.chat.completions.create(
                model=self.model, messages=self.messages(0), max_tokens=8, stream=True
            )
            async for chunk in stream:
                if res.probe_ttft_s is None and chunk.choices and chunk.choices[0].delta.content:
                    res.probe_ttft_s = time.monotonic() - sent
            res.probe_ok = res.probe_ttft_s is not None and res.probe_ttft_s < PROBE_TTFT_TARGET_S
        except Exception as exc:
            res.fail("probe", exc)
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{url}/health", timeout=10)
            res.health_ok = reply.status_code == 200 and reply.json().get("status") == "ok"

    async def run(self, url: str, pid: int | None) -> Results:
        res, stop = self.results, asyncio.Event()
        sampler = asyncio.create_task(self.sample_rss(pid, stop))
        self.deadline = time.monotonic() + self.args.duration
        tasks = [asyncio.create_task(self.client_loop(i)) for i in range(self.args.clients)]
        tasks += [asyncio.create_task(self.upload_loop()), asyncio.create_task(self.poll_loop())]
        await asyncio.sleep(max(1.0, self.args.duration * 0.1))  # warm-up: first 10 %
        res.rss_warmup_kib = rss_kib(pid)
        await asyncio.gather(*tasks)
        res.load_s = time.monotonic() - self.deadline + self.args.duration
        await asyncio.sleep(self.args.settle)
        res.rss_after_kib = rss_kib(pid)
        await self.probe(url)
        stop.set()
        await sampler
        return res


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(value: Any, fmt: str = "{:.2f}") -> str:
        return "-" if value is None else fmt.format(value)

    def mib(kib: Any) -> str:
        return num(None if kib is None else kib / 1024, "{:.0f} MiB")

    met = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "n/a"}
    t = {name: met[value] for name, value in summary["targets"].items()}
    title = f"pomar load test: {summary['clients']} clients x {summary['duration_s']:g} s"
    table = Table(title=title)
    for column in ("metric", "value", "target"):
        table.add_column(column, justify="right" if column == "value" else "left")
    rows = [
        ("load phase, in-flight requests drained", num(summary["load_s"], "{:.0f} s"), ""),
        ("completed", str(summary["completed"]), ""),
        ("cancelled (client disconnected)", str(summary["cancelled"]), ""),
        ("failed", str(summary["failed"]), t["no_failed_requests"]),
        ("uploads", str(summary["uploads"]), ""),
        ("list polls", str(summary["polls"]), ""),
        ("TTFT p50", num(summary["ttft_p50_s"], "{:.2f} s"), ""),
        ("TTFT p95", num(summary["ttft_p95_s"], "{:.2f} s"), ""),
        ("tokens/s (all streams)", num(summary["tokens_per_s"], "{:.1f}"), ""),
        ("post-load request TTFT", num(summary["probe_ttft_s"], "{:.2f} s"), ""),
        ("post-load /health", "ok" if summary["health_ok"] else "FAILED", ""),
        ("server tracebacks", num(summary["server_errors"], "{}"), t["no_server_errors"]),
        ("disconnects free their slots", "", t["disconnects_free_slots"]),
        ("RSS after warm-up", mib(summary["rss_warmup_kib"]), ""),
        ("RSS after the run", mib(summary["rss_after_kib"]), ""),
        ("RSS peak", mib(summary["rss_peak_kib"]), ""),
        ("RSS after / warm-up", num(summary["rss_ratio"], "{:.3f}"), t["rss_within_5_percent"]),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    for error in summary["errors"]:
        print("error:", error)


async def _load(args: argparse.Namespace, url: str, pid: int | None, model: str) -> Results:
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=args.api_key, max_retries=0, timeout=300.0
    )
    try:
        return await Load(args, client, model).run(url, pid)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="with --url: the server's PID, for RSS")
    parser.add_argument("--model", help="model to serve (default: the embedded one)")
    parser.add_argument("--backend", default="auto", help="backend of the started server")
    parser.add_argument("--home", type=Path, help="POMAR_HOME of the started server")
    parser.add_argument("--api-key", default="unused", help="Bearer key of the server")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before RSS after")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    proc: subprocess.Popen[bytes] | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        if args.home is None:
            tmp = tempfile.TemporaryDirectory(prefix="pomar-load-")
            args.home = Path(tmp.name)
        args.home.mkdir(parents=True, exist_ok=True)
        proc, url = start_server(args, args.home)
        pid = proc.pid
    try:
        model = args.model  # default: what the server serves (a folder is served by name)
        if model is None or Path(model).exists():
            model = httpx.get(f"{url}/health", timeout=10).json()["model"]
        results = asyncio.run(_load(args, url, pid, model))
    finally:
        if proc is not None:
            stop_process(proc, 30)
            errors = (args.home / "server.log").read_text(errors="replace").count("Traceback")
        if tmp is not None:
            tmp.cleanup()
    results.server_errors = None if proc is None else errors
    summary = results.summary()
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if summary["failed"] == 0 and summary["targets"]["disconnects_free_slots"] else 1


if __name__ == "__main__":
    sys.exit(main())
