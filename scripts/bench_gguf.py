#!/usr/bin/env python3
"""The GGUF engine against MLX (+ OpenBLAS) and torch on the embedded model, side by side.

Measured, each in its own process (a BLAS preload only takes effect at process start):
  * in-process: pomar's engines' `token_stream` (GGUF, MLX, torch), plus llama-cpp-python's
    own `Llama.generate` on the same GGUF (the cost of pomar's numpy sampling loop);
  * server: the same prompts streamed through a real `pomar serve --backend X` by the
    openai SDK;
  * concurrency: 4 streams at once — the server's one shared llama.cpp context (requests
    queue) against 4 llama.cpp contexts decoding in parallel threads in one process.
Decode tok/s counts the tokens after the first over the time after the first (greedy,
`--tokens` long); prefill tok/s is a ~460-token prompt over its time to first token, with a
cold cache (a different first word on every run defeats the server's prefix reuse).

    .venv/bin/python scripts/bench_gguf.py [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    LiveServer,
    LoadAverage,
    child_env,
    embedded_model,
    emit,
    expect,
    run_child,
    stream_chat,
)

from server.bench import timed

MODEL = "smollm2-135m-instruct"
STORY = "Write a long story about a dragon who learns to cook."
PARAGRAPH = (
    "The orchard sits on a hill above the river. Every autumn the pickers arrive before "
    "dawn, fill their baskets with pears and apples, and carry them down to the press. "
)
STREAMS = 4


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def long_prompt(run: int) -> list[dict[str, str]]:
    """~460 tokens, opening with a run-specific word so no cache holds any of it."""
    return messages(f"Run {run}. Summarize this text. " + PARAGRAPH * 12)


def in_threads(one: Callable[[int], None]) -> float:
    """Run `one(i)` for the STREAMS streams in parallel threads; the wall time they took."""
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def in_process(backend: str, tokens: int, runs: int) -> dict[str, float]:
    """Decode and prefill tok/s of one engine in this process."""
    from server.engine.base import GenerationParams
    from server.engine.templates import ChatTemplate
    from server.models.loading import load_engine

    engine: Any = load_engine(backend.removesuffix("-generate"), embedded_model())
    template = ChatTemplate(engine.tokenizer)

    def stream(ids: list[int], max_tokens: int) -> Any:
        if backend == "gguf-generate":  # llama-cpp-python's own loop and sampler
            engine.clear_cache()
            gen = engine.llama.generate(ids, temp=0.0, top_k=1, reset=True)
            return (t for _, t in zip(range(max_tokens), gen, strict=False))
        if backend.startswith("gguf"):
            engine.clear_cache()  # a cold cache: time the whole prompt
        params = GenerationParams(max_tokens=max_tokens, temperature=0)
        return engine.token_stream(ids, params, lambda: False)

    decode, prefill = [], []
    story = template.encode(messages(STORY))
    for run in range(runs + 1):  # the first run warms up
        n, _, rest = timed(stream(story, tokens))
        ids = template.encode(long_prompt(run))
        _, to_first, _ = timed(stream(ids, 1))
        if run:
            decode.append((n - 1) / rest)
            prefill.append(len(ids) / to_first)
    return {"decode": statistics.median(decode), "prefill": statistics.median(prefill)}


def through_server(backend: str, tokens: int, runs: int) -> dict[str, float]:
    """Decode and prefill tok/s streamed through `pomar serve`, and 4 concurrent streams."""
    import openai

    home = Path(os.environ.get("POMAR_HOME", Path.home() / ".pomar"))
    server = LiveServer(model=MODEL, backend=backend, home=home).start()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)

    def ask(msgs: list[dict[str, str]], max_tokens: int) -> tuple[int, float, float, int]:
        """(tokens, time to first, first to last, prompt tokens) of one streamed request."""
        reply = stream_chat(client, MODEL, msgs, max_tokens)
        return reply.chunks, reply.to_first, reply.rest, reply.prompt_tokens

    try:
        decode, prefill = [], []
        for run in range(runs + 1):
            n, _, rest, _ = ask(messages(STORY), tokens)
            _, to_first, _, prompt_tokens = ask(long_prompt(100 + run), 1)
            if run:
                decode.append((n - 1) / rest)
                prefill.append(prompt_tokens / to_first)
        results: list[tuple[int, float]] = []

        def one(i: int) -> None:
            n, to_first, _, _ = ask(messages(f"{STORY} Call the dragon number {i}."), tokens)
            results.append((n, to_first))

        wall = in_threads(one)
        return {
            "decode": statistics.median(decode),
            "prefill": statistics.median(prefill),
            "concurrent": sum(n for n, _ in results) / wall,
            "ttft_mean": statistics.mean(t for _, t in results),
        }
    finally:
        server.stop()


def contexts(tokens: int, threads_each: int) -> dict[str, float]:
    """4 streams on 4 llama.cpp contexts in parallel threads: total tok/s and mean TTFT."""
    from llama_cpp import Llama

    from server.engine.gguf.cpu import ensure_cpu_backend
    from server.modelfiles import find_gguf

    ensure_cpu_backend()  # the portable build's kernels for this CPU, before any load
    gguf = find_gguf(embedded_model())
    assert gguf is not None
    llamas = [
        Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads_each, verbose=False)
        for _ in range(STREAMS)
    ]
    out: list[tuple[int, float]] = []

    def one(i: int) -> None:
        llama = llamas[i]
        prompt = f"<|im_start|>user\n{STORY} Call the dragon number {i}.<|im_end|>\n"
        ids = llama.tokenize((prompt + "<|im_start|>assistant\n").encode(), special=True)
        gen = llama.generate(ids, temp=0.0, top_k=1)
        n, to_first, _ = timed(t for _, t in zip(range(tokens), gen, strict=False))
        out.append((n, to_first))

    wall = in_threads(one)
    return {
        "concurrent": sum(n for n, _ in out) / wall,
        "ttft_mean": statistics.mean(t for _, t in out),
    }


def child(kind: str, backend: str, tokens: int, runs: int) -> dict[str, float]:
    env = child_env(openblas=kind == "inprocess" and backend == "mlx")
    args = [sys.executable, __file__, "--child", kind, backend]
    args += ["--tokens", str(tokens), "--runs", str(runs)]
    return expect(run_child(args, env), f"{kind}/{backend}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        kind, backend = args.child
        if kind == "inprocess":
            result = in_process(backend, args.tokens, args.runs)
        elif kind == "server":
            result = through_server(backend, args.tokens, args.runs)
        else:
            result = contexts(args.tokens, int(backend))
        emit(result)
        return
    embedded_model()  # import once up front
    load = LoadAverage()
    print(f"load average before: {load.before:.2f}", file=sys.stderr)
    names = {"gguf": "GGUF (llama.cpp, Q4_1)", "mlx": "MLX fp32 + OpenBLAS", "torch": "torch"}
    rows = []
    for backend in ("gguf", "mlx", "torch"):
        rows.append(
            (
                names[backend],
                child("inprocess", backend, args.tokens, args.runs),
                child("server", backend, args.tokens, args.runs),
            )
        )
    reference = child("inprocess", "gguf-generate", args.tokens, args.runs)
    split = child("contexts", str(max(1, (os.cpu_count() or 2) // STREAMS)), args.tokens, 0)
    shared_threads = child("contexts", str(os.cpu_count() or 2), args.tokens, 0)
    print(f"load average after: {load.done():.2f}", file=sys.stderr)
    load.warn()
    print(f"\nEmbedded SmolLM2-135M, {args.tokens} greedy tokens, median of {args.runs} runs\n")
    print("| engine | decode in-process | decode server | prefill in-process | prefill server |")
    print("|---|---:|---:|---:|---:|")
    for name, local, served in rows:
        print(
            f"| {name} | {local['decode']:.1f} | {served['decode']:.1f} "
            f"| {local['prefill']:.0f} | {served['prefill']:.0f} |"
        )
    print(
        f"| llama-cpp-python `Llama.generate` | {reference['decode']:.1f} | | "
        f"{reference['prefill']:.0f} | |"
    )
    print(f"\n{STREAMS} concurrent streams ({args.tokens} tokens each): total tok/s, mean TTFT s\n")
    print("| setup | total tok/s | mean time to first token |")
    print("|---|---:|---:|")
    for name, _, served in rows:
        print(f"| server, {name} | {served['concurrent']:.1f} | {served['ttft_mean']:.2f} |")
    print(
        f"| 4 llama.cpp contexts, threads split | {split['concurrent']:.1f} "
        f"| {split['ttft_mean']:.2f} |"
    )
    print(
        f"| 4 llama.cpp contexts, {os.cpu_count()} threads each | "
        f"{shared_threads['concurrent']:.1f} | {shared_threads['ttft_mean']:.2f} |"
    )


if __name__ == "__main__":
    main()
