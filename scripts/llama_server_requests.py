"""The requests scripts/bench_vs_llama_server.py sends to both servers, and their
measurement: the prompts (`prompt`), the GGUF's end-of-generation ids (`stop_token_ids`),
one streamed request's timings (`Reply`, `one_request`), every (prompt, streams) row
against one server (`measure`) and a row's figures (`summarize`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import greedy_stream, quantile
from llama_server_report import fmt

STORY = "write a long story about a dragon who learns to cook, with many details."
PARAGRAPH = (
    "The orchard sits on a hill above the river. Every autumn the pickers arrive before "
    "dawn, fill their baskets with pears and apples, and carry them down to the press. "
)
LONG_REPEATS = 27  # x ~37 tokens: a ~1k-token prompt with SmolLM2's tokenizer
#: tokens that end a turn in the common chat formats, besides the GGUF's own eos/eot ids
END_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")


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


def measure_sync(url: str, args: Any, extra: dict[str, Any]) -> list[dict[str, Any]]:
    return asyncio.run(measure(url, args, extra))


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
