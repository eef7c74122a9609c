"""The llama.cpp pomar loads is portable: kernels chosen for this CPU at load, never native."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.gguf.cpu import _NEEDS_AMX, ensure_cpu_backend, kernel_dirs, system_info
from tests.prompts import PARIS_QUESTION

ROOT = Path(__file__).resolve().parents[2]

_ANSWER = """
import json, sys
from pathlib import Path
from server.engine.base import GenerationParams
from server.engine.generation import complete
from server.engine.gguf.cpu import ensure_cpu_backend
from server.models.loading import load_engine
from server.engine.templates import ChatTemplate
engine = load_engine("gguf", Path(sys.argv[1]))
ids = ChatTemplate(engine.tokenizer).encode([{"role": "user", "content": sys.argv[2]}])
out = complete(engine, ids, GenerationParams(max_tokens=20, temperature=0.0), lambda: False)
print(json.dumps({"variant": ensure_cpu_backend().variant, "text": out.text}))
"""


def answer(model: Path, variant: str) -> subprocess.CompletedProcess[str]:
    """The embedded model's greedy answer with llama.cpp's `variant` kernels, in a child."""
    env = dict(os.environ, POMAR_LLAMA_CPU_VARIANT=variant, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", _ANSWER, str(model), PARIS_QUESTION],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_build_dispatches_on_the_cpu_and_ships_every_level() -> None:
    cpu = ensure_cpu_backend()
    # a -march=native build links its kernels in ("static"): that is what this test refuses
    assert cpu.kind == "dispatch" and cpu.portable, cpu
    assert cpu.variant is not None and cpu.scores[cpu.variant] > 0
    assert cpu.variant not in _NEEDS_AMX  # never picked unless asked for by name
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"x64", "haswell", "skylakex"} <= set(cpu.scores)
        assert cpu.scores["x64"] > 0  # the floor runs anywhere
    assert not [p for d in kernel_dirs() for p in d.glob("libggml-cpu.so")]
    info = system_info()
    assert info.startswith("CPU :") and "AMX_INT8 = 1" not in info


@pytest.mark.parametrize("variant", ["x64", "haswell"])
def test_the_answer_does_not_hang_on_the_kernels(embedded_model_path: Path, variant: str) -> None:
    best = answer(embedded_model_path, ensure_cpu_backend().variant or "")
    other = answer(embedded_model_path, variant)
    assert best.returncode == 0 and other.returncode == 0, best.stderr + other.stderr
    a, b = json.loads(best.stdout.splitlines()[-1]), json.loads(other.stdout.splitlines()[-1])
    assert b["variant"] == variant
    assert "Paris" in a["text"] and "Paris" in b["text"], (a, b)


def test_an_unknown_variant_is_refused_with_the_list(embedded_model_path: Path) -> None:
    done = answer(embedded_model_path, "pentium4")
    assert done.returncode != 0
    assert "POMAR_LLAMA_CPU_VARIANT=pentium4: this llama.cpp build ships" in done.stderr
    assert "haswell" in done.stderr
