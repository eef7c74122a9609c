"""A runtime-only install runs every documented CLI command.

`./scripts/serve` installs pomar without the dev extras; the suite runs with them. So a
runtime dependency that only a dev extra brings (httpx was one) passes every other test
and fails a new user. This test makes the install `./scripts/serve` makes, in a venv of
its own (scripts/setup.sh with POMAR_VENV), and runs the README's commands with it on a
fresh home, against a running server: each exits 0 and prints no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import LiveServer, server_environment
from tests.server.finetune_data import write_training_file

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv made by scripts/setup.sh as `./scripts/serve` makes it (no extras)."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("POMAR_EXTRAS", "VIRTUAL_ENV")}
    env["POMAR_VENV"] = str(venv)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-home")


def pomar(
    venv: Path, home: Path, *args: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the runtime venv's `pomar` on `home`; assert it exits 0 without a traceback."""
    env = server_environment(home)
    env.pop("PYTHONPATH", None)
    if port is not None:
        env["POMAR_PORT"] = str(port)
    done = subprocess.run(
        [str(venv / "bin" / "pomar"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
    )
    both = done.stdout + done.stderr
    assert done.returncode == 0, f"pomar {' '.join(args)} exited {done.returncode}:\n{both}"
    assert "Traceback" not in both, both
    return done


@pytest.fixture(scope="module")
def server(runtime_venv: Path, home: Path) -> Iterator[LiveServer]:
    """The runtime venv's server on the embedded model, on the default port's settings."""
    live = LiveServer(
        model=EMBEDDED, backend="auto", home=home, command=[str(runtime_venv / "bin" / "pomar")]
    ).start()
    try:
        yield live
    finally:
        live.stop()


def test_the_runtime_install_has_no_dev_extras(runtime_venv: Path) -> None:
    done = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-c", "import pytest"], capture_output=True
    )
    assert done.returncode != 0


def test_models_info_on_a_new_home_imports_the_embedded_model(
    runtime_venv: Path, home: Path
) -> None:
    # before any server ran on this home: the README's own example
    out = pomar(runtime_venv, home, "models", "info", EMBEDDED, "--json")
    info = json.loads(out.stdout)
    assert info["id"] == EMBEDDED and info["parameters"] > 100_000_000


def test_documented_commands_against_a_running_server(
    runtime_venv: Path, home: Path, server: LiveServer, tiny_gguf_path: Path, tmp_path: Path
) -> None:
    listed = pomar(runtime_venv, home, "models", "list", "--json", port=server.port)
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[EMBEDDED]["loaded"] is True  # asked of the running server
    pomar(runtime_venv, home, "models", "import", str(tiny_gguf_path), "--id", "tiny-gguf")
    assert "tiny-gguf" in pomar(runtime_venv, home, "models", "list").stdout
    pomar(runtime_venv, home, "models", "info", "tiny-gguf")
    pomar(runtime_venv, home, "models", "rm", "tiny-gguf")
    data = write_training_file(tmp_path / "train.jsonl", n=12)
    check = pomar(runtime_venv, home, "data", "check", str(data), "--model", EMBEDDED)
    assert "12" in check.stdout
    for sub in ("tune", "bench", "serve", "models", "data"):
        pomar(runtime_venv, home, sub, "--help")
    doctor = pomar(runtime_venv, home, "doctor", "--json")
    report = json.loads(doctor.stdout)
    assert report["engines"]["gguf"]["portable"] is True
    assert report["self_checks"]["gguf"]["state"] == "passed"
    assert "pomar doctor" in pomar(runtime_venv, home, "doctor").stdout
