#!/usr/bin/env python3
"""llama.cpp's CPU kernels on this machine: the portable build's variants against a native build.

pomar installs llama.cpp built for every CPU (server/engine/gguf/cpu.py picks the variant at
load). This measures the embedded model on pomar's GGUF engine (`server.bench.measure`:
greedy decode tok/s, cold prefill tok/s) with:
  * portable/auto: the variant pomar picks here;
  * portable/<name>: each variant named with --variants (haswell is the fixed
    AVX2/FMA/F16C baseline; x64 is the no-SIMD-extensions floor);
  * native: a `-march=native` build installed with `pip install --target DIR` (--native DIR),
    as it is, and with llama.cpp's extra buffer types off (no AMX kernels: the way it can
    run on a machine whose VM reports AMX but does not grant it).
Each configuration runs in its own process, the configurations take turns for --rounds
rounds, and the table shows medians with ratios to portable/auto. A configuration that
crashes is a row saying how.

    .venv/bin/python scripts/bench_llama_cpu.py [--variants haswell,x64] [--native DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchlib import RESULT_MARK, ROOT, LoadAverage, embedded_model, median_of, run_child

_CHILD = """
import json, sys
from pathlib import Path
if {no_extra}:
    import llama_cpp.llama_cpp as lc
    _default = lc.llama_model_default_params
    def _params():
        params = _default()
        params.use_extra_bufts = False  # no AMX (nor repack) buffers
        return params
    lc.llama_model_default_params = _params
from server.bench import measure
from server.engine.gguf.cpu import ensure_cpu_backend
row = measure("gguf", Path({path!r}), {tokens}, {prompt_tokens}, {runs})
cpu = ensure_cpu_backend()
row["kernels"] = cpu.variant or cpu.kind
print({mark!r} + json.dumps(row))
"""


def configs(args: argparse.Namespace) -> list[tuple[str, dict[str, str], bool]]:
    """(name, environment changes, extra buffer types off) of each configuration."""
    out: list[tuple[str, dict[str, str], bool]] = [("portable/auto", {}, False)]
    for variant in filter(None, args.variants.split(",")):
        out.append((f"portable/{variant}", {"POMAR_LLAMA_CPU_VARIANT": variant}, False))
    if args.native:
        site = str(Path(args.native).resolve())
        out.append(("native", {"PYTHONPATH": site}, False))
        out.append(("native, no AMX", {"PYTHONPATH": site}, True))
    return out


def run_one(
    env_changes: dict[str, str], no_extra: bool, path: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One configuration, measured in a child process; a crash is a row saying how."""
    code = _CHILD.format(
        no_extra=no_extra,
        path=str(path),
        tokens=args.tokens,
        prompt_tokens=args.prompt_tokens,
        runs=args.runs,
        mark=RESULT_MARK,
    )
    env = dict(os.environ, **env_changes)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env_changes.get("PYTHONPATH"), str(ROOT)]))
    return run_child([sys.executable, "-c", code], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="haswell,x64", help="portable variants to add")
    parser.add_argument("--native", help="folder of a native llama-cpp-python (pip --target)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each configuration takes")
    parser.add_argument("--runs", type=int, default=2, help="measured runs in each turn")
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens decoded")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prefill length")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    path = embedded_model()
    todo = configs(args)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in todo}
    load = LoadAverage()
    for turn in range(args.rounds):
        for name, env_changes, no_extra in todo:
            print(f"round {turn + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            rows[name].append(run_one(env_changes, no_extra, path, args))
    report = summarize(rows)
    print_table(report, args, (load.before, load.done()))
    load.warn()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summarize(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over the rounds, and each configuration's ratio to portable/auto."""
    out = []
    for name, runs in rows.items():
        ok = [r for r in runs if r.get("ok")]
        if not ok:
            out.append({"config": name, "ok": False, "error": runs[0]["error"]})
            continue
        out.append(
            {
                "config": name,
                "ok": True,
                "kernels": ok[0]["kernels"],
                "decode_tok_s": median_of(ok, "decode_tok_s"),
                "prefill_tok_s": median_of(ok, "prefill_tok_s"),
                "rounds": len(ok),
            }
        )
    base = next((r for r in out if r["config"] == "portable/auto" and r["ok"]), None)
    for r in out:
        if r["ok"] and base:
            r["decode_ratio"] = r["decode_tok_s"] / base["decode_tok_s"]
            r["prefill_ratio"] = r["prefill_tok_s"] / base["prefill_tok_s"]
    return out


def print_table(
    report: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, float]
) -> None:
    print(
        f"embedded model (Q4_1 GGUF) on pomar's GGUF engine: {args.tokens} greedy tokens, "
        f"~{args.prompt_tokens}-token cold prefill; median of {args.rounds} rounds x "
        f"{args.runs} runs; load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'config':<20} {'kernels':<16} {'decode tok/s':>12} {'x auto':>7} "
          f"{'prefill tok/s':>13} {'x auto':>7}")  # fmt: skip
    for r in report:
        if not r["ok"]:
            print(f"{r['config']:<20} {r['error']}")
            continue
        print(
            f"{r['config']:<20} {r['kernels']:<16} {r['decode_tok_s']:>12.1f} "
            f"{r.get('decode_ratio', 0):>6.2f}x {r['prefill_tok_s']:>13.1f} "
            f"{r.get('prefill_ratio', 0):>6.2f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
