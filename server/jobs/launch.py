"""The hosts a fine-tuning job may train on, and the launcher command that starts its ranks.

`POMAR_TRAIN_HOSTS` is either `host:slots,host:slots` (slots default to 1) or the path of a
hostfile in `mlx.launch`'s JSON format (`[{"ssh": "mac2", "ips": ["10.0.0.2"]}, ...]` or
`{"hosts": [...]}`; one entry per host, a host repeated for more slots). A job runs one
rank per slot, data-parallel (finetune/distributed.py):

* MLX: one `mlx.launch --backend ring` command that starts every rank (over ssh for the
  remote hosts) and ends them all when one exits;
* torch: `torch.distributed.run` (torchrun) once per host, the local one started here and
  the others over ssh, gloo on CPU (nccl on CUDA).

The first host must be this machine: rank 0 runs there, talks to the server and writes the
job's files. Every host needs the same pomar install at the same path and the base model
at the same path (`pomar doctor --hosts` checks both).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

#: host names that mean this machine
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class HostsError(ValueError):
    """`POMAR_TRAIN_HOSTS`, or a job's `hosts`, cannot be used; the message says why."""


@dataclass(frozen=True)
class Host:
    """A machine that runs `slots` ranks; `address` is the IP the ranks talk over."""

    name: str
    slots: int = 1
    address: str = ""

    @property
    def ip(self) -> str:
        """The IP the ring backend connects to (resolved from the name when not given)."""
        if self.address:
            return self.address
        try:
            return socket.gethostbyname(self.name)
        except OSError as exc:
            raise HostsError(f"cannot resolve training host {self.name!r}: {exc}") from exc

    @property
    def is_local(self) -> bool:
        """Whether this is the machine the server runs on."""
        return self.name in LOCAL_NAMES or self.name == socket.gethostname()


def parse_hosts(spec: str | None) -> list[Host]:
    """The hosts of a `POMAR_TRAIN_HOSTS` value; [] when unset. Raises :class:`HostsError`."""
    if spec is None or not spec.strip():
        return []
    spec = spec.strip()
    hosts = _from_file(Path(spec).expanduser()) if spec.endswith(".json") else _from_list(spec)
    if not hosts:
        raise HostsError("POMAR_TRAIN_HOSTS names no host")
    if not hosts[0].is_local:
        raise HostsError(
            f"the first training host must be this machine (127.0.0.1 or localhost), not "
            f"{hosts[0].name!r}: rank 0 runs there and writes the job's files"
        )
    return hosts


def _from_list(spec: str) -> list[Host]:
    hosts: list[Host] = []
    for item in spec.split(","):
        name, _, slots = item.strip().partition(":")
        if not name:
            raise HostsError(f"POMAR_TRAIN_HOSTS: empty host name in {spec!r}")
        try:
            count = int(slots) if slots else 1
        except ValueError as exc:
            raise HostsError(f"POMAR_TRAIN_HOSTS: {item!r} is not host:slots") from exc
        if count < 1:
            raise HostsError(f"POMAR_TRAIN_HOSTS: {item!r} has no slot")
        hosts.append(Host(name, count))
    return hosts


def _from_file(path: Path) -> list[Host]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HostsError(f"POMAR_TRAIN_HOSTS: cannot read the hostfile {path.name}: {exc}") from exc
    entries = data.get("hosts", []) if isinstance(data, dict) else data
    hosts: list[Host] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not entry.get("ssh"):
            raise HostsError(f"POMAR_TRAIN_HOSTS: a host of {path.name} has no 'ssh' name")
        ips = entry.get("ips") or []
        address = str(ips[0]) if ips else ""
        if hosts and hosts[-1].name == entry["ssh"] and hosts[-1].address == address:
            hosts[-1] = Host(hosts[-1].name, hosts[-1].slots + 1, address)  # a repeated entry
        else:
            hosts.append(Host(str(entry["ssh"]), 1, address))
    return hosts


def total_slots(hosts: list[Host]) -> int:
    """How many ranks the hosts can run."""
    return sum(host.slots for host in hosts)


def take_ranks(hosts: list[Host], ranks: int) -> list[Host]:
    """The first `ranks` slots of `hosts`, in order."""
    if not 1 <= ranks <= total_slots(hosts):
        raise HostsError(f"hosts must be between 1 and {total_slots(hosts)} (the configured slots)")
    taken: list[Host] = []
    for host in hosts:
        if ranks <= 0:
            break
        use = min(host.slots, ranks)
        taken.append(Host(host.name, use, host.address))
        ranks -= use
    return taken


def free_port() -> int:
    """A TCP port nobody listens on now (the launchers take a port, not a socket)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rank_env(hosts: list[Host]) -> dict[str, str]:
    """Environment every rank gets: this process's pomar/engine settings (remote ranks do
    not inherit them), and BLAS threads split between the ranks of one machine."""
    keep = ("HF_HUB_OFFLINE", "MLX_DISABLE_COMPILE", "TOKENIZERS_PARALLELISM", "LD_PRELOAD")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    per_rank = max(1, (os.cpu_count() or 1) // max(host.slots for host in hosts))
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(per_rank)
    return env


#: `mlx.launch`, less its busy loop: each rank's relay thread selects on the rank's
#: stdin pipe for writing, which is always ready, so the launcher spins a core for as long
#: as the ranks run (mlx 0.32.4; measured here: 70-95 % of a core, idle server or not).
#: pomar sends the ranks no input, so the relay selects on their output alone.
MLX_LAUNCH = (
    "import select, sys\n"
    "from mlx._distributed_utils import launch\n"
    "launch.select = lambda r, w, x, t=None: select.select(r, [], x, t)\n"
    "sys.argv[0] = 'mlx.launch'\n"
    "launch.main()\n"
)


def mlx_launch_argv(hostfile: Path, starting_port: int, env: dict[str, str]) -> list[str]:
    """`mlx.launch` (without its busy loop) over the ring of `hostfile`, each rank with
    `env`; the caller appends its own options and the rank's command."""
    return [
        sys.executable,
        "-c",
        MLX_LAUNCH,
        "--backend",
        "ring",
        "--hostfile",
        str(hostfile),
        "--starting-port",
        str(starting_port),
        *[f"--env={key}={value}" for key, value in env.items()],
    ]


def child_argv(engine: str, control: str) -> list[str]:
    """The rank program: `server.jobs.trainchild` in rank mode."""
    return [sys.executable, "-m", "server.jobs.trainchild", "--rank", engine, control]


def mlx_command(hosts: list[Host], control: str, hostfile: Path) -> list[str]:
    """`mlx.launch` over a ring of every slot; writes the hostfile it reads."""
    entries = [
        # mlx.launch starts a rank without ssh only for the name 127.0.0.1
        {"ssh": "127.0.0.1" if host.is_local else host.name, "ips": [host.ip]}
        for host in hosts
        for _ in range(host.slots)
    ]
    hostfile.write_text(json.dumps({"hosts": entries}), encoding="utf-8")
    return [*mlx_launch_argv(hostfile, free_port(), rank_env(hosts)), *child_argv("mlx", control)]


def torch_commands(hosts: list[Host], control: str) -> list[list[str]]:
    """One `torch.distributed.run` per host (ssh for the remote ones), rank 0 on the first."""
    if len({host.slots for host in hosts}) > 1:
        raise HostsError("torch training needs the same number of slots on every host")
    port = free_port()
    master = hosts[0].ip if len(hosts) > 1 else "127.0.0.1"
    commands: list[list[str]] = []
    for node, host in enumerate(hosts):
        run = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={len(hosts)}",
            f"--nproc-per-node={host.slots}",
            f"--node-rank={node}",
            f"--master-addr={master}",
            f"--master-port={port}",
            "--max-restarts=0",
            "-m",
            "server.jobs.trainchild",
            "--rank",
            "torch",
            control,
        ]
        if host.is_local:
            commands.append(run)
        else:
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in rank_env(hosts).items())
            remote = f"cd {shlex.quote(os.getcwd())} && env {exports} {shlex.join(run)}"
            commands.append(["ssh", "-o", "BatchMode=yes", host.name, remote])
    return commands
