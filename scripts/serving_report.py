"""The records and the report of scripts/bench_serving.py: dataclasses, markdown, plot."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

#: each pomar contender and the server it is compared with (the same weights, the same engine)
PEERS = {"pomar": "mlx_lm", "pomar-gguf": "llama_cpp"}


@dataclass
class RequestResult:
    ttft: float | None = None
    tokens: int = 0
    duration: float = 0.0
    #: mean gap between content chunks after the first, per token
    itl: float | None = None
    error: str | None = None


@dataclass
class Level:
    concurrency: int
    requests: int
    wall: float
    tok_s: float
    ttft_median: float | None
    ttft_p95: float | None
    itl_median: float | None
    errors: int


@dataclass
class ServerReport:
    name: str
    levels: list[Level] = field(default_factory=list)
    rss_mb: float | None = None
    cache_cold_ttft: float | None = None
    cache_warm_ttft: float | None = None
    cached_tokens: int | None = None


# --- servers -----------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "–"


def markdown(
    reports: dict[str, ServerReport], base: dict[str, float], args: argparse.Namespace
) -> str:
    pomar = reports.get("pomar")
    lines = [
        f"Model `{args.model.name}`, max_tokens {args.max_tokens}, greedy, streamed; "
        f"in-process `mlx_lm.stream_generate`: {base.get('decode_tok_s', 0):.1f} tok/s.",
        "",
        "| server | concurrency | tok/s | TTFT median ms | TTFT p95 ms | ITL ms | errors |"
        " ÷ peer server | ÷ in-process MLX |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, report in reports.items():
        other = reports.get(PEERS.get(name, ""))
        for level in report.levels:
            peer = (
                next((x for x in other.levels if x.concurrency == level.concurrency), None)
                if other
                else None
            )
            vs_server = ratio(level.tok_s, peer.tok_s) if peer else "–"
            lines.append(
                f"| {name} | {level.concurrency} | {level.tok_s:.1f} | {ms(level.ttft_median)} | "
                f"{ms(level.ttft_p95)} | {ms(level.itl_median)} | {level.errors} | {vs_server} | "
                f"{ratio(level.tok_s, base.get('decode_tok_s'))} |"
            )
    if pomar and pomar.levels:
        one = pomar.levels[0].tok_s
        scale = ", ".join(f"{lv.concurrency}: {lv.tok_s / one:.2f}×" for lv in pomar.levels)
        lines += ["", f"pomar aggregate vs its single stream: {scale}"]
    lines += [
        "",
        "| server | turn-2 TTFT cold ms | cached ms | cached ÷ cold | cached_tokens | RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in reports.items():
        lines.append(
            f"| {name} | {ms(report.cache_cold_ttft)} | {ms(report.cache_warm_ttft)} | "
            f"{ratio(report.cache_warm_ttft, report.cache_cold_ttft)} | {report.cached_tokens} | "
            f"{report.rss_mb and round(report.rss_mb)} |"
        )
    return "\n".join(lines) + "\n"


def plot(reports: dict[str, ServerReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, report in reports.items():
        xs = [lv.concurrency for lv in report.levels]
        ax.plot(xs, [lv.tok_s for lv in report.levels], marker="o", label=name)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate output tok/s")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
