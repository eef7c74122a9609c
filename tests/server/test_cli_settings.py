"""Settings from environment variables and CLI flags; the OpenBLAS re-exec rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import build_parser, setting_env, setting_flag, settings_from_args
from server.engine.mlx import openblas
from server.settings import Settings
from tests.live_server import run_pomar


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "MODEL", "BACKEND", "HOME", "API_KEY", "LOG_LEVEL"):
        monkeypatch.delenv(f"POMAR_{name}", raising=False)
    s = Settings()
    assert (s.host, s.port, s.model, s.backend) == (
        "127.0.0.1",
        8000,
        "smollm2-135m-instruct",
        "auto",
    )
    assert s.home == Path("~/.pomar").expanduser() and s.api_key is None


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POMAR_PORT", "9001")
    monkeypatch.setenv("POMAR_BACKEND", "torch")
    monkeypatch.setenv("POMAR_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "--port", "9100", "--home", str(tmp_path)])
    s = settings_from_args(args)
    assert s.port == 9100 and s.backend == "torch" and s.home == tmp_path
    assert s.api_key is not None and s.api_key.get_secret_value() == "from-env"


def test_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POMAR_BACKEND", "cuda-magic")
    with pytest.raises(ValueError):
        Settings()


def test_openblas_preload_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    monkeypatch.setattr(openblas, "find_openblas", lambda: lib)
    monkeypatch.setattr(openblas.sys, "platform", "linux")
    env = openblas.preload_environment({"PATH": "/bin"})
    assert env is not None and env["LD_PRELOAD"] == str(lib) and env[openblas.MARKER] == str(lib)
    # once re-executed (marker set), or already preloaded, or opted out: no second re-exec
    assert openblas.preload_environment(env) is None
    assert openblas.preload_environment({"LD_PRELOAD": "/x/libopenblas.so"}) is None
    assert openblas.preload_environment({"POMAR_NO_OPENBLAS": "1"}) is None
    assert "OpenBLAS preloaded" in openblas.status(env)
    monkeypatch.setattr(openblas, "find_openblas", lambda: None)
    assert openblas.preload_environment({}) is None


def test_unreachable_hub_id_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from server.errors import ModelLoadError
    from server.models.loading import resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="pass a local folder"):
        resolve_model_path("nobody-here/no-such-model", tmp_path)
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub repo id"):
        resolve_model_path("not/a/repo/id", tmp_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path / "folder"), tmp_path)


def test_every_setting_has_its_flag_and_its_readme_row() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("POMAR_"):
            rows[cells[1]] = cells[0]
    fields = Settings.model_fields
    assert set(rows) >= {setting_env(n) for n in fields}, "a setting is missing in README"
    for name in fields:
        assert rows[setting_env(name)] == setting_flag(name)
    args = build_parser().parse_args(["serve", *[f for n in fields for f in _flag_value(n)]])
    assert {n for n in fields if getattr(args, n) is not None} == set(fields)


def _flag_value(name: str) -> list[str]:
    values = {"backend": "gguf", "keep_alive": "5m", "max_memory": "1GB", "reasoning_field": "both"}
    values["speculative"] = "ngram"
    values["draft_model"] = "small"
    return [setting_flag(name), values.get(name, "1")]


def test_a_bad_flag_value_is_one_line(tmp_path: Path) -> None:
    done = run_pomar(["serve", "--port", "eighty"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "pomar: --port / POMAR_PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
