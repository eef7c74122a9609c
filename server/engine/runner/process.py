"""What the server's child processes (engine runners, trainers) share: how they end."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the thread that started it ends
    (the server going away); elsewhere the child notices its closed pipe instead."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_description(returncode: int | None) -> str:
    """How a child process ended, for the log and the client: "signal SIGKILL",
    "exit code 1"."""
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
