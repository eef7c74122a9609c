"""`pomar bench`: every engine measured on the same prompts, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from live_server import run_pomar


def bench(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return run_pomar(["bench", *args], home)


def test_bench_compares_every_engine(tiny_gguf_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    folder = tiny_gguf_path.parent  # HF files and a GGUF: all three engines load it
    done = bench(
        [str(folder), "--tokens", "8", "--prompt-tokens", "64", "--runs", "1", "--json", str(out)],
        tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["tokens"] == 8 and report["prompt_tokens"] == 64
    rows = {r["backend"]: r for r in report["results"]}
    assert sorted(rows) == ["gguf", "mlx", "torch"]
    for name, row in rows.items():
        assert row["ok"], row
        for key in ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"):
            assert row[key] > 0, (name, key, row)
        assert 32 <= row["prompt_tokens"] <= 64, row  # about the asked size, never more
        assert name in done.stdout
    # each engine in its own process: MLX alone got the OpenBLAS preload (on Linux)
    assert rows["torch"]["blas"] is None and rows["gguf"]["blas"] is None
    if sys.platform.startswith("linux") and rows["mlx"]["blas"] is None:
        from server.engine.mlx.openblas import find_openblas

        assert find_openblas() is None
    assert "prefill tok/s" in done.stdout and "decode tok/s" in done.stdout
    assert "1.00x" in done.stdout  # the fastest decoder is the reference


def test_bench_says_why_an_engine_did_not_run(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = bench(
        [str(tiny_model_path), "--backends", "gguf,nope", "--json", str(out)], tmp_path / "home"
    )
    assert done.returncode == 1  # nothing ran
    rows = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["ok"]) for r in rows] == [("gguf", False), ("nope", False)]
    assert rows[0]["error"].startswith("no GGUF file in")
    assert "unknown backend" in rows[1]["error"]
    assert "not run: no GGUF file" in done.stdout


def test_bench_refuses_an_unknown_model(tmp_path: Path) -> None:
    done = bench([str(tmp_path / "missing")], tmp_path / "home")
    assert done.returncode == 1
    assert "pomar bench:" in done.stderr and "missing" in done.stderr
