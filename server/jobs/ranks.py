"""A fine-tuning job trained data-parallel on several ranks (issue 23).

The server starts the launcher (server/jobs/launch.py: `mlx.launch` or one torchrun per
host) in its own process group and listens on a loopback control socket; rank 0, which
runs on this machine, connects with a one-time token, receives the config, and then speaks
exactly the child protocol of server/jobs/trainproc.py over that socket (reports one JSON
line each; `stop` the other way). The end of the socket is the end of the run: a result,
an error, or — when any rank died, since the launchers end every rank then — a crash,
which the job runner resumes from the last checkpoint as for one process. Whatever way
it ends, every process of the group is killed before this returns.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.callbacks import TrainingCallback
from finetune.config import TrainConfig
from server.jobs.launch import Host, mlx_command, rank_env, torch_commands, total_slots
from server.jobs.trainproc import TrainerCrashed, outcome_of, relay

log = logging.getLogger(__name__)

FINISH_GRACE_S = 10.0  # how long the group may take to exit by itself after the run ends

#: how long rank 0 may take to connect (every rank starts, the group forms); a launcher
#: that exits first ends the wait at once
CONNECT_TIMEOUT_S = float(os.environ.get("POMAR_RANKS_CONNECT_TIMEOUT_S", "300"))


def train_on_ranks(
    config: TrainConfig,
    callback: TrainingCallback,
    hosts: list[Host],
    on_start: Callable[[int], None] | None = None,
) -> Any:
    """Train `config` on every slot of `hosts`; returns rank 0's `TrainResult`.

    Raises `TrainerError` for an exception in the trainer and `TrainerCrashed` when the
    group ends without a result (a rank died, or rank 0 never connected).
    """
    token = secrets.token_hex(16)
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        tempfile.TemporaryDirectory(prefix="pomar-launch-") as scratch,
    ):
        control = f"127.0.0.1:{listener.getsockname()[1]}:{token}"
        if config.backend == "mlx":
            commands = [mlx_command(hosts, control, Path(scratch) / "hostfile.json")]
        else:
            commands = torch_commands(hosts, control)
        log.info(
            "training on %d ranks (%s) with %s",
            total_slots(hosts),
            ", ".join(f"{h.name}:{h.slots}" for h in hosts),
            config.backend,
        )
        env = {**os.environ, **rank_env(hosts)}
        # stdin a pipe that stays open and silent: mlx.launch relays it to the ranks, and
        # at end of file its relay would spin
        launchers = [
            subprocess.Popen(cmd, start_new_session=True, env=env, stdin=subprocess.PIPE)
            for cmd in commands
        ]
        if on_start is not None:
            on_start(launchers[0].pid)
        outcome: dict[str, Any] = {}
        try:
            connection = _accept(listener, token, launchers)
            if connection is None:
                raise TrainerCrashed(f"rank 0 never connected ({_ended(launchers)})")
            with connection:
                connection.sendall((config.model_dump_json() + "\n").encode())
                relay(connection.fileno(), connection.sendall, callback, outcome)
        finally:
            _end(launchers)
    return outcome_of(outcome, f"a rank died: {_ended(launchers)}")


def _accept(
    listener: socket.socket, token: str, launchers: list[subprocess.Popen[bytes]]
) -> socket.socket | None:
    """Rank 0's connection, once it proves it knows `token`; None when every launcher
    ended (or one failed) first, or the wait ran out."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in launchers) or all(
            p.poll() is not None for p in launchers
        ):
            return None
        ready, _, _ = select.select([listener], [], [], 0.5)
        if not ready:
            continue
        connection, _ = listener.accept()
        connection.settimeout(30)
        try:
            line = connection.makefile("rb").readline().strip().decode("ascii", "replace")
        except OSError:
            line = ""
        if hmac.compare_digest(line, token):
            connection.settimeout(None)
            return connection
        connection.close()  # not our rank 0: keep waiting
    return None


def _end(launchers: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process the launchers started (their process groups), then reap them.

    After a result the other ranks end on their own within moments (their loop is over);
    they get a few seconds before the signals."""
    deadline = time.monotonic() + FINISH_GRACE_S
    for process in launchers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in launchers:
        if process.stdin is not None:
            process.stdin.close()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in launchers:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # ranks the launcher started may outlive it: its group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _ended(launchers: list[subprocess.Popen[bytes]]) -> str:
    codes = [p.poll() for p in launchers]
    return ", ".join("running" if c is None else f"launcher exit {c}" for c in codes)
