#!/usr/bin/env python3
"""Serving benchmark: pomar vs `python -m mlx_lm server` and `python -m llama_cpp.server`.

In one run it starts each server in turn (pomar on MLX, `mlx_lm server`, pomar on
torch, pomar on its GGUF engine and llama-cpp-python's server on the same GGUF file;
the peers of pomar-mlx and pomar-gguf are mlx_lm and llama_cpp), drives it with the
`openai` async client at each concurrency level with the same prompts, and measures:
  * aggregate output tok/s (completion tokens / wall time of the level),
  * time to first token (median, p95), inter-token latency (median of per-request
    means), errors, and the server's resident memory afterwards;
  * the prompt cache: time to first token of a conversation's turn 2 whose shared
    prefix is ~`--prefix-tokens` long, cold (nothing cached) vs after turn 1;
  * in-process `mlx_lm.stream_generate` decode tok/s, the no-server baseline.
It prints a markdown report (ratios pomar / mlx_lm.server and pomar / in-process) and
writes it with a JSON of the raw numbers and a PNG plot of throughput vs concurrency.

    .venv/bin/python scripts/bench_serving.py                      # the full run
    .venv/bin/python scripts/bench_serving.py --quick              # a short smoke run
    .venv/bin/python scripts/bench_serving.py --model PATH --servers pomar,mlx_lm
    LLAMA_CPP_PYTHON=/path/to/venv/bin/python \
        .venv/bin/python scripts/bench_serving.py --servers pomar-gguf,llama_cpp

MLX runs with OpenBLAS preloaded on Linux for every contender (pomar does it itself;
the others get the same `LD_PRELOAD`). Each server and the in-process baseline run
in their own process, one after another, never at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchlib import (
    ROOT,
    ServerExited,
    child_env,
    embedded_model,
    emit,
    expect,
    free_port,
    greedy_stream,
    median_or_none,
    quantile,
    run_child,
    stop_process,
    wait_healthy,
)
from serving_report import Level, RequestResult, ServerReport, markdown, plot

QUESTIONS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain how a bicycle works, step by step, in detail.",
    "Describe a walk through a busy city market in the morning.",
    "List ideas for a birthday party and explain each one.",
    "Tell me about the history of writing, from clay tablets to keyboards.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain to a child why the sky is blue and sunsets are red.",
    "Describe how to plant and care for a small vegetable garden.",
]
FILLER = (
    "The project keeps a careful log of every change, every review and every release, "
    "so that anyone who joins later can follow the reasoning behind each decision. "
)


def mlx_env() -> dict[str, str]:
    """MLX's environment: OpenBLAS preloaded on Linux, as pomar arranges for itself."""
    return child_env(openblas=True, TOKENIZERS_PARALLELISM="false")


class Server:
    """A server subprocess: its base URL, the model name requests use, its pid."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], model: str) -> None:
        self.name, self.model = name, model
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        cmd = [*cmd, "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout: float = 600.0) -> None:
        try:
            if wait_healthy(f"{self.base_url}/models", self.process, timeout) is not None:
                return
        except ServerExited:
            raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}") from None
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float | None:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(self.process.pid)], capture_output=True)
        text = out.stdout.decode().strip()
        return int(text) / 1024 if text else None

    def stop(self) -> None:
        stop_process(self.process, 20)


def start_server(kind: str, model: Path, max_batch: int) -> Server:
    py = sys.executable
    if kind == "mlx_lm":
        cmd = [py, "-m", "mlx_lm", "server", "--model", str(model)]
        cmd += ["--decode-concurrency", str(max_batch), "--log-level", "WARNING"]
        return Server(kind, cmd, mlx_env(), "default_model")
    if kind == "llama_cpp":
        # llama-cpp-python's own OpenAI server on the GGUF file pomar's GGUF engine serves.
        # It needs the [server] extra, whose fastapi pins starlette: give it its own venv
        # (pip install 'llama-cpp-python[server]==0.3.36') and name its python here.
        py = os.environ.get("LLAMA_CPP_PYTHON", py)
        from server.modelfiles import find_gguf

        gguf = find_gguf(model)
        if gguf is None:
            raise SystemExit(f"{model} has no GGUF file for llama_cpp.server")
        threads = str(os.cpu_count() or 1)
        cmd = [py, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench"]
        cmd += ["--n_ctx", "8192", "--n_threads", threads, "--host", "127.0.0.1"]
        return Server(kind, cmd, dict(os.environ), "bench")
    # `-runner`: the same, with the engine in its own runner process (POMAR_ENGINE_PROCESS)
    runner = kind.endswith("-runner")
    base = kind.removesuffix("-runner")
    backend = {"pomar-torch": "torch", "pomar-gguf": "gguf"}.get(base, "mlx")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["POMAR_ENGINE_PROCESS"] = "1" if runner else "0"
    env.update(POMAR_MAX_BATCH_SIZE=str(max_batch), POMAR_HOME=tempfile.mkdtemp(prefix="bench-"))
    env["POMAR_EMBEDDING_MODEL"] = "none"
    cmd = [py, "-m", "server", "serve", "--model", str(model), "--backend", backend]
    return Server(kind, [*cmd, "--log-level", "warning"], env, str(model))


# --- load generation ---------------------------------------------------------------


async def one_request(
    client: Any, model: str, messages: list[dict[str, str]], max_tokens: int
) -> RequestResult:
    result = RequestResult()
    start = time.perf_counter()
    stamps: list[float] = []
    usage_tokens = None
    try:
        stream = await client.chat.completions.create(**greedy_stream(model, messages, max_tokens))
        async for chunk in stream:
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
    except Exception as exc:  # counted, not fatal: errors are part of the measurement
        result.error = f"{type(exc).__name__}: {exc}"
    result.duration = time.perf_counter() - start
    if stamps:
        result.ttft = stamps[0] - start
    result.tokens = usage_tokens if usage_tokens is not None else len(stamps)
    if len(stamps) > 1 and result.tokens > 1:
        result.itl = (stamps[-1] - stamps[0]) / (result.tokens - 1)
    return result


async def run_level(server: Server, concurrency: int, requests: int, max_tokens: int) -> Level:
    import openai

    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="bench", max_retries=0, timeout=600
    )
    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> RequestResult:
        async with gate:
            messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            return await one_request(client, server.model, messages, max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*[gated(i) for i in range(requests)])
    wall = time.perf_counter() - start
    await client.close()
    ttfts = [r.ttft for r in results if r.ttft is not None]
    itls = [r.itl for r in results if r.itl is not None]
    return Level(
        concurrency=concurrency,
        requests=requests,
        wall=wall,
        tok_s=sum(r.tokens for r in results if r.error is None) / wall,
        ttft_median=median_or_none(ttfts),
        ttft_p95=quantile(ttfts, 0.95),
        itl_median=median_or_none(itls),
        errors=sum(r.error is not None for r in results),
    )


def long_prefix(model: Path, tokens: int) -> str:
    """A system prompt of about `tokens` tokens for this model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    per = max(1, len(tok.encode(FILLER, add_special_tokens=False)))
    return FILLER * max(1, round(tokens / per))


async def prompt_cache_turns(
    server: Server, prefix: str, repeats: int
) -> tuple[float, float, int | None]:
    """Median TTFT of turn 2: cold (a never-seen prefix) vs right after turn 1."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="bench", max_retries=0, timeout=600
    )

    def turn2(nonce: str, reply: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": f"[{nonce}] {prefix}"},
            {"role": "user", "content": "Summarise the log policy."},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And why does it matter?"},
        ]

    cold, warm, cached = [], [], None
    for _ in range(repeats):
        reply = "It keeps a careful record of every change."
        first = await one_request(client, server.model, turn2(uuid.uuid4().hex, reply), 8)
        cold.append(first.ttft or float("nan"))
        nonce = uuid.uuid4().hex
        turn1 = turn2(nonce, reply)[:2]
        answer = await client.chat.completions.create(
            model=server.model, messages=turn1, max_tokens=16, temperature=0
        )
        said = answer.choices[0].message.content or ""
        second = await one_request(client, server.model, turn2(nonce, said), 8)
        warm.append(second.ttft or float("nan"))
        check = await client.chat.completions.create(
            model=server.model, messages=turn2(nonce, said), max_tokens=1, temperature=0
        )
        details = getattr(check.usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details else cached
    await client.close()
    return statistics.median(cold), statistics.median(warm), cached


def bench_server(kind: str, args: argparse.Namespace, prefix: str) -> ServerReport:
    report = ServerReport(kind)
    server = start_server(kind, args.model, max(args.concurrency))
    try:
        server.wait()
        asyncio.run(run_level(server, 1, 1, 8))  # warm-up: first-use compiles, caches
        for c in args.concurrency:
            requests = max(c, args.requests_per_level or 2 * c)
            level = asyncio.run(run_level(server, c, requests, args.max_tokens))
            report.levels.append(level)
            print(f"  {kind} c={c}: {level.tok_s:.1f} tok/s, errors {level.errors}", flush=True)
        if args.prefix_tokens > 0 and kind.removesuffix("-runner") not in (
            "pomar-torch",
            "llama_cpp",
        ):
            cold, warm, cached = asyncio.run(prompt_cache_turns(server, prefix, args.cache_repeats))
            report.cache_cold_ttft, report.cache_warm_ttft, report.cached_tokens = (
                cold,
                warm,
                cached,
            )
        report.rss_mb = server.rss_mb()
    finally:
        server.stop()
    return report


# --- in-process baseline -------------------------------------------------------------


def in_process(model: Path, max_tokens: int, runs: int) -> dict[str, float]:
    """Decode tok/s of `mlx_lm.stream_generate`, fp32 on CPU as pomar serves it."""
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    loaded, tok = load(str(model))[:2]
    if mx.default_device() == mx.cpu:
        loaded.set_dtype(mx.float32)
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    rates = []
    for _ in range(runs + 1):  # the first run warms up
        responses = list(stream_generate(loaded, tok, ids, max_tokens=max_tokens))
        if responses:
            last = responses[-1]
            rates.append(float(last.generation_tps))
    return {"decode_tok_s": statistics.median(rates[1:] or rates)}


def in_process_child(args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--in-process-child", "--model", str(args.model)]
    cmd += ["--max-tokens", str(args.max_tokens), *(["--quick"] if args.quick else [])]
    return expect(run_child(cmd, mlx_env()), "the in-process baseline")


# --- report ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF model folder (default: the embedded one)")
    parser.add_argument("--servers", default="pomar,mlx_lm,pomar-torch,pomar-gguf,llama_cpp")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument(
        "--requests-per-level", type=int, default=0, help="default: 2 × concurrency"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--cache-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--quick", action="store_true", help="a short smoke setting")
    parser.add_argument("--in-process-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = (args.model or embedded_model()).resolve()
    if args.in_process_child:
        emit(in_process(args.model, args.max_tokens, 1 if args.quick else 3))
        return 0
    if args.quick:
        if args.concurrency == parser.get_default("concurrency"):
            args.concurrency = "1,4"
        args.max_tokens = min(args.max_tokens, 16)
        args.prefix_tokens, args.cache_repeats = min(args.prefix_tokens, 200), 1
        args.requests_per_level = args.requests_per_level or 4
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    prefix = long_prefix(args.model, args.prefix_tokens) if args.prefix_tokens else ""

    print(f"in-process mlx_lm.stream_generate on {args.model} ...", flush=True)
    base = in_process_child(args)
    reports: dict[str, ServerReport] = {}
    for kind in args.servers.split(","):
        print(f"{kind} ...", flush=True)
        reports[kind] = bench_server(kind, args, prefix)

    report = markdown(reports, base, args)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.md").write_text(report)
    raw = {"in_process": base, "servers": {k: asdict(v) for k, v in reports.items()}}
    (args.out / "serving.json").write_text(json.dumps(raw, indent=2))
    plot(reports, args.out / "serving.png")
    print(f"wrote {args.out / 'serving.md'}, serving.json, serving.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
