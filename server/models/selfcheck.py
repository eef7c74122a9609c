"""Engine self-check: load a model and decode a few tokens in a child process first.

A native fault in an engine (llama.cpp's AMX kernels on a VM that does not grant AMX
tiles, a BLAS built for another CPU, a Metal abort) kills the whole process. So before
pomar serves a model on an engine it has not checked yet, a child process loads that model
with that engine and decodes a few tokens; if the child dies (signal, non-zero exit,
time-out) the engine fails its check. `auto` then takes the next engine that can serve the
model; an engine asked for by name is refused with one line.

Results are kept in `$POMAR_HOME/selfcheck.json`, keyed by engine, engine library
version, pomar version and CPU flags, so later starts pay nothing. Time-outs are not kept
(a busy machine may pass next time).

`python -m server.models.selfcheck ENGINE PATH` is the child.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from server.errors import ModelLoadError

log = logging.getLogger(__name__)

#: seconds a child may take to load the model and decode (a large model loads slowly)
TIMEOUT = 300.0
#: tokens the child decodes: enough to run the decode kernels, not only the prompt's
DECODE_TOKENS = 4
_LIBRARIES = {"gguf": "llama_cpp_python", "mlx": "mlx", "torch": "torch"}
_FIXES = {
    "gguf": "rebuild llama.cpp portable (rm -rf .venv; ./scripts/serve) or serve with "
    "--backend mlx or torch",
    "mlx": "serve with --backend gguf or torch",
    "torch": "serve with --backend gguf or mlx",
}


class CheckResult(BaseModel):
    """One engine's self-check on this machine."""

    engine: str
    ok: bool
    #: how it failed ("killed by SIGSEGV", "exit 1: ...", "timed out after 300 s"); "" if ok
    detail: str = ""
    #: the model the check loaded
    model: str
    seconds: float
    checked_at: int
    #: engine, library version, pomar version, CPU: a result holds while this holds
    key: str


def check_key(engine: str) -> str:
    """What a cached result depends on: the engine's library, pomar and the CPU."""
    from server.engine.gguf.cpu import cpu_flags

    versions = []
    for dist in (_LIBRARIES.get(engine, engine), "pomar"):
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}==none")
    cpu = hashlib.sha256(" ".join(cpu_flags()).encode()).hexdigest()[:16]
    return f"{engine}|{'|'.join(versions)}|cpu={cpu}"


class CheckCache:
    """Self-check results under a pomar home, one per key."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "selfcheck.json"

    def all(self) -> dict[str, CheckResult]:
        """Every kept result by key (an unreadable file reads as empty)."""
        try:
            raw = json.loads(self.path.read_text())
            return {k: CheckResult.model_validate(v) for k, v in raw.items()}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> CheckResult | None:
        """The kept result for `key`, if any."""
        return self.all().get(key)

    def put(self, result: CheckResult) -> None:
        """Keep `result` (written to a temporary file, then renamed into place)."""
        results = self.all()
        results[result.key] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: v.model_dump() for k, v in results.items()}, indent=1))
        tmp.replace(self.path)


def run_check(engine: str, model_path: Path, timeout: float = TIMEOUT) -> CheckResult:
    """Load `model_path` with `engine` in a child process and decode a few tokens."""
    started = time.monotonic()
    cmd = [sys.executable, "-m", "server.models.selfcheck", engine, str(model_path)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        detail = _failure(done.returncode, done.stderr)
    except subprocess.TimeoutExpired:
        detail = f"timed out after {timeout:.0f} s"
    return CheckResult(
        engine=engine,
        ok=not detail,
        detail=detail,
        model=model_path.name,
        seconds=round(time.monotonic() - started, 2),
        checked_at=int(time.time()),
        key=check_key(engine),
    )


def _failure(returncode: int, stderr: str) -> str:
    """ "" for a clean exit; else how the child ended, in a few words."""
    if returncode == 0:
        return ""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    last = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"exit {returncode}" + (f": {last[-1][:300]}" if last else "")


def checked(
    engine: str,
    model_path: Path,
    cache: CheckCache,
    runner: Callable[[str, Path], CheckResult] = run_check,
) -> CheckResult:
    """The engine's kept result on this machine, or a new check (kept unless it timed out)."""
    key = check_key(engine)
    kept = cache.get(key)
    if kept is not None:
        return kept
    log.info("checking the %s engine in a child process on %s", engine, model_path.name)
    result = runner(engine, model_path)
    if result.ok or not result.detail.startswith("timed out"):
        cache.put(result)
    return result


def settle(
    candidates: Sequence[tuple[str, str]],
    model_path: Path,
    cache: CheckCache,
    *,
    named: bool,
    runner: Callable[[str, Path], CheckResult] = run_check,
) -> tuple[str, str]:
    """The first of `candidates` ((engine, why), best first) whose self-check passes.

    `named`: the engine was asked for by name (`--backend X`), so there is no other to
    take and a failed check is an error.

    Raises:
        EngineCheckError: no candidate passed (its message is the one line to print).
    """
    failed: list[CheckResult] = []
    for engine, why in candidates:
        result = checked(engine, model_path, cache, runner)
        if result.ok:
            if failed:
                lost = ", ".join(f"{r.engine} ({r.detail})" for r in failed)
                why = f"{why}; taken because the self-check failed for {lost}"
            return engine, why
        failed.append(result)
        if named:
            break  # the error says it, once
        rest = [e for e, _ in candidates[len(failed) :]]
        log.warning(
            "the %s engine failed its self-check on this machine: %s while loading %s "
            "and decoding%s",
            engine,
            result.detail,
            result.model,
            f"; trying {rest[0]}" if rest else "",
        )
    raise EngineCheckError(failed, named=named)


class EngineCheckError(ModelLoadError):
    """No engine that can serve the model passed its self-check."""

    def __init__(self, failed: list[CheckResult], *, named: bool) -> None:
        first = failed[0]
        if named and len(failed) == 1:
            message = (
                f"the {first.engine} engine failed its self-check on this machine "
                f"({first.detail} while loading {first.model}): {_FIXES.get(first.engine, '')}; "
                "`pomar doctor` shows more"
            )
        else:
            tried = "; ".join(f"{r.engine}: {r.detail}" for r in failed)
            message = (
                f"no engine that can serve {first.model} passed its self-check here ({tried}); "
                "`pomar doctor` shows more"
            )
        super().__init__(message)
        self.failed = failed


def _child(engine: str, model_path: Path) -> None:
    """Load the model as the server would and decode a few greedy tokens."""
    from server.engine.base import PAUSE, GenerationParams
    from server.models.loading import load_engine

    loaded = load_engine(engine, model_path)
    ids = list(loaded.tokenizer.encode("The capital of France is"))
    params = GenerationParams(max_tokens=DECODE_TOKENS, temperature=0.0)
    stream = loaded.token_stream(ids, params, lambda: False)
    tokens = 0
    for item in stream:
        if item is not PAUSE:  # a batching engine's "let the others start": no token
            tokens += 1
        if tokens >= DECODE_TOKENS:
            break
    if hasattr(stream, "close"):
        stream.close()
    if tokens < DECODE_TOKENS:
        raise SystemExit(f"decoded {tokens} of {DECODE_TOKENS} tokens")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    _child(sys.argv[1], Path(sys.argv[2]))
