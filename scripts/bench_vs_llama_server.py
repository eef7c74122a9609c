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
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from benchlib import (
    LiveServer,
    LoadAverage,
    ServerExited,
    embedded_model,
    free_port,
    stop_process,
    wait_healthy,
)
from llama_server_lib import (
    PeakRSS,
    build_llama_server,
    cpu_variant_folder,
    git_describe,
    llama_server_options,
    physical_cores,
    version_of,
    wait_idle,
)
from llama_server_report import SERVERS, merged, print_table, table
from llama_server_requests import measure_sync, stop_token_ids


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
