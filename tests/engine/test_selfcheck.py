"""The engine self-check: a crashing engine costs a fallback (auto) or one line (named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.models.loading import engine_candidates, settle_backend
from server.models.selfcheck import (
    CheckCache,
    CheckResult,
    EngineCheckError,
    check_key,
    run_check,
    settle,
)
from tests.live_server import LiveServer, client_for, run_pomar

#: a `llama_cpp` that dies with SIGSEGV when imported, as a faulting native build does
_CRASHING_LLAMA_CPP = """
import os, signal
os.kill(os.getpid(), signal.SIGSEGV)
"""


@pytest.fixture(scope="module")
def crashing_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to put first on PYTHONPATH: its llama_cpp kills the process that imports it."""
    root = tmp_path_factory.mktemp("crashing-engine")
    (root / "llama_cpp").mkdir()
    (root / "llama_cpp" / "__init__.py").write_text(_CRASHING_LLAMA_CPP)
    return root


def _result(engine: str, ok: bool, detail: str = "") -> CheckResult:
    return CheckResult(
        engine=engine,
        ok=ok,
        detail=detail,
        model="m",
        seconds=0.1,
        checked_at=0,
        key=check_key(engine),
    )


def test_settle_falls_back_in_order_and_keeps_results(tmp_path: Path) -> None:
    calls: list[str] = []

    def runner(engine: str, _path: Path) -> CheckResult:
        calls.append(engine)
        return _result(engine, engine == "torch", "" if engine == "torch" else "killed by SIGILL")

    cache = CheckCache(tmp_path)
    candidates = [("gguf", "first"), ("mlx", "second"), ("torch", "third")]
    engine, why = settle(candidates, tmp_path, cache, named=False, runner=runner)
    assert engine == "torch" and calls == ["gguf", "mlx", "torch"]
    assert "gguf (killed by SIGILL)" in why and "mlx (killed by SIGILL)" in why
    # kept: a second settle runs no child at all
    assert settle(candidates, tmp_path, cache, named=False, runner=runner)[0] == "torch"
    assert calls == ["gguf", "mlx", "torch"]
    kept = json.loads((tmp_path / "selfcheck.json").read_text())
    assert {r["engine"]: r["ok"] for r in kept.values()} == {
        "gguf": False,
        "mlx": False,
        "torch": True,
    }


def test_timeouts_are_not_kept_and_a_named_engine_fails_in_one_line(tmp_path: Path) -> None:
    def runner(engine: str, _path: Path) -> CheckResult:
        return _result(engine, False, "timed out after 300 s")

    cache = CheckCache(tmp_path)
    with pytest.raises(EngineCheckError) as caught:
        settle([("gguf", "asked")], tmp_path, cache, named=True, runner=runner)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the gguf engine failed its self-check on this machine")
    assert "timed out after 300 s" in message and "--backend mlx or torch" in message
    assert cache.get(check_key("gguf")) is None


def test_auto_lists_every_engine_that_can_serve_a_folder(tiny_gguf_path: Path) -> None:
    folder = tiny_gguf_path.parent
    assert [e for e, _ in engine_candidates("auto", folder)] == ["gguf", "mlx", "torch"]
    assert [e for e, _ in engine_candidates("mlx", folder)] == ["mlx"]
    # a bare GGUF file has one engine, whatever was asked for
    assert [e for e, _ in engine_candidates("mlx", tiny_gguf_path)] == ["gguf"]


def test_a_real_child_passes_and_a_crashing_one_is_named(
    tiny_gguf_path: Path, crashing_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_check("gguf", tiny_gguf_path).ok
    monkeypatch.setenv("PYTHONPATH", str(crashing_llama))
    crashed = run_check("gguf", tiny_gguf_path)
    assert not crashed.ok and crashed.detail == "killed by SIGSEGV"


def test_settle_backend_reads_the_cache_by_key(tiny_gguf_path: Path, tmp_path: Path) -> None:
    CheckCache(tmp_path).put(_result("gguf", False, "killed by SIGSEGV"))
    CheckCache(tmp_path).put(_result("mlx", True))
    engine, why = settle_backend("auto", tiny_gguf_path.parent, tmp_path)
    assert engine == "mlx" and "gguf (killed by SIGSEGV)" in why


def test_server_falls_back_when_the_gguf_engine_crashes(
    tiny_gguf_path: Path, crashing_llama: Path, tmp_path: Path
) -> None:
    server = LiveServer(
        model=str(tiny_gguf_path.parent),
        backend="auto",
        home=tmp_path / "home",
        env={"PYTHONPATH": str(crashing_llama)},
    ).start()
    try:
        log = server.log()
        assert "the gguf engine failed its self-check on this machine: killed by SIGSEGV" in log
        assert "trying mlx" in log
        out = client_for(server).chat.completions.create(
            model=str(tiny_gguf_path.parent),
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
        )
        assert out.choices[0].finish_reason in ("stop", "length")
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    kept = CheckCache(tmp_path / "home").all()
    assert {r.engine: r.ok for r in kept.values()} == {"gguf": False, "mlx": True}


def test_serve_with_a_crashing_named_engine_exits_with_one_line(
    tiny_gguf_path: Path, crashing_llama: Path, tmp_path: Path
) -> None:
    done = run_pomar(
        ["serve", "--model", str(tiny_gguf_path), "--backend", "gguf", "--port", "9"],
        tmp_path / "home",
        env={"PYTHONPATH": str(crashing_llama)},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # the log says it checks; the failure is said once, as the last line
    assert [line for line in lines if "SIGSEGV" in line] == lines[-1:]
    assert lines[-1] == (
        "pomar: the gguf engine failed its self-check on this machine (killed by SIGSEGV "
        f"while loading {tiny_gguf_path.name}): rebuild llama.cpp portable (rm -rf .venv; "
        "./scripts/serve) or serve with --backend mlx or torch; `pomar doctor` shows more"
    ), done.stderr
