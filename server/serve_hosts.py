"""`pomar serve --hosts`: one MLX model sharded across machines, rank 0 serving HTTP.

`pomar serve --hosts SPEC ...` checks that the model can be sharded over the hosts' slots
(`server.engine.mlx.sharded.check`, no weights read), then starts the same command once
per slot through `mlx.launch --backend ring` (ssh for the other machines). Each rank
loads its shard; rank 0, on this machine, serves the API with a `ShardedEngine`, the
others follow its forward passes (`server.engine.mlx.lockstep.follow`) and serve nothing.

SPEC is `host:slots,host:slots` (slots default to 1; `127.0.0.1:2` is two ranks here)
or the path of a JSON hostfile in `mlx.launch`'s format (`{"hosts": [{"ssh": "mac2",
"ips": ["10.0.0.2"]}, ...]}`, one entry per rank). The first host must be this machine.

Stopping: SIGTERM or Ctrl-C here asks rank 0 to stop (it finishes, tells the followers
to exit, and exits); a rank that dies makes `mlx.launch` stop the others.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.mlx.doorbell import DOORBELL_ENV, Doorbell
from server.errors import ModelLoadError
from server.jobs.launch import mlx_launch_argv
from server.settings import Settings

log = logging.getLogger("pomar")

#: where rank 0 writes its pid, so that this launcher can stop it first
PIDFILE_ENV = "POMAR_RANK0_PIDFILE"
#: environment of this process handed to every rank (remote ones inherit nothing)
_FORWARDED = ("POMAR_", "HF_", "MLX_", "TOKENIZERS_", "PYTHON", "OMP_", "OPENBLAS_")
_NOT_FORWARDED = ("MLX_RANK", "MLX_HOSTFILE", "LD_PRELOAD", "POMAR_OPENBLAS", PIDFILE_ENV)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class HostsError(ValueError):
    """`--hosts` cannot be used as given; the message says why."""


@dataclass(frozen=True)
class Rank:
    """One slot: `ssh` is how mlx.launch reaches it ("127.0.0.1": started here, no ssh),
    `ip` the address the ring backend connects to."""

    ssh: str
    ip: str


def serve_across_hosts(settings: Settings, argv: list[str]) -> int:
    """`pomar serve` with `--hosts`: launch the ranks, or be one of them (under mlx.launch)."""
    if "MLX_RANK" in os.environ:
        return _run_rank(settings)
    try:
        if settings.backend not in ("auto", "mlx"):
            raise HostsError(f"--hosts serves with MLX only, not --backend {settings.backend}")
        ranks, envs = parse_hosts(settings.hosts or "")
        path = _model_folder(settings)
        from server.engine.mlx.sharded import ShardingError, check

        try:
            plan = check(path, len(ranks))
        except ShardingError as exc:
            raise HostsError(str(exc)) from exc
    except (HostsError, ModelLoadError) as exc:
        print(f"pomar: {exc}", file=sys.stderr)
        return 1
    log.info("serving %s across %d rank(s): %s", path.name, len(ranks), plan.describe())
    if len(ranks) == 1:
        return _run_rank(settings)  # nothing to launch: this process is the only rank
    return _launch(ranks, envs, argv)


def parse_hosts(spec: str) -> tuple[list[Rank], list[str]]:
    """The ranks of a `--hosts` value, in rank order, and the hostfile's `envs`."""
    spec = spec.strip()
    envs: list[str] = []
    entries: list[tuple[str, str]] = []  # (name, ip or "")
    if spec.endswith(".json"):
        try:
            data = json.loads(Path(spec).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HostsError(f"--hosts: cannot read the hostfile {spec}: {exc}") from exc
        hosts = data.get("hosts", []) if isinstance(data, dict) else data
        envs = [str(e) for e in data.get("envs", [])] if isinstance(data, dict) else []
        for host in hosts if isinstance(hosts, list) else []:
            if not isinstance(host, dict) or not host.get("ssh"):
                raise HostsError(f"--hosts: every host of {spec} needs an 'ssh' name")
            entries.append((str(host["ssh"]), str((host.get("ips") or [""])[0])))
    else:
        for item in spec.split(","):
            name, _, slots = item.strip().partition(":")
            if not name or not (slots or "1").isdigit() or int(slots or "1") < 1:
                raise HostsError(f"--hosts: {item.strip()!r} is not host or host:slots")
            entries += [(name, "")] * int(slots or "1")
    if not entries:
        raise HostsError("--hosts names no host")
    ranks = [_rank(name, ip) for name, ip in entries]
    if ranks[0].ssh != "127.0.0.1":
        raise HostsError(
            f"--hosts: the first host must be this machine, not {entries[0][0]!r}: "
            "rank 0 serves the API here"
        )
    loopback = {r.ip.startswith("127.") for r in ranks}
    if len(loopback) > 1:
        raise HostsError(
            "--hosts mixes 127.0.0.1 with other machines: name this machine by the address "
            "the others reach it at"
        )
    return ranks, envs


def _rank(name: str, ip: str) -> Rank:
    if not ip:
        try:
            ip = socket.gethostbyname(name)
        except OSError as exc:
            raise HostsError(f"--hosts: cannot resolve {name!r}: {exc}") from exc
    local = name in _LOOPBACK or ip.startswith("127.") or _is_own_address(ip)
    return Rank("127.0.0.1" if local else name, ip)


def _is_own_address(ip: str) -> bool:
    """Whether `ip` is an address of this machine (only those can be bound)."""
    try:
        with socket.socket() as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def _model_folder(settings: Settings) -> Path:
    from server.models.loading import resolve_model_path

    path = resolve_model_path(settings.model, settings.models_dir)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"--hosts shards a Hugging Face or MLX folder of safetensors weights; {path} is not one"
        )
    return path


def _launch(ranks: list[Rank], envs: list[str], argv: list[str]) -> int:
    """Run every rank through mlx.launch; stop rank 0 first when asked to stop."""
    with tempfile.TemporaryDirectory(prefix="pomar-hosts-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hosts = [{"ssh": r.ssh, "ips": [r.ip]} for r in ranks]
        hostfile.write_text(json.dumps({"backend": "ring", "envs": envs, "hosts": hosts}))
        pidfile = Path(tmp) / "rank0.pid"
        ring = _free_port()  # the ring takes this port and the next ones, one per rank
        bell = _free_port()
        while ring <= bell < ring + len(ranks):
            bell = _free_port()
        rank_env = {**_rank_env(ranks), DOORBELL_ENV: f"{ranks[0].ip}:{bell}"}
        command = [
            *mlx_launch_argv(hostfile, ring, rank_env),
            "--cwd",
            os.getcwd(),
            "--",
            sys.executable,
            "-m",
            "server",
            *argv,
        ]
        env = {**os.environ, PIDFILE_ENV: str(pidfile)}
        # its own session: a Ctrl-C reaches this process only, which stops rank 0 first;
        # stdin a pipe that stays open and silent (at end of file its select would spin)
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, start_new_session=True)
        stop = _Stopper(process, pidfile)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)
        process.wait()
        stop.wait_group()
        try:  # rank 0's own exit status (mlx.launch's is 0 whatever its ranks did)
            return int(Path(f"{pidfile}.exit").read_text())
        except (OSError, ValueError):
            return 1


class _Stopper:
    """Signal handler: SIGTERM to rank 0 (it ends the followers), then to everything left."""

    def __init__(self, process: subprocess.Popen[bytes], pidfile: Path) -> None:
        self.process = process
        self.pidfile = pidfile
        self.asked = 0.0

    def __call__(self, _signum: int, _frame: Any) -> None:
        if self.asked:  # asked twice: end everything now
            self._group(signal.SIGKILL)
            return
        self.asked = time.monotonic()
        try:
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        except (OSError, ValueError):  # rank 0 is not up (yet)
            self._group(signal.SIGTERM)

    def wait_group(self, timeout: float = 20.0) -> None:
        """After mlx.launch: give what is left of its ranks `timeout` s, then kill them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._group(0):
            time.sleep(0.1)
        self._group(signal.SIGKILL)

    def _group(self, signum: int) -> bool:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _rank_env(ranks: list[Rank]) -> dict[str, str]:
    """What every rank gets: pomar's and the libraries' settings, never a secret; ranks
    sharing this machine split its cores (MLX's CPU matmuls use BLAS threads)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.startswith(_FORWARDED)
        and key not in _NOT_FORWARDED
        and not any(word in key for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
    }
    if all(r.ssh == "127.0.0.1" for r in ranks) and "OPENBLAS_NUM_THREADS" not in env:
        threads = str(max(1, (os.cpu_count() or 1) // len(ranks)))
        env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_rank(settings: Settings) -> int:
    """This process is one rank: load its shard, then serve (rank 0) or follow."""
    import mlx.core as mx

    from server.engine.mlx.lockstep import RankLost, follow
    from server.engine.mlx.sharded import ShardingError, load_sharded

    launched = "MLX_RANK" in os.environ
    group = mx.distributed.init(strict=launched, backend="ring" if launched else "any")
    rank = group.rank()
    try:
        path = _model_folder(settings)
        address = os.environ.get(DOORBELL_ENV)
        bell = Doorbell.open(rank, group.size(), address) if address and launched else None
        if rank == 0:
            code = _serve_rank0(settings, path, group, bell)
            if os.environ.get(PIDFILE_ENV):  # for the launcher: mlx.launch exits 0 anyway
                Path(os.environ[PIDFILE_ENV] + ".exit").write_text(str(code))
            return code
        # a Ctrl-C is for rank 0, which ends this rank by a command
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        model, _config, plan = load_sharded(path, group)
        log.info("rank %d/%d: %s of %s loaded", rank, group.size(), plan.describe(), path.name)
        passes = follow(model, group, bell)
        log.info("rank %d: rank 0 stopped after %d forward passes", rank, passes)
        return 0
    except (ShardingError, ModelLoadError, RankLost, OSError) as exc:
        print(f"pomar: rank {rank}: {exc}", file=sys.stderr)
        return 1


def _serve_rank0(settings: Settings, path: Path, group: Any, bell: Doorbell | None) -> int:
    import uvicorn

    from server.app import create_app
    from server.engine.mlx.sharded import ShardedEngine
    from server.models.options import read_options

    pidfile = os.environ.get(PIDFILE_ENV)
    if pidfile:
        Path(pidfile).write_text(str(os.getpid()))
    started = time.perf_counter()
    engine = ShardedEngine(path, group, bell=bell, context=read_options(path).context)
    log.info(
        "model %s loaded from %s on %s in %.1f s",
        settings.model,
        path,
        engine.describe(),
        time.perf_counter() - started,
    )
    # uvicorn raises the signal that stopped it again once it has shut down: a no-op
    # handler lets this function go on and end the followers first
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.run(
            create_app(settings, engine),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=5,
        )
    finally:
        ended = engine.close()
    if not ended:
        print("pomar: the other ranks could not be told to stop: one is gone", file=sys.stderr)
        return 1
    return 0
