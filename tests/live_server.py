"""Start a real `pomar serve` process on a free port, as a user would, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

API_KEY = "test-key-123"


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux: /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment(home: Path) -> dict[str, str]:
    """Environment for a server under test: offline, no cold MLX compile, its own home."""
    env = dict(os.environ)
    # let `pomar serve` arrange OpenBLAS itself (the re-exec path users get)
    env.pop("LD_PRELOAD", None)
    env.pop("POMAR_OPENBLAS", None)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "MLX_DISABLE_COMPILE": "1",
            "POMAR_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def run_pomar(
    args: list[str],
    home: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the `pomar` command (`python -m server ARGS`) as a user would, on `home`.

    `env` changes the test environment (`server_environment`); None removes a variable.
    """
    full: dict[str, str | None] = {**server_environment(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env={k: v for k, v in full.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class LiveServer:
    """A `python -m server serve` subprocess."""

    model: str
    backend: str
    home: Path
    api_key: str | None = None
    extra_args: list[str] = field(default_factory=list)
    #: environment changes on top of server_environment(); None removes a variable
    env: dict[str, str | None] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    #: the `pomar` command to run (another venv's `bin/pomar`, say)
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "server"])
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> LiveServer:
        """Start and wait until `/health` answers 200."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / f"server-{self.port}.log"
        cmd = [*self.command, "serve", "--model", self.model]
        cmd += ["--backend", self.backend, "--port", str(self.port), *self.extra_args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        log = self.log_path.open("wb")
        env = server_environment(self.home)
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client_for(server: LiveServer) -> openai.OpenAI:
    """The official SDK pointed at a live server."""
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=server.api_key or "unused", max_retries=0
    )


def async_client_for(server: LiveServer) -> openai.AsyncOpenAI:
    """The official async SDK pointed at a live server."""
    return openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key=server.api_key or "unused", max_retries=0
    )
