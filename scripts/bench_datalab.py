"""Benchmark ``datalab.pipeline.prepare`` end to end, without tokenization.

Builds synthetic chat JSONL files (with exact duplicates, near-duplicates, invalid lines,
empty lines and bytes that are not UTF-8) in a temporary folder, then runs ``prepare`` on
each in a fresh process and prints wall time and peak RSS. Running two sizes shows how
memory grows: only the dedupe index and small per-record metadata should scale with the
number of records.

    .venv/bin/python scripts/bench_datalab.py            # 50,000 and 100,000 records
    .venv/bin/python scripts/bench_datalab.py --sizes 100000 --repeat 3 --workers 1

Wall time depends on what else runs on the machine; the CPU seconds and the load average
printed with each run tell how contended it was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchlib import LoadAverage, emit, expect, run_child

TARGET_S = 10.0
# ~3,000 pseudo-words of letters; real text is mostly letters, with the odd number.
_SYLLABLES = ["lo", "ra", "ti", "me", "su", "no", "ka", "de", "pa", "ve", "ri", "to", "bu", "sa"]
WORDS = sorted({a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "n", "s", "ro")})
TOPICS = ["python", "cooking", "history", "math", "travel", "music", "health", "law"]


def _sentence(rng: random.Random, n: int) -> str:
    words = rng.choices(WORDS, k=n)
    if rng.random() < 0.1:
        words[-1] = str(rng.randint(2, 2030))
    return " ".join(words).capitalize() + "."


def _record(rng: random.Random, i: int) -> dict[str, object]:
    question = f"How does {rng.choice(TOPICS)} relate to {_sentence(rng, rng.randint(8, 30))}"
    answer = " ".join(_sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(2, 6)))
    rec: dict[str, object] = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "category": rng.choice(TOPICS),
    }
    if i % 2:
        rec["conversation_id"] = f"c{i // 4}"
    if i % 200 == 0:  # some personal data for the PII scan
        rec["messages"][2]["content"] += (
            f" Write to user{i}@example.com or call +351 912 345 {i % 1000:03d}."  # type: ignore[index]
        )
    return rec


def _near_copy(rng: random.Random, rec: dict[str, object]) -> dict[str, object]:
    msgs = [dict(m) for m in rec["messages"]]  # type: ignore[attr-defined]
    words = msgs[2]["content"].split()
    words[rng.randrange(len(words))] = rng.choice(WORDS)  # one word changed in the answer
    msgs[2]["content"] = " ".join(words)
    return {**rec, "messages": msgs}


BAD_LINES = [
    b'{"messages": [{"role": "user", "content": "broken',
    b"[1, 2, 3]",
    b'{"prompt_text": "no known format"}',
    b'{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": 5}]}',
    b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ok"}]}',
    b'{"text": "caf\xe9 is not UTF-8"}',
    b"",
]


def build(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write ``n`` lines: ~85% unique, ~8% exact copies, ~5% near copies, ~2% bad."""
    rng = random.Random(seed)
    recent: list[dict[str, object]] = []
    kinds = {"unique": 0, "exact": 0, "near": 0, "bad": 0}
    with path.open("wb") as f:
        for i in range(n):
            roll = rng.random()
            if roll < 0.02:
                line = rng.choice(BAD_LINES)
                kinds["bad"] += 1
            elif roll < 0.10 and recent:
                line = json.dumps(rng.choice(recent)).encode()
                kinds["exact"] += 1
            elif roll < 0.15 and recent:
                line = json.dumps(_near_copy(rng, rng.choice(recent))).encode()
                kinds["near"] += 1
            else:
                rec = _record(rng, i)
                recent.append(rec)
                if len(recent) > 2000:
                    recent.pop(rng.randrange(len(recent)))
                line = json.dumps(rec).encode()
                kinds["unique"] += 1
            f.write(line + b"\n")
    return kinds


def _rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child(src: Path, out: Path, workers: int | None) -> None:
    """Run one prepare in this (fresh) process and print its figures as JSON."""
    from datalab.pipeline import PipelineConfig, prepare

    base = _rss_mb()
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    report = prepare(src, out, PipelineConfig(workers=workers))
    seconds = time.perf_counter() - t0
    figures = {
        "seconds": round(seconds, 2),
        "cpu_main_s": round(_cpu_s(resource.RUSAGE_SELF) - cpu0, 2),
        "cpu_workers_s": round(_cpu_s(resource.RUSAGE_CHILDREN), 2),
        "workers": report.workers,
        "peak_rss_mb": round(_rss_mb(), 1),
        "worker_peak_rss_mb": round(_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "rss_after_imports_mb": round(base, 1),
        "n_records": report.n_records,
        "n_valid": report.n_valid,
        "n_exact": report.dedupe.n_exact,
        "n_near": report.dedupe.n_near,
        "n_train": report.n_train,
        "n_valid_split": report.n_valid_split,
        "can_train": report.can_train,
        "load_average": round(os.getloadavg()[0], 2),
    }
    emit(figures)


def main() -> int:
    """Build the files, time ``prepare`` on each, print a table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000])
    p.add_argument("--workers", type=int, default=None, help="1: no worker processes")
    p.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest is kept")
    p.add_argument("--child", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.workers)
        return 0
    rows, load = [], LoadAverage()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            src = Path(tmp) / f"bench-{n}.jsonl"
            kinds = build(src, n)
            mb = src.stat().st_size / 1e6
            cmd = [sys.executable, __file__, "--child", str(src), str(Path(tmp) / f"out-{n}")]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            runs = []
            for _ in range(args.repeat):
                runs.append(expect(run_child(cmd), f"prepare on {n:,} lines"))
                print(f"{n:>8,} lines ({mb:.0f} MB; {kinds}): {json.dumps(runs[-1])}", flush=True)
            rows.append((n, mb, kinds, min(runs, key=lambda f: f["seconds"])))
    print()
    print(
        f"{'lines':>8}  {'MB':>4}  {'wall s':>6}  {'CPU main+workers s':>18}  {'workers':>7}  "
        f"{'peak RSS MB (main / worker)':>27}  {'load':>4}"
    )
    for n, mb, _, fig in rows:
        cpu = f"{fig['cpu_main_s']:.1f} + {fig['cpu_workers_s']:.1f}"
        rss = f"{fig['peak_rss_mb']:.0f} / {fig['worker_peak_rss_mb']:.0f}"
        print(
            f"{n:>8,}  {mb:>4.0f}  {fig['seconds']:>6.2f}  {cpu:>18}  {fig['workers']:>7}  "
            f"{rss:>27}  {fig['load_average']:>4.1f}"
        )
    if len(rows) >= 2:
        (n1, _, _, f1), (n2, _, _, f2) = rows[0], rows[-1]
        grow = (f2["peak_rss_mb"] - f1["peak_rss_mb"]) * 1024 / (n2 - n1)
        print(f"peak RSS grows {grow:.2f} KiB per extra line (dedupe index + per-record metadata)")
    worst = max(fig["seconds"] for *_, fig in rows)
    print(f"target ≤ {TARGET_S:.0f} s: {'met' if worst <= TARGET_S else 'MISSED'} ({worst:.2f} s)")
    load.done()
    load.warn()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
