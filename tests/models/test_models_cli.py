"""`pomar models` as users run it: a subprocess per command, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from live_server import run_pomar

API_KEY = "sk-models-cli-test"


def pomar(
    home: Path, *args: str, port: int = 9, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `pomar models ARGS` with POMAR_HOME=home (port 9: no server answers there).

    `env` adds variables to the subprocess's environment; None removes one.
    """
    changes: dict[str, str | None] = {
        "POMAR_API_KEY": None,
        "POMAR_PORT": str(port),
        "COLUMNS": "200",
        **(env or {}),
    }
    return run_pomar(["models", *args], home, env=changes)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command: exit 1, a single `error:` line, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def listed(home: Path, port: int = 9) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(pomar(home, "list", "--json", port=port)))
    return rows


def test_import_list_info_rm(tmp_path: Path, tiny_model_path: Path, tiny_gguf_path: Path) -> None:
    home = tmp_path / "home"
    out = ok(pomar(home, "import", str(tiny_model_path)))
    assert out.startswith("imported tiny-llama (hf, fp32, ")
    ok(pomar(home, "import", str(tiny_gguf_path), "--id", "tiny/gguf:f32"))

    rows = {r["id"]: r for r in listed(home)}
    assert set(rows) == {"tiny-llama", "tiny/gguf:f32"}
    assert (rows["tiny-llama"]["format"], rows["tiny-llama"]["precision"]) == ("hf", "fp32")
    assert (rows["tiny/gguf:f32"]["format"], rows["tiny/gguf:f32"]["precision"]) == ("gguf", "F32")
    assert rows["tiny/gguf:f32"]["size_bytes"] >= tiny_gguf_path.stat().st_size
    assert all(r["source"] == "imported" and r["loaded"] is None for r in rows.values())

    table = ok(pomar(home, "list"))
    assert "tiny/gguf:f32" in table and "F32" in table and "no server at" in table

    info = json.loads(ok(pomar(home, "info", "tiny/gguf:f32", "--json")))
    hf_info = json.loads(ok(pomar(home, "info", "tiny-llama", "--json")))
    assert info["parameters"] == hf_info["parameters"] > 100_000
    fp32 = next(m for m in hf_info["memory"] if m["precision"] == "fp32")
    assert fp32["weights_bytes"] == pytest.approx(
        (tiny_model_path / "model.safetensors").stat().st_size, rel=0.01
    )

    tight = ok(pomar(home, "info", "tiny-llama", "--budget", "1KB"))
    assert "does not fit" in tight and "LlamaForCausalLM" in tight
    assert "fits" not in tight.replace("does not fit", "")
    roomy = ok(pomar(home, "info", "tiny-llama", "--budget", "1GiB"))
    assert "does not fit" not in roomy and "fits" in roomy

    out = ok(pomar(home, "rm", "tiny/gguf:f32"))
    assert out.startswith("removed tiny/gguf:f32 (gguf, ")
    assert [r["id"] for r in listed(home)] == ["tiny-llama"]
    ok(pomar(home, "rm", "tiny-llama"))
    assert listed(home) == []
    assert list((home / "models").iterdir()) == []


def test_errors_are_one_line(tmp_path: Path, tiny_model_path: Path) -> None:
    home = tmp_path / "home"
    ok(pomar(home, "import", str(tiny_model_path)))
    assert "already in the store" in one_line_error(pomar(home, "import", str(tiny_model_path)))
    bad_id = one_line_error(pomar(home, "import", str(tiny_model_path), "--id", "../up"))
    assert "not a valid model id" in bad_id
    missing = one_line_error(pomar(home, "import", str(tmp_path / "nowhere")))
    assert "does not exist" in missing
    assert "no model 'nope'" in one_line_error(pomar(home, "rm", "nope"))
    assert "no model 'nope'" in one_line_error(pomar(home, "info", "nope"))
    assert "not a size" in one_line_error(pomar(home, "info", "tiny-llama", "--budget", "lots"))
    assert [r["id"] for r in listed(home)] == ["tiny-llama"]


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},
        # online mode, but the hub's address refuses connections: fails fast
        {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},
    ],
    ids=["offline", "unreachable"],
)
def test_pull_without_network_fails_clearly(tmp_path: Path, env: dict[str, str | None]) -> None:
    home = tmp_path / "home"
    error = one_line_error(pomar(home, "pull", "HuggingFaceTB/SmolLM2-135M-Instruct", env=env))
    assert "could not reach the Hugging Face hub to pull HuggingFaceTB/SmolLM2-135M-Instruct" in (
        error
    )
    assert "pomar models import PATH" in error
    if env.get("HF_HUB_OFFLINE"):
        assert "HF_HUB_OFFLINE" in error
    assert listed(home) == []
    assert list((home / "models").iterdir()) == []


class _FakeServer(BaseHTTPRequestHandler):
    """`/v1/models` of a running pomar: cards with the `loaded` extension field."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.send_response(401)
            self.end_headers()
            return
        cards = [
            {"id": "tiny-llama", "object": "model", "loaded": True},
            {"id": "tiny-gguf", "object": "model", "loaded": False},
        ]
        body = json.dumps({"object": "list", "data": cards}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_list_asks_the_running_server_what_is_loaded(
    tmp_path: Path, tiny_model_path: Path, tiny_gguf_path: Path, fake_server: int
) -> None:
    home = tmp_path / "home"
    ok(pomar(home, "import", str(tiny_model_path)))
    ok(pomar(home, "import", str(tiny_gguf_path), "--id", "tiny-gguf"))
    key = {"POMAR_API_KEY": API_KEY}
    result = pomar(home, "list", "--json", port=fake_server, env=key)
    rows = {r["id"]: r["loaded"] for r in json.loads(ok(result))}
    assert rows == {"tiny-llama": True, "tiny-gguf": False}
    table = ok(pomar(home, "list", port=fake_server, env=key))
    assert "yes" in table and "no server" not in table
    refused = ok(pomar(home, "list", port=fake_server))
    assert "wants an API key" in refused


@pytest.mark.slow
def test_info_embedded_model(pomar_home: Path, embedded_model_path: Path) -> None:
    info = json.loads(ok(pomar(pomar_home, "info", "smollm2-135m-instruct", "--json")))
    assert info["parameters"] == pytest.approx(135e6, rel=0.01)
    assert (info["context_length"], info["chat_template"]) == (8192, True)
    bf16 = (embedded_model_path / "model.safetensors").stat().st_size
    figures = {m["precision"]: m["weights_bytes"] for m in info["memory"]}
    assert figures["fp16"] == pytest.approx(bf16, rel=0.001)
    assert figures["fp32"] == pytest.approx(2 * bf16, rel=0.001)
    rows = {r["id"]: r for r in listed(pomar_home)}
    assert rows["smollm2-135m-instruct"]["source"] == "embedded"
