"""The report of scripts/bench_vs_llama_server.py: one server's rounds as one result
(`merged`), the two servers' rows side by side with their ratios (`table`) and the markdown
table (`print_table`).
"""

from __future__ import annotations

import statistics
from typing import Any

SERVERS = ("pomar", "llama-server")


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds as one result: each row's figures are the medians over the
    rounds, its failures and errors summed; the peak RSS is the highest."""
    if len(runs) == 1:
        return runs[0]
    rows = []
    for same in zip(*(run["rows"] for run in runs), strict=True):
        row = dict(same[0])
        for key in row.keys() - {"prompt", "streams", "errors"}:
            values = [r[key] for r in same if isinstance(r[key], (int, float))]
            row[key] = statistics.median(values) if values else None
        row["failed"] = sum(r["failed"] for r in same)
        row["requests"] = sum(r["requests"] for r in same)
        row["errors"] = sorted({e for r in same for e in r["errors"]})[:5]
        row["tok_s_rounds"] = [r["tok_s"] for r in same]
        rows.append(row)
    peak = max(run["rss_peak_bytes"] for run in runs)
    return {**runs[0], "rows": rows, "rss_peak_bytes": peak, "rounds": runs}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def pair(a: float | None, b: float | None, spec: str) -> str:
    return f"{fmt(a, spec)} / {fmt(b, spec)}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows side by side, with the pomar / llama-server ratios."""
    ours, theirs = (results[name]["rows"] for name in SERVERS)
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        rows.append(
            {
                "prompt": a["prompt"],
                "streams": a["streams"],
                "pomar": a,
                "llama-server": b,
                "tok_s_ratio": ratio(a["tok_s"], b["tok_s"]),
                "ttft_p50_ratio": ratio(a["ttft_p50_s"], b["ttft_p50_s"]),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], results: dict[str, Any], caption: str) -> None:
    print(f"\n{caption}\n")
    print(
        "| prompt | streams | pomar tok/s | llama-server tok/s | pomar / llama-server "
        "| TTFT p50 s (pomar / llama) | TTFT p95 s | ITL p95 ms | tokens/request | failed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        a, b = row["pomar"], row["llama-server"]
        a_itl, b_itl = (None if r["itl_p95_s"] is None else r["itl_p95_s"] * 1000 for r in (a, b))
        print(
            f"| {row['prompt']} ({fmt(a['prompt_tokens_per_request'], '{:.0f}')} tok) "
            f"| {row['streams']} | {a['tok_s']:.1f} | {b['tok_s']:.1f} "
            f"| {fmt(row['tok_s_ratio'], '{:.2f}')} "
            f"| {pair(a['ttft_p50_s'], b['ttft_p50_s'], '{:.2f}')} "
            f"| {pair(a['ttft_p95_s'], b['ttft_p95_s'], '{:.2f}')} "
            f"| {pair(a_itl, b_itl, '{:.0f}')} "
            f"| {pair(a['tokens_per_request'], b['tokens_per_request'], '{:.0f}')} "
            f"| {a['failed']} / {b['failed']} |"
        )
    peaks = [results[name]["rss_peak_bytes"] / 2**20 for name in SERVERS]
    print(
        f"\npeak RSS (with children): pomar {peaks[0]:.0f} MiB, llama-server {peaks[1]:.0f} MiB "
        f"(ratio {fmt(ratio(peaks[0], peaks[1]), '{:.2f}')})"
    )
    for row in rows:
        for name in SERVERS:
            for error in row[name]["errors"]:
                print(f"error ({name}, {row['prompt']} x{row['streams']}): {error}")
