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
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, LoadAverage, child_env, embedded_model, free_port, marked
from distributed_netns import NETNS_IPS, Netns, make_netns
from distributed_report import print_generation, print_training
from distributed_serving import make_variant, serve_case
from distributed_training import (
    BATCH,
    driver_main,
    examples_for,
    rank_environment,
    run_job,
    train_config,
    write_data,
)

RUN_TIMEOUT_S = 1800


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
