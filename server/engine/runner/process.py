"""What the server's child processes (engine runners, trainers) share: how they end."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the thread that started it ends
    (the server going away); elsewhere the child notices its closed pipe instead."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def rss_bytes(pid: int | None = None) -> int | None:
    """A process's resident memory now (this one's by default); None where /proc is not
    there (macOS) or the process is gone."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def exit_description(returncode: int | None) -> str:
    """How a child process ended, for the log and the client: "signal SIGKILL",
    "exit code 1"."""
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
