"""OpenBLAS preloading for MLX on Linux.

MLX's Linux CPU wheel links the reference BLAS; preloading OpenBLAS makes decode
~2x and prefill ~15x faster (docs/platform.md). A preload only takes effect at process
start, so the CLI re-executes itself once with `LD_PRELOAD` set.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from pathlib import Path

MARKER = "POMAR_OPENBLAS"

_CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


def find_openblas() -> Path | None:
    """The system's OpenBLAS shared library, if there is one."""
    arch = platform.machine()
    for pattern in _CANDIDATES:
        path = Path(pattern.format(arch=arch))
        if path.is_file():
            return path
    return None


def preload_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when no re-exec is needed or possible."""
    if not sys.platform.startswith("linux") or MARKER in environ:
        return None
    if environ.get("POMAR_NO_OPENBLAS"):
        return None
    lib = find_openblas()
    if lib is None:
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "openblas" in preload:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
    env[MARKER] = str(lib)
    return env


def status(environ: Mapping[str, str]) -> str:
    """A log line saying which BLAS MLX runs on here."""
    if not sys.platform.startswith("linux"):
        return "MLX uses the platform's own BLAS (Accelerate/Metal)"
    preload = environ.get("LD_PRELOAD", "")
    if "openblas" in preload:
        lib = next(p for p in preload.split(":") if "openblas" in p)
        return f"MLX on Linux: OpenBLAS preloaded ({lib})"
    return (
        "MLX on Linux: OpenBLAS not found, MLX runs the reference BLAS (~2x slower decode); "
        "install it with: apt-get install libopenblas0-pthread"
    )
