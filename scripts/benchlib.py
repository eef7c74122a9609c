"""The harness the benchmark scripts share: children, load average, medians, live servers.

A measurement runs in a child process (a BLAS preload only takes effect at process start,
and a child's peak memory is its own): the child prints its result with `emit`, the parent
reads it back with `run_child`. Only the standard library is imported at start-up, the
rest where it is used, so that a child's memory figures stay its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the prefix of the line that carries a child's JSON result
RESULT_MARK = "BENCH_RESULT "
#: the environment variable `pomar serve` marks its OpenBLAS re-exec with
_OPENBLAS_MARKER = "POMAR_OPENBLAS"


def emit(result: Any, mark: str = RESULT_MARK) -> None:
    """In a child: print `result` as the marked JSON line the parent reads back."""
    print(mark + json.dumps(result), flush=True)


def marked(stdout: str, mark: str = RESULT_MARK) -> list[Any]:
    """The JSON values of every line of `stdout` that starts with `mark`, in order."""
    return [json.loads(ln[len(mark) :]) for ln in stdout.splitlines() if ln.startswith(mark)]


def run_child(
    argv: Sequence[str], env: Mapping[str, str] | None = None, mark: str = RESULT_MARK
) -> dict[str, Any]:
    """Run `argv` and return the dict of its last marked line.

    A child that printed none is an error row: `{"ok": False, "error": ..., "stderr": ...}`,
    the error saying how it died (`crashed: SIGSEGV`, or `exit 1: ` and its last stderr
    line), `stderr` the last 3,000 characters of what it wrote there.
    """
    done = subprocess.run(
        list(argv), env=None if env is None else dict(env), capture_output=True, text=True
    )
    results = marked(done.stdout, mark)
    if results:
        return dict(results[-1])
    if done.returncode < 0:
        error = f"crashed: {signal.Signals(-done.returncode).name}"
    else:
        tail = [ln for ln in done.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        error = f"exit {done.returncode}: {tail[0]}"
    return {"ok": False, "error": error, "stderr": done.stderr[-3000:]}


def expect(row: dict[str, Any], what: str) -> dict[str, Any]:
    """`row` from `run_child`; an error row stops the script, showing the child's stderr."""
    if row.get("ok") is False:
        raise SystemExit(f"{what} failed:\n{row.get('stderr') or row['error']}")
    return row


def child_env(openblas: bool = False, **changes: str) -> dict[str, str]:
    """A measurement child's environment: offline, unbuffered, no inherited preload.

    With `openblas`, OpenBLAS is preloaded (on Linux, where it is installed), as `pomar
    serve` arranges for MLX: MLX's Linux wheel links the reference BLAS.
    """
    from server.engine.mlx.openblas import find_openblas

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **changes)
    env.pop("LD_PRELOAD", None)
    env.pop(_OPENBLAS_MARKER, None)
    lib = find_openblas() if openblas and sys.platform.startswith("linux") else None
    if lib is not None:
        env["LD_PRELOAD"] = str(lib)
    return env


@dataclass
class LoadAverage:
    """The load average when a benchmark started (and, after `done`, when it ended)."""

    before: float = field(default_factory=lambda: os.getloadavg()[0])
    after: float | None = None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def done(self) -> float:
        """Read the load average again, at the end; return it."""
        self.after = os.getloadavg()[0]
        return self.after

    @property
    def busy(self) -> bool:
        """Whether other processes kept more than half the cores busy at the start."""
        return self.before > self.cores / 2

    def caption(self) -> str:
        """`load average 0.4 before, 1.9 after, 8 cores`, and a warning when busy."""
        after = "" if self.after is None else f", {self.after:.1f} after"
        text = f"load average {self.before:.1f} before{after}, {self.cores} cores"
        return text + (": other processes were busy, so these figures are low" if self.busy else "")

    def warn(self) -> None:
        """Say on stderr that the figures are low, if the machine was busy."""
        if self.busy:
            print(f"warning: {self.caption()}", file=sys.stderr, flush=True)


def median_of(rows: Iterable[Mapping[str, Any]], key: str) -> float:
    """The median of `row[key]` over the rows."""
    return float(statistics.median(row[key] for row in rows))


def median_or_none(values: Iterable[float]) -> float | None:
    """The median, or None where there are no values."""
    values = list(values)
    return statistics.median(values) if values else None


def quantile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (0..1), or None where there are no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def proc_memory_kib(pid: int | None) -> dict[str, int]:
    """The `Vm*` figures of /proc/PID/status in KiB (VmRSS, VmHWM...); {} where it cannot tell."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        pairs = (line.partition(":") for line in lines if line.startswith("Vm"))
        return {key: int(rest.split()[0]) for key, _, rest in pairs}
    return {}


def embedded_model() -> Path:
    """The embedded model's folder in the models store, fetched on first use."""
    from server.models.embedded import ensure_embedded_model
    from server.settings import Settings

    return ensure_embedded_model(Settings().models_dir)


def greedy_stream(model: str, messages: Any, max_tokens: int) -> dict[str, Any]:
    """The openai SDK's arguments for a greedy streamed chat completion that ends in usage."""
    return dict(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )


@dataclass
class Streamed:
    """One streamed chat completion: its content chunks and their timing, its usage."""

    chunks: int
    to_first: float
    rest: float
    prompt_tokens: int
    completion_tokens: int


def stream_chat(client: Any, model: str, messages: Any, max_tokens: int) -> Streamed:
    """Stream a greedy chat completion with the openai SDK and time its content chunks."""
    from server.bench import timed

    usage: list[Any] = []

    def contents() -> Any:
        for chunk in client.chat.completions.create(**greedy_stream(model, messages, max_tokens)):
            if chunk.usage:
                usage.append(chunk.usage)
            elif chunk.choices and chunk.choices[0].delta.content:
                yield chunk

    n, to_first, rest = timed(contents())
    assert usage, "the server sent no usage"
    return Streamed(n, to_first, rest, usage[0].prompt_tokens, usage[0].completion_tokens)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerExited(RuntimeError):
    """The server process ended before it answered."""


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], timeout: float, interval: float = 0.5
) -> httpx.Response | None:
    """The first 200 answer of `url`, or None after `timeout` s; ServerExited if `proc` ends."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(f"the server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            reply = httpx.get(url, timeout=2)
            if reply.status_code == 200:
                return reply
        time.sleep(interval)
    return None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it lingers past `timeout` s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class LiveServer:
    """A `python -m server serve` subprocess on a free port."""

    model: str
    backend: str
    home: Path
    #: environment changes on top of the server's own; None removes a variable
    env: dict[str, str | None] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / f"server-{self.port}.log"

    def start(self, timeout: float = 300.0) -> LiveServer:
        """Start and wait until `/health` answers 200.

        The server runs offline, without the cold MLX compile, on its own home, with no
        inherited preload (`pomar serve` arranges OpenBLAS itself), then `env`'s changes.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "server", "serve", "--model", self.model]
        cmd += ["--backend", self.backend, "--port", str(self.port)]
        env: dict[str, str | None] = {**os.environ, "LD_PRELOAD": None, _OPENBLAS_MARKER: None}
        env.update(HF_HUB_OFFLINE="1", MLX_DISABLE_COMPILE="1", POMAR_HOME=str(self.home))
        env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env.update(self.env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in env.items() if v is not None},
            )
        try:
            healthy = wait_healthy(f"{self.base_url}/health", self.process, timeout, 0.25)
        except ServerExited:
            raise RuntimeError(f"server exited early:\n{self.log()}") from None
        if healthy is None:
            self.stop()
            raise RuntimeError(f"server did not become healthy:\n{self.log()}")
        return self

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None:
            stop_process(self.process)
