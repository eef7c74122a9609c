"""The report of scripts/bench_distributed.py: the training table (`print_training`) and
the generation table (`print_generation`).
"""

from __future__ import annotations

from typing import Any


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
