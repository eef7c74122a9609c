#!/usr/bin/env python3
"""Fine-tuning and generation on 1 and 2 ranks: throughput and scaling efficiency (issue 23).

Fine-tuning: the same LoRA job (the embedded SmolLM2-135M, global batch 4, examples of
`--max-length` tokens, rank 8 on the attention projections) on MLX (ring backend) and on
torch (gloo), timed by rank 0 over `--steps` steps after `--warmup` steps (compilation):
steps/s, tokens/s (every real token of the global batch), and the scaling efficiency,
2-rank throughput / (2 x 1-rank throughput) at one BLAS/OpenMP thread per rank. The
"1 x 2" row is one process with both cores' threads: what data parallelism has to beat.
"to 1st step" is the wall time from the launch to rank 0's first step (processes, group,
model load, the first compiled step). Three ways to run it:

* job: `server.jobs.trainproc.train_in_child`, the server's own path (`mlx.launch` or
  torchrun, rank 0 reporting over the control socket), over loopback;
* driver: this script started once per rank with the launchers' environment (MLX_RANK and
  MLX_HOSTFILE; RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), calling `finetune.trainer.train`
  with `finetune.distributed.open_group` directly, over loopback;
* driver over veth: the same, rank 0 and rank 1 in two network namespaces joined by a veth
  pair (10.99.0.1 and 10.99.0.2: real TCP between two "hosts" on one kernel), made here
  and removed at the end. Needs root (CAP_NET_ADMIN); without it, loopback only.

The driver rows also time one all-sum of the run's LoRA gradient size over the group; the
job rows with 2 ranks, the launcher's CPU use.

Generation: decode tok/s of one greedy `--tokens`-token streamed request through
`pomar serve --hosts 127.0.0.1:N` (rank 0 serving HTTP, the others in lockstep), median of
`--runs` after a warm-up, on 1 and 2 ranks over loopback, and the plain `pomar serve` for
reference. The embedded model's 9 / 3 heads do not split over 2 ranks, so the 2-rank rows
serve copies with the same outputs (`make_variant`): 12 / 4 heads (zero heads padded in)
tensor parallel, and the weights as qwen2 pipeline parallel. `--no-training` and
`--no-generation` run one part alone.

MLX runs with OpenBLAS preloaded, as `pomar serve` runs it on Linux. The machine's load
average is printed per row: on a shared 2-core machine every other process takes from
the two ranks. Run it niced, from the repository root, as root for the veth case:

    nice -n 5 .venv/bin/python scripts/bench_distributed.py [--engines mlx,torch] [--json F]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    ROOT,
    LoadAverage,
    child_env,
    embedded_model,
    emit,
    free_port,
    greedy_stream,
    marked,
    stop_process,
    wait_healthy,
)

BATCH = 4
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TOPICS = ["the river", "a garden", "the old town", "a lighthouse", "the market", "a library"]
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
NETNS_IPS = ("10.99.0.1", "10.99.0.2")
RUN_TIMEOUT_S = 1800


# --- the training job -----------------------------------------------------------------


def write_data(path: Path, n: int) -> Path:
    """`n` chat examples whose replies run past `--max-length`: every one is truncated to
    the same length, so every batch has one shape (one compiled graph) and one token count."""
    with path.open("w") as out:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            ask = f"Describe {topic} at length, please ({i})."
            reply = " ".join(
                f"{topic.capitalize()} is quiet at hour {h} and busy at hour {h + i}, "
                f"and the people there talk about the weather and the price of bread."
                for h in range(8)
            )
            messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def train_config(args: argparse.Namespace, engine: str, data: Path, out: Path) -> Any:
    from finetune.config import LoRAConfig, TrainConfig

    total = args.warmup + args.steps
    return TrainConfig(
        model_path=args.model,
        train_file=data,
        out_dir=out,
        backend=engine,
        n_epochs=2 if total % 2 == 0 else 1,
        batch_size=BATCH,
        learning_rate=1e-4,
        steps_per_eval=10_000,
        steps_per_checkpoint=10_000,
        lora=LoRAConfig(rank=8, max_length=args.max_length),
    )


def examples_for(args: argparse.Namespace) -> int:
    total = args.warmup + args.steps
    return BATCH * total // (2 if total % 2 == 0 else 1)


class Clock:
    """Rank 0's step reports: throughput over the steps after the warm-up, from the
    trainer's own clock (`elapsed_s`, which includes every collective of the step)."""

    def __init__(self) -> None:
        self.steps: list[Any] = []
        self.first_wall: float | None = None
        #: the launcher's pid (job path, several ranks): its CPU time is sampled per step
        self.launcher: int | None = None
        self.launcher_cpu: list[tuple[float, float]] = []  # (wall, CPU seconds)

    def on_step(self, metrics: Any) -> None:
        now = time.time()
        if self.first_wall is None:
            self.first_wall = now
        self.steps.append(metrics)
        if self.launcher is not None:
            self.launcher_cpu.append((now, cpu_seconds(self.launcher)))

    def figures(self, warmup: int) -> dict[str, Any]:
        start, end = self.steps[warmup - 1], self.steps[-1]
        span = end.elapsed_s - start.elapsed_s
        figures = {
            "timed_steps": end.step - start.step,
            "steps_per_s": (end.step - start.step) / span,
            "tokens_per_s": (end.trained_tokens - start.trained_tokens) / span,
            "last_loss": end.train_loss,
            "first_step_wall": self.first_wall,
            "launcher_cpu": None,
        }
        if self.launcher_cpu:
            (wall0, cpu0), (wall1, cpu1) = self.launcher_cpu[warmup - 1], self.launcher_cpu[-1]
            figures["launcher_cpu"] = (cpu1 - cpu0) / (wall1 - wall0)
        return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` itself (not its children), from /proc; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timing_callback(clock: Clock) -> Any:
    from finetune.callbacks import TrainingCallback

    class Timing(TrainingCallback):
        def on_step(self, metrics: Any) -> None:
            clock.on_step(metrics)

    return Timing()


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Any:
    """This process's environment is `env` for the block (the job path's children inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def rank_environment(engine: str, threads: int, **changes: str) -> dict[str, str]:
    env = child_env(openblas=engine == "mlx", TOKENIZERS_PARALLELISM="false", **changes)
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    env.update({key: str(threads) for key in THREAD_VARS})
    return env


def run_job(args: argparse.Namespace, engine: str, ranks: int, threads: int, tmp: Path) -> dict:
    """The server's path: `train_in_child`, one process or the launcher over loopback."""
    from server.jobs.launch import Host
    from server.jobs.trainproc import train_in_child

    out = tmp / f"job-{engine}-{ranks}x{threads}"
    config = train_config(args, engine, tmp / "train.jsonl", out)
    clock = Clock()

    def on_start(pid: int) -> None:
        if ranks > 1:  # mlx.launch or torchrun; with one rank, the trainer itself
            clock.launcher = pid

    # with 2 slots, the launcher gives each rank cpu_count // 2 = 1 thread here itself
    with environment(rank_environment(engine, threads)):
        started = time.time()
        train_in_child(config, timing_callback(clock), on_start, [Host("127.0.0.1", ranks)])
    shutil.rmtree(out, ignore_errors=True)
    return {**clock.figures(args.warmup), "started": started}


def run_driver(
    args: argparse.Namespace,
    engine: str,
    ranks: int,
    threads: int,
    tmp: Path,
    netns: Netns | None = None,
) -> dict:
    """This script once per rank with the launcher's environment (in the namespaces when
    `netns` is given); rank 0's figures."""
    name = f"driver-{engine}-{ranks}x{threads}{'-veth' if netns else ''}"
    out = tmp / name
    config_file = tmp / f"{name}.json"
    config_file.write_text(train_config(args, engine, tmp / "train.jsonl", out).model_dump_json())
    ips = list(NETNS_IPS) if netns else ["127.0.0.1"] * ranks
    ports = [45_100, 45_101] if netns else [free_port() for _ in range(ranks)]
    hostfile = tmp / f"{name}-ring.json"
    hostfile.write_text(json.dumps([[f"{ip}:{port}"] for ip, port in zip(ips, ports, strict=True)]))
    master = free_port() if netns is None else 45_200
    processes: list[subprocess.Popen[bytes]] = []
    logs = [tmp / f"{name}-rank{rank}.log" for rank in range(ranks)]
    started = time.time()
    for rank in range(ranks):
        changes: dict[str, str] = {}
        if ranks > 1 and engine == "mlx":
            changes.update(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile))
        elif ranks > 1:
            changes.update(
                RANK=str(rank),
                WORLD_SIZE=str(ranks),
                LOCAL_RANK="0" if netns else str(rank),
                LOCAL_WORLD_SIZE="1" if netns else str(ranks),
                MASTER_ADDR=ips[0],
                MASTER_PORT=str(master),
            )
            if netns:  # gloo binds the hostname's address otherwise, absent in a namespace
                changes["GLOO_SOCKET_IFNAME"] = netns.veths[rank]
        argv = [sys.executable, __file__, "--driver", str(config_file), "--ranks", str(ranks)]
        argv += ["--warmup", str(args.warmup)]
        if netns:
            argv = ["ip", "netns", "exec", netns.names[rank], *argv]
        with logs[rank].open("wb") as log:
            processes.append(
                subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=rank_environment(engine, threads, **changes),
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while any(p.poll() is None for p in processes):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    results = marked(logs[0].read_text(errors="replace"))
    if not results or any(p.returncode for p in processes):
        tails = "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for log in logs
        )
        raise RuntimeError(f"{name} failed (exit {[p.returncode for p in processes]}):\n{tails}")
    shutil.rmtree(out, ignore_errors=True)
    for rank in range(1, ranks):
        shutil.rmtree(f"{out}-rank{rank}", ignore_errors=True)
    return {**results[-1], "started": started}


def driver_main(args: argparse.Namespace) -> None:
    """In a rank started by `run_driver`: train, and print rank 0's figures."""
    from finetune.callbacks import TrainingCallback
    from finetune.config import TrainConfig
    from finetune.distributed import open_group
    from finetune.trainer import train

    config = TrainConfig.model_validate_json(Path(args.driver).read_text())
    group = open_group(config.backend if args.ranks > 1 else None)
    try:
        if group.rank:
            # every rank runs the whole trainer; only rank 0 writes where the config says
            config = config.model_copy(
                update={"out_dir": Path(f"{config.out_dir}-rank{group.rank}")}
            )
        clock = Clock()
        train(config, timing_callback(clock) if group.rank == 0 else TrainingCallback(), group)
        reduce_ms = all_reduce_ms(group, lora_size(config)) if group.size > 1 else None
    finally:
        close = getattr(group, "close", None)
        if close is not None:
            close()
    if group.rank == 0:
        emit({**clock.figures(args.warmup), "all_reduce_ms": reduce_ms})


def lora_size(config: Any) -> int:
    """How many LoRA parameters the run trains (the default q/k/v/o targets): the size of
    the gradient summed over the group every step."""
    model = json.loads((Path(config.model_path) / "config.json").read_text())
    hidden, heads = model["hidden_size"], model["num_attention_heads"]
    kv = model.get("num_key_value_heads") or heads
    kv_width = kv * (model.get("head_dim") or hidden // heads)
    widths = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_width)}
    widths.update(v_proj=(hidden, kv_width), o_proj=(hidden, hidden))
    per_layer = sum(sum(widths[m.rsplit(".", 1)[-1]]) for m in config.lora.target_modules)
    return per_layer * config.lora.rank * model["num_hidden_layers"]


def all_reduce_ms(group: Any, size: int, repeats: int = 20) -> float:
    """Milliseconds of one host-side all-sum of `size` float32s over the group (after one
    to warm up): the gradient's trip, without the step around it."""
    import numpy as np

    values = np.ones(size, dtype=np.float32)
    group.all_sum(values)
    tic = time.perf_counter()
    for _ in range(repeats):
        group.all_sum(values)
    return 1000 * (time.perf_counter() - tic) / repeats


# --- two "hosts": network namespaces joined by a veth pair ---------------------------


@dataclass
class Netns:
    names: tuple[str, str]
    veths: tuple[str, str]
    removed: bool = False

    def remove(self) -> None:
        """Delete both namespaces (the veth pair goes with them) and a veth left behind."""
        if self.removed:
            return
        self.removed = True
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veths[0]], capture_output=True)


def make_netns() -> tuple[Netns | None, str]:
    """Two namespaces joined by a veth pair, 10.99.0.1/24 and 10.99.0.2/24, or None and why."""
    if shutil.which("ip") is None:
        return None, "the `ip` command (iproute2) is not installed"
    tag = os.getpid() % 100_000
    netns = Netns((f"pomar-bench-a{tag}", f"pomar-bench-b{tag}"), (f"pbv{tag}a", f"pbv{tag}b"))
    atexit.register(netns.remove)
    (a, b), (va, vb) = netns.names, netns.veths
    steps = [
        ["ip", "netns", "add", a],
        ["ip", "netns", "add", b],
        ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
        ["ip", "link", "set", va, "netns", a],
        ["ip", "link", "set", vb, "netns", b],
        ["ip", "-n", a, "addr", "add", f"{NETNS_IPS[0]}/24", "dev", va],
        ["ip", "-n", b, "addr", "add", f"{NETNS_IPS[1]}/24", "dev", vb],
        ["ip", "-n", a, "link", "set", va, "up"],
        ["ip", "-n", b, "link", "set", vb, "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"],
        ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            netns.remove()
            why = done.stderr.strip() or f"exit {done.returncode}"
            return None, f"`{' '.join(step)}` failed: {why} (needs root / CAP_NET_ADMIN)"
    return netns, ""


# --- generation: `pomar serve --hosts` ------------------------------------------------


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


def generation(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of the generation table, or [] and why there are none.

    The embedded model's 9 query / 3 key-value heads do not split over 2 ranks, and mlx-lm
    has no pipeline version of llama: its 2-rank rows run the copies `make_variant` makes
    (the same outputs), each beside its own 1-rank run where the work differs."""
    if not (ROOT / "server" / "serve_hosts.py").is_file():
        return [], "`pomar serve --hosts` does not exist in this checkout"
    variants = {}
    for kind in ("heads12", "qwen2"):
        variants[kind] = tmp / f"{args.model.name}-{kind}"
        argv = [sys.executable, __file__, "--variant", kind, str(args.model), str(variants[kind])]
        subprocess.run(argv, check=True, env=child_env(openblas=True))
    tensor, pipeline = variants["heads12"], variants["qwen2"]
    cases: list[tuple[str, Path, int, int, bool, dict[str, str]]] = [
        ("one host (`pomar serve`)", args.model, 1, 2, False, {}),
        ("one rank (`--hosts 127.0.0.1:1`)", args.model, 1, 1, True, {}),
        ("one rank (`--hosts 127.0.0.1:1`)", args.model, 1, 2, True, {}),
        ("one rank, 12 heads", tensor, 1, 1, True, {}),
        ("tensor parallel, 12 heads", tensor, 2, 1, True, {"POMAR_SHARDING": "tensor"}),
        ("pipeline parallel, as qwen2", pipeline, 2, 1, True, {"POMAR_SHARDING": "pipeline"}),
    ]
    rows: list[dict[str, Any]] = []
    for label, model, ranks, threads, sharded, changes in cases:
        load = os.getloadavg()[0]
        print(f"  generation: {label}, {ranks} x {threads} ...", flush=True)
        home = tmp / "serve-home"
        try:
            row = serve_case(args, model, ranks, threads, sharded, home, **changes)
        except Exception as exc:  # the sharded server is young: say what failed, go on
            if ranks > 1:
                return rows, f"{label} failed: {exc}"
            raise
        rows.append({"server": label, "ranks": ranks, "threads": threads, "load": load, **row})
    return rows, ""


# --- the report -----------------------------------------------------------------------


def train_cases(netns: Netns | None) -> list[tuple[str, str, int, int]]:
    """(launch, network, ranks, threads) in the order they run."""
    cases = [
        ("job", "loopback", 1, 1),
        ("job", "loopback", 2, 1),
        ("job", "loopback", 1, 2),
        ("driver", "loopback", 1, 1),
        ("driver", "loopback", 2, 1),
    ]
    if netns is not None:
        cases.append(("driver", "veth", 2, 1))
    return cases


def training(
    args: argparse.Namespace, engine: str, netns: Netns | None, tmp: Path
) -> list[dict[str, Any]]:
    rows = []
    for launch, network, ranks, threads in train_cases(netns):
        load = os.getloadavg()[0]
        print(f"  {engine}: {launch}, {network}, {ranks} x {threads} ...", flush=True)
        if launch == "job":
            figures = run_job(args, engine, ranks, threads, tmp)
        else:
            figures = run_driver(
                args, engine, ranks, threads, tmp, netns if network == "veth" else None
            )
        startup = figures.pop("first_step_wall") - figures.pop("started")
        row = {"engine": engine, "launch": launch, "network": network, "ranks": ranks}
        rows.append(
            {**row, "threads": threads, "load": load, "to_first_step_s": startup, **figures}
        )
    for row in rows:  # efficiency against the same launch's 1 x 1, and against its 1 x 2
        single = next(
            r
            for r in rows
            if r["launch"] == row["launch"] and r["ranks"] == 1 and r["threads"] == 1
        )
        row["efficiency"] = row["steps_per_s"] / (row["ranks"] * single["steps_per_s"])
        two_threads = [r for r in rows if r["ranks"] == 1 and r["threads"] == 2]
        row["vs_1x2"] = row["steps_per_s"] / two_threads[0]["steps_per_s"] if two_threads else None
    return rows


def print_training(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| engine | launch | network | ranks × threads | steps/s | tokens/s | efficiency "
        "| ÷ job 1 × 2 | to 1st step s | launcher CPU | all-reduce ms | last loss | load |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = f"{r['vs_1x2']:.2f}" if r["vs_1x2"] is not None else ""
        cpu = f"{100 * r['launcher_cpu']:.0f} %" if r["launcher_cpu"] is not None else ""
        reduce = r.get("all_reduce_ms")
        reduce_ms = f"{reduce:.1f}" if reduce is not None else ""
        print(
            f"| {r['engine']} | {r['launch']} | {r['network']} | {r['ranks']} × {r['threads']} "
            f"| {r['steps_per_s']:.3f} | {r['tokens_per_s']:.0f} | {r['efficiency']:.2f} | {vs} "
            f"| {r['to_first_step_s']:.1f} | {cpu} | {reduce_ms} | {r['last_loss']:.4f} "
            f"| {r['load']:.1f} |"
        )


def print_generation(rows: list[dict[str, Any]], why: str) -> None:
    """Decode tok/s; "÷ 1 rank" against the one-rank row of the same work at 1 thread."""
    if rows:
        base = {r["server"]: r for r in rows if r["ranks"] == 1 and r["threads"] == 1}
        reference = rows[1]["text"] if len(rows) > 1 else ""
        print(
            "\n| server | ranks × threads | decode tok/s | ÷ 1 rank × 1 | start-up s "
            "| same text as 1 rank | load |"
        )
        print("|---|---|---:|---:|---:|---|---:|")
        for r in rows:
            one = base.get("one rank, 12 heads") if "12 heads" in r["server"] else None
            one = one or base.get("one rank (`--hosts 127.0.0.1:1`)")
            ratio = f"{r['decode_tok_s'] / one['decode_tok_s']:.2f}" if one else ""
            same = (
                "yes" if r["text"] == reference else f"first {common(r['text'], reference)} chars"
            )
            print(
                f"| {r['server']} | {r['ranks']} × {r['threads']} | {r['decode_tok_s']:.1f} "
                f"| {ratio} | {r['startup_s']:.1f} | {same} | {r['load']:.1f} |"
            )
    if why:
        print(f"\ngeneration on 2 ranks: not measured: {why}")


def common(a: str, b: str) -> int:
    """The length of the common prefix of `a` and `b`."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face folder (default: embedded)")
    parser.add_argument("--engines", default="mlx,torch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128, help="generation: tokens a request")
    parser.add_argument("--runs", type=int, default=3, help="generation: timed requests")
    parser.add_argument("--no-netns", action="store_true", help="loopback only")
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--variant", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        make_variant(args.variant[0], Path(args.variant[1]), Path(args.variant[2]))
        return
    if args.driver:
        driver_main(args)
        return
    os.chdir(ROOT)  # the job path starts `python -m server.jobs.trainchild` here
    # a SIGTERM ends the run through the `finally`s (the namespaces are removed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.model = (args.model or embedded_model()).resolve()
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model}: not a Hugging Face model folder")
    load = LoadAverage()
    skip = args.no_netns or args.no_training
    netns, why_not = (None, "--no-netns or --no-training") if skip else make_netns()
    if netns is None:
        print(f"veth case skipped: {why_not}", flush=True)
    train_rows: list[dict[str, Any]] = []
    gen_rows: list[dict[str, Any]] = []
    gen_why = "--no-generation" if args.no_generation else ""
    try:
        with tempfile.TemporaryDirectory(prefix="pomar-bench-ranks-") as scratch:
            tmp = Path(scratch)
            write_data(tmp / "train.jsonl", examples_for(args))
            for engine in [] if args.no_training else args.engines.split(","):
                train_rows += training(args, engine, netns, tmp)
            if not args.no_generation:
                gen_rows, gen_why = generation(args, tmp)
    finally:
        if netns is not None:
            netns.remove()
    load.done()
    blas = (
        "OpenBLAS"
        if "openblas" in child_env(openblas=True).get("LD_PRELOAD", "")
        else "no OpenBLAS"
    )
    print(
        f"\nmodel {args.model.name}; global batch {BATCH}, {args.max_length} tokens an example, "
        f"LoRA rank 8; {args.steps} steps timed after {args.warmup}; MLX with {blas}; "
        f"{load.caption()}"
    )
    if train_rows:
        print_training(train_rows)
    print_generation(gen_rows, gen_why)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load": {"before": load.before, "after": load.after, "cores": load.cores},
                    "veth": why_not or "measured",
                    "training": train_rows,
                    "generation": gen_rows,
                    "generation_note": gen_why,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
