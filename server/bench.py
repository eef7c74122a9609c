"""`pomar bench ID`: the engines available here, side by side on the same prompts.

Each engine runs in its own child process, so that its peak memory is its own and a BLAS
preload (OpenBLAS for MLX on Linux, as `pomar serve` arranges) takes effect. Greedy
decoding; every run is preceded by one discarded warm-up run, and each measurement starts
from a cold prompt cache (each prompt opens with a run-specific word, MLX's prompt cache
is off and the GGUF engine's KV cache is cleared), so no engine reuses an earlier prompt.

* TTFT: time to the first token of a short chat prompt;
* decode tok/s: the tokens after the first over the time after the first (`--tokens`);
* prefill tok/s: a long prompt (`--prompt-tokens`) over its time to first token;
* peak RSS: the child's maximum resident set size (imports included).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BACKENDS = ("mlx", "torch", "gguf")
RESULT_MARK = "POMAR_BENCH_RESULT "
STORY = "Write a long story about a dragon who learns to cook."
PARAGRAPH = (
    "The orchard sits on a hill above the river. Every autumn the pickers arrive before "
    "dawn, fill their baskets with pears and apples, and carry them down to the press. "
)
_MODULES = {"mlx": "mlx", "torch": "torch", "gguf": "llama_cpp"}


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="embedded id, model id in the store, local HF folder or .gguf file"
    )
    p.add_argument(
        "--backends",
        help="comma list of mlx, torch, gguf (default: every engine that can load it here)",
    )
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per run (64)")
    p.add_argument(
        "--prompt-tokens", type=int, default=256, help="long prompt size for prefill (256)"
    )
    p.add_argument("--runs", type=int, default=2, help="measured runs, median taken (2)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)  # measure this engine in this process


def add_parser(sub: Any) -> None:
    """Register the `bench` subcommand on the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="compare the engines on this machine (TTFT, prefill and decode tok/s, memory)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(p)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def timed(stream: Iterator[Any]) -> tuple[int, float, float]:
    """(tokens, seconds to the first, seconds from the first to the last) of a token stream."""
    from server.engine.base import PAUSE

    start = time.perf_counter()
    first = last = start
    n = 0
    for item in stream:
        if item is PAUSE:  # a batching engine's "let others start": no token
            continue
        n += 1
        last = time.perf_counter()
        if n == 1:
            first = last
    return n, first - start, last - first


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(backend: str, path: Path, tokens: int, prompt_tokens: int, runs: int) -> dict[str, Any]:
    """Load `path` with `backend` in this process and time it (see the module docstring)."""
    from server.engine.base import GenerationParams
    from server.engine.templates import ChatTemplate
    from server.models.loading import load_engine

    started = time.perf_counter()
    engine: Any = load_engine(backend, path, {"prompt_cache_entries": 0})
    load_s = time.perf_counter() - started
    template = ChatTemplate(engine.tokenizer)

    def stream(ids: list[int], max_tokens: int) -> Iterator[Any]:
        if hasattr(engine, "clear_cache"):  # the GGUF engine reuses earlier prompts' KV
            engine.clear_cache()
        params = GenerationParams(max_tokens=max_tokens, temperature=0)
        return iter(engine.token_stream(ids, params, lambda: False))

    words, target = (PARAGRAPH * 4).split(), min(prompt_tokens, engine.context_length - 1)

    def long_prompt(run: int) -> list[int]:
        """About `prompt_tokens` ids (never past the context), opening with the run number."""

        def encode(n: int) -> list[int]:
            text = " ".join(words[i % len(words)] for i in range(n))
            return template.encode(_messages(f"Run {run}. Summarize this text. {text}"))

        base, n = len(encode(0)), 8
        ids = encode(n)
        for _ in range(6):  # scale the word count by the tokens it made
            if len(ids) <= target and target - len(ids) <= max(2, target // 50):
                break
            n = max(1, round(n * max(1, target - base) / max(1, len(ids) - base)))
            ids = encode(n)
        while len(ids) > target and n > 1:  # at most the target, so never past the context
            n, ids = n - 1 - n // 20, encode(n - 1 - n // 20)
        return ids

    ttft, decode, prefill, sizes = [], [], [], []
    for run in range(runs + 1):  # run 0 warms up
        short = template.encode(_messages(f"Run {run}. {STORY}"))
        n, to_first, rest = timed(stream(short, max(2, tokens)))
        ids = long_prompt(run)
        _, to_prefill, _ = timed(stream(ids, 1))
        if run:
            ttft.append(to_first)
            decode.append((n - 1) / rest if rest > 0 else 0.0)
            prefill.append(len(ids) / to_prefill)
            sizes.append(len(ids))
    return {
        "backend": backend,
        "ok": True,
        "engine": engine.describe(),
        "blas": "OpenBLAS" if "openblas" in os.environ.get("LD_PRELOAD", "") else None,
        "load_s": load_s,
        "ttft_ms": statistics.median(ttft) * 1000,
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prompt_tokens": max(sizes),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _skip_reason(backend: str, path: Path) -> str | None:
    """Why `backend` cannot load `path` here, or None when it can try."""
    from server.errors import ModelLoadError
    from server.modelfiles import find_gguf

    if backend not in BACKENDS:
        return f"unknown backend (choose from {', '.join(BACKENDS)})"
    if importlib.util.find_spec(_MODULES[backend]) is None:
        return f"{_MODULES[backend]} is not installed"
    try:
        if backend == "gguf" and find_gguf(path) is None:
            return f"no GGUF file in {path}"
    except ModelLoadError as exc:  # a folder holding several
        return str(exc)
    if backend != "gguf" and not (path / "config.json").is_file():
        return f"{path} is not a Hugging Face folder (the {backend} engine loads no GGUF)"
    return None


def _child_env(backend: str) -> dict[str, str]:
    """The child's environment: OpenBLAS preloaded for MLX on Linux, for no one else."""
    from server.engine.mlx.openblas import MARKER, preload_environment

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if backend == "mlx":
        return preload_environment(env) or env
    kept = [p for p in env.pop("LD_PRELOAD", "").split(":") if p and "openblas" not in p]
    env.pop(MARKER, None)
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    return env


def _run_child(backend: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one engine in a child process; a failure becomes a row saying why."""
    command = [sys.executable, "-m", "server.bench", str(path), "--child", backend]
    command += ["--tokens", str(args.tokens), "--prompt-tokens", str(args.prompt_tokens)]
    command += ["--runs", str(args.runs)]
    done = subprocess.run(
        command, env=_child_env(backend), capture_output=True, text=True, check=False
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    tail = [ln for ln in done.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return {"backend": backend, "ok": False, "error": f"exit {done.returncode}: {tail[0]}"}


def _print_table(rows: list[dict[str, Any]], title: str, caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    fastest = max((r["decode_tok_s"] for r in rows if r["ok"]), default=0.0)
    table = Table("backend", title=title, caption=caption)
    for name in ("load s", "TTFT ms", "prefill tok/s", "decode tok/s", "vs fastest", "peak RSS MB"):
        table.add_column(name, justify="right")
    table.add_column("notes", overflow="fold")
    for r in rows:
        if not r["ok"]:
            table.add_row(r["backend"], *["-"] * 6, f"[red]not run: {r['error']}[/red]")
            continue
        ratio = r["decode_tok_s"] / fastest if fastest else 0.0
        notes = r["engine"] + (f" + {r['blas']}" if r.get("blas") else "")
        table.add_row(
            r["backend"],
            f"{r['load_s']:.1f}",
            f"{r['ttft_ms']:.0f}",
            f"{r['prefill_tok_s']:.0f}",
            f"{r['decode_tok_s']:.1f}",
            f"{ratio:.2f}x",
            f"{r['peak_rss_mb']:.0f}",
            notes,
        )
    console = Console()
    (console if console.is_terminal else Console(width=150)).print(table)


def run(args: argparse.Namespace) -> int:
    """Benchmark the engines on `args.model`; 0 when at least one engine ran."""
    from server.errors import ModelLoadError
    from server.models.loading import resolve_model_path
    from server.settings import Settings

    if min(args.tokens, args.prompt_tokens, args.runs) < 1:
        print("pomar bench: --tokens, --prompt-tokens and --runs must be positive", file=sys.stderr)
        return 2
    try:
        path = resolve_model_path(args.model, Settings().models_dir)
    except ModelLoadError as exc:
        print(f"pomar bench: {exc}", file=sys.stderr)
        return 1
    if args.child:
        print(RESULT_MARK + json.dumps(_child(args.child, path, args)), flush=True)
        return 0
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        backends = [b for b in BACKENDS if _skip_reason(b, path) is None] or list(BACKENDS)
    rows, load_before = [], os.getloadavg()[0]
    for backend in backends:
        reason = _skip_reason(backend, path)
        if reason is not None:
            rows.append({"backend": backend, "ok": False, "error": reason})
            continue
        print(f"pomar bench: measuring {backend}...", file=sys.stderr, flush=True)
        rows.append(_run_child(backend, path, args))
    title = (
        f"{args.model}: {args.tokens} greedy tokens, ~{args.prompt_tokens}-token prefill, "
        f"median of {args.runs} run(s), cold caches"
    )
    load, cores = (load_before, os.getloadavg()[0]), os.cpu_count() or 1
    caption = f"load average {load[0]:.1f} before, {load[1]:.1f} after, {cores} cores"
    if load[0] > cores / 2:
        caption += ": other processes were busy, so these figures are low"
    _print_table(rows, title, caption)
    if args.json is not None:
        report = {
            "model": args.model,
            "load_average": load,
            "path": str(path),
            "tokens": args.tokens,
            "prompt_tokens": args.prompt_tokens,
            "runs": args.runs,
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if any(r["ok"] for r in rows) else 1


def _child(backend: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The child's row: the measurement, or the error that stopped it."""
    try:
        return measure(backend, path, args.tokens, args.prompt_tokens, args.runs)
    except Exception as exc:  # a row saying why, never a crash of the whole command
        return {"backend": backend, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m server.bench")
    _options(_parser)
    raise SystemExit(run(_parser.parse_args()))
