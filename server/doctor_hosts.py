"""`pomar doctor --hosts`: can every host of a multi-host job or server run its ranks?

The launchers (server/jobs/launch.py, server/serve_hosts.py) start `<this python> -m ...`
on every host, in this folder, over ssh, and each rank loads the base model from this
machine's path. For each distinct host this runs :mod:`server.host_probe` with that python
(`ssh -o BatchMode=yes -o ConnectTimeout=5 HOST 'cd CWD; PYTHON - ARGS'`, the program on
stdin; the same command under `sh -c` for this machine) and compares what it reports with
this machine's: reachable, the install imports, versions, the model's files by hash.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server import host_probe
from server.jobs.launch import Host, HostsError, parse_hosts
from server.settings import Settings

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=5")
#: a shell's status for a command it cannot find (here: the python)
NOT_FOUND = 127
#: ssh's own status when it cannot connect or authenticate
SSH_FAILED = 255


@dataclass
class Finding:
    """One check on one host: ok, or the problem in words and what to do about it."""

    check: str
    ok: bool
    detail: str


@dataclass
class HostReport:
    """Every check of one host."""

    host: str
    local: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the host passed every check."""
        return all(f.ok for f in self.findings)


def distinct_hosts(specs: Sequence[str]) -> list[Host]:
    """The hosts of every spec, each machine once (every local name is this machine)."""
    seen: dict[str, Host] = {}
    for spec in specs:
        for host in parse_hosts(spec):
            seen.setdefault("" if host.is_local else host.name, host)
    return list(seen.values())


def probe_command(args: dict[str, Any], python: str = sys.executable, cwd: str = "") -> str:
    """The shell command that runs the probe (source on stdin) where a launcher runs a rank."""
    cwd = cwd or str(Path.cwd())
    # mlx.launch's `cd DIR;` (torchrun's is `cd DIR &&`): the ranks start in this folder
    quoted = shlex.quote(json.dumps(args))
    return f"cd {shlex.quote(cwd)} 2>/dev/null; {shlex.quote(python)} - {quoted}"


def run_probe(
    host: Host, args: dict[str, Any], ssh: Sequence[str] = ("ssh",), timeout: float = 300
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Run the probe on `host`: its report (None when it did not run) and the findings
    that say whether the host was reached and the program ran."""
    command = probe_command(args)
    argv = ["sh", "-c", command] if host.is_local else [*ssh, *SSH_OPTIONS, host.name, command]
    source = Path(host_probe.__file__).read_text(encoding="utf-8")
    try:
        done = subprocess.run(argv, input=source, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, [Finding("reachable", False, f"no answer within {timeout:.0f} s")]
    except OSError as exc:
        return None, [Finding("reachable", False, f"cannot run {argv[0]}: {exc}")]
    said = (done.stderr.strip().splitlines() or ["nothing on stderr"])[-1]
    if not host.is_local and done.returncode == SSH_FAILED:
        why = (
            f"ssh failed: {said}. Set up passwordless ssh as this user (ssh-copy-id "
            f"{host.name}); `ssh -o BatchMode=yes {host.name} true` must work."
        )
        return None, [Finding("reachable", False, why)]
    reached = Finding("reachable", True, "this machine" if host.is_local else "ssh ok")
    if done.returncode == NOT_FOUND:
        return None, [reached, _install_problem(host, f"no python at {sys.executable}")]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), [reached]
    except (ValueError, IndexError):
        return None, [reached, _install_problem(host, f"the check program failed ({said})")]


def _install_problem(host: Host, what: str) -> Finding:
    folder = Path(__file__).resolve().parents[1]
    return Finding(
        "install",
        False,
        f"{what}. The launchers run `{sys.executable} -m server.jobs.trainchild` on every "
        f"host: clone pomar into {folder} on {host.name} and run ./scripts/serve once there.",
    )


def compare(host: Host, mine: dict[str, Any], theirs: dict[str, Any], model: str) -> list[Finding]:
    """The install, versions and model findings of a host's report against this machine's
    (`model`: the model's path here, or why there is none)."""
    broken = {name: err for name, err in theirs["imports"].items() if err}
    findings = [
        _install_problem(host, "; ".join(f"cannot import {n}: {e}" for n, e in broken.items()))
        if broken
        else Finding("install", True, f"{theirs['python']} imports {', '.join(theirs['imports'])}")
    ]
    differ = [
        f"{name} {mine['versions'].get(name) or 'missing'} here, {there or 'missing'} there"
        for name, there in theirs["versions"].items()
        if there != mine["versions"].get(name)
    ]
    shown = ", ".join(f"{k} {v}" for k, v in theirs["versions"].items() if v)
    findings.append(
        Finding(
            "versions",
            False,
            "; ".join(differ) + ". Install the same versions there (the same pomar commit, "
            "then ./scripts/setup.sh).",
        )
        if differ
        else Finding("versions", True, shown)
    )
    findings.append(_compare_model(host, mine.get("model"), theirs.get("model"), model))
    return findings


def _compare_model(
    host: Host, mine: dict[str, Any] | None, theirs: dict[str, Any] | None, path: str
) -> Finding:
    if mine is None or theirs is None:
        return Finding("model", False, f"not checked: {path}")
    if "error" in mine:
        return Finding("model", False, f"{path} is missing on this machine")
    copy = f"rsync -a {{delete}}{path}/ {host.name}:{path}/"
    if "error" in theirs:
        return Finding("model", False, f"no {path} there. Copy it: {copy.format(delete='')}")
    here, there = mine["files"], theirs["files"]
    missing = sorted(set(here) - set(there))
    extra = sorted(set(there) - set(here))
    changed = sorted(n for n in set(here) & set(there) if here[n] != there[n])
    if not (missing or extra or changed):
        sampled = any(h.startswith("sampled:") for h in here.values())
        how = "size and sampled sha256" if sampled else "sha256"
        return Finding("model", True, f"{path}: {len(here)} files, same {how}")
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("differ", changed),
            ("missing there", missing),
            ("extra there", extra),
        )
        if names
    ]
    todo = copy.format(delete="--delete " if extra else "")
    return Finding("model", False, f"{path}: {'; '.join(parts)}. Copy it again: {todo}")


def check_hosts(
    hosts: Sequence[Host],
    model: Path | None,
    engines: Sequence[str],
    *,
    model_error: str = "",
    full_hash: bool = False,
    ssh: Sequence[str] = ("ssh",),
) -> list[HostReport]:
    """Probe this machine and every host at once; each host's findings against this machine.

    `model` None: the model could not be resolved here (`model_error` says why)."""
    args = {
        "model": str(model) if model else None,
        "engines": list(engines),
        "full_hash": full_hash,
    }
    shown = str(model) if model else (model_error or "no model")
    timeout = 3600 if full_hash else 300
    remote = [h for h in hosts if not h.is_local]
    with ThreadPoolExecutor(max_workers=min(8, len(remote) + 1)) as pool:
        futures = [
            pool.submit(run_probe, h, args, ssh, timeout) for h in [Host("127.0.0.1"), *remote]
        ]
        (mine, mine_ran), *others = [f.result() for f in futures]
    reports: list[HostReport] = []
    probed = iter(others)
    for host in hosts:
        theirs, ran = (mine, mine_ran) if host.is_local else next(probed)
        report = HostReport(host.name, host.is_local, list(ran))
        if mine is None and theirs is not None:
            why = "; ".join(f.detail for f in mine_ran if not f.ok)
            report.findings.append(Finding("install", False, f"not compared: here, {why}"))
        elif theirs is not None and mine is not None:
            report.findings.extend(compare(host, mine, theirs, shown))
        reports.append(report)
    return reports


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`pomar doctor --hosts [SPEC]`: print a table (or JSON); 0 only if every host passes."""
    from server.doctor import _model_path

    specs = [args.hosts] if args.hosts else [s for s in (settings.train_hosts, settings.hosts) if s]
    try:
        hosts = distinct_hosts(specs)
    except HostsError as exc:
        print(f"pomar doctor: {exc}", file=sys.stderr)
        return 2
    if not hosts:
        print(
            "pomar doctor: give --hosts SPEC or set POMAR_TRAIN_HOSTS or POMAR_HOSTS",
            file=sys.stderr,
        )
        return 2
    path, error = _model_path(settings)
    engines = _engines(settings, path, serving=not args.hosts and bool(settings.hosts))
    reports = check_hosts(hosts, path, engines, model_error=error or "", full_hash=args.full_hash)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2))
    else:
        _print(reports, settings.model)
    return 0 if all(r.ok for r in reports) else 1


def _engines(settings: Settings, path: Path | None, *, serving: bool) -> list[str]:
    """The engines a rank imports: the model's trainer, and MLX for a sharded server."""
    from server.errors import ModelLoadError
    from server.models.loading import backend_for, training_backend
    from server.models.options import read_options

    engines = {"mlx"} if serving else set()
    try:
        if path is not None:
            requested = read_options(path).backend or settings.backend
            engines.add(training_backend(backend_for(requested, path)))
    except ModelLoadError:
        pass  # the model finding says what is wrong with it
    return sorted(engines & {"mlx", "torch"})


def _print(reports: list[HostReport], model: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pomar doctor --hosts (model {model})", title_justify="left")
    for column in ("host", "check", "result"):
        table.add_column(column, overflow="fold")
    for report in reports:
        name = f"{report.host} (this machine)" if report.local else report.host
        for i, finding in enumerate(report.findings):
            state = "ok" if finding.ok else "[bold red]PROBLEM[/]"
            table.add_row(name if i == 0 else "", finding.check, f"{state}: {finding.detail}")
        table.add_section()
    Console().print(table)
    bad = [r.host for r in reports if not r.ok]
    print("every host passed" if not bad else f"problems on: {', '.join(bad)}")
