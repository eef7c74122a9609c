"""A run's folders written atomically, and the tidy-up after a crash mid-write.

Every folder (a checkpoint, the final adapter) is built under a temporary name beside its
target and renamed into place, so a reader (the server registering a checkpoint model,
or a resume after a crash) never sees a half-written one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any


def remove_leftovers(out_dir: Path) -> None:
    """Half-written folders of a run that crashed mid-write (never valid checkpoints)."""
    for folder in (out_dir, out_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(".*"):
                if ".tmp-" in path.name or ".old-" in path.name:
                    shutil.rmtree(path, ignore_errors=True)


#: what :func:`write_dir_atomically` leaves when killed: `.<name>.tmp-<pid>` (a folder
#: being written) and `.<name>.old-<pid>` (the one it replaces, moved aside)
_PARTIAL = re.compile(r"\.(?P<name>[^/]+)\.(?P<kind>tmp|old)-\d+")


def write_dir_atomically(target: Path, write: Any) -> None:
    """Build a folder under a temporary name beside ``target``, then swap it into place.

    A process killed midway leaves the names :data:`_PARTIAL` matches, which
    :func:`clean_partial_writes` tidies before a resume.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if target.exists():
            # rename cannot replace a non-empty folder; move the old one aside first
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial_writes(out_dir: Path) -> int:
    """Tidy a training folder after a crash; returns how many half-written folders went.

    A folder being written is deleted. A replaced folder moved aside is put back if the
    kill came between the two renames (its new version never landed), else deleted.
    """
    removed = 0
    for folder in (out_dir, out_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):  # `.x.old-N` before `.x.tmp-N`
            match = _PARTIAL.fullmatch(entry.name)
            if match is None or not entry.is_dir():
                continue
            target = folder / match["name"]
            if match["kind"] == "old" and not target.exists():
                entry.rename(target)
            else:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed
