"""The program `pomar doctor --hosts` runs on every host: what a training rank would find.

It is sent as source on stdin (`<python> - ARGS`, over ssh for a remote host, in a
subprocess for this machine) and uses only the standard library at the top, so it runs
before anything of pomar is known to import. ARGS is one JSON object: `model` (a folder
or file, or null), `engines` (the training engines to import: "mlx", "torch") and
`full_hash`. It prints one JSON object on stdout (see :func:`probe`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the distributions whose versions must match across the hosts
DISTRIBUTIONS = ("pomar", "mlx", "mlx-lm", "torch", "transformers", "peft")
#: what a rank imports: the rank program itself, the trainer, and its engine
MODULES = ("server.jobs.trainchild", "finetune.trainer")
ENGINE_MODULES = {"mlx": ("mlx.core", "mlx.nn"), "torch": ("torch", "torch.distributed")}
#: files of a model folder that decide what a rank loads: weights, configs, tokenizers
MODEL_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".gguf", ".npz", ".pt", ".pth", ".json", ".model", ".txt",
     ".jinja", ".tiktoken", ".py"}
)  # fmt: skip
#: pomar's own bookkeeping in a model folder (its creation time differs between copies)
NOT_MODEL_FILES = frozenset({"pomar-model.json", "pomar-options.json"})
CHUNK = 1 << 20
#: files up to this size are hashed whole even without `full_hash`
WHOLE_UP_TO = 16 * CHUNK
SAMPLES = 8


def file_hash(path: Path, full: bool) -> str:
    """sha256 of the file, or of a sample of it.

    A sample (files over 16 MiB unless `full`) is the size, the first and last MiB and
    8 MiB spread evenly between them: a copy cut short, a different quantization or a
    different checkpoint changes it, while a multi-GB model is checked in well under a
    second. `pomar doctor --hosts --full-hash` reads every byte instead.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if full or size <= WHOLE_UP_TO:
            while block := handle.read(CHUNK):
                digest.update(block)
            return digest.hexdigest()
        digest.update(str(size).encode())
        step = (size - CHUNK) // (SAMPLES + 1)
        for offset in [0, *(step * i for i in range(1, SAMPLES + 1)), size - CHUNK]:
            handle.seek(offset)
            digest.update(handle.read(CHUNK))
    return "sampled:" + digest.hexdigest()


def model_files(model: str, full: bool) -> dict[str, Any]:
    """The hashes of the model's files by path relative to its folder, or why there are none."""
    path = Path(model)
    if path.is_file():
        return {"files": {path.name: file_hash(path, full)}}
    if not path.is_dir():
        return {"error": "missing"}
    files: dict[str, str] = {}
    for member in sorted(path.rglob("*")):
        relative = member.relative_to(path)
        if any(part.startswith(".") for part in relative.parts) or not member.is_file():
            continue  # hidden files: import markers, the hub's .cache
        if member.suffix in MODEL_SUFFIXES and member.name not in NOT_MODEL_FILES:
            try:
                files[relative.as_posix()] = file_hash(member, full)
            except OSError as exc:
                files[relative.as_posix()] = f"unreadable: {exc}"
    return {"files": files}


def install_commit(folder: Path) -> str | None:
    """The git commit of a source checkout (pomar runs from one, installed editable)."""
    if not (folder / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def probe(args: dict[str, Any]) -> dict[str, Any]:
    """What this host has: its python, the imports a rank needs, versions, model files."""
    imports: dict[str, str | None] = {}
    commit = None
    wanted = [*MODULES, *(m for e in args.get("engines", []) for m in ENGINE_MODULES[e])]
    for name in wanted:
        try:
            module = importlib.import_module(name)
            imports[name] = None
            if name == "server.jobs.trainchild" and module.__file__:
                commit = install_commit(Path(module.__file__).resolve().parents[2])
        except Exception as exc:  # any failure to import is what the report is about
            imports[name] = f"{type(exc).__name__}: {exc}"
    if "torch.distributed" in imports and imports["torch.distributed"] is None:
        import torch.distributed

        if not torch.distributed.is_available():
            imports["torch.distributed"] = "torch was built without torch.distributed"
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    if commit and versions["pomar"]:
        versions["pomar"] += f" (commit {commit[:12]})"
    model = args.get("model")
    return {
        "python": sys.executable,
        "cwd": os.getcwd(),
        "imports": imports,
        "versions": versions,
        "model": model_files(model, bool(args.get("full_hash"))) if model else None,
    }


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
