"""The CI version of `scripts/load_test.py`: 16 streaming clients for 10 s on the tiny model.

On the MLX and the GGUF engine, both of which decode concurrent requests in one batch.

A third of them disconnect mid-stream while files are uploaded and lists polled: no
request fails, and after the load a lone request is answered (every disconnect freed its
slot). Timings and the RSS ratio are too noisy to assert here; only that RSS was sampled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[2] / "scripts" / "load_test.py"


@pytest.mark.parametrize("backend", ["mlx", "gguf"])
def test_short_load(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """On both batching engines: MLX, and llama.cpp (the tiny model's f32 GGUF)."""
    if backend == "gguf":
        model: Path = request.getfixturevalue("tiny_gguf_path").parent
    else:
        model = request.getfixturevalue("tiny_model_path")
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--backend", backend]
    cmd += ["--clients", "16", "--duration", "10", "--max-tokens", "8", "--json", str(out)]
    cmd += ["--home", str(tmp_path / "home")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert out.is_file(), log
    results = json.loads(out.read_text())
    assert run.returncode == 0, log
    assert results["failed"] == 0, results["errors"]
    assert results["completed"] > 0 and results["cancelled"] > 0, log
    assert results["uploads"] > 0 and results["polls"] > 0, log
    assert results["probe_ttft_s"] is not None and results["health_ok"], log
    assert results["targets"]["disconnects_free_slots"], log
    assert results["server_errors"] == 0, (tmp_path / "home" / "server.log").read_text()[-5000:]
    for key in ("rss_warmup_kib", "rss_after_kib", "rss_peak_kib", "rss_ratio"):
        assert results[key] > 0, (key, results[key])
    assert results["ttft_p50_s"] is not None and results["tokens_per_s"] > 0
