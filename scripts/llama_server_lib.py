"""The host and the llama-server binary for scripts/bench_vs_llama_server.py: the cores
(`physical_cores`), a server's peak RSS (`PeakRSS`), idle CPUs (`wait_idle`), pomar's commit
(`git_describe`), and llama-server's build (`build_llama_server`), CPU variant folder
(`cpu_variant_folder`), flags (`llama_server_options`) and version (`version_of`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import ROOT


def physical_cores() -> int:
    """Physical cores this process may run on: the thread count pomar's GGUF engine uses."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


class PeakRSS:
    """Samples the RSS of a process and all its children in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a child that just ended
                        total += proc.memory_info().rss
            except psutil.Error:  # the server ended
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_variant_folder(binary: Path, folder: Path) -> str:
    """Fill `folder` with `binary` and its libraries, but only the CPU variant pomar loads.

    With GGML_BACKEND_DL llama-server loads the best-scoring `libggml-cpu-*.so` beside its
    executable. pomar skips sapphirerapids unless POMAR_LLAMA_CPU_VARIANT names it (a VM
    can report AMX without granting the tiles, and llama-server then dies of SIGILL):
    the choice is pomar's own (`server.engine.gguf.cpu.pick_variant`), made in a child
    so that llama-server's libraries never load into this process. Returns the variant.
    """
    from server.engine.gguf.cpu import variant_files

    variants = variant_files([binary.parent])
    chosen = "none"
    if variants:
        done = subprocess.run(
            [sys.executable, "-c", _PICK, str(binary.parent)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        chosen = done.stdout.strip()
    shutil.copy2(binary, folder / binary.name)  # its own folder is where ggml searches
    others = {p.name for name, p in variants.items() if name != chosen}
    for path in binary.parent.iterdir():
        if path != binary and path.name not in others:
            (folder / path.name).symlink_to(path)
    return chosen


_PICK = """
import os, sys
from pathlib import Path
from server.engine.gguf.cpu import VARIANT_ENV, pick_variant, variant_files
print(pick_variant(variant_files([Path(sys.argv[1])]), os.environ.get(VARIANT_ENV)))
"""


def llama_server_options(binary: Path) -> str:
    """`llama-server --help`, to use only the flags this version has."""
    done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def build_llama_server() -> Path:
    """scripts/build_llama_server.sh: the cached binary (built on first use, ~15 min)."""
    script = ROOT / "scripts" / "build_llama_server.sh"
    done = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def wait_idle(limit: float, quiet_s: float = 15.0) -> None:
    """Wait (at most `limit` s) until the CPUs have been idle (< 10 %) for `quiet_s` s.

    On a shared machine another process's busy core stalls llama.cpp's thread barriers:
    tokens then take seconds, not milliseconds, on both servers.
    """
    import psutil

    deadline, quiet = time.monotonic() + limit, 0.0
    while quiet < quiet_s and time.monotonic() < deadline:
        quiet = quiet + 3.0 if psutil.cpu_percent(interval=3.0) < 10 else 0.0
    if quiet < quiet_s:
        print(f"warning: the CPUs were not idle within {limit:g} s", file=sys.stderr)


def git_describe() -> str | None:
    """pomar's commit, `-dirty` when the tree has changes; None outside a git checkout."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        cmd = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    return None


def version_of(binary: Path | None) -> str | None:
    """`llama-server --version`'s first line (it needs no backend to answer)."""
    if binary is None:
        return None
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else None
