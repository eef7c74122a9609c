"""`pomar doctor --hosts`: reachability, the install, versions and the model's files per host.

There is no ssh server here, so a remote host is faked by an `ssh` script that runs the
command on this machine: it refuses the hosts named in FAKE_SSH_DOWN (ssh's status 255)
and, to give the fake host a file system of its own, rewrites the paths of FAKE_SSH_SUBST
(`old=>new;...`) in the command, so that the "remote" model folder is a copy elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from live_server import run_pomar

from server.doctor_hosts import check_hosts, compare
from server.host_probe import CHUNK, file_hash
from server.jobs.launch import Host, parse_hosts

FAKE_SSH = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
while args and args[0] == "-o":
    args = args[2:]
host, command = args[0], " ".join(args[1:])
if host in os.environ.get("FAKE_SSH_DOWN", "").split(","):
    print(f"ssh: connect to host {{host}} port 22: Connection refused", file=sys.stderr)
    raise SystemExit(255)
for pair in filter(None, os.environ.get("FAKE_SSH_SUBST", "").split(";")):
    old, new = pair.split("=>")
    command = command.replace(old, new)
os.execv("/bin/sh", ["sh", "-c", command])
"""


@pytest.fixture
def fake_ssh(tmp_path: Path) -> Path:
    """A folder holding the fake `ssh` (put it first on PATH, or call it by path)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "ssh").write_text(FAKE_SSH)
    (folder / "ssh").chmod(0o755)
    return folder


def findings(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {f["check"]: f for f in report["findings"]}  # type: ignore[attr-defined]


def test_this_machine_passes_and_the_spec_defaults_to_the_setting(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    done = run_pomar(
        ["doctor", "--hosts", "--model", str(tiny_model_path), "--json"],
        tmp_path / "home",
        env={"POMAR_TRAIN_HOSTS": "127.0.0.1:2", "POMAR_HOSTS": None},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    (report,) = json.loads(done.stdout)
    assert report["host"] == "127.0.0.1" and report["local"] and report["ok"]
    checks = findings(report)
    assert list(checks) == ["reachable", "install", "versions", "model"]
    assert "server.jobs.trainchild" in str(checks["install"]["detail"])
    assert "5 files, same sha256" in str(checks["model"]["detail"])


def test_no_hosts_given_or_set_is_a_usage_error(tmp_path: Path) -> None:
    done = run_pomar(
        ["doctor", "--hosts"],
        tmp_path / "home",
        env={"POMAR_TRAIN_HOSTS": None, "POMAR_HOSTS": None},
    )
    assert done.returncode == 2
    assert "POMAR_TRAIN_HOSTS" in done.stderr


def test_a_changed_model_file_on_a_host_is_a_mismatch(
    tiny_model_path: Path, tmp_path: Path, fake_ssh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    there = tmp_path / "mac2-disk" / "tiny-llama"
    shutil.copytree(tiny_model_path, there)
    config = json.loads((there / "config.json").read_text())
    (there / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    (there / "tokenizer.json").unlink()
    (there / "pomar-model.json").write_text("{}")  # pomar's bookkeeping is not compared
    monkeypatch.setenv("FAKE_SSH_SUBST", f"{tiny_model_path}=>{there}")
    hosts = parse_hosts("127.0.0.1:1,mac2:1")
    local, remote = check_hosts(hosts, tiny_model_path, ["mlx"], ssh=[str(fake_ssh / "ssh")])
    assert local.ok
    assert not remote.ok and not remote.local
    checks = {f.check: f for f in remote.findings}
    assert checks["reachable"].ok and checks["install"].ok and checks["versions"].ok
    model = checks["model"]
    assert not model.ok
    assert "differ: config.json" in model.detail
    assert "missing there: tokenizer.json" in model.detail
    assert f"rsync -a {tiny_model_path}/ mac2:{tiny_model_path}/" in model.detail


def test_a_host_without_the_install_or_the_model(
    tiny_model_path: Path, tmp_path: Path, fake_ssh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SSH_SUBST", f"{sys.executable}=>{tmp_path}/nothing/python")
    (remote,) = check_hosts([Host("mac3")], tiny_model_path, ["torch"], ssh=[str(fake_ssh / "ssh")])
    assert [(f.check, f.ok) for f in remote.findings] == [("reachable", True), ("install", False)]
    assert f"no python at {sys.executable}" in remote.findings[1].detail
    monkeypatch.setenv("FAKE_SSH_SUBST", f"{tiny_model_path}=>{tmp_path}/nothing")
    (remote,) = check_hosts([Host("mac3")], tiny_model_path, ["torch"], ssh=[str(fake_ssh / "ssh")])
    checks = {f.check: f for f in remote.findings}
    assert "torch.distributed" in checks["install"].detail and checks["install"].ok
    assert not checks["model"].ok and f"no {tiny_model_path} there" in checks["model"].detail


def test_an_unreachable_host_fails_the_command(
    tiny_model_path: Path, tmp_path: Path, fake_ssh: Path
) -> None:
    env = {"PATH": f"{fake_ssh}{os.pathsep}{os.environ['PATH']}", "FAKE_SSH_DOWN": "mac2"}
    args = ["doctor", "--hosts", "127.0.0.1:1,mac2:1,localhost:1", "--model", str(tiny_model_path)]
    done = run_pomar([*args, "--json"], tmp_path / "home", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    local, remote = json.loads(done.stdout)  # localhost is this machine again: one check
    assert local["ok"] and not remote["ok"]
    assert remote["findings"] == [
        {
            "check": "reachable",
            "ok": False,
            "detail": "ssh failed: ssh: connect to host mac2 port 22: Connection refused. "
            "Set up passwordless ssh as this user (ssh-copy-id mac2); "
            "`ssh -o BatchMode=yes mac2 true` must work.",
        }
    ]
    table = run_pomar(args, tmp_path / "home", env=env)
    assert table.returncode == 1
    assert "PROBLEM" in table.stdout and table.stdout.rstrip().endswith("problems on: mac2")


def test_versions_that_differ_are_named() -> None:
    mine = {"imports": {"torch": None}, "versions": {"torch": "2.5.0", "peft": "0.13"}}
    theirs = {**mine, "python": "/p", "versions": {"torch": "2.4.1", "peft": "0.13"}}
    (_, versions, _) = compare(Host("mac2"), mine, theirs, "/m")
    assert not versions.ok
    assert versions.detail.startswith("torch 2.5.0 here, 2.4.1 there.")


def test_big_files_are_hashed_by_samples(tmp_path: Path) -> None:
    big = tmp_path / "model.safetensors"
    data = bytearray(os.urandom(20 * CHUNK))
    big.write_bytes(data)
    sampled = file_hash(big, full=False)
    assert sampled.startswith("sampled:")
    assert file_hash(big, full=True) == hashlib.sha256(data).hexdigest()
    data[-1] ^= 1  # the last MiB is always read
    big.write_bytes(data)
    assert file_hash(big, full=False) != sampled
    big.write_bytes(data + b"x")  # so is the size
    assert file_hash(big, full=False) != sampled
