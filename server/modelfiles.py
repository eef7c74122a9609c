"""File-format facts about model folders, read without loading a model or an engine.

The low module both the engines (`server.engine`) and the model store (`server.models`)
read: which GGUF file a path stands for, the marker an import leaves in its folder, and a
lenient reader of JSON config files. It imports nothing of pomar but its errors.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from server.errors import ModelLoadError

MARKER_NAME = ".pomar-import.json"
"""Written last into an imported folder; its presence means the import completed."""

_SHARD = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (a model's config.json, say); {} if absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_import_marker(model_dir: Path) -> dict[str, Any] | None:
    """The import marker of ``model_dir``, or ``None`` when absent or unreadable."""
    try:
        data = json.loads((Path(model_dir) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_gguf(path: Path) -> Path | None:
    """The GGUF file that `path` stands for: itself, the one in its folder, or its source.

    A folder imported from a GGUF (the embedded model's) names its source file in its
    import marker. A folder holding several GGUF files (say Q4_K_M and Q8_0) is ambiguous.

    Raises:
        ModelLoadError: the folder holds more than one GGUF model.
    """
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir():
        return None
    found = [
        p
        for p in sorted(path.glob("*.gguf"))
        if (m := _SHARD.search(p.name)) is None or m.group(1) == "00001"
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelLoadError(f"{path} holds several GGUF files ({names}); pass one of them")
    if found:
        return found[0]
    source = (read_import_marker(path) or {}).get("source")
    if isinstance(source, dict) and Path(str(source.get("path"))).is_file():
        return Path(str(source["path"]))
    return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where fcntl is unavailable).

    Two processes building the same model folder (a job and the CLI, two imports) take
    turns.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows is not a target
        yield
        return
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
