#!/usr/bin/env python3
"""pomar's GGUF engine against llama.cpp's own `llama-server` on the same GGUF, side by side.

Both servers come from the same llama.cpp: `llama-server` is built from the llama.cpp that
the installed llama-cpp-python vendors, with pomar's portable CPU flags
(scripts/build_llama_server.sh, cached; `--llama-server PATH` for another binary). They run
one at a time on a free port, never both while measuring: `pomar serve --backend gguf`
with POMAR_MAX_BATCH_SIZE=`--batch`, then `llama-server -np <batch> --kv-unified -t
<physical cores> -c <batch x --ctx-per-slot>`.

Each gets the same requests through the official openai async client: streamed, greedy
chat completions of `--max-tokens` tokens, `--streams` at once (each stream sends
`--per-stream` requests one after the other), with a short prompt and a ~1k-token one.
Every request's prompt opens with its own number, so a prompt cache only ever shares the
chat template's system preamble, and both servers get the very same sequence of prompts.
The end-of-generation tokens get a logit bias of -100 (on both), so every request runs to
`--max-tokens` (`--natural-stop` to let the model stop); the tokens counted are the ones
each server reports in its usage.

Per row: aggregate tok/s (completion tokens of all requests / wall time from the first
sent to the last finished), TTFT p50/p95, the p95 of the gaps between content chunks
(inter-token latency), completion tokens per request and failed requests; per server the
peak RSS (process plus children, sampled every 0.1 s over its whole life, load included).
llama-server allocates its whole `-c` KV cache at start (~750 MiB for SmolLM2 at 16 x
2048), pomar's engine grows its cache on demand: the RSS figures differ by design.

llama-server runs as a copy beside only the CPU kernel variant pomar loads (sapphirerapids'
AMX kernels SIGILL on a VM that reports AMX without granting it; POMAR_LLAMA_CPU_VARIANT
picks another). `--llama-args` adds llama-server flags. On a shared machine, `--wait-idle
S` waits up to S s for idle CPUs before each server: a core busy elsewhere stalls
llama.cpp's thread barriers and tokens take seconds on both servers.

    scripts/build_llama_server.sh                  # once: ~15 min on 2 cores
    .venv/bin/python scripts/bench_vs_llama_server.py --quick
    .venv/bin/python scripts/bench_vs_llama_server.py --streams 1,4,8,16 --json out.json

`--prompts edit` asks each request to rewrite a 60-line Python file with one rename
(bench_speculative.py's edit workload), so the answer repeats the prompt; with
`--pomar-speculative ngram` pomar decodes it with prompt-lookup drafts, llama-server
plainly (issue 19's goal: one such stream above llama-server's tok/s without drafts):

    .venv/bin/python scripts/bench_vs_llama_server.py --prompts edit --streams 1 \
        --max-tokens 256 --per-stream 3 --pomar-speculative ngram
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from benchlib import (
    ROOT,
    LiveServer,
    LoadAverage,
    ServerExited,
    embedded_model,
    free_port,
    greedy_stream,
    quantile,
    stop_process,
    wait_healthy,
)

STORY = "write a long story about a dragon who learns to cook, with many details."
PARAGRAPH = (
    "The orchard sits on a hill above the river. Every autumn the pickers arrive before "
    "dawn, fill their baskets with pears and apples, and carry them down to the press. "
)
LONG_REPEATS = 27  # x ~37 tokens: a ~1k-token prompt with SmolLM2's tokenizer
#: tokens that end a turn in the common chat formats, besides the GGUF's own eos/eot ids
END_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
SERVERS = ("pomar", "llama-server")


def prompt(kind: str, n: int) -> list[dict[str, str]]:
    """Request `n`'s messages; its number opens the prompt so no two share more than the
    chat template's preamble."""
    if kind == "short":
        return [{"role": "user", "content": f"Story {n}: {STORY}"}]
    if kind == "edit":  # the answer repeats the prompt's file: what prompt lookup is for
        from bench_speculative import WORKLOADS

        return [{"role": "user", "content": f"Request {n}. {WORKLOADS['edit']}"}]
    text = f"Document {n}. Summarize this text in detail. " + PARAGRAPH * LONG_REPEATS
    return [{"role": "user", "content": text}]


def stop_token_ids(gguf_path: Path) -> list[int]:
    """The GGUF's end-of-generation token ids: eos, eot, eom and the known end markers."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    ids: set[int] = set()
    for key in ("eos", "eot", "eom"):
        found = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if found is not None:
            ids.add(int(found.contents()))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ids.update(i for i, text in enumerate(tokens) if text in END_MARKERS)
    return sorted(ids)


def physical_cores() -> int:
    """Physical cores this process may run on: the thread count pomar's GGUF engine uses."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


class PeakRSS:
    """Samples the RSS of a process and all its children in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a child that just ended
                        total += proc.memory_info().rss
            except psutil.Error:  # the server ended
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Reply:
    """One streamed request: when its content chunks came, what usage said, or its error."""

    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None


async def one_request(client: Any, args: Any, messages: Any, extra: dict[str, Any]) -> Reply:
    reply, last = Reply(), None
    sent = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            **greedy_stream(args.model_id, messages, args.max_tokens), extra_body=extra or None
        )
        async for chunk in stream:
            if chunk.usage:
                reply.completion_tokens = chunk.usage.completion_tokens
                reply.prompt_tokens = chunk.usage.prompt_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                if last is None:
                    reply.ttft = now - sent
                else:
                    reply.gaps.append(now - last)
                last = now
        if not reply.completion_tokens:
            reply.error = "no usage in the stream"
    except Exception as exc:  # a failed request is counted, not fatal
        reply.error = f"{type(exc).__name__}: {exc}"[:300]
    return reply


async def stream_of(
    client: Any, args: Any, kind: str, numbers: list[int], extra: dict[str, Any]
) -> list[Reply]:
    """One stream: its requests one after the other."""
    return [await one_request(client, args, prompt(kind, n), extra) for n in numbers]


async def measure(url: str, args: Any, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (prompt, streams) row against the server at `url`."""
    import openai

    # a connection per request: no request races a server closing an idle keep-alive one
    # (the Limits class of the openai SDK's own httpx, which newer SDKs fork as httpx2)
    limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_keepalive_connections=0)
    http = openai.DefaultAsyncHttpxClient(limits=limits)
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600, http_client=http
    )
    counter = iter(range(1, 10**9))  # the same request numbers on both servers
    rows = []
    try:
        for kind in args.prompts:
            await one_request(client, args, prompt(kind, 0), extra)  # warm-up, not counted
            for streams in args.streams:
                numbers = [[next(counter) for _ in range(args.per_stream)] for _ in range(streams)]
                started = time.perf_counter()
                done = await asyncio.gather(
                    *(stream_of(client, args, kind, ns, extra) for ns in numbers)
                )
                wall = time.perf_counter() - started
                replies = [r for batch in done for r in batch]
                rows.append(summarize(kind, streams, wall, replies))
                print_progress(rows[-1])
    finally:
        await client.close()
    return rows


def summarize(kind: str, streams: int, wall: float, replies: list[Reply]) -> dict[str, Any]:
    ok = [r for r in replies if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    return {
        "prompt": kind,
        "streams": streams,
        "requests": len(replies),
        "failed": len(replies) - len(ok),
        "errors": sorted({r.error for r in replies if r.error})[:5],
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_request": tokens / len(ok) if ok else None,
        "prompt_tokens_per_request": sum(r.prompt_tokens for r in ok) / len(ok) if ok else None,
        "tok_s": tokens / wall,
        "ttft_p50_s": quantile(ttfts, 0.50),
        "ttft_p95_s": quantile(ttfts, 0.95),
        "itl_p95_s": quantile(gaps, 0.95),
    }


def print_progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['prompt']:>5} x{row['streams']:<3} {row['tok_s']:7.1f} tok/s  "
        f"TTFT p50 {fmt(row['ttft_p50_s'], '{:.2f}')} s  failed {row['failed']}",
        file=sys.stderr,
        flush=True,
    )


def run_pomar(args: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """`pomar serve --backend gguf` (benchlib's LiveServer), measured."""
    env: dict[str, str | None] = {
        "POMAR_MAX_BATCH_SIZE": str(args.batch),
        "POMAR_SPECULATIVE": args.pomar_speculative,
    }
    server = LiveServer(model=args.pomar_model, backend="gguf", home=args.home, env=env)
    server.start(timeout=args.start_timeout)
    assert server.process is not None
    rss = PeakRSS(server.process.pid)
    command = [str(part) for part in cast(list[str], server.process.args)]
    try:
        import httpx

        args.model_id = httpx.get(f"{server.base_url}/health", timeout=10).json()["model"]
        rows = measure_sync(server.base_url, args, extra)
    finally:
        server.stop()
        peak = rss.stop()
    log = server.log()
    result = {"command": command, "env": env, "rss_peak_bytes": peak, "rows": rows}
    result["tracebacks"] = log.count("Traceback")
    if any(row["failed"] for row in rows):
        result["log_tail"] = log[-6000:]
    return result


def run_llama_server(args: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """`llama-server` on the same GGUF, measured."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        runtime = Path(tmp) / "bin"
        runtime.mkdir()
        variant = cpu_variant_folder(args.llama_server, runtime)
        binary = runtime / args.llama_server.name
        command = [str(binary), "-m", str(args.gguf), "--host", "127.0.0.1"]
        command += ["--port", str(port), "-np", str(args.batch), "-t", str(args.threads)]
        command += ["-c", str(args.batch * args.ctx_per_slot)]
        options = llama_server_options(binary)
        command += [flag for flag in ("--kv-unified", "--no-webui") if flag in options]
        command += shlex.split(args.llama_args)
        log_path = Path(tmp) / "llama-server.log"
        with log_path.open("wb") as log:  # in tmp: ggml searches the working directory too
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        rss = PeakRSS(proc.pid)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                healthy = wait_healthy(f"{url}/health", proc, args.start_timeout, 0.25)
            except ServerExited:
                healthy = None
            if healthy is None:
                raise SystemExit(f"llama-server did not start:\n{log_path.read_text()[-4000:]}")
            args.model_id = "gguf"  # llama-server serves its one model under any name
            rows = measure_sync(url, args, extra)
        finally:
            stop_process(proc)
            peak = rss.stop()
            log_tail = log_path.read_text(errors="replace")[-6000:]
    command[0] = str(args.llama_server)  # the run's copy is gone
    result = {"command": command, "cpu_variant": variant, "rss_peak_bytes": peak, "rows": rows}
    if any(row["failed"] for row in rows):
        result["log_tail"] = log_tail
    return result


def measure_sync(url: str, args: Any, extra: dict[str, Any]) -> list[dict[str, Any]]:
    return asyncio.run(measure(url, args, extra))


def cpu_variant_folder(binary: Path, folder: Path) -> str:
    """Fill `folder` with `binary` and its libraries, but only the CPU variant pomar loads.

    With GGML_BACKEND_DL llama-server loads the best-scoring `libggml-cpu-*.so` beside its
    executable. pomar skips sapphirerapids unless POMAR_LLAMA_CPU_VARIANT names it (a VM
    can report AMX without granting the tiles, and llama-server then dies of SIGILL):
    the choice is pomar's own (`server.engine.gguf.cpu.pick_variant`), made in a child
    so that llama-server's libraries never load into this process. Returns the variant.
    """
    from server.engine.gguf.cpu import variant_files

    variants = variant_files([binary.parent])
    chosen = "none"
    if variants:
        done = subprocess.run(
            [sys.executable, "-c", _PICK, str(binary.parent)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        chosen = done.stdout.strip()
    shutil.copy2(binary, folder / binary.name)  # its own folder is where ggml searches
    others = {p.name for name, p in variants.items() if name != chosen}
    for path in binary.parent.iterdir():
        if path != binary and path.name not in others:
            (folder / path.name).symlink_to(path)
    return chosen


_PICK = """
import os, sys
from pathlib import Path
from server.engine.gguf.cpu import VARIANT_ENV, pick_variant, variant_files
print(pick_variant(variant_files([Path(sys.argv[1])]), os.environ.get(VARIANT_ENV)))
"""


def llama_server_options(binary: Path) -> str:
    """`llama-server --help`, to use only the flags this version has."""
    done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def build_llama_server() -> Path:
    """scripts/build_llama_server.sh: the cached binary (built on first use, ~15 min)."""
    script = ROOT / "scripts" / "build_llama_server.sh"
    done = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def wait_idle(limit: float, quiet_s: float = 15.0) -> None:
    """Wait (at most `limit` s) until the CPUs have been idle (< 10 %) for `quiet_s` s.

    On a shared machine another process's busy core stalls llama.cpp's thread barriers:
    tokens then take seconds, not milliseconds, on both servers.
    """
    import psutil

    deadline, quiet = time.monotonic() + limit, 0.0
    while quiet < quiet_s and time.monotonic() < deadline:
        quiet = quiet + 3.0 if psutil.cpu_percent(interval=3.0) < 10 else 0.0
    if quiet < quiet_s:
        print(f"warning: the CPUs were not idle within {limit:g} s", file=sys.stderr)


def git_describe() -> str | None:
    """pomar's commit, `-dirty` when the tree has changes; None outside a git checkout."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        cmd = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    return None


def version_of(binary: Path | None) -> str | None:
    """`llama-server --version`'s first line (it needs no backend to answer)."""
    if binary is None:
        return None
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else None


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds as one result: each row's figures are the medians over the
    rounds, its failures and errors summed; the peak RSS is the highest."""
    if len(runs) == 1:
        return runs[0]
    rows = []
    for same in zip(*(run["rows"] for run in runs), strict=True):
        row = dict(same[0])
        for key in row.keys() - {"prompt", "streams", "errors"}:
            values = [r[key] for r in same if isinstance(r[key], (int, float))]
            row[key] = statistics.median(values) if values else None
        row["failed"] = sum(r["failed"] for r in same)
        row["requests"] = sum(r["requests"] for r in same)
        row["errors"] = sorted({e for r in same for e in r["errors"]})[:5]
        row["tok_s_rounds"] = [r["tok_s"] for r in same]
        rows.append(row)
    peak = max(run["rss_peak_bytes"] for run in runs)
    return {**runs[0], "rows": rows, "rss_peak_bytes": peak, "rounds": runs}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def pair(a: float | None, b: float | None, spec: str) -> str:
    return f"{fmt(a, spec)} / {fmt(b, spec)}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows side by side, with the pomar / llama-server ratios."""
    ours, theirs = (results[name]["rows"] for name in SERVERS)
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        rows.append(
            {
                "prompt": a["prompt"],
                "streams": a["streams"],
                "pomar": a,
                "llama-server": b,
                "tok_s_ratio": ratio(a["tok_s"], b["tok_s"]),
                "ttft_p50_ratio": ratio(a["ttft_p50_s"], b["ttft_p50_s"]),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], results: dict[str, Any], caption: str) -> None:
    print(f"\n{caption}\n")
    print(
        "| prompt | streams | pomar tok/s | llama-server tok/s | pomar / llama-server "
        "| TTFT p50 s (pomar / llama) | TTFT p95 s | ITL p95 ms | tokens/request | failed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        a, b = row["pomar"], row["llama-server"]
        a_itl, b_itl = (None if r["itl_p95_s"] is None else r["itl_p95_s"] * 1000 for r in (a, b))
        print(
            f"| {row['prompt']} ({fmt(a['prompt_tokens_per_request'], '{:.0f}')} tok) "
            f"| {row['streams']} | {a['tok_s']:.1f} | {b['tok_s']:.1f} "
            f"| {fmt(row['tok_s_ratio'], '{:.2f}')} "
            f"| {pair(a['ttft_p50_s'], b['ttft_p50_s'], '{:.2f}')} "
            f"| {pair(a['ttft_p95_s'], b['ttft_p95_s'], '{:.2f}')} "
            f"| {pair(a_itl, b_itl, '{:.0f}')} "
            f"| {pair(a['tokens_per_request'], b['tokens_per_request'], '{:.0f}')} "
            f"| {a['failed']} / {b['failed']} |"
        )
    peaks = [results[name]["rss_peak_bytes"] / 2**20 for name in SERVERS]
    print(
        f"\npeak RSS (with children): pomar {peaks[0]:.0f} MiB, llama-server {peaks[1]:.0f} MiB "
        f"(ratio {fmt(ratio(peaks[0], peaks[1]), '{:.2f}')})"
    )
    for row in rows:
        for name in SERVERS:
            for error in row[name]["errors"]:
                print(f"error ({name}, {row['prompt']} x{row['streams']}): {error}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF (default: the embedded model's)")
    parser.add_argument("--llama-server", type=Path, help="default: build_llama_server.sh's")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrency levels")
    parser.add_argument(
        "--prompts", default="short,long", help="short, long (~1k tok) and/or edit (a file)"
    )
    parser.add_argument(
        "--pomar-speculative",
        choices=("off", "ngram"),
        default="off",
        help="pomar's POMAR_SPECULATIVE (llama-server decodes plainly either way)",
    )
    parser.add_argument("--per-stream", type=int, default=2, help="requests each stream sends")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="pomar's max batch, -np")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="llama-server -c / -np")
    parser.add_argument("--threads", type=int, help="llama-server -t (default: physical cores)")
    parser.add_argument("--llama-args", default="", help="more llama-server flags, quoted")
    parser.add_argument("--natural-stop", action="store_true", help="no bias against EOS")
    parser.add_argument(
        "--wait-idle", type=float, default=0, help="wait up to S s for idle CPUs before each"
    )
    parser.add_argument("--only", choices=SERVERS, help="measure one server only")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each server, alternating; medians"
    )
    parser.add_argument("--home", type=Path, help="pomar's POMAR_HOME (default: its setting)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,4 streams, short")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.prompts, args.per_stream = "1,4", "short", 1
    args.streams = [int(s) for s in str(args.streams).split(",")]
    args.prompts = [p for p in str(args.prompts).split(",") if p]
    if any(p not in ("short", "long", "edit") for p in args.prompts):
        parser.error("--prompts takes short, long and/or edit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from server.modelfiles import find_gguf
    from server.settings import Settings

    args.home = args.home or Settings().home
    if args.gguf is None:
        model_dir = embedded_model()
        args.gguf, args.pomar_model = find_gguf(model_dir), "smollm2-135m-instruct"
        assert args.gguf is not None, f"no GGUF for {model_dir}"
    else:
        args.pomar_model = str(args.gguf.resolve())
    args.threads = args.threads or physical_cores()
    if args.only != "pomar":
        args.llama_server = args.llama_server or build_llama_server()
    extra: dict[str, Any] = {}
    stops = stop_token_ids(args.gguf)
    if not args.natural_stop:
        extra["logit_bias"] = {str(i): -100 for i in stops}

    load: LoadAverage | None = None
    runners: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
        "pomar": run_pomar,
        "llama-server": run_llama_server,
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):  # alternating, so a busy spell hits both servers
        for name in SERVERS:
            if args.only in (None, name):
                if args.wait_idle:
                    wait_idle(args.wait_idle)
                load = load or LoadAverage()  # after the first wait
                print(f"{name} (round {round_ + 1} of {args.rounds}):", file=sys.stderr)
                runs.setdefault(name, []).append(runners[name](args, extra))
    results = {name: merged(done) for name, done in runs.items()}
    assert load is not None
    load.done()
    load.warn()
    config = {
        "gguf": str(args.gguf),
        "streams": args.streams,
        "prompts": args.prompts,
        "per_stream": args.per_stream,
        "max_tokens": args.max_tokens,
        "batch": args.batch,
        "rounds": args.rounds,
        "pomar_speculative": args.pomar_speculative,
        "threads": args.threads,
        "stop_tokens_biased": [] if args.natural_stop else stops,
        "pomar_commit": git_describe(),
        "llama_server_version": version_of(args.llama_server),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load": asdict(load),
    }
    caption = (
        f"{args.gguf.name}: {args.max_tokens} greedy tokens"
        f"{'' if args.natural_stop else ' (EOS biased away)'}, {args.per_stream} request(s) "
        f"per stream, batch {args.batch}, {args.threads} threads, median of {args.rounds} "
        f"alternating round(s), pomar speculative "
        f"{args.pomar_speculative}; {load.caption()}"
    )
    blob: dict[str, Any] = {"config": config, "servers": results}
    if len(results) == len(SERVERS):
        blob["rows"] = table(results)
        print_table(blob["rows"], results, caption)
    else:
        print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(blob, indent=1))
    failed = sum(row["failed"] for r in results.values() for row in r["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
