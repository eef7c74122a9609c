"""`pomar doctor`: what this machine runs pomar with, as a table to paste into a bug report.

Engines and versions, how llama.cpp was built and which of its CPU kernels run here, the
BLAS MLX runs on, CPU features, GPUs, the engine self-checks, the store, and free memory
against what the default model needs. `--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from server.settings import Settings

#: CPU features that decide which kernels llama.cpp, MLX and torch can use
_FEATURES = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "i8mm", "sve",
)  # fmt: skip


def add_parser(sub: Any) -> None:
    """Add the `doctor` subcommand to `pomar`'s parser."""
    p = sub.add_parser("doctor", help="engines, builds, CPU, GPU, self-checks, store, memory")
    p.add_argument("--home", help="models, files and jobs (POMAR_HOME, default ~/.pomar)")
    p.add_argument("--model", help="model to check the engines on (POMAR_MODEL)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--no-check", action="store_true", help="report kept self-checks, run no new ones"
    )
    p.add_argument(
        "--hosts",
        nargs="?",
        const="",
        metavar="SPEC",
        help="check instead that every host (host:slots,... or a hostfile; default "
        "POMAR_TRAIN_HOSTS and POMAR_HOSTS) has this install and --model's files; "
        "exit status 1 on a problem",
    )
    p.add_argument(
        "--full-hash", action="store_true", help="with --hosts: hash every byte of big files"
    )


def run(args: argparse.Namespace) -> int:
    """Gather the report and print it; 0 even when something is missing (it says so).

    `--hosts` checks the hosts of a multi-host job instead (server/doctor_hosts.py)."""
    overrides = {k: v for k in ("home", "model") if (v := getattr(args, k, None)) is not None}
    settings = Settings(**overrides)
    if getattr(args, "hosts", None) is not None:
        from server import doctor_hosts

        return doctor_hosts.run(settings, args)
    report = gather(settings, check=not args.no_check)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def gather(settings: Settings, *, check: bool = True) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data."""
    model_path, model_error = _model_path(settings)
    engines = {"gguf": _gguf(), "mlx": _mlx(), "torch": _torch()}
    report: dict[str, Any] = {
        "pomar": _version("pomar"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": _cpu(),
        # what the engines found (MLX's device, torch's CUDA), asked once
        "gpu": {
            "metal_or_mlx_gpu": engines["mlx"].get("device") == "gpu",
            "cuda": bool(engines["torch"].get("cuda")),
        },
        "engines": engines,
        "store": _store(settings),
        "memory": _memory(settings, model_path, model_error),
    }
    report["self_checks"] = _self_checks(settings, model_path, check, report["engines"])
    return report


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict[str, Any]:
    from server.engine.gguf.backend import physical_cores
    from server.engine.gguf.cpu import cpu_flags

    name = platform.processor() or platform.machine()
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    flags = set(cpu_flags())
    return {
        "model": name,
        "logical_cores": os.cpu_count(),
        "cores_used": physical_cores(),
        "features": [f for f in _FEATURES if f in flags],
    }


def _gguf() -> dict[str, Any]:
    out: dict[str, Any] = {"version": _version("llama_cpp_python")}
    if out["version"] is None:
        return out
    try:
        from server.engine.gguf.cpu import ensure_cpu_backend, system_info

        cpu = ensure_cpu_backend()
        out.update(
            build=cpu.kind,
            portable=cpu.portable,
            cpu_variant=cpu.variant,
            variants=dict(cpu.scores),
            system_info=system_info(),
        )
    except Exception as exc:  # report it: the doctor must finish whatever is broken
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _mlx() -> dict[str, Any]:
    from server.engine.mlx.openblas import status
    from server.models.loading import mlx_device

    out: dict[str, Any] = {"version": _version("mlx"), "mlx_lm": _version("mlx-lm")}
    if out["version"] is None:
        return out
    device, problem = mlx_device()
    out["device"] = device
    if problem:
        out["error"] = problem
    out["blas"] = status(os.environ)
    return out


def _torch() -> dict[str, Any]:
    from server.models.loading import torch_has_cuda

    out: dict[str, Any] = {"version": _version("torch")}
    if out["version"] is not None:
        out["cuda"] = torch_has_cuda()
        out["mps"] = sys.platform == "darwin" and platform.machine() == "arm64"
    return out


def _store(settings: Settings) -> dict[str, Any]:
    from server.models.store import ModelCatalog, folder_size

    home = settings.home
    entries = ModelCatalog(settings.models_dir).list() if settings.models_dir.is_dir() else []
    return {
        "home": str(home),
        "models": len(entries),
        "size_bytes": folder_size(home) if home.is_dir() else 0,
    }


def _model_path(settings: Settings) -> tuple[Path | None, str | None]:
    """The default model's folder (the embedded one is imported on first use)."""
    from server.errors import ModelLoadError
    from server.models.loading import resolve_model_path

    try:
        return resolve_model_path(settings.model, settings.models_dir), None
    except ModelLoadError as exc:
        return None, str(exc)


def _memory(settings: Settings, path: Path | None, error: str | None) -> dict[str, Any]:
    from server.models.info import serving_memory
    from server.models.loading import backend_for
    from server.models.memory import total_memory

    out: dict[str, Any] = {"total_bytes": total_memory(), "available_bytes": _available()}
    out["model"] = settings.model
    if path is None:
        out["model_error"] = error
        return out
    backend = backend_for(settings.backend, path)
    need = serving_memory(path, backend)
    out.update(model_backend=backend, model_needs_bytes=need)
    if out["available_bytes"] is not None:
        out["fits"] = need <= out["available_bytes"]
    return out


def _available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None


def _self_checks(
    settings: Settings, path: Path | None, run_new: bool, engines: dict[str, Any]
) -> dict[str, Any]:
    """Each installed engine's self-check on this machine: kept, run now, or not run."""
    from server.models.loading import engine_candidates
    from server.models.selfcheck import CheckCache, check_key, checked

    cache = CheckCache(settings.home)
    can = {e for e, _ in engine_candidates("auto", path)} if path is not None else set()
    out: dict[str, Any] = {}
    for engine, facts in engines.items():
        if facts.get("version") is None:
            out[engine] = {"state": "not installed"}
            continue
        kept = cache.get(check_key(engine))
        if kept is None and run_new and engine in can and path is not None:
            kept = checked(engine, path, cache)
        if kept is None:
            why = "--no-check" if not run_new else f"cannot serve {settings.model}"
            out[engine] = {"state": f"not checked ({why})"}
        else:
            out[engine] = {"state": "passed" if kept.ok else "FAILED", **kept.model_dump()}
    return out


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from server.models.cli import human_size

    table = Table(show_header=False, title="pomar doctor", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    cpu, gpu, mem, store = report["cpu"], report["gpu"], report["memory"], report["store"]
    table.add_row("pomar", f"{report['pomar']} on Python {report['python']}")
    table.add_row("platform", report["platform"])
    table.add_row(
        "cpu", f"{cpu['model']} ({cpu['logical_cores']} logical, uses {cpu['cores_used']})"
    )
    table.add_row("cpu features", " ".join(cpu["features"]) or "-")
    table.add_row(
        "gpu", f"MLX GPU (Metal): {_yes(gpu['metal_or_mlx_gpu'])}; CUDA: {_yes(gpu['cuda'])}"
    )
    for engine, facts in report["engines"].items():
        table.add_row(f"{engine} engine", _engine_line(engine, facts))
    for engine, check in report["self_checks"].items():
        state = check["state"]
        if "seconds" in check:
            state += f" ({check['detail'] or 'decoded'} on {check['model']}, {check['seconds']} s)"
        table.add_row(f"self-check {engine}", state)
    table.add_row(
        "store", f"{store['home']}: {store['models']} model(s), {human_size(store['size_bytes'])}"
    )
    avail = mem["available_bytes"]
    line = f"{human_size(mem['total_bytes'])} total, "
    line += f"{human_size(avail)} available" if avail is not None else "available unknown"
    if "model_needs_bytes" in mem:
        line += (
            f"; {mem['model']} needs ~{human_size(mem['model_needs_bytes'])} on "
            f"{mem['model_backend']} ({'fits' if mem.get('fits', True) else 'does NOT fit'})"
        )
    elif mem.get("model_error"):
        line += f"; {mem['model']}: {mem['model_error']}"
    table.add_row("memory", line)
    Console().print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _engine_line(engine: str, facts: dict[str, Any]) -> str:
    if facts.get("version") is None:
        return "not installed"
    line = f"{engine} {facts['version']}"
    if engine == "gguf" and "build" in facts:
        portable = "portable" if facts["portable"] else "NOT portable (built for one CPU)"
        variant = f", kernels: {facts['cpu_variant']}" if facts["cpu_variant"] else ""
        line += f" — {facts['build']} build, {portable}{variant}\n{facts['system_info']}"
    if engine == "mlx":
        line += f" (mlx-lm {facts['mlx_lm']}) on {facts.get('device') or 'nothing'}"
        line += f"; {facts['blas']}"
    if engine == "torch" and "cuda" in facts:
        line += f" (CUDA: {_yes(facts['cuda'])}, MPS: {_yes(facts['mps'])})"
    if facts.get("error"):
        line += f"\nerror: {facts['error']}"
    return line
