"""Which CPU kernels llama.cpp runs: the portable build's variant, chosen per machine.

`scripts/setup.sh` builds llama-cpp-python with llama.cpp's runtime CPU dispatch
(`GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON`, never `-march=native`): the kernels come as
one `libggml-cpu-<variant>.so` per x86-64 (or Arm) level, and each scores itself against the
CPU it is loaded on. The wheel installs them in `site-packages/bin/` (llama.cpp's install
rule for backends), and llama.cpp searches for them beside the executable (Python's own
`bin/`) and in the working directory: neither finds them. So pomar scores and loads the
best one itself, before any model is loaded (docs/engines.md has the measurements).

AMX: Sapphire Rapids kernels use AMX tiles, and a virtual machine can report AMX in cpuid
without granting the process its tiles (the kernels then fault with SIGSEGV/SIGILL). The
variant is skipped unless `POMAR_LLAMA_CPU_VARIANT=sapphirerapids` asks for it, and even
then the engine self-check (server/models/selfcheck.py) runs it in a child process first.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

#: environment override: the variant to load (say `haswell`), chosen over the best score
VARIANT_ENV = "POMAR_LLAMA_CPU_VARIANT"
#: variants whose kernels need the OS to grant AMX tiles: only loaded when asked for
_NEEDS_AMX = frozenset({"sapphirerapids"})

_lock = threading.Lock()
_loaded: CPUBackend | None = None


@dataclass(frozen=True)
class CPUBackend:
    """How llama.cpp's CPU kernels were found in this process."""

    #: "dispatch" (a variant picked at load), "static" (kernels linked in: one fixed build)
    kind: str
    #: the variant loaded ("haswell", "icelake", ...), None for a static build
    variant: str | None
    #: every variant the build ships, with its score on this CPU (0: cannot run here)
    scores: dict[str, int]

    @property
    def portable(self) -> bool:
        """Whether this build runs on other CPUs than the one it was compiled on."""
        return self.kind == "dispatch" and len(self.scores) > 1


def kernel_dirs() -> list[Path]:
    """Where an installed llama-cpp-python keeps its CPU kernel variants (no import)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed")
    package = Path(spec.origin).parent
    return [package / "lib", package.parent / "bin"]


def variant_files(folders: list[Path]) -> dict[str, Path]:
    """The CPU kernel variants a build ships: name -> `libggml-cpu-<name>.so` (or .dylib/.dll)."""
    out: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*ggml-cpu-*")):
            if path.suffix in (".so", ".dylib", ".dll"):
                out.setdefault(path.stem.split("ggml-cpu-", 1)[1], path)
    return out


def ensure_cpu_backend() -> CPUBackend:
    """Load llama.cpp's best CPU variant for this machine, once per process.

    Idempotent and thread-safe; call it before the first llama.cpp model load.

    Raises:
        RuntimeError: a dispatch build where no variant can run on this CPU (or the
            one asked for in POMAR_LLAMA_CPU_VARIANT is not shipped).
    """
    global _loaded  # one set of kernels per process: llama.cpp's registry is process-wide
    with _lock:
        if _loaded is not None:
            return _loaded
        import logging

        # llama.cpp logs each backend it loads through llama-cpp-python's logger: errors only
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        ggml = _libggml()
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        files = variant_files(kernel_dirs())
        if not files or ggml.ggml_backend_reg_count() > 0:
            # kernels linked into libggml (a build without dispatch): nothing to choose
            _loaded = CPUBackend("static", None, {})
            return _loaded
        scores = {name: _score(path) for name, path in files.items()}
        chosen = _choose(scores, os.environ.get(VARIANT_ENV))
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        if not ggml.ggml_backend_load(str(files[chosen]).encode()):
            raise RuntimeError(f"llama.cpp could not load its CPU kernels ({chosen})")
        _loaded = CPUBackend("dispatch", chosen, scores)
        return _loaded


def pick_variant(files: dict[str, Path], wanted: str | None = None) -> str:
    """The variant `ensure_cpu_backend` would load from `files` (name -> library) on this
    CPU, without loading it: the best score, AMX kernels only when `wanted` names them.

    Raises:
        RuntimeError: `wanted` is not among `files`, or no variant runs on this CPU.
    """
    return _choose({name: _score(path) for name, path in files.items()}, wanted)


def _libggml() -> ctypes.CDLL:
    """The libggml that libllama itself uses (its backend registry is the one that counts).

    The wheel ships several copies of libggml (`libggml.so`, `libggml.so.0`, in two
    folders); llama_cpp's own `_ggml` handle may be another copy than the one libllama was
    linked against, with a registry of its own. The one already loaded under libllama's
    soname is the right one.
    """
    import llama_cpp  # noqa: F401  (loads libllama and, through it, its libggml)

    for name in ("libggml.so.0", "libggml.0.dylib", "libggml.dylib", "ggml.dll"):
        try:
            return ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    from llama_cpp import _ggml

    return _ggml.libggml


def _score(path: Path) -> int:
    """The variant's own score for this CPU (0: it needs an instruction this CPU lacks)."""
    try:
        lib = ctypes.CDLL(str(path))
        lib.ggml_backend_score.restype = ctypes.c_int
        return int(lib.ggml_backend_score())
    except (OSError, AttributeError):
        return 0


def _choose(scores: dict[str, int], wanted: str | None) -> str:
    if wanted:
        if wanted not in scores:
            raise RuntimeError(
                f"{VARIANT_ENV}={wanted}: this llama.cpp build ships " + ", ".join(sorted(scores))
            )
        return wanted
    usable = {n: s for n, s in scores.items() if s > 0 and n not in _NEEDS_AMX}
    if not usable:
        raise RuntimeError("none of llama.cpp's CPU kernel variants runs on this CPU")
    return max(usable, key=lambda n: usable[n])


def system_info() -> str:
    """llama.cpp's own line of the CPU features its loaded kernels use."""
    ensure_cpu_backend()
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", "replace").strip()


def cpu_flags() -> list[str]:
    """The CPU's feature flags as the OS reports them (Linux), or what the platform says."""
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    return sorted(set(line.split(":", 1)[1].split()))
        except OSError:
            pass
    import platform

    return [platform.machine()]
