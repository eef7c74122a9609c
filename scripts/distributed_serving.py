"""The generation side of scripts/bench_distributed.py: the sharded model copies
(`make_variant`), one greedy streamed request's decode tok/s (`stream_once`) and one
`pomar serve` (with `--hosts` or without) measured (`serve_case`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, child_env, free_port, greedy_stream, stop_process, wait_healthy
from distributed_training import THREAD_VARS

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def make_variant(kind: str, src: Path, dest: Path) -> None:
    """A copy of the model that 2 ranks can shard, with the same outputs (in a child: it
    imports MLX). "heads12": the 9 query / 3 key-value heads padded with zero heads to 12 / 4
    (zero o_proj columns: they add nothing), for tensor parallel; "qwen2": the same weights
    as mlx-lm's qwen2 (zero q/k/v biases), which has a pipeline version."""
    import mlx.core as mx

    dest.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and item.name not in ("config.json", "model.safetensors"):
            shutil.copy2(item, dest / item.name)
    config = json.loads((src / "config.json").read_text())
    loaded = mx.load(str(src / "model.safetensors"))
    assert isinstance(loaded, dict)
    weights = dict(loaded)
    if kind == "heads12":
        heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
        dim = config.get("head_dim") or config["hidden_size"] // heads
        new_kv = kv + kv % 2
        new_heads = heads // kv * new_kv  # the new query heads all read the new kv head
        for name, w in list(weights.items()):
            if name.endswith("q_proj.weight"):
                pad = mx.zeros(((new_heads - heads) * dim, w.shape[1]), dtype=w.dtype)
                weights[name] = mx.concatenate([w, pad], axis=0)
            elif name.endswith(("k_proj.weight", "v_proj.weight")):
                pad = mx.zeros(((new_kv - kv) * dim, w.shape[1]), dtype=w.dtype)
                weights[name] = mx.concatenate([w, pad], axis=0)
            elif name.endswith("o_proj.weight"):
                pad = mx.zeros((w.shape[0], (new_heads - heads) * dim), dtype=w.dtype)
                weights[name] = mx.concatenate([w, pad], axis=1)
        config.update(num_attention_heads=new_heads, num_key_value_heads=new_kv, head_dim=dim)
    else:
        for name, w in list(weights.items()):
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                weights[name.replace(".weight", ".bias")] = mx.zeros((w.shape[0],), dtype=w.dtype)
        config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})


def stream_once(client: Any, model: str, tokens: int) -> tuple[float, int, str]:
    """(decode tok/s, completion tokens, text) of one greedy streamed request; decode tok/s
    is (tokens - 1) / (time from the first content chunk to the last), as bench_decode's."""
    usage, text = [], []
    first = last = 0.0
    for chunk in client.chat.completions.create(**greedy_stream(model, PROMPT, tokens)):
        if chunk.usage:
            usage.append(chunk.usage)
        elif chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text.append(chunk.choices[0].delta.content)
    n = usage[0].completion_tokens
    return (n - 1) / (last - first), n, "".join(text)


def serve_case(
    args: argparse.Namespace,
    model: Path,
    ranks: int,
    threads: int,
    sharded: bool,
    home: Path,
    **changes: str,
) -> dict[str, Any]:
    """Decode tok/s of one greedy streamed request, median of `--runs` after a warm-up."""
    import openai

    port = free_port()
    cmd = [sys.executable, "-m", "server", "serve", "--model", str(model), "--backend", "mlx"]
    cmd += ["--port", str(port), "--embedding-model", "none"]
    if sharded:
        cmd += ["--hosts", f"127.0.0.1:{ranks}"]
    # `pomar serve` preloads OpenBLAS itself (every rank re-executes with it)
    env = child_env(POMAR_HOME=str(home), MLX_DISABLE_COMPILE="1", TOKENIZERS_PARALLELISM="false")
    env.update({key: str(threads) for key in THREAD_VARS}, **changes)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"serve-{model.name}-{'hosts' if sharded else 'plain'}-{ranks}x{threads}.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        if wait_healthy(f"{base}/health", server, 300) is None:
            raise RuntimeError("the server did not become healthy in 300 s")
        startup = time.monotonic() - started
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
        runs = [stream_once(client, str(model), args.tokens) for _ in range(args.runs + 1)]
        return {
            "decode_tok_s": statistics.median(rate for rate, _, _ in runs[1:]),
            "tokens": runs[-1][1],
            "text": runs[-1][2],
            "startup_s": startup,
        }
    except Exception as exc:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{exc}\n--- server log\n{tail}") from exc
    finally:
        stop_process(server, timeout=40)
